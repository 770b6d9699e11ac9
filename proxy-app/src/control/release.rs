//! Departed guests' regions, freed a step at a time.
//!
//! A guest allocates its own region (`shm_contract::client::map_region`): the zeroing
//! runs on its CPU and the pages count against its memory cgroup. Freeing them is the
//! last holder's work: whoever closes the memfd last frees every page at once, about
//! 0.2 s per GiB of 4 KiB pages. When the guest's process is still there (a DPDK app
//! keeps its mempools after its port detached) its own exit does that, on its CPU. But
//! when its process exited first, the proxy's close is the last one, on the control
//! thread, which shares the data loop's CPU where the machine has no core to spare:
//! every other tenant would lose that time at once (a 2 GiB region: 0.4 s).
//!
//! So a departed guest's region of normal pages comes here instead of being closed,
//! and once nothing else of the proxy holds it (the quarantine has ended: the NIC gave
//! its buffers back, pools and the data loop let it go):
//! - while the guest's process lives, nothing is punched: a hole would read as zeros
//!   under a process that may still use the memory. The process is asked through a
//!   pidfd taken at accept (`Conn::pidfd`), which a reused pid cannot fool. If it has
//!   not exited [`EXIT_GRACE`] after the guest left, the region is closed: the
//!   process's exit frees the pages later, on its own CPU.
//! - once it has exited, the pages are freed [`CHUNK`] at a time (a hole punched in the
//!   memfd), one step per [`PERIOD`] at most, for all regions together (about 5% of a
//!   CPU), each step charged to the departed guest's uid (budget.rs) and taken
//!   only while that uid is not in debt; then the memfd is closed, which frees nothing
//!   more.
//!
//! Hugetlb regions are closed at once: the proxy allocated them (the operator sized the
//! hugepage pool for the guests), and freeing a 2 MiB page costs what freeing one 4 KiB
//! page does. A region without a pidfd (a peer in another pid namespace, whose pid the
//! kernel does not give) is closed at once too: nobody can tell whether its process
//! still uses it. At most [`MAX_RELEASING`] regions wait here; past that a departed
//! region is closed at once, as part of the detach.
//!
//! Known gap: a process that exited may have passed the memfd on (a forked child that
//! still maps it, another process it sent the descriptor to); punching then zeroes
//! memory that process uses. Only that tenant's own processes can hold its region, and
//! none of the guests (the plugins, the Rust guest) does that; the proxy's own mapping
//! is guarded (a punched page reads as zeros there, never a fault).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::UidBudgets;
use crate::os;
use crate::region::GuestRegion;

/// What one step frees: about 1.2 ms of the control thread for 4 KiB pages (measured:
/// 2 GiB in 16 MiB steps took 308-310 ms), a pause of the data loop no longer than
/// other single control-thread events when they share a CPU.
pub(super) const CHUNK: u64 = 8 << 20;
/// Steps are at least this far apart, all regions together: freeing takes about 5% of
/// the control thread's CPU while it lasts, a uid budget's rate (budget.rs), so that it
/// does not eat the uid's burst (a 2 GiB region: about 6.4 s).
pub(super) const PERIOD: Duration = Duration::from_millis(25);
/// How long after its guest left a region waits for the guest's process to exit
/// before it is closed (the process then frees it when it exits).
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Regions waiting here, at most.
pub(super) const MAX_RELEASING: usize = 64;

/// A departed guest's region on its way out.
struct Releasing {
    region: Arc<GuestRegion>,
    /// The departed guest's uid: charged for the steps.
    uid: u32,
    pidfd: OwnedFd,
    /// When the guest left.
    since: Instant,
    /// Bytes freed so far, from the start of the region.
    freed: u64,
    /// Its process has exited (once seen, for good).
    exited: bool,
}

/// What [`Releases`] did, shown in `show stats` (`regions_releasing`, ...).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ReleaseStats {
    /// Regions freed in steps, to the end.
    pub(super) paced: u64,
    /// Regions closed while their guest's process lived (its exit frees them).
    pub(super) left_to_guest: u64,
    /// Regions closed at once: hugetlb, no pidfd, too many waiting, or a step that
    /// could not free its range.
    pub(super) closed_at_once: u64,
    /// Bytes freed in steps.
    pub(super) freed_bytes: u64,
    /// Control-thread CPU time the steps (and final closes) took, charged to the uids.
    pub(super) charged: Duration,
}

/// Departed guests' regions waiting to be freed (module docs).
#[derive(Default)]
pub(super) struct Releases {
    waiting: Vec<Releasing>,
    last_step: Option<Instant>,
    pub(super) stats: ReleaseStats,
}

impl Releases {
    /// Takes the region of a guest of `uid` that left (`pidfd`: its process's), or
    /// closes it at once when it cannot be freed in steps (module docs): that close is
    /// part of the detach, charged with the event that ended the session. Everything
    /// else of the proxy may still hold it (the quarantine): it waits for them.
    pub(super) fn push(&mut self, region: Arc<GuestRegion>, uid: u32, pidfd: Option<OwnedFd>, now: Instant) {
        match pidfd {
            Some(pidfd) if !region.hugepages && self.waiting.len() < MAX_RELEASING => {
                self.waiting.push(Releasing { region, uid, pidfd, since: now, freed: 0, exited: false });
            }
            _ => {
                self.stats.closed_at_once += 1;
                drop(region);
            }
        }
    }

    /// Regions waiting here.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How long the control loop may sleep before it should look here again: when the
    /// next step is due for a region ready to be freed, every [`PERIOD`] while a region
    /// waits for its process to exit, `None` while every waiting region is still held
    /// elsewhere (the quarantine, looked at by housekeeping anyway) or none waits.
    pub(super) fn next_step(&self, now: Instant) -> Option<Duration> {
        let free = self.waiting.iter().filter(|r| Arc::strong_count(&r.region) == 1);
        let (mut any, mut ready) = (false, false);
        for r in free {
            any = true;
            ready |= r.exited;
        }
        match (any, ready) {
            (_, true) => Some(self.last_step.map_or(Duration::ZERO, |t| (t + PERIOD).saturating_duration_since(now))),
            (true, false) => Some(PERIOD),
            (false, false) => None,
        }
    }

    /// One round (housekeeping): regions whose guest's process lived on past the grace
    /// are closed; then at most one step of freeing, if [`PERIOD`] has passed, for the
    /// first region whose process exited and whose uid is not in debt.
    pub(super) fn step(&mut self, now: Instant, budgets: &mut UidBudgets) {
        let mut i = 0;
        while i < self.waiting.len() {
            let r = &mut self.waiting[i];
            // Still held by the quarantine, a pool or the data loop: nothing to decide yet.
            if Arc::strong_count(&r.region) > 1 {
                i += 1;
                continue;
            }
            r.exited = r.exited || os::process_exited(r.pidfd.as_fd());
            if !r.exited && now.saturating_duration_since(r.since) >= EXIT_GRACE {
                let r = self.waiting.remove(i);
                self.stats.left_to_guest += 1;
                self.close(r.region, r.uid, now, budgets);
                continue;
            }
            i += 1;
        }
        if self.last_step.is_some_and(|t| now.saturating_duration_since(t) < PERIOD) {
            return;
        }
        let Some(k) = self
            .waiting
            .iter()
            .position(|r| r.exited && Arc::strong_count(&r.region) == 1 && budgets.allows(r.uid, now))
        else {
            return;
        };
        self.last_step = Some(now);
        let t0 = budgets.clock();
        let r = &mut self.waiting[k];
        if r.freed == 0 {
            // Nothing may DMA into pages that go.
            if let Some(region) = Arc::get_mut(&mut r.region) {
                region.unregister_dma();
            }
        }
        let uid = r.uid;
        let size = r.region.len() as u64;
        let len = CHUNK.min(size - r.freed);
        // Freed to the end, it is closed (which frees nothing more); a punch that
        // failed closes it at once.
        match r.region.punch(r.freed, len) {
            Ok(()) => {
                r.freed += len;
                self.stats.freed_bytes += len;
                if r.freed >= size {
                    drop(self.waiting.remove(k));
                    self.stats.paced += 1;
                }
            }
            Err(e) => {
                crate::log_warn!("cannot free a departed guest's region in steps ({e}): it is closed at once");
                drop(self.waiting.remove(k));
                self.stats.closed_at_once += 1;
            }
        }
        self.charge(uid, t0, now, budgets);
    }

    /// Closes every waiting region at once (the proxy is shutting down).
    pub(super) fn close_all(&mut self) {
        self.waiting.clear();
    }

    /// Closes `region` now (outside any event of its guest's: the guest left), charging
    /// what that took to `uid`.
    fn close(&mut self, region: Arc<GuestRegion>, uid: u32, now: Instant, budgets: &mut UidBudgets) {
        let t0 = budgets.clock();
        drop(region);
        self.charge(uid, t0, now, budgets);
    }

    /// Charges `uid` (and `stats.charged`) with the control thread's CPU time since
    /// `t0` (read from `budgets.clock()`, as every event's charge is).
    fn charge(&mut self, uid: u32, t0: Duration, now: Instant, budgets: &mut UidBudgets) {
        let spent = budgets.clock().saturating_sub(t0);
        budgets.charge(uid, spent, now);
        self.stats.charged += spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::RegionRequest;
    use shm_contract::mem::{allocate_region, allocated_bytes};
    use std::os::fd::{AsFd, OwnedFd};

    const UID: u32 = 4242;
    const SIZE: u64 = 4 * CHUNK;

    /// A region as a guest leaves it: allocated whole by the guest, which keeps (or
    /// not) a descriptor of it.
    fn departed_region() -> (Arc<GuestRegion>, OwnedFd) {
        let req = RegionRequest { size: SIZE, rx_entries: 256, tx_entries: 256, queue_pairs: 1, try_hugepages: false };
        let region = GuestRegion::create("release-test", &req).unwrap();
        let guests_fd = region.memfd.try_clone().unwrap();
        allocate_region(guests_fd.as_fd(), SIZE).unwrap();
        (Arc::new(region), guests_fd)
    }

    /// A pidfd of a process that has exited.
    fn exited_pidfd() -> OwnedFd {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = os::pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        pidfd
    }

    fn budgets() -> UidBudgets {
        UidBudgets::new(super::super::budget::CPU_PER_SEC, super::super::budget::CPU_BURST, super::super::budget::MAX_WAIT)
    }

    #[test]
    fn a_region_whose_process_exited_is_freed_in_chunks_each_charged_to_its_uid() {
        // (The test keeps the guest's descriptor only to watch the file's pages.)
        let (region, watch) = departed_region();
        let mut budgets = budgets();
        let mut releases = Releases::default();
        let t = Instant::now();
        releases.push(region, UID, Some(exited_pidfd()), t);
        assert_eq!(releases.waiting(), 1);
        // The loop looks again within a period; once a step was taken, when the next
        // is due.
        assert_eq!(releases.next_step(t), Some(PERIOD));
        let mut freed_after = Vec::new();
        for k in 0..4u32 {
            // A round sooner than PERIOD after a step frees nothing.
            releases.step(t + PERIOD * (2 * k) + PERIOD / 2, &mut budgets);
            releases.step(t + PERIOD * (2 * k + 1), &mut budgets);
            freed_after.push(SIZE - allocated_bytes(watch.as_fd()).unwrap());
        }
        // One chunk per step, in order, and the last step closed it.
        assert_eq!(freed_after.len(), 4);
        assert!(freed_after.windows(2).all(|w| w[1] == w[0] + CHUNK), "{freed_after:?}");
        assert_eq!(freed_after[3], SIZE);
        assert_eq!(releases.waiting(), 0);
        assert_eq!(releases.next_step(t), None);
        assert_eq!(releases.stats.paced, 1);
        assert_eq!(releases.stats.freed_bytes, SIZE);
        // Every step was charged to the departed guest's uid.
        assert!(releases.stats.charged > Duration::ZERO);
        assert_eq!(budgets.charged, releases.stats.charged);
    }

    #[test]
    fn nothing_is_punched_while_the_guests_process_lives() {
        let (region, guests_fd) = departed_region();
        let mut budgets = budgets();
        let mut releases = Releases::default();
        let t = Instant::now();
        // This test's own process stands for a guest that lives on after it left.
        let alive = os::pidfd_open(std::process::id() as i32).unwrap();
        releases.push(region, UID, Some(alive), t);
        let mut now = t;
        while now < t + EXIT_GRACE {
            releases.step(now, &mut budgets);
            assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE, "punched under a live process");
            now += PERIOD;
        }
        // After the grace the proxy closes its reference: the pages are the guest's.
        releases.step(t + EXIT_GRACE, &mut budgets);
        assert_eq!(releases.waiting(), 0);
        assert_eq!(releases.stats.left_to_guest, 1);
        assert_eq!((releases.stats.paced, releases.stats.freed_bytes), (0, 0));
        assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE);
    }

    #[test]
    fn a_region_still_held_elsewhere_or_of_a_uid_in_debt_waits() {
        let (region, guests_fd) = departed_region();
        let mut budgets = budgets();
        let mut releases = Releases::default();
        let t = Instant::now();
        // The quarantine (a pool) still holds it.
        let quarantined = region.clone();
        releases.push(region, UID, Some(exited_pidfd()), t);
        releases.step(t, &mut budgets);
        releases.step(t + EXIT_GRACE * 2, &mut budgets);
        assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE);
        assert_eq!(releases.waiting(), 1);
        // Nothing to wake the loop for while it is held.
        assert_eq!(releases.next_step(t + EXIT_GRACE * 2), None);
        drop(quarantined);
        // Its uid in debt: it waits for the refill.
        budgets.charge(UID, super::super::budget::CPU_BURST * 2, t + EXIT_GRACE * 2);
        releases.step(t + EXIT_GRACE * 2 + PERIOD, &mut budgets);
        assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE);
        // Refilled: freed.
        let later = t + EXIT_GRACE * 2 + super::super::budget::MAX_WAIT * 2;
        releases.step(later, &mut budgets);
        assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE - CHUNK);
    }

    #[test]
    fn without_a_pidfd_a_region_is_closed_at_once() {
        let (region, guests_fd) = departed_region();
        let mut releases = Releases::default();
        releases.push(region, UID, None, Instant::now());
        assert_eq!((releases.waiting(), releases.stats.closed_at_once), (0, 1));
        assert_eq!(allocated_bytes(guests_fd.as_fd()).unwrap(), SIZE);
    }
}
