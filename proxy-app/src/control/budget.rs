//! What one user may cost the control thread: a budget of its CPU time per uid.
//!
//! The control thread shares a CPU with the data loop wherever the machine has no core
//! to spare for it, so every millisecond it spends on a peer's connections (accepting
//! and refusing them, handshakes, regions, pools, port restarts for queue starts and
//! stops, descriptors to hand to the reaper) is a millisecond the data loop, and every
//! guest, loses. Each uid therefore has a token bucket of control-thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`, charged around each event of its connections: an accept,
//! a message and what answering it took). While a uid's balance is below zero its
//! connections are left out of the poll set and a listener whose last accepted peer
//! was that uid is not polled either: what the uid sends waits in its socket (and new
//! connections in the listener's backlog) until the budget has refilled; nothing is
//! refused and nothing is lost. Other users' connections, commands, `show stats` and
//! the data loop do not wait for it.
//!
//! The burst covers what well-behaved guests of one user cost at once: an attach with
//! its region, pools and queue start is 1 to 200 ms (a region of normal pages is the
//! guest's to allocate, region.rs; a hugetlb region is allocated and zeroed here, and a
//! region of 4 KiB pages was too, about 0.35 ms per MiB: 180 ms for the default 512 MiB),
//! so a guest that reconnects a few times, or 64 small guests attached one after the
//! other (scripts/bench-scale.sh), are never held back; the rate bounds what one user's
//! steady stream of requests may take from the data loop's CPU. One event can cost more
//! than the whole burst (a large hugetlb region; a 2 GiB region of 4 KiB pages took
//! about 0.7 s when the proxy allocated it): the debt
//! is capped at `MAX_WAIT` of refill, so the uid's next message (that guest's first
//! pool) waits at most that long, within a guest's answer timeout (5 s by default).
//! Freeing a departed guest's region is charged to its uid too, a step at a time, and
//! only while the uid is not in debt (release.rs).
//!
//! That bucket bounds a uid's average; an attacker that alternates (attacks for 100 ms,
//! rests for 100 ms) spends the 400 ms burst while it attacks and takes 40% of the data
//! loop's CPU in those moments. So what no legitimate guest does is charged a second
//! time, to a small "suspect" bucket of the uid (`SUSPECT_PER_SEC`, `SUSPECT_BURST`,
//! debt capped at `SUSPECT_MAX_WAIT`), and the uid is served only while both balances
//! are above zero: an event that ended in a refusal, a bad request or unwanted
//! descriptors (the socket's `refused`, `bad_requests`, `unwanted_fds` grew), a
//! session that ended without ever starting a queue (all it cost, from its accept on:
//! a guest attaches to run a queue, an attacker to make the proxy work), and the port
//! restarts and messages of a guest that stopped a running queue while it stayed
//! attached (flapping: stops of stopped queues cost it too, though they are answered). An
//! attacker thus pays at once, at 2% of a CPU, while an attach that runs a queue, and a
//! guest that reconnects to run it again, is charged to the big bucket only. The suspect
//! debt is small (250 ms of refill) so that the uid's legitimate connections (a probe, a
//! guest's retry) wait at most that long behind it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Control-thread CPU time one uid may use per second, on average (5% of a CPU).
pub(super) const CPU_PER_SEC: Duration = Duration::from_millis(50);
/// And at once, from a full budget.
pub(super) const CPU_BURST: Duration = Duration::from_millis(400);
/// The longest a uid in debt waits: its debt is capped at this much refill.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(2);
/// What a uid may spend on what no legitimate guest does (module docs), per second
/// (2% of a CPU) ...
pub(super) const SUSPECT_PER_SEC: Duration = Duration::from_millis(20);
/// ... and at once: a few refused connections or a guest that gave up in its set-up.
pub(super) const SUSPECT_BURST: Duration = Duration::from_millis(10);
/// The longest a uid in suspect debt waits.
pub(super) const SUSPECT_MAX_WAIT: Duration = Duration::from_millis(250);
/// The control loop wakes up for a uid whose budget refills no more often than this.
pub(super) const MIN_WAKEUP: Duration = Duration::from_millis(10);

struct Bucket {
    /// ns of CPU time the uid may still use; below zero, it is in debt (no further
    /// than the floor: what its connections wait for).
    balance_ns: i64,
    /// The same without the floor: what the uid really owes. A new session of the uid
    /// starts only once it owes nothing, so that one event costlier than the floor is
    /// paid in full before the uid can make another.
    owed_ns: i64,
    at: Instant,
    /// In debt since its last charge (counted once per time it went over).
    over: bool,
}

/// One token bucket per uid, all with the same rate, burst and debt cap.
struct Buckets {
    /// The debt beyond the floor is owed too (`Bucket::owed_ns`); otherwise it is
    /// forgiven.
    pays_in_full: bool,
    rate_ns_per_sec: i64,
    burst_ns: i64,
    /// The lowest balance (a negative number of ns).
    floor_ns: i64,
    map: HashMap<u32, Bucket>,
}

impl Buckets {
    fn new(per_sec: Duration, burst: Duration, max_wait: Duration, pays_in_full: bool) -> Buckets {
        let rate_ns_per_sec = per_sec.as_nanos() as i64;
        Buckets {
            pays_in_full,
            rate_ns_per_sec,
            burst_ns: burst.as_nanos() as i64,
            floor_ns: -((rate_ns_per_sec as i128 * max_wait.as_nanos() as i128 / 1_000_000_000) as i64),
            map: HashMap::new(),
        }
    }

    /// The uid's bucket, refilled up to `now`.
    fn refilled(&mut self, uid: u32, now: Instant) -> &mut Bucket {
        let (rate, burst) = (self.rate_ns_per_sec, self.burst_ns);
        let b = self.map.entry(uid).or_insert(Bucket { balance_ns: burst, owed_ns: burst, at: now, over: false });
        let elapsed = now.saturating_duration_since(b.at).as_nanos().min(u128::from(u32::MAX) * 1_000_000_000) as i64;
        // elapsed (ns) x rate (ns per s) / 1e9, without overflow for any elapsed time.
        let refill = (elapsed as i128 * rate as i128 / 1_000_000_000) as i64;
        b.balance_ns = b.balance_ns.saturating_add(refill).min(burst);
        b.owed_ns = b.owed_ns.saturating_add(refill).min(burst);
        b.at = now;
        if b.balance_ns >= 0 {
            b.over = false;
        }
        b
    }

    fn allows(&mut self, uid: u32, now: Instant) -> bool {
        !self.map.contains_key(&uid) || self.refilled(uid, now).balance_ns >= 0
    }

    fn owes_nothing(&mut self, uid: u32, now: Instant) -> bool {
        !self.map.contains_key(&uid) || self.refilled(uid, now).owed_ns >= 0
    }

    /// Charges `spent`; whether that put the uid over (it was not in debt before).
    fn charge(&mut self, uid: u32, spent: Duration, now: Instant) -> bool {
        let (floor, pays_in_full) = (self.floor_ns, self.pays_in_full);
        let b = self.refilled(uid, now);
        let spent_ns = spent.as_nanos().min(i64::MAX as u128) as i64;
        b.balance_ns = b.balance_ns.saturating_sub(spent_ns).max(floor);
        b.owed_ns = if pays_in_full { b.owed_ns.saturating_sub(spent_ns) } else { b.balance_ns };
        let went_over = b.balance_ns < 0 && !b.over;
        if went_over {
            b.over = true;
        }
        went_over
    }

    /// When each uid in debt may be served again, and when it owes nothing.
    fn refills(&self) -> impl Iterator<Item = (u32, Instant)> + '_ {
        self.map.iter().flat_map(|(&uid, b)| [b.balance_ns, b.owed_ns].map(|ns| (uid, b.at, ns))).filter(|&(_, _, ns)| ns < 0).map(
            |(uid, at, ns)| {
                let ns = (-ns) as u128 * 1_000_000_000 / self.rate_ns_per_sec.max(1) as u128;
                (uid, at + Duration::from_nanos(ns.min(u64::MAX as u128) as u64))
            },
        )
    }

    fn forget_idle(&mut self, now: Instant) {
        let uids: Vec<u32> = self.map.keys().copied().collect();
        for uid in uids {
            if self.refilled(uid, now).owed_ns >= self.burst_ns {
                self.map.remove(&uid);
            }
        }
    }
}

/// The budgets of the uids that used the control thread lately: each uid's CPU bucket
/// and its suspect bucket (module docs).
pub(super) struct UidBudgets {
    cpu: Buckets,
    suspect: Buckets,
    /// How many times a uid went over one of its budgets.
    pub(super) times_over: u64,
    /// All the CPU time charged to peers.
    pub(super) charged: Duration,
    /// What of it was charged to the suspect buckets too.
    pub(super) suspect_charged: Duration,
    /// False: every uid may always be served, and the control thread's CPU clock is
    /// not read ([`UidBudgets::clock`]): every event is charged zero.
    limits: bool,
}

impl UidBudgets {
    /// CPU buckets of `per_sec`, `burst`, `max_wait`; suspect buckets of the defaults.
    pub(super) fn new(per_sec: Duration, burst: Duration, max_wait: Duration) -> UidBudgets {
        UidBudgets::with_suspect(per_sec, burst, max_wait, (SUSPECT_PER_SEC, SUSPECT_BURST, SUSPECT_MAX_WAIT))
    }

    /// With suspect buckets of (per second, burst, longest wait).
    pub(super) fn with_suspect(
        per_sec: Duration,
        burst: Duration,
        max_wait: Duration,
        suspect: (Duration, Duration, Duration),
    ) -> UidBudgets {
        UidBudgets {
            cpu: Buckets::new(per_sec, burst, max_wait, true),
            // A suspect charge can be a whole session's cost (a 2 GiB region); the CPU
            // bucket has that paid in full, this one only puts the uid off briefly.
            suspect: Buckets::new(suspect.0, suspect.1, suspect.2, false),
            times_over: 0,
            charged: Duration::ZERO,
            suspect_charged: Duration::ZERO,
            limits: true,
        }
    }

    /// Budgets that hold nobody back (the control plane's fuzzing harness).
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(super) fn unlimited() -> UidBudgets {
        UidBudgets { limits: false, ..UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT) }
    }

    /// The control thread's CPU time, read around each event to charge it
    /// (`CLOCK_THREAD_CPUTIME_ID`, a system call that takes a lock of the scheduler);
    /// zero, unread, when the budgets limit nobody.
    pub(super) fn clock(&self) -> Duration {
        if self.limits {
            crate::os::thread_cpu_time()
        } else {
            Duration::ZERO
        }
    }

    /// Whether uid's events may be served now (it is in debt in neither bucket).
    pub(super) fn allows(&mut self, uid: u32, now: Instant) -> bool {
        !self.limits || (self.cpu.allows(uid, now) && self.suspect.allows(uid, now))
    }

    /// Whether a new session of uid may begin now (a connection accepted, its Hello
    /// read): it owes nothing in either bucket, its debt beyond the floors included.
    pub(super) fn allows_new(&mut self, uid: u32, now: Instant) -> bool {
        !self.limits || (self.cpu.owes_nothing(uid, now) && self.suspect.owes_nothing(uid, now))
    }

    /// Charges `spent` of control-thread CPU time to uid.
    pub(super) fn charge(&mut self, uid: u32, spent: Duration, now: Instant) {
        self.charged += spent;
        if self.cpu.charge(uid, spent, now) {
            self.times_over += 1;
        }
    }

    /// Charges `spent`, already charged with [`charge`](Self::charge), to uid's suspect
    /// bucket too: it went on something no legitimate guest does (module docs).
    pub(super) fn charge_suspect(&mut self, uid: u32, spent: Duration, now: Instant) {
        self.suspect_charged += spent;
        if self.suspect.charge(uid, spent, now) {
            self.times_over += 1;
        }
    }

    /// How long until the first uid in debt may be served again (`None`: nobody is).
    pub(super) fn next_refill(&self, now: Instant) -> Option<Duration> {
        if !self.limits {
            return None;
        }
        // The first of them: a uid in debt in both, or owing more than its floor, is
        // looked at again then and waits on.
        self.cpu.refills().chain(self.suspect.refills()).map(|(_, at)| at.saturating_duration_since(now)).min()
    }

    /// Uids in debt now (or owing more than their debt).
    pub(super) fn over_now(&self) -> usize {
        let mut uids: Vec<u32> = self.cpu.refills().chain(self.suspect.refills()).map(|(uid, _)| uid).collect();
        uids.sort_unstable();
        uids.dedup();
        uids.len()
    }

    /// Forgets the uids whose budgets are full again (a new bucket would be the same):
    /// the maps hold only users that were busy lately.
    pub(super) fn forget_idle(&mut self, now: Instant) {
        self.cpu.forget_idle(now);
        self.suspect.forget_idle(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_uid_has_the_whole_burst() {
        let mut b = UidBudgets::new(100 * MS, 300 * MS, Duration::from_secs(2));
        let t = Instant::now();
        assert!(b.allows(7, t));
        b.charge(7, 299 * MS, t);
        assert!(b.allows(7, t));
        assert_eq!(b.times_over, 0);
        assert_eq!(b.next_refill(t), None);
    }

    #[test]
    fn a_uid_in_debt_waits_for_the_refill_and_others_do_not() {
        let mut b = UidBudgets::new(100 * MS, 300 * MS, Duration::from_secs(2));
        let t = Instant::now();
        b.charge(7, 310 * MS, t);
        assert!(!b.allows(7, t));
        assert!(b.allows(8, t), "another uid is not held back");
        assert_eq!(b.times_over, 1);
        assert_eq!(b.over_now(), 1);
        // 10 ms of debt at 100 ms per second: 100 ms.
        let wait = b.next_refill(t).unwrap();
        assert!(wait > 99 * MS && wait <= 100 * MS, "{wait:?}");
        assert!(!b.allows(7, t + 99 * MS));
        assert!(b.allows(7, t + 100 * MS));
        // Going over again counts again.
        b.charge(7, 1 * MS, t + 100 * MS);
        assert_eq!(b.times_over, 2);
    }

    #[test]
    fn the_steady_rate_is_what_the_budget_says() {
        // A uid that is served whenever it may be, 1 ms a time, for 10 s gets the burst
        // plus 100 ms per second.
        let mut b = UidBudgets::new(100 * MS, 300 * MS, Duration::from_secs(2));
        let t0 = Instant::now();
        let mut used = Duration::ZERO;
        let mut t = t0;
        while t < t0 + Duration::from_secs(10) {
            if b.allows(1, t) {
                b.charge(1, MS, t);
                used += MS;
            }
            t += 100 * Duration::from_micros(1);
        }
        assert!(used >= 1290 * MS && used <= 1310 * MS, "{used:?}");
    }

    #[test]
    fn a_legit_guest_that_reconnects_a_few_times_is_never_held_back() {
        // Attached with the default 512 MiB region (180 ms), reconnected once a second:
        // once more with it, then four times with 64 MiB (25 ms).
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t0 = Instant::now();
        for (k, cost) in [180, 180, 25, 25, 25, 25].into_iter().enumerate() {
            let t = t0 + k as u32 * Duration::from_secs(1);
            assert!(b.allows(0, t), "attach {k} held back");
            b.charge(0, cost * MS, t);
        }
        assert_eq!(b.times_over, 0);
    }

    #[test]
    fn one_huge_event_makes_its_uid_wait_at_most_max_wait() {
        // A 2 GiB region: 700 ms at once.
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t = Instant::now();
        b.charge(3, 700 * MS, t);
        assert!(!b.allows(3, t));
        assert_eq!(b.next_refill(t), Some(MAX_WAIT));
        assert!(b.allows(3, t + MAX_WAIT));
        // Its next session waits until the whole 300 ms of debt is paid (6 s).
        assert!(!b.allows_new(3, t + MAX_WAIT));
        assert!(!b.allows_new(3, t + Duration::from_millis(5999)));
        assert!(b.allows_new(3, t + Duration::from_secs(6)));
        assert!(b.allows_new(4, t), "another uid is not held back");
    }

    #[test]
    fn a_uid_that_repeats_a_huge_event_pays_for_it_in_full() {
        // 2 GiB regions (700 ms each), one after the other, a new session as soon as
        // one may begin: over 60 s, no more than the burst and the rate.
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t0 = Instant::now();
        let (mut t, mut used) = (t0, Duration::ZERO);
        while t < t0 + Duration::from_secs(60) {
            if b.allows_new(5, t) {
                b.charge(5, 700 * MS, t);
                used += 700 * MS;
            }
            t += 10 * MS;
        }
        assert!(used <= CPU_BURST + 60 * CPU_PER_SEC + 700 * MS, "{used:?}");
    }

    #[test]
    fn sixty_four_attaches_in_a_row_fit_the_burst() {
        // scripts/bench-scale.sh: 64 idle guests of one user attached one after the
        // other, a few ms each, every 5 ms.
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t0 = Instant::now();
        for k in 0..64 {
            let t = t0 + k * 5 * MS;
            assert!(b.allows(0, t), "attach {k} held back");
            b.charge(0, 4 * MS, t);
        }
    }

    #[test]
    fn unlimited_budgets_hold_nobody_back() {
        let mut b = UidBudgets::unlimited();
        let t = Instant::now();
        b.charge(1, Duration::from_secs(10), t);
        assert!(b.allows(1, t));
        assert_eq!(b.next_refill(t), None);
        assert_eq!(b.charged, Duration::from_secs(10));
        // Their clock is not read; limiting budgets read this thread's, which has run.
        assert_eq!(b.clock(), Duration::ZERO);
        assert!(UidBudgets::new(100 * MS, 300 * MS, Duration::from_secs(2)).clock() > Duration::ZERO);
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut b = UidBudgets::new(100 * MS, 300 * MS, Duration::from_secs(2));
        let t = Instant::now();
        b.charge(1, 10 * MS, t);
        b.charge(2, 200 * MS, t);
        b.forget_idle(t + Duration::from_millis(500));
        assert_eq!(b.cpu.map.len(), 1, "uid 2 still has 150 ms to get back");
        b.forget_idle(t + Duration::from_secs(2));
        assert!(b.cpu.map.is_empty());
    }

    #[test]
    fn a_suspect_charge_holds_the_uid_back_at_once_and_briefly() {
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t = Instant::now();
        // A 180 ms attach that then ran its queue: the big bucket only.
        b.charge(1, 180 * MS, t);
        assert!(b.allows(1, t));
        // Refusals: a few fit the suspect burst, then the uid waits, however much more
        // it made the proxy spend, at most SUSPECT_MAX_WAIT.
        for _ in 0..9 {
            b.charge(1, MS, t);
            b.charge_suspect(1, MS, t);
        }
        assert!(b.allows(1, t));
        b.charge(1, 50 * MS, t);
        b.charge_suspect(1, 50 * MS, t);
        assert!(!b.allows(1, t));
        assert!(b.allows(2, t), "another uid is not held back");
        assert_eq!(b.next_refill(t), Some(SUSPECT_MAX_WAIT));
        assert!(b.allows(1, t + SUSPECT_MAX_WAIT));
        assert_eq!(b.times_over, 1);
        assert_eq!(b.suspect_charged, 59 * MS);
        assert_eq!(b.charged, 239 * MS);
    }

    #[test]
    fn a_uid_in_debt_in_both_buckets_waits_for_both() {
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t = Instant::now();
        // 50 ms of CPU debt (1 s of refill) and the suspect floor (250 ms).
        b.charge(1, 450 * MS, t);
        b.charge_suspect(1, 450 * MS, t);
        assert_eq!(b.over_now(), 1);
        assert_eq!(b.next_refill(t), Some(SUSPECT_MAX_WAIT));
        assert!(!b.allows(1, t + SUSPECT_MAX_WAIT));
        assert!(b.allows(1, t + Duration::from_secs(1)));
    }

    #[test]
    fn an_attacker_that_alternates_gets_the_suspect_rate_while_it_attacks() {
        // Attacks (1 ms refusals, as fast as it is served) for 100 ms, rests for 100
        // ms, for 4 s: after the first window, it gets about the suspect rate in each
        // attack window (2 ms of 100), not the CPU bucket's burst.
        let mut b = UidBudgets::new(CPU_PER_SEC, CPU_BURST, MAX_WAIT);
        let t0 = Instant::now();
        let mut per_window = Vec::new();
        for w in 0..20u32 {
            let start = t0 + w * 200 * MS;
            let mut used = Duration::ZERO;
            let mut t = start;
            while t < start + 100 * MS {
                if b.allows(3, t) {
                    b.charge(3, MS, t);
                    b.charge_suspect(3, MS, t);
                    used += MS;
                }
                t += 100 * Duration::from_micros(1);
            }
            per_window.push(used);
        }
        assert!(per_window[0] <= 13 * MS, "{per_window:?}");
        assert!(per_window[1..].iter().all(|&u| u <= 5 * MS), "{per_window:?}");
    }
}
