//! Diagnostic build only (feature `stage-stamps`, scripts/bench.sh --stages): the data
//! loop notes when latency probe frames pass it (crates/latency-stages); the probe,
//! polled on the same lcore, prints this process's stages after its report.

use dpdk::MbufBurst;
use latency_stages::{frame, tsc, Stage, STAGES};

use crate::datapath::BURST;

/// The probe's stamps of a burst's frames sent inside its window.
pub(crate) struct Stamps {
    at: [u64; BURST],
    n: usize,
}

impl Stamps {
    /// Reads the frames' stamps (a copy of their first bytes).
    #[inline]
    pub(crate) fn of(burst: &MbufBurst<BURST>) -> Stamps {
        let mut s = Stamps { at: [0; BURST], n: 0 };
        for m in burst.as_slice() {
            let mut bytes = [0u8; frame::HEADER];
            if m.read(0, &mut bytes) == frame::HEADER {
                if let Some(t) = frame::window_stamp(&bytes) {
                    s.at[s.n] = t;
                    s.n += 1;
                }
            }
        }
        s
    }

    /// These frames reached `stage` now.
    #[inline]
    pub(crate) fn record(&self, stage: Stage) {
        if self.n == 0 {
            return;
        }
        let now = tsc();
        for &t in &self.at[..self.n] {
            STAGES.record(stage, t, now);
        }
    }
}
