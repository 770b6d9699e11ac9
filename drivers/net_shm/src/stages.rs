//! Diagnostic build only (feature `stage-stamps`, scripts/bench.sh --stages): when latency
//! probe frames pass this PMD's bursts (crates/latency-stages); printed as one
//! `STAGES who=guest ...` line when the port stops.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dpdk_sys as sys;
use latency_stages::{frame, tsc, Stage, STAGES};

/// The most frames of one burst whose stamps are kept.
const MAX: usize = 64;

/// The probe's stamps of a burst's frames sent inside its window.
pub struct Stamps {
    at: [u64; MAX],
    n: usize,
}

impl Stamps {
    /// Reads the stamps of the probe frames among `pkts[..n]` (a copy of their first bytes).
    ///
    /// # Safety
    /// `pkts` holds `n` valid mbufs that the calling thread may read.
    #[inline]
    pub unsafe fn of(pkts: *const *mut sys::rte_mbuf, n: usize) -> Stamps {
        let mut s = Stamps { at: [0; MAX], n: 0 };
        for i in 0..n.min(MAX) {
            // SAFETY: the caller's contract.
            let m = unsafe { *pkts.add(i) };
            // SAFETY: a valid mbuf; its first segment holds `data_len` bytes at data_off.
            let stamp = unsafe {
                if ((*m).data_len as usize) < frame::HEADER {
                    continue;
                }
                let mut bytes = [0u8; frame::HEADER];
                let data = ((*m).buf_addr as *const u8).add((*m).data_off as usize);
                std::ptr::copy_nonoverlapping(data, bytes.as_mut_ptr(), frame::HEADER);
                frame::window_stamp(&bytes)
            };
            if let Some(t) = stamp {
                s.at[s.n] = t;
                s.n += 1;
            }
        }
        s
    }

    /// These frames reached `stage` now.
    #[inline]
    pub fn record(&self, stage: Stage) {
        if self.n == 0 {
            return;
        }
        let now = tsc();
        for &t in &self.at[..self.n] {
            STAGES.record(stage, t, now);
        }
    }
}

/// rx bursts so far, and the TSC at the first: the mean time between two polls.
static RX_POLLS: AtomicU64 = AtomicU64::new(0);
static FIRST_POLL: AtomicU64 = AtomicU64::new(0);

/// Counts an rx burst (the polling thread only: a plain load and store).
#[inline]
pub fn count_poll() {
    let n = RX_POLLS.load(Relaxed);
    if n == 0 {
        FIRST_POLL.store(tsc(), Relaxed);
    }
    RX_POLLS.store(n + 1, Relaxed);
}

/// Prints what was recorded (if anything) on stdout, next to the application's output.
pub fn report() {
    if STAGES.count(Stage::GuestRx) == 0 {
        return;
    }
    // SAFETY: reads EAL's calibrated TSC frequency.
    let hz = unsafe { sys::rte_get_tsc_hz() } as f64;
    let polls = RX_POLLS.load(Relaxed).max(1);
    let poll_ns = tsc().wrapping_sub(FIRST_POLL.load(Relaxed)) as f64 * 1e9 / hz / polls as f64;
    let _ = writeln!(std::io::stdout(), "{} rx_polls={polls} rx_poll_ns={poll_ns:.0}", STAGES.report("guest", hz));
}
