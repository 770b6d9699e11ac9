//! Handing a queue's ring state between the thread that polls it and the control path,
//! with an acknowledgement instead of a sleep.
//!
//! A guest's rx or tx queue keeps private state next to the shared ring (its cached
//! view of the indices). The application's polling thread uses it in every burst; the
//! control path (a reconnect thread, `dev_stop`) must sometimes take it over: drain
//! what a lost proxy left in the ring, start the ring again from index 0. Clearing an
//! "active" flag and waiting a while is not enough: a polling thread descheduled in
//! the middle of a burst can wake after any wait, still inside, and both threads then
//! hold the state mutably (a data race).
//!
//! [`PollGate`] is a quiescent-state handshake of one queue:
//!
//! * the polling thread enters ([`PollGate::poll`]) by making its epoch odd, then looks
//!   whether the gate is open; it leaves by making the epoch even again (release);
//! * the control path closes the gate, then reads the epoch: even means no burst runs
//!   (and every later one sees the gate closed); odd means one runs, and it waits until
//!   the epoch moves on, which the polling thread's release acknowledges.
//!
//! The store and the load on each side are separated by a sequentially consistent
//! fence, so at least one side sees the other's store (the same argument as
//! [`wake`](crate::wake); model-checked with loom below). The control path waits by
//! spinning and yielding, for as long as the burst takes, never a fixed time.
//!
//! The polling side costs one store, one fence, one load and one store per burst; the
//! control side is serialised by a lock that the polling side never touches.

use std::sync::atomic::Ordering;

use crate::sync::{fence, yield_now, AtomicBool, AtomicU64, Mutex, StateCell};

/// Polls of the epoch before the waiting control path starts yielding its CPU (none
/// under loom, which explores every poll as a step of its own).
const SPINS_BEFORE_YIELD: u32 = if cfg!(loom) { 0 } else { 128 };

/// The private state of one queue, behind a quiescent-state handshake (module docs).
pub struct PollGate<T> {
    /// Whether bursts may use the state.
    open: AtomicBool,
    /// Written only by the polling thread: odd while it is inside a burst.
    epoch: AtomicU64,
    /// One control path at a time (the polling side never takes it).
    control: Mutex<()>,
    state: StateCell<T>,
}

// SAFETY: the state is reached by one thread at a time: the polling thread inside an
// open gate, or the control path holding `control` after the polling thread
// acknowledged that it left (module docs). T itself moves between those threads.
unsafe impl<T: Send> Sync for PollGate<T> {}
// SAFETY: as above; the gate owns its state.
unsafe impl<T: Send> Send for PollGate<T> {}

/// Puts the epoch back to even when a burst ends, also when it unwinds.
struct Leave<'a> {
    epoch: &'a AtomicU64,
    even: u64,
}

impl Drop for Leave<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: everything the burst did to the state happens before the control
        // path's acquire load that sees this value.
        self.epoch.store(self.even, Ordering::Release);
    }
}

impl<T> PollGate<T> {
    /// A closed gate over `state`: bursts do nothing until [`open`](Self::open).
    pub fn new(state: T) -> PollGate<T> {
        PollGate {
            open: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            control: Mutex::new(()),
            state: StateCell::new(state),
        }
    }

    /// Polling thread: runs `burst` on the state if the gate is open; `None` if it is
    /// closed. One thread at a time may poll a gate (DPDK's rule for a queue).
    #[inline]
    pub fn poll<R>(&self, burst: impl FnOnce(&mut T) -> R) -> Option<R> {
        let even = self.epoch.load(Ordering::Relaxed) & !1;
        // Release as well: a control path that skips our last even value and reads this
        // one must still see everything the previous burst did (loom found that case).
        self.epoch.store(even | 1, Ordering::Release);
        let _leave = Leave { epoch: &self.epoch, even: even.wrapping_add(2) };
        // Pairs with the fence in `close_and_wait`: either this load sees the gate
        // closed, or the control path sees the odd epoch and waits for `_leave`.
        fence(Ordering::SeqCst);
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: open gate: the control path closes it and waits for our epoch to move on before it touches the state; one polling thread at a time.
        Some(unsafe { self.state.with_mut(burst) })
    }

    /// Whether bursts may use the state now (a hint: the control path may close it
    /// at any time).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Closes the gate without waiting: later bursts do nothing. Also for the polling
    /// thread itself (inside `poll`), when it finds the ring unusable.
    #[inline]
    pub fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Closes the gate and returns once no burst uses the state: at once when none
    /// runs, else when the running one has left (acknowledged by its epoch).
    fn close_and_wait(&self) {
        self.open.store(false, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let seen = self.epoch.load(Ordering::Acquire);
        if seen & 1 == 0 {
            return;
        }
        let mut spins = 0u32;
        while self.epoch.load(Ordering::Acquire) == seen {
            // A burst is bounded work; a long wait means its thread was descheduled:
            // give the CPU away rather than spin against it.
            // (`==`, not `>=`: under loom the constant is 0, and a comparison that is
            // always true there is what clippy rejects.)
            if spins == SPINS_BEFORE_YIELD {
                yield_now();
            } else {
                spins += 1;
                std::hint::spin_loop();
            }
        }
    }

    /// Control path: closes the gate, waits until no burst uses the state, and runs
    /// `f` on it. The gate stays closed ([`open`](Self::open) reopens it).
    pub fn quiesce<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // A poisoned lock only means another control path panicked; the state is
        // whatever that left, as after any other control call.
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.close_and_wait();
        // The gate is closed and the polling thread acknowledged leaving (or was not
        // inside): it cannot reach the state until a control path opens the gate again.
        // SAFETY: as just said; `control` keeps other control paths out.
        unsafe { self.state.with_mut(f) }
    }

    /// Control path: closes the gate and waits until no burst uses the state.
    pub fn stop(&self) {
        self.quiesce(|_| ());
    }

    /// Control path: lets bursts use the state again; whatever the control path did
    /// to it before is visible to them.
    pub fn open(&self) {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.open.store(true, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_closed_gate_runs_no_burst_and_an_open_one_does() {
        let gate = PollGate::new(5u32);
        assert_eq!(gate.poll(|s| *s), None);
        gate.quiesce(|s| *s = 6);
        assert_eq!(gate.poll(|s| *s), None, "quiesce leaves the gate closed");
        gate.open();
        assert!(gate.is_open());
        assert_eq!(gate.poll(|s| std::mem::replace(s, 7)), Some(6));
        gate.close();
        assert_eq!(gate.poll(|s| *s), None);
        assert_eq!(gate.quiesce(|s| *s), 7);
    }

    #[test]
    fn a_burst_that_unwinds_still_leaves() {
        let gate = PollGate::new(0u32);
        gate.open();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate.poll(|_| panic!("burst"))));
        assert!(r.is_err());
        // Would wait forever if the epoch had stayed odd.
        assert_eq!(gate.quiesce(|s| *s), 0);
    }

    /// The polling thread is descheduled in the middle of a burst (it blocks there on
    /// a channel, as if preempted): the control path must wait for it, however long it
    /// stays away, and must not touch the state meanwhile.
    #[test]
    fn the_control_path_waits_for_a_descheduled_burst() {
        let gate = Arc::new(PollGate::new(Vec::<u32>::new()));
        gate.open();
        let (inside_tx, inside_rx) = std::sync::mpsc::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        let poller = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.poll(|v| {
                    v.push(1);
                    inside_tx.send(()).unwrap();
                    resume_rx.recv().unwrap();
                    v.push(2);
                })
            })
        };
        inside_rx.recv().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let control = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let seen = gate.quiesce(|v| {
                    let seen = v.clone();
                    v.clear();
                    seen
                });
                done_tx.send(seen).unwrap();
            })
        };
        // The control path is held back while the burst is away.
        assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err());
        assert!(!gate.is_open());
        resume_tx.send(()).unwrap();
        assert_eq!(poller.join().unwrap(), Some(()));
        assert_eq!(done_rx.recv().unwrap(), vec![1, 2], "the control path saw the whole burst");
        control.join().unwrap();
        assert_eq!(gate.poll(|v| v.len()), None);
    }

    /// Many bursts against many handovers: every burst either ran whole before a
    /// handover or after it, never across one (the state counts both).
    #[test]
    fn bursts_and_handovers_never_overlap() {
        let gate = Arc::new(PollGate::new((0u64, false)));
        gate.open();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ran = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    gate.poll(|(n, busy)| {
                        assert!(!*busy, "the control path is inside");
                        *busy = true;
                        for _ in 0..(ran % 64) {
                            std::hint::spin_loop();
                        }
                        if ran.is_multiple_of(97) {
                            std::thread::yield_now();
                        }
                        *n += 1;
                        *busy = false;
                    });
                    ran += 1;
                }
            })
        };
        for _ in 0..2000 {
            gate.quiesce(|(_, busy)| {
                assert!(!*busy, "a burst is inside");
                *busy = true;
                std::hint::spin_loop();
                *busy = false;
            });
            gate.open();
        }
        stop.store(true, Ordering::Relaxed);
        poller.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A burst and a handover race; loom's cells report any access of the state by
    /// both at once. After the handover the state holds either the burst's work or
    /// nothing of it, and a reopened gate lets the next burst see the handover's write.
    #[test]
    fn loom_handover_waits_for_the_burst() {
        loom::model(|| {
            let gate = Arc::new(PollGate::new(0u32));
            gate.open();
            let poller = {
                let gate = gate.clone();
                thread::spawn(move || gate.poll(|s| *s += 1))
            };
            let seen = gate.quiesce(|s| {
                let seen = *s;
                *s = 10;
                seen
            });
            let ran = poller.join().unwrap();
            assert_eq!(seen, u32::from(ran.is_some()), "the handover saw half a burst");
            gate.open();
            assert_eq!(gate.poll(|s| *s), Some(10));
        });
    }

    /// Two bursts in a row against a handover and a reopen.
    #[test]
    fn loom_bursts_across_a_reopen() {
        loom::model(|| {
            let gate = Arc::new(PollGate::new(0u32));
            gate.open();
            let poller = {
                let gate = gate.clone();
                thread::spawn(move || {
                    let a = gate.poll(|s| *s += 1).is_some() as u32;
                    let b = gate.poll(|s| *s += 1).is_some() as u32;
                    a + b
                })
            };
            gate.quiesce(|s| *s += 100);
            gate.open();
            let ran = poller.join().unwrap();
            assert_eq!(gate.quiesce(|s| *s), 100 + ran);
        });
    }
}
