//! The latency probe: owns one ethdev port and, polled from a loop, sends packets at a
//! fixed rate, each carrying a sequence number and the TSC at which it was sent, and
//! computes the round-trip times of those that come back (a macswap guest swaps the
//! MAC addresses and leaves the payload alone).
//!
//! Timing: the clock starts at the first reply (the guest may attach long after the
//! probe starts). Packets sent during the next `warmup` seconds are not counted; those
//! sent during the following `seconds` form the window; replies are collected for
//! `grace` seconds more, then the probe is done and prints one `LATENCY ...` line.
//! Open loop: packets are offered at the rate whatever comes back, and a packet the
//! port does not take counts as offered and not sent (`tx_full`).

use std::fmt;
use std::time::Duration;

use dpdk::{sys, Mbuf, MbufBurst, PktPool, Port, RxQueue, TxQueue};

use latency_stages::{frame, Stage, STAGES};

use crate::hist::Histogram;

pub const BURST: usize = 32;
/// The most packets the probe catches up with after it was held up (descheduled); the
/// rest of the backlog is skipped (counted in `behind`), not sent as one huge burst.
const MAX_BACKLOG: u64 = 1024;
const POOL_MBUFS: u32 = 8191;
const DESC: u16 = 1024;

/// What to send and for how long. Text form (proxy `--bench-latency`, the probe
/// binary): `RATE[,size=BYTES][,warmup=S][,seconds=S][,grace=S]`, RATE in packets per
/// second with an optional k/M suffix, or `max` (as fast as the pool allows).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Packets per second offered; 0 means as fast as possible.
    pub rate: f64,
    pub size: u16,
    pub warmup: Duration,
    pub seconds: Duration,
    pub grace: Duration,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, String> {
        let mut parts = text.split(',');
        let rate_text = parts.next().unwrap_or("").trim();
        let rate = parse_rate(rate_text).ok_or_else(|| format!("'{rate_text}': expected a rate such as 100k, 2.5M or max"))?;
        let mut spec = Spec {
            rate,
            size: 64,
            warmup: Duration::from_secs(2),
            seconds: Duration::from_secs(10),
            grace: Duration::from_millis(500),
        };
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("'{part}': expected key=value"))?;
            let secs = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s < 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("{key}: expected seconds, got '{value}'"))
            };
            match key {
                "size" => {
                    spec.size = value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (60..=2000).contains(s))
                        .ok_or_else(|| format!("size: expected 60..2000 bytes, got '{value}'"))?
                }
                "warmup" => spec.warmup = secs()?,
                "seconds" => spec.seconds = secs()?,
                "grace" => spec.grace = secs()?,
                _ => return Err(format!("unknown key '{key}' (size, warmup, seconds, grace)")),
            }
        }
        if spec.seconds.is_zero() {
            return Err("seconds must be more than 0".into());
        }
        Ok(spec)
    }
}

fn parse_rate(text: &str) -> Option<f64> {
    if text == "max" {
        return Some(0.0);
    }
    let (digits, mult) = match text.chars().last()? {
        'k' | 'K' => (&text[..text.len() - 1], 1e3),
        'm' | 'M' => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let rate = digits.parse::<f64>().ok()? * mult;
    (rate.is_finite() && rate >= 1.0).then_some(rate)
}

#[inline]
fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: reads the cycle counter.
        unsafe { sys::rte_rdtsc() }
    }
}

/// The counters and percentiles of one run.
pub struct Report {
    pub spec: Spec,
    pub complete: bool,
    /// Packets the probe sent whose send time fell in the window.
    pub sent: u64,
    /// Of those, how many came back before the probe finished.
    pub received: u64,
    /// Offered in the window but not taken by the port.
    pub tx_full: u64,
    /// Due in the window but skipped because the probe fell behind: its thread did not
    /// run (a run with many of these measured the scheduler), or its loop was slower
    /// than the rate.
    pub behind: u64,
    /// Frames that were not probe frames, or were sent before/after the window.
    pub other: u64,
    /// Times the probe was polled while its window ran: the rounds of the loop that
    /// polls it (for the proxy's `--bench-latency`, the data loop's rounds).
    pub window_polls: u64,
    pub hist_ns: Histogram,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.spec.seconds.as_secs_f64();
        let lost = self.sent.saturating_sub(self.received);
        let q = |p: f64| self.hist_ns.quantile(p).map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "LATENCY complete={} rate_pps={:.0} size={} window_s={} sent={} received={} lost={} lost_pct={:.3} \
             tx_full={} behind={} other={} achieved_pps={:.0} min_ns={} p50_ns={} p90_ns={} p99_ns={} p999_ns={} \
             max_ns={} mean_ns={} round_ns={}",
            self.complete as u8,
            self.spec.rate,
            self.spec.size,
            secs,
            self.sent,
            self.received,
            lost,
            if self.sent > 0 { 100.0 * lost as f64 / self.sent as f64 } else { 0.0 },
            self.tx_full,
            self.behind,
            self.other,
            self.received as f64 / secs,
            self.hist_ns.min().map_or("-".to_string(), |v| v.to_string()),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.hist_ns.max().map_or("-".to_string(), |v| v.to_string()),
            self.hist_ns.mean().map_or("-".to_string(), |v| v.to_string()),
            // The mean time between two polls of the probe, i.e. one round of its loop.
            if self.window_polls > 0 { format!("{:.0}", secs * 1e9 / self.window_polls as f64) } else { "-".into() },
        )
    }
}

/// The probe on one port. Not `Send`: it lives and is polled on one lcore.
pub struct Probe {
    port: Port,
    // Dropped after the port is closed (see Drop).
    pool: Option<PktPool>,
    spec: Spec,
    hz: f64,
    ns_per_cycle: f64,
    src: [u8; 6],
    start: u64,
    offered: u64,
    seq: u64,
    /// TSC bounds once the first reply is in: window start, window end, finish.
    window: Option<(u64, u64, u64)>,
    sent: u64,
    received: u64,
    tx_full: u64,
    behind: u64,
    other: u64,
    window_polls: u64,
    hist: Histogram,
    done: bool,
    reported: bool,
    /// The probe's queues; None only while it drops (before the port closes).
    queues: Option<(RxQueue, TxQueue)>,
    /// The bursts of every round, kept: a fresh one per round would be zeroed each time.
    rx: MbufBurst<BURST>,
    tx: MbufBurst<BURST>,
}

impl Probe {
    /// Configures `port` (one rx and one tx queue, its own mbuf pool) and starts it.
    pub fn new(port: Port, spec: Spec) -> Result<Probe, String> {
        let err = |e: dpdk::Error| format!("probe port {} ({}): {e}", port.0, port.name());
        port.configure(1, 1, &sys::rte_eth_conf::default()).map_err(err)?;
        let (rx_desc, tx_desc) = port.adjust_desc(DESC, DESC).map_err(err)?;
        let pool = PktPool::new(
            &format!("lat_probe{}", port.0),
            POOL_MBUFS,
            256,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            port.socket_id(),
        )
        .map_err(err)?;
        port.rx_queue_setup_pool(0, rx_desc, None, &pool).map_err(err)?;
        port.tx_queue_setup(0, tx_desc).map_err(err)?;
        port.start().map_err(err)?;
        let queues = (port.rx_queue(0).map_err(err)?, port.tx_queue(0).map_err(err)?);
        let _ = port.promiscuous_enable();
        // SAFETY: reads EAL's calibrated TSC frequency.
        let hz = unsafe { sys::rte_get_tsc_hz() } as f64;
        if hz <= 0.0 {
            return Err("EAL knows no TSC frequency".into());
        }
        Ok(Probe {
            port,
            src: port.mac().unwrap_or([2, 0, 0, 0, 0, 1]),
            pool: Some(pool),
            spec,
            hz,
            ns_per_cycle: 1e9 / hz,
            start: tsc(),
            offered: 0,
            seq: 0,
            window: None,
            sent: 0,
            received: 0,
            tx_full: 0,
            behind: 0,
            other: 0,
            window_polls: 0,
            hist: Histogram::new(),
            done: false,
            reported: false,
            queues: Some(queues),
            rx: MbufBurst::new(),
            tx: MbufBurst::new(),
        })
    }

    pub fn port(&self) -> Port {
        self.port
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// One round: receive what came back, then send what is due. Prints the report on
    /// stdout once, when the probe finishes. Returns false once finished.
    #[inline]
    pub fn poll(&mut self) -> bool {
        self.poll_filling(None)
    }

    /// [`poll`](Self::poll), with the frames sent written into buffers of `fill` when
    /// it has some: the pool a NIC's receive queue fills, as the NIC's DMA would (the
    /// proxy's `--bench-latency`: the guest's pool). The probe's own pool otherwise.
    #[inline]
    pub fn poll_filling(&mut self, fill: Option<&PktPool>) -> bool {
        self.receive();
        let now = tsc();
        if self.done {
            return false;
        }
        if let Some((_, _, finish)) = self.window {
            if now >= finish {
                self.done = true;
                if !self.reported {
                    self.reported = true;
                    // Once per run, at the end: the only I/O the probe does.
                    println!("{}", self.report());
                    // A diagnostic build of the proxy (feature stage-stamps) recorded
                    // its stages in this process too: where the round trip went.
                    if STAGES.count(Stage::ProxyNicRx) > 0 {
                        println!("{}", STAGES.report("proxy", self.hz));
                    }
                }
                return false;
            }
        }
        self.send(now, fill);
        true
    }

    fn receive(&mut self) {
        let Some((rxq, _)) = &mut self.queues else { return };
        if rxq.rx_burst(&mut self.rx, BURST as u16) == 0 {
            return;
        }
        // The arrival time: after the burst returned, so its own cost is not hidden.
        let now = tsc();
        for m in self.rx.drain() {
            let fields = probe_fields(&m);
            // Freed here (for a shadow mbuf this returns the buffer to its guest).
            drop(m);
            let Some(fields) = fields else {
                self.other += 1;
                continue;
            };
            let sent_at = fields.tsc;
            let window = match self.window {
                Some(w) => w,
                None => {
                    let start = now + (self.spec.warmup.as_secs_f64() * self.hz) as u64;
                    let end = start + (self.spec.seconds.as_secs_f64() * self.hz) as u64;
                    let w = (start, end, end + (self.spec.grace.as_secs_f64() * self.hz) as u64);
                    self.window = Some(w);
                    w
                }
            };
            if sent_at >= window.0 && sent_at < window.1 && sent_at <= now {
                self.received += 1;
                self.hist.record(((now - sent_at) as f64 * self.ns_per_cycle) as u64);
                if fields.flags & frame::IN_WINDOW != 0 {
                    STAGES.record(Stage::ProbeRx, sent_at, now);
                }
            } else {
                self.other += 1;
            }
        }
    }

    fn send(&mut self, now: u64, fill: Option<&PktPool>) {
        let in_window = self.window.is_some_and(|(s, e, _)| now >= s && now < e);
        self.window_polls += in_window as u64;
        let want = if self.spec.rate > 0.0 {
            let due = ((now - self.start) as f64 / self.hz * self.spec.rate) as u64;
            let mut backlog = due.saturating_sub(self.offered);
            if backlog > MAX_BACKLOG {
                // The skipped packets were due between the last round and now: count
                // those whose due time falls in the window (a stall can straddle it).
                if let Some((s, e, _)) = self.window {
                    let index = |t: u64| (t.saturating_sub(self.start) as f64 / self.hz * self.spec.rate) as u64;
                    let (first, last) = (self.offered, self.offered + backlog - MAX_BACKLOG);
                    self.behind += last.min(index(e)).saturating_sub(first.max(index(s)));
                }
                self.offered += backlog - MAX_BACKLOG;
                backlog = MAX_BACKLOG;
            }
            backlog.min(BURST as u64) as usize
        } else {
            BURST
        };
        if want == 0 {
            return;
        }
        let (Some(pool), Some((_, txq))) = (&self.pool, &mut self.queues) else { return };
        let burst = &mut self.tx;
        // The NIC's pool first (it may have run dry: the guest holds its buffers).
        if fill.is_none_or(|f| burst.alloc_from(f, want) == 0) && burst.alloc_from(pool, want) == 0 {
            // Pool empty: everything is in flight or queued. Offered, not sent.
            self.offered += want as u64;
            if in_window {
                self.tx_full += want as u64;
            }
            return;
        }
        // The send time: as close to the burst as the frames allow.
        let stamp = tsc();
        // Frames sent inside the window say so, for the stages recorded on the way.
        let flags = if self.window.is_some_and(|(s, e, _)| stamp >= s && stamp < e) { frame::IN_WINDOW } else { 0 };
        for m in burst.as_mut_slice() {
            let frame = frame::write(PROBE_DST, self.src, frame::Fields { seq: self.seq, tsc: stamp, flags });
            self.seq += 1;
            // The data room (2 KiB) holds `size` (<= 2000) bytes.
            if m.extend(self.spec.size).is_ok() {
                m.write(0, &frame);
            }
        }
        // What the port does not take is freed.
        let took = txq.tx_burst(burst);
        burst.clear();
        self.offered += want as u64;
        if in_window {
            self.sent += took as u64;
            self.tx_full += (want - took) as u64;
        }
    }

    pub fn report(&self) -> Report {
        Report {
            spec: self.spec.clone(),
            complete: self.done,
            sent: self.sent,
            received: self.received,
            tx_full: self.tx_full,
            behind: self.behind,
            other: self.other,
            window_polls: self.window_polls,
            hist_ns: self.hist.clone(),
        }
    }
}

/// Where probe frames go (the guest swaps it with the source).
const PROBE_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The fields of a probe frame, copied out of `m` (its bytes were written by a guest:
/// copied, never referenced); None for any other frame.
fn probe_fields(m: &Mbuf) -> Option<frame::Fields> {
    let mut bytes = [0u8; frame::HEADER];
    if m.read(0, &mut bytes) < frame::HEADER {
        return None;
    }
    frame::parse(&bytes)
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Let go of the queues, stop and close the port, then drop its pool.
        self.queues.take();
        let _ = self.port.stop();
        let _ = self.port.close();
        self.pool.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_text() {
        let s = Spec::parse("100k").unwrap();
        assert_eq!((s.rate, s.size, s.warmup, s.seconds), (100_000.0, 64, Duration::from_secs(2), Duration::from_secs(10)));
        let s = Spec::parse("2.5M,size=128,warmup=1,seconds=0.5,grace=0.2").unwrap();
        assert_eq!((s.rate, s.size), (2_500_000.0, 128));
        assert_eq!((s.warmup, s.seconds, s.grace), (Duration::from_secs(1), Duration::from_millis(500), Duration::from_millis(200)));
        assert_eq!(Spec::parse("max").unwrap().rate, 0.0);
        assert!(Spec::parse("fast").unwrap_err().contains("expected a rate"));
        assert!(Spec::parse("0").is_err());
        assert!(Spec::parse("1k,size=20").unwrap_err().starts_with("size:"));
        assert!(Spec::parse("1k,seconds=0").is_err());
        assert!(Spec::parse("1k,colour=red").unwrap_err().contains("unknown key"));
    }

    #[test]
    fn report_line_has_every_field() {
        let mut hist = Histogram::new();
        for v in [1000, 2000, 3000] {
            hist.record(v);
        }
        let r = Report {
            spec: Spec::parse("1k,seconds=2").unwrap(),
            complete: true,
            sent: 4,
            received: 3,
            tx_full: 0,
            behind: 0,
            other: 1,
            window_polls: 4000,
            hist_ns: hist,
        };
        let line = r.to_string();
        assert!(line.starts_with("LATENCY complete=1 rate_pps=1000 size=64 window_s=2 sent=4 received=3 lost=1 lost_pct=25.000"), "{line}");
        // p50: the middle of the 8 ns wide bucket holding 2000.
        assert!(line.contains(" achieved_pps=2 min_ns=1000 p50_ns=2004 ") && line.ends_with(" max_ns=3000 mean_ns=2000 round_ns=500000"), "{line}");
    }
}
