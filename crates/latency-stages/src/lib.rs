//! Where a latency probe frame's round trip goes.
//!
//! * [`frame`]: the layout of the probe's frames (crates/bench's `Probe` writes them, a
//!   macswap guest leaves everything but the MAC addresses alone).
//! * [`Stages`]: per-stage histograms of the time since the probe stamped a frame, kept
//!   by whoever handles the frame on its way (the proxy's data loop, the guest's PMD, the
//!   probe). A diagnostic build records them (feature `stage-stamps` of proxy-app and
//!   net_shm); an ordinary build compiles no call to them. Each process keeps its own
//!   [`STAGES`] and prints it as one `STAGES ...` line (docs/benchmarks.md, "Where the
//!   round trip goes").
//!
//! Only frames the probe marked as sent inside its measuring window
//! ([`frame::IN_WINDOW`]) are recorded, so every stage counts the frames the probe's
//! own percentiles count. Times are TSC differences: stages on the other CPU rely on
//! the two CPUs' TSCs agreeing (KVM keeps them in step); a difference below zero is
//! counted apart (`negative=`) rather than recorded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The probe's frame: Ethernet header, then magic, sequence number, send TSC and flags.
pub mod frame {
    /// Ethertype of probe frames: IEEE local experimental.
    pub const ETHERTYPE: u16 = 0x88b5;
    pub const MAGIC: u64 = u64::from_le_bytes(*b"DPDKLAT1");
    pub const ETHERTYPE_AT: usize = 12;
    pub const MAGIC_AT: usize = 14;
    pub const SEQ_AT: usize = 22;
    /// The TSC at which the probe sent the frame (little endian).
    pub const TSC_AT: usize = 30;
    pub const FLAGS_AT: usize = 38;
    /// Bytes of a probe frame that carry something.
    pub const HEADER: usize = 39;
    /// Flag: sent inside the probe's measuring window.
    pub const IN_WINDOW: u8 = 1;

    /// What a probe frame carries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Fields {
        pub seq: u64,
        pub tsc: u64,
        pub flags: u8,
    }

    /// The first [`HEADER`] bytes of a probe frame.
    pub fn write(dst: [u8; 6], src: [u8; 6], f: Fields) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..6].copy_from_slice(&dst);
        b[6..12].copy_from_slice(&src);
        b[ETHERTYPE_AT..ETHERTYPE_AT + 2].copy_from_slice(&ETHERTYPE.to_be_bytes());
        b[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(&MAGIC.to_le_bytes());
        b[SEQ_AT..SEQ_AT + 8].copy_from_slice(&f.seq.to_le_bytes());
        b[TSC_AT..TSC_AT + 8].copy_from_slice(&f.tsc.to_le_bytes());
        b[FLAGS_AT] = f.flags;
        b
    }

    /// The fields of a probe frame (a copy of its first bytes); None for any other frame.
    pub fn parse(b: &[u8; HEADER]) -> Option<Fields> {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        (b[ETHERTYPE_AT..ETHERTYPE_AT + 2] == ETHERTYPE.to_be_bytes() && word(MAGIC_AT) == MAGIC)
            .then(|| Fields { seq: word(SEQ_AT), tsc: word(TSC_AT), flags: b[FLAGS_AT] })
    }

    /// The send TSC of a probe frame sent inside the window; None otherwise.
    pub fn window_stamp(b: &[u8; HEADER]) -> Option<u64> {
        parse(b).filter(|f| f.flags & IN_WINDOW != 0).map(|f| f.tsc)
    }
}

/// The points of the path, in path order (probe -> proxy -> guest -> proxy -> probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// Proxy: its NIC rx burst returned the frame.
    ProxyNicRx,
    /// Proxy: the frame is published on the guest's rx ring.
    ProxyDelivered,
    /// Guest PMD: its rx burst returns the frame to the application.
    GuestRx,
    /// Guest PMD: the application's tx burst hands the frame back.
    GuestTx,
    /// Guest PMD: the tx burst published it on the tx ring.
    GuestTxPublished,
    /// Proxy: the frame is taken off the guest's tx ring and validated.
    ProxyTxTaken,
    /// Proxy: its NIC tx burst returned.
    ProxyNicTx,
    /// Probe: its rx burst returned the frame.
    ProbeRx,
}

pub const STAGE_COUNT: usize = 8;

impl Stage {
    pub const ALL: [Stage; STAGE_COUNT] = [
        Stage::ProxyNicRx,
        Stage::ProxyDelivered,
        Stage::GuestRx,
        Stage::GuestTx,
        Stage::GuestTxPublished,
        Stage::ProxyTxTaken,
        Stage::ProxyNicTx,
        Stage::ProbeRx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::ProxyNicRx => "proxy_nic_rx",
            Stage::ProxyDelivered => "proxy_delivered",
            Stage::GuestRx => "guest_rx",
            Stage::GuestTx => "guest_tx",
            Stage::GuestTxPublished => "guest_tx_published",
            Stage::ProxyTxTaken => "proxy_tx_taken",
            Stage::ProxyNicTx => "proxy_nic_tx",
            Stage::ProbeRx => "probe_rx",
        }
    }
}

/// Log-linear buckets of integer values (this crate's stage histograms and the
/// benchmark's, `bench::hist`): values below 2^`sub_bits` each have their own bucket;
/// above, each power of two up to 2^`max_exp` is split into 2^`sub_bits` equal parts
/// (a relative precision of 2^-`sub_bits`), and larger values share the last bucket.
/// Finding a bucket is a few integer operations: fit for a polling loop.
#[derive(Clone, Copy, Debug)]
pub struct LogLinear {
    sub_bits: u32,
    max_exp: u32,
}

impl LogLinear {
    pub const fn new(sub_bits: u32, max_exp: u32) -> LogLinear {
        assert!(sub_bits >= 1 && sub_bits < max_exp && max_exp < 63);
        LogLinear { sub_bits, max_exp }
    }

    const fn sub(self) -> u64 {
        1 << self.sub_bits
    }

    /// How many buckets there are.
    pub const fn buckets(self) -> usize {
        ((self.max_exp - self.sub_bits + 2) as usize) * self.sub() as usize
    }

    /// The bucket of `v`.
    #[inline]
    pub fn index(self, v: u64) -> usize {
        let sub = self.sub();
        if v < sub {
            return v as usize;
        }
        let exp = (63 - v.leading_zeros()).min(self.max_exp); // >= sub_bits
        let v = v.min((1u64 << (self.max_exp + 1)) - 1);
        let mantissa = (v >> (exp - self.sub_bits)) & (sub - 1);
        ((exp - self.sub_bits + 1) as u64 * sub + mantissa) as usize
    }

    /// The smallest value of bucket `i` and the bucket's width.
    pub fn bounds(self, i: usize) -> (u64, u64) {
        let (i, sub) = (i as u64, self.sub());
        if i < sub {
            return (i, 1);
        }
        let exp = (i / sub) as u32 + self.sub_bits - 1;
        let width = 1u64 << (exp - self.sub_bits);
        ((sub + i % sub) * width, width)
    }
}

/// The stages' buckets: 2^5 per power of two (3 % precision), values up to 2^26 cycles
/// (tens of milliseconds) kept apart.
const BUCKETING: LogLinear = LogLinear::new(5, 26);
const BUCKETS: usize = BUCKETING.buckets();

/// One stage's histogram of cycles. Written by one thread (a plain load and store per
/// counter: no locked instruction), read when the report is printed.
struct Hist {
    counts: [AtomicU64; BUCKETS],
    total: AtomicU64,
    negative: AtomicU64,
    min: AtomicU64,
}

#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

impl Hist {
    const fn new() -> Hist {
        Hist {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            total: AtomicU64::new(0),
            negative: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
        }
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total.load(Relaxed);
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                let (low, width) = BUCKETING.bounds(i);
                return Some((low + width / 2).max(self.min.load(Relaxed)));
            }
        }
        None
    }
}

/// One histogram per [`Stage`], of the cycles from the probe's stamp to that stage.
pub struct Stages {
    hists: [Hist; STAGE_COUNT],
}

/// This process's stages (each binary and each plugin has its own).
pub static STAGES: Stages = Stages::new();

impl Default for Stages {
    fn default() -> Self {
        Stages::new()
    }
}

impl Stages {
    pub const fn new() -> Stages {
        Stages { hists: [const { Hist::new() }; STAGE_COUNT] }
    }

    /// Records that a frame stamped at `stamp` reached `stage` at `now` (TSC values).
    /// One thread per process records (the polling thread).
    #[inline]
    pub fn record(&self, stage: Stage, stamp: u64, now: u64) {
        let h = &self.hists[stage as usize];
        let Some(v) = now.checked_sub(stamp) else {
            bump(&h.negative);
            return;
        };
        bump(&h.counts[BUCKETING.index(v)]);
        bump(&h.total);
        if v < h.min.load(Relaxed) {
            h.min.store(v, Relaxed);
        }
    }

    /// Frames recorded at `stage`.
    pub fn count(&self, stage: Stage) -> u64 {
        self.hists[stage as usize].total.load(Relaxed)
    }

    /// The `q` quantile of `stage` in cycles (the middle of its bucket).
    pub fn quantile(&self, stage: Stage, q: f64) -> Option<u64> {
        self.hists[stage as usize].quantile(q)
    }

    /// `STAGES who=WHO stage=n:N,min:NS,p10:NS,p50:NS,p90:NS,neg:N ...` for the stages
    /// that recorded anything, times in ns since the probe's stamp.
    pub fn report(&self, who: &str, tsc_hz: f64) -> String {
        let ns = |c: Option<u64>| c.map_or("-".to_string(), |c| format!("{:.0}", c as f64 * 1e9 / tsc_hz));
        let mut line = format!("STAGES who={who}");
        for stage in Stage::ALL {
            let h = &self.hists[stage as usize];
            let n = h.total.load(Relaxed);
            let neg = h.negative.load(Relaxed);
            if n == 0 && neg == 0 {
                continue;
            }
            let min = (n > 0).then(|| h.min.load(Relaxed));
            let _ = write!(
                line,
                " {}=n:{n},min:{},p10:{},p50:{},p90:{},neg:{neg}",
                stage.name(),
                ns(min),
                ns(h.quantile(0.1)),
                ns(h.quantile(0.5)),
                ns(h.quantile(0.9)),
            );
        }
        line
    }
}

/// The time stamp counter.
#[inline]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_window_flag() {
        let f = frame::Fields { seq: 7, tsc: 123_456, flags: frame::IN_WINDOW };
        let b = frame::write([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], f);
        assert_eq!(frame::parse(&b), Some(f));
        assert_eq!(frame::window_stamp(&b), Some(123_456));
        let outside = frame::write([0; 6], [0; 6], frame::Fields { flags: 0, ..f });
        assert_eq!(frame::window_stamp(&outside), None);
        let mut other = b;
        other[frame::MAGIC_AT] ^= 1;
        assert_eq!(frame::parse(&other), None);
        other = b;
        other[frame::ETHERTYPE_AT] = 0x08;
        assert_eq!(frame::parse(&other), None);
    }

    #[test]
    fn buckets_hold_their_values_in_order_within_their_precision() {
        // This crate's buckets and the benchmark's (bench::hist).
        for (sub_bits, max_exp) in [(5, 26), (7, 40)] {
            let b = LogLinear::new(sub_bits, max_exp);
            let mut last = 0;
            for v in (0..100_000u64).chain([1 << 20, (1 << 20) + 12345, (1 << max_exp) + 5, 1 << 39, u64::MAX / 3]) {
                let i = b.index(v);
                assert!(i < b.buckets(), "{v}");
                assert!(i >= last || v > 100_000, "index not monotonic at {v}");
                last = i;
                let (low, width) = b.bounds(i);
                if v < 1 << (max_exp + 1) {
                    assert!(low <= v && v < low + width, "{v} not in [{low}, {})", low + width);
                    assert!(width == 1 || width << sub_bits <= low, "bucket of {v} too wide: {width}");
                }
            }
        }
    }

    #[test]
    fn stages_report_quantiles_and_negatives() {
        let s = Stages::new();
        for v in 1..=1000u64 {
            s.record(Stage::GuestRx, 10_000, 10_000 + v * 10);
        }
        s.record(Stage::GuestRx, 10_000, 9_000);
        assert_eq!(s.count(Stage::GuestRx), 1000);
        let p50 = s.quantile(Stage::GuestRx, 0.5).unwrap() as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "{p50}");
        assert_eq!(s.count(Stage::ProxyNicRx), 0);
        // 1 GHz: cycles are ns.
        let line = s.report("guest", 1e9);
        assert!(line.starts_with("STAGES who=guest guest_rx=n:1000,min:10,p10:"), "{line}");
        assert!(line.ends_with(",neg:1"), "{line}");
        assert!(!line.contains("proxy_nic_rx"), "{line}");
    }
}
