//! Hybrid waiting: poll the rx ring for a short, adaptive time, then sleep on the rx
//! wake-up ([`Guest::wait_rx_hybrid`], and `AsyncGuest`, which waits this way by
//! default).
//!
//! A wake-up costs the proxy a datagram and the guest a scheduler wake-up (tens of
//! microseconds on a VM); polling costs a CPU. Spinning a little before sleeping pays
//! off when the next packet comes soon after the ring ran dry, and is waste otherwise.
//! [`AdaptiveSpin`] decides how long to spin from what the last waits saw:
//!
//! * the budget is the gap between packets (learnt from waits caught spinning one
//!   after the other: the time between their ends), a quarter more and 1 µs for
//!   jitter, at most [`SpinPolicy::max_spin`]; with packets at a
//!   steady rate the next one comes within a gap of any moment;
//! * spinning is affordable while the share of recent time spent spinning is at most
//!   [`SpinPolicy::max_share_percent`]; above it the guest sleeps until the sleeps
//!   have brought the share back. So with a steady gap shorter than `max_spin` (100
//!   kpps: a packet every 10 µs) the guest spins through most gaps and sleeps through
//!   some: the share bounds the CPU, and most packets find the guest spinning;
//! * when the gap is unknown (no two waits in a row caught yet), a wait after a
//!   short sleep tries `max_spin`; a try that ends asleep all the same was waste, the
//!   gap is forgotten, and the next tries come after 1, 2, 4 ... up to
//!   [`MAX_BACKOFF`] waits without spinning;
//! * after a long sleep (longer than `max_spin`), or when the share is used up, the
//!   budget is 0: the guest sleeps at once, and an idle guest uses nothing.
//!
//! Why spinning and not a timed sleep until just before the next packet: on the VM
//! this was written on (KVM, a TSC-deadline timer), arming a timer a few microseconds
//! ahead costs about 20 µs of CPU (the timer's reprogramming traps to the hypervisor)
//! and a timed sleep ends 14–30 µs after its deadline: longer than a 10 µs gap, and
//! dearer than spinning through it (docs/benchmarks.md, "Rust guest").
//!
//! A wait that ended in a sleep only tells how long the packet *and the wake-up* took,
//! so the budget errs on the side of sleeping. Time is given to [`AdaptiveSpin`] as
//! nanoseconds from any fixed origin: it reads no clock, which keeps it a pure function
//! of what it is told (and testable as such).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Error, Guest};

/// The default [`SpinPolicy::max_spin`].
pub const DEFAULT_MAX_SPIN: Duration = Duration::from_micros(50);
/// The default [`SpinPolicy::max_share_percent`]: spinning takes at most this much
/// of a CPU (over the last few milliseconds); the work and the sleeps come on top.
/// With less, fewer packets of a steady 100 kpps find the guest spinning (a sleep on
/// a VM outlasts a 10 µs gap): docs/benchmarks.md measured a round-trip p50 of 10 µs
/// at 30 %, 5.6 µs at 40 % and 1.65 µs at 50 %, each at 76–81 % of a core in all on
/// a busy machine, where each sleep costs more than spinning through a gap.
pub const DEFAULT_MAX_SHARE_PERCENT: u32 = 50;
/// The time over which the spin share is averaged: older time counts half once this
/// much has passed.
const SHARE_WINDOW_NS: u64 = 2_000_000;
/// The most waits without spinning after tries that ended asleep.
pub const MAX_BACKOFF: u32 = 64;
/// Room for jitter in a spin budget: the next gap may be a little longer than the
/// last ones.
const SPIN_JITTER_NS: u64 = 1_000;
/// Ring checks between two clock reads while spinning.
const CHECKS_PER_CLOCK_READ: u32 = 16;

/// How much [`AdaptiveSpin`] may spin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpinPolicy {
    /// The longest spin before sleeping.
    pub max_spin: Duration,
    /// The largest share of time spent spinning, in percent (0: never spin).
    pub max_share_percent: u32,
}

impl SpinPolicy {
    /// Never spin: sleep as soon as the ring is empty.
    pub const SLEEP_AT_ONCE: SpinPolicy = SpinPolicy { max_spin: Duration::ZERO, max_share_percent: 0 };
}

impl Default for SpinPolicy {
    fn default() -> SpinPolicy {
        SpinPolicy { max_spin: DEFAULT_MAX_SPIN, max_share_percent: DEFAULT_MAX_SHARE_PERCENT }
    }
}

/// Where a wait is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Spinning since `start`.
    Spinning { start: u64 },
    /// Sleeping since `slept_at`, after spinning since `start`.
    Sleeping { start: u64, slept_at: u64 },
}

/// The adaptive spin budget of hybrid waiting (see the module docs). Tell it when a
/// wait begins ([`begin`](Self::begin), which returns the budget), and how it ended:
/// [`caught`](Self::caught) (the ring had descriptors within the budget), or
/// [`sleeping`](Self::sleeping) then [`woken`](Self::woken). A sleep that never ends
/// (the waiting future was cancelled) is settled at the next `begin` as a long one.
#[derive(Clone, Debug)]
pub struct AdaptiveSpin {
    policy: SpinPolicy,
    budget_ns: u64,
    phase: Phase,
    /// When the previous wait ended (None before the first).
    last_end: Option<u64>,
    /// Time spent spinning and time passed, over the recent window.
    spun_ns: u64,
    passed_ns: u64,
    /// Waits that ended while spinning, and in a sleep; of these, the ones that had
    /// spun first.
    caught: u64,
    slept: u64,
    spun_then_slept: u64,
    /// Waits without spinning after the last try that ended asleep, and how many are
    /// left before the next try.
    backoff: u32,
    skip: u32,
    /// The gap between packets, as the waits caught spinning saw it lately (a moving
    /// average; 0: unknown).
    gap_ns: u64,
    /// Whether the last wait was caught spinning.
    caught_last: bool,
}

impl AdaptiveSpin {
    /// No spinning until a wait shows that it would pay.
    pub fn new(policy: SpinPolicy) -> AdaptiveSpin {
        AdaptiveSpin {
            policy,
            budget_ns: 0,
            phase: Phase::Idle,
            last_end: None,
            spun_ns: 0,
            passed_ns: 0,
            caught: 0,
            slept: 0,
            spun_then_slept: 0,
            backoff: 0,
            skip: 0,
            gap_ns: 0,
            caught_last: false,
        }
    }

    /// The policy.
    pub fn policy(&self) -> SpinPolicy {
        self.policy
    }

    /// The spin budget of the next wait.
    pub fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns)
    }

    /// Waits that ended while spinning.
    pub fn caught_spinning(&self) -> u64 {
        self.caught
    }

    /// Waits that ended in a sleep.
    pub fn slept(&self) -> u64 {
        self.slept
    }

    /// Waits that spun and ended in a sleep all the same (the spin was waste).
    pub fn spun_then_slept(&self) -> u64 {
        self.spun_then_slept
    }

    /// A wait begins at `now`: returns how long to spin before sleeping.
    pub fn begin(&mut self, now: u64) -> Duration {
        if let Phase::Sleeping { .. } = self.phase {
            // The last sleep was cancelled: it lasted at least until now.
            self.woken(now);
        }
        self.phase = Phase::Spinning { start: now };
        self.budget()
    }

    /// The ring had descriptors at `now`, while spinning.
    pub fn caught(&mut self, now: u64) {
        let Phase::Spinning { start } = self.phase else { return };
        self.caught += 1;
        self.end(start, now, now, false);
    }

    /// The spin ended at `now` without descriptors: the guest goes to sleep.
    pub fn sleeping(&mut self, now: u64) {
        if let Phase::Spinning { start } = self.phase {
            self.phase = Phase::Sleeping { start, slept_at: now };
        }
    }

    /// The sleep ended at `now` (descriptors, a timeout, a signal).
    pub fn woken(&mut self, now: u64) {
        let Phase::Sleeping { start, slept_at } = self.phase else { return };
        self.slept += 1;
        self.end(start, slept_at, now, true);
    }

    /// The share of time spent spinning lately, in percent.
    pub fn spin_share_percent(&self) -> u32 {
        self.spun_ns.saturating_mul(100).checked_div(self.passed_ns).unwrap_or(0) as u32
    }

    /// A wait that began at `start`, spun until `spin_end` and ended at `end`, asleep
    /// or not.
    fn end(&mut self, start: u64, spin_end: u64, end: u64, asleep: bool) {
        self.phase = Phase::Idle;
        let waited = end.saturating_sub(start);
        let spun = spin_end.saturating_sub(start);
        // The cycle: from the end of the last wait (work, then this wait) to now.
        let cycle = self.last_end.map_or(waited, |last| end.saturating_sub(last)).max(waited);
        self.last_end = Some(end);
        self.spun_ns += spun;
        self.passed_ns += cycle;
        while self.passed_ns > SHARE_WINDOW_NS {
            self.spun_ns /= 2;
            self.passed_ns /= 2;
        }
        let max_spin = self.policy.max_spin.as_nanos() as u64;
        // Spinning is affordable while the recent share of spinning is within the
        // policy's; when it is not, the guest sleeps until sleeps have brought the share
        // back under it. With packets at a steady rate whose gap is within `max_spin`
        // the guest thus spins through most gaps and sleeps through some: the share is
        // what bounds the CPU, not each gap.
        let share_ok = self.policy.max_share_percent > 0 && self.spin_share_percent() <= self.policy.max_share_percent;
        // With packets at a steady rate, the next one comes within a gap of any moment:
        // the budget is the gap between packets, with room for jitter (the most when the
        // gap is unknown).
        let budget = |gap: u64| match gap {
            _ if !share_ok => 0,
            0 => max_spin,
            gap => (gap + gap / 4 + SPIN_JITTER_NS).min(max_spin),
        };
        let caught_before = std::mem::replace(&mut self.caught_last, !asleep);
        // Whether this wait had a budget: a wait without one checks the ring once,
        // which takes time too, and is no try.
        let tried = self.budget_ns > 0;
        self.budget_ns = if !asleep {
            // Caught: the packet came `waited` into the wait. After a wait that was
            // caught too, the cycle is the gap between two packets; after a sleep,
            // the wait is a part of a gap only, which tells that a known gap is at
            // least that long, and not what an unknown one is.
            self.backoff = 0;
            self.skip = 0;
            self.gap_ns = match (caught_before, self.gap_ns) {
                (true, 0) => cycle,
                (true, gap) => (gap * 3 + cycle) / 4,
                (false, 0) => 0,
                (false, gap) => gap.max(waited),
            };
            budget(self.gap_ns)
        } else if tried {
            // Tried, and slept all the same: back off, and forget the gap.
            self.spun_then_slept += 1;
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
            self.gap_ns = 0;
            0
        } else if self.skip > 0 {
            self.skip -= 1;
            0
        } else if waited <= max_spin {
            // A short sleep (or one for the share's sake): spin for the next gap.
            budget(self.gap_ns)
        } else {
            // A long sleep: the packets stopped, or come too far apart to spin for.
            self.gap_ns = 0;
            0
        };
    }
}

impl Default for AdaptiveSpin {
    fn default() -> AdaptiveSpin {
        AdaptiveSpin::new(SpinPolicy::default())
    }
}

/// Nanoseconds on the monotonic clock since a fixed origin (the first call).
pub(crate) fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Guest {
    /// Polls the rx ring for up to `budget` (at least once): true as soon as it has
    /// descriptors.
    pub(crate) fn spin_rx(&mut self, budget: Duration) -> Result<bool, Error> {
        if self.rx_ready()? {
            return Ok(true);
        }
        if budget.is_zero() {
            return Ok(false);
        }
        let start = Instant::now();
        loop {
            for _ in 0..CHECKS_PER_CLOCK_READ {
                if self.rx_ready()? {
                    return Ok(true);
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= budget {
                return Ok(false);
            }
        }
    }

    /// [`wait_rx`](Self::wait_rx), after polling the ring for the budget `spin` gives
    /// (see the module docs of hybrid waiting): returns `Ok(true)` when the ring has
    /// descriptors, `Ok(false)` when `timeout` (counted from the call) passed or a
    /// signal came first. Errors as [`wait_rx`](Self::wait_rx).
    pub fn wait_rx_hybrid(&mut self, spin: &mut AdaptiveSpin, timeout: Option<Duration>) -> Result<bool, Error> {
        let start = now_ns();
        let budget = spin.begin(start);
        if self.spin_rx(budget)? {
            spin.caught(now_ns());
            return Ok(true);
        }
        let slept_at = now_ns();
        spin.sleeping(slept_at);
        let left = timeout.map(|t| t.saturating_sub(Duration::from_nanos(slept_at - start)));
        let ready = self.wait_rx(left);
        spin.woken(now_ns());
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn policy(max_spin_us: u64, share: u32) -> SpinPolicy {
        SpinPolicy { max_spin: Duration::from_micros(max_spin_us), max_share_percent: share }
    }

    /// What a look at the ring takes: a wait with no budget spins this long.
    const CHECK: u64 = 50;

    /// Runs one wait that starts at `t`, spins its budget, and sees the ring ready
    /// `arrives` ns after it began (woken `wake` ns after that if asleep by then).
    /// Returns when it ended and whether it was caught spinning.
    fn wait(s: &mut AdaptiveSpin, t: u64, arrives: u64, wake: u64) -> (u64, bool) {
        let budget = s.begin(t).as_nanos() as u64;
        if arrives <= budget {
            s.caught(t + arrives);
            (t + arrives, true)
        } else {
            s.sleeping(t + budget + CHECK);
            s.woken(t + arrives + wake);
            (t + arrives + wake, false)
        }
    }

    #[test]
    fn starts_without_spinning() {
        let mut s = AdaptiveSpin::default();
        assert_eq!(s.budget(), Duration::ZERO);
        assert_eq!(s.begin(0), Duration::ZERO);
    }

    #[test]
    fn packets_that_follow_closely_are_caught_spinning() {
        // 4 µs of work, then the next packet 3 µs into the wait: cheap to spin for.
        let mut s = AdaptiveSpin::new(policy(50, 60));
        let (mut t, mut caught) = (0, 0);
        for _ in 0..50 {
            let (end, hit) = wait(&mut s, t, 3 * US, 10 * US);
            caught += hit as u32;
            t = end + 4 * US;
        }
        assert!(caught >= 45, "caught {caught} of 50");
        // The gap between packets is 7 µs (3 of waiting, 4 of work): the budget is that,
        // a quarter more and the jitter's room.
        assert_eq!(s.budget().as_nanos() as u64, 7 * US + 7 * US / 4 + SPIN_JITTER_NS);
        assert!(s.spin_share_percent() <= 60);
    }

    #[test]
    fn an_idle_queue_sleeps_at_once() {
        let mut s = AdaptiveSpin::default();
        let mut t = 0;
        for _ in 0..10 {
            // A packet every 100 ms.
            let (end, hit) = wait(&mut s, t, 100_000 * US, 10 * US);
            assert!(!hit);
            t = end + US;
        }
        assert_eq!(s.budget(), Duration::ZERO);
        assert_eq!(s.slept(), 10);
    }

    /// Packets every `gap` ns, `work` ns to forward what has come, a wake-up `wake` ns
    /// after the packet that ends a sleep: runs `n` packets through hybrid waits
    /// (spinning the whole budget when nothing comes) and returns the share of packets
    /// that waited at most 2 µs and the share of the time spent spinning.
    fn steady(s: &mut AdaptiveSpin, gap: u64, work: u64, wake: u64, n: u64) -> (f64, f64) {
        let (mut t, mut next, mut prompt, mut spun) = (0u64, 0u64, 0u64, 0u64);
        while next < n {
            let arrival = next * gap;
            if arrival > t {
                // The ring is empty: a wait.
                let budget = s.begin(t).as_nanos() as u64;
                if arrival <= t + budget {
                    s.caught(arrival);
                    spun += arrival - t;
                    t = arrival;
                } else {
                    s.sleeping(t + budget + CHECK);
                    spun += budget + CHECK;
                    t = arrival + wake;
                    s.woken(t);
                }
            }
            // Forward everything that has come by now, in one burst.
            while next < n && next * gap <= t {
                prompt += (t - next * gap <= 2 * US) as u64;
                next += 1;
            }
            t += work;
        }
        (prompt as f64 / n as f64, spun as f64 / t as f64)
    }

    #[test]
    fn a_steady_gap_is_spun_through_within_the_share() {
        // 100 kpps, 1 µs of work, a wake-up 15 µs late: spinning through every gap
        // would take 90 % of the CPU; with a 40 % share the guest spins through some
        // gaps and sleeps through others, and most packets find it spinning.
        let mut s = AdaptiveSpin::new(policy(50, 40));
        let (prompt, share) = steady(&mut s, 10 * US, US, 15 * US, 20_000);
        assert!(prompt > 0.5, "{:.0} % of the packets waited at most 2 µs", prompt * 100.0);
        assert!(share <= 0.42, "spun {:.0} % of the time", share * 100.0);
        assert!(s.slept() > 0 && s.caught_spinning() > s.slept(), "{} caught, {} slept", s.caught_spinning(), s.slept());
    }

    #[test]
    fn the_share_bounds_the_spinning_at_any_steady_rate() {
        for gap_us in [3, 10, 25, 45, 60, 200] {
            let mut s = AdaptiveSpin::new(policy(50, 30));
            let (_, share) = steady(&mut s, gap_us * US, US, 15 * US, 10_000);
            assert!(share <= 0.32, "gap {gap_us} µs: spun {:.0} % of the time", share * 100.0);
        }
    }

    #[test]
    fn gaps_longer_than_max_spin_are_slept_through() {
        // A packet every 100 µs: beyond the 50 µs spin, the guest sleeps every time.
        let mut s = AdaptiveSpin::new(policy(50, 100));
        let (prompt, share) = steady(&mut s, 100 * US, US, 15 * US, 1_000);
        assert!(prompt < 0.01 && share < 0.01, "prompt {prompt}, share {share}");
    }

    #[test]
    fn the_budget_never_exceeds_max_spin() {
        let mut s = AdaptiveSpin::new(policy(5, 100));
        let mut t = 0;
        for _ in 0..20 {
            let (end, _) = wait(&mut s, t, 8 * US, 0);
            t = end + 100 * US;
            assert!(s.budget() <= Duration::from_micros(5));
        }
    }

    #[test]
    fn sleep_at_once_never_spins() {
        let mut s = AdaptiveSpin::new(SpinPolicy::SLEEP_AT_ONCE);
        let mut t = 0;
        for _ in 0..20 {
            let (end, hit) = wait(&mut s, t, 100, 0);
            assert!(!hit);
            assert_eq!(s.budget(), Duration::ZERO);
            t = end + 100;
        }
    }

    #[test]
    fn a_cancelled_sleep_is_settled_as_a_long_one() {
        let mut s = AdaptiveSpin::new(policy(50, 60));
        let mut t = 0;
        for _ in 0..10 {
            let (end, _) = wait(&mut s, t, 2 * US, 0);
            t = end + 4 * US;
        }
        assert!(s.budget() > Duration::ZERO);
        let slept = s.slept();
        // Spins, sleeps, and the wait is dropped; the next one begins 200 ms later.
        let b = s.begin(t).as_nanos() as u64;
        s.sleeping(t + b);
        assert_eq!(s.begin(t + 200_000 * US), Duration::ZERO, "the long sleep ends the spinning");
        assert_eq!(s.slept(), slept + 1);
    }

    #[test]
    fn out_of_order_calls_change_nothing() {
        let mut s = AdaptiveSpin::default();
        s.caught(5);
        s.woken(7);
        s.sleeping(9);
        assert_eq!((s.caught_spinning(), s.slept(), s.budget()), (0, 0, Duration::ZERO));
    }
}
