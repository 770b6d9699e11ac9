//! The two halves of a process's free list over a pool's shared free ring, written once
//! for every user: the Rust guest's pool, the proxy's shadow pools (`proxy-app`'s
//! `shadow`) and the DPDK layer's external pools (`crates/dpdk`'s `extpool`).
//!
//! * [`HeldMarks`]: one byte per buffer, whether this process holds it. A buffer enters
//!   the process only by a "not held -> held" transition of its mark, so an index the
//!   peer hands over twice (a duplicate on a ring, a held buffer on the free ring) is
//!   refused and two owners never alias one buffer.
//! * [`Parking`]: free buffers the free ring did not take at once (a peer's thread
//!   stopped between claiming a cell and filling it, for longer than the bounded
//!   retries): kept and given back first next time. Room for every buffer is reserved up
//!   front, so parking never allocates.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Mark of a buffer this process does not hold (free ring, rings, the peer, its NIC).
const NOT_HELD: u8 = 0;
/// Mark of a buffer this process holds.
const HELD: u8 = 1;

/// Whether this process holds each buffer of a pool (module docs).
pub struct HeldMarks {
    marks: Box<[AtomicU8]>,
}

impl HeldMarks {
    /// Marks for `count` buffers, none held.
    pub fn new(count: u32) -> HeldMarks {
        HeldMarks { marks: (0..count).map(|_| AtomicU8::new(NOT_HELD)).collect() }
    }

    /// Buffers marked.
    pub fn len(&self) -> u32 {
        self.marks.len() as u32
    }

    /// Whether there are no buffers.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Takes buffer `idx` for this process, from any thread: false if it is held already
    /// (or there is no such buffer). Acquire: what the previous holder wrote into the
    /// buffer before [`give_up`](Self::give_up) is visible to the new one.
    #[inline]
    pub fn take(&self, idx: u32) -> bool {
        self.marks
            .get(idx as usize)
            .is_some_and(|m| m.compare_exchange(NOT_HELD, HELD, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    /// Gives buffer `idx` up, from any thread (before it is published to the peer in any
    /// way, so that whoever takes it next finds it not held).
    #[inline]
    pub fn give_up(&self, idx: u32) {
        if let Some(m) = self.marks.get(idx as usize) {
            m.store(NOT_HELD, Ordering::Release);
        }
    }

    /// As [`take`](Self::take), for a pool that one thread at a time uses (the proxy's
    /// data loop): a plain byte load and store, no locked instruction.
    #[inline]
    pub fn take_single(&self, idx: u32) -> bool {
        let Some(m) = self.marks.get(idx as usize) else { return false };
        if m.load(Ordering::Relaxed) != NOT_HELD {
            return false;
        }
        m.store(HELD, Ordering::Relaxed);
        true
    }

    /// Gives buffer `idx` up, for a pool that one thread at a time uses: false if it
    /// was not held (a duplicate free).
    #[inline]
    pub fn give_up_single(&self, idx: u32) -> bool {
        let Some(m) = self.marks.get(idx as usize) else { return false };
        if m.load(Ordering::Relaxed) != HELD {
            return false;
        }
        m.store(NOT_HELD, Ordering::Relaxed);
        true
    }

    /// Buffers marked held now.
    pub fn held_count(&self) -> u32 {
        self.marks.iter().filter(|m| m.load(Ordering::Relaxed) == HELD).count() as u32
    }
}

/// Free buffers (by offset) the free ring did not take at once (module docs).
pub struct Parking {
    parked: Mutex<Vec<u32>>,
    /// How many are parked, read without the lock so the usual path costs one load.
    count: AtomicUsize,
}

/// Whether [`Parking::park`] may wait for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkLock {
    /// Wait (a guest's threads, which may block each other briefly).
    Wait,
    /// Never wait (the proxy's data loop never waits for the control thread, nor the
    /// reverse): parking fails when the lock is taken.
    Try,
}

impl Parking {
    /// Room for `capacity` buffers, reserved now.
    pub fn new(capacity: u32) -> Parking {
        Parking { parked: Mutex::new(Vec::with_capacity(capacity as usize)), count: AtomicUsize::new(0) }
    }

    /// Buffers parked now.
    #[inline]
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Keeps `offsets`; false if they do not fit the reserved room or the lock is taken
    /// (with [`ParkLock::Try`]): the caller counts them lost.
    pub fn park(&self, offsets: &[u32], lock: ParkLock) -> bool {
        let parked = match lock {
            // A poisoned lock only means another thread panicked while holding it; the
            // vector itself is always consistent (push, extend and truncate).
            ParkLock::Wait => Some(self.parked.lock().unwrap_or_else(|p| p.into_inner())),
            ParkLock::Try => self.parked.try_lock().ok(),
        };
        let Some(mut parked) = parked else { return false };
        if parked.len() + offsets.len() > parked.capacity() {
            return false;
        }
        parked.extend_from_slice(offsets);
        self.count.store(parked.len(), Ordering::Relaxed);
        true
    }

    /// Offers parked buffers to `put`, newest first, up to `chunk` at a time, until it
    /// refuses (returns false). Does nothing when another thread holds the lock.
    pub fn give_back(&self, chunk: usize, mut put: impl FnMut(&[u32]) -> bool) {
        let Ok(mut parked) = self.parked.try_lock() else { return };
        while !parked.is_empty() {
            let from = parked.len().saturating_sub(chunk.max(1));
            if !put(&parked[from..]) {
                break;
            }
            parked.truncate(from);
        }
        self.count.store(parked.len(), Ordering::Relaxed);
    }

    /// Takes one parked buffer, if there is one and the lock is free.
    pub fn pop(&self) -> Option<u32> {
        let mut parked = self.parked.try_lock().ok()?;
        let offset = parked.pop();
        self.count.store(parked.len(), Ordering::Relaxed);
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_taken_once_and_given_up_once() {
        let marks = HeldMarks::new(4);
        assert_eq!(marks.len(), 4);
        assert!(marks.take(1));
        assert!(!marks.take(1), "held already");
        assert!(!marks.take(4), "no such buffer");
        assert_eq!(marks.held_count(), 1);
        marks.give_up(1);
        assert!(marks.take(1));
        assert!(marks.take_single(2));
        assert!(!marks.take_single(2));
        assert!(marks.give_up_single(2));
        assert!(!marks.give_up_single(2), "not held");
        assert!(!marks.give_up_single(9));
        assert_eq!(marks.held_count(), 1);
    }

    #[test]
    fn two_threads_never_take_the_same_buffer() {
        let marks = std::sync::Arc::new(HeldMarks::new(1000));
        let won: Vec<u32> = (0..2)
            .map(|_| {
                let marks = marks.clone();
                std::thread::spawn(move || (0..1000).filter(|&i| marks.take(i)).count() as u32)
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(won.iter().sum::<u32>(), 1000);
    }

    #[test]
    fn parked_buffers_come_back_newest_first_and_never_beyond_the_room() {
        let parking = Parking::new(4);
        assert!(parking.park(&[1, 2, 3], ParkLock::Wait));
        assert!(!parking.park(&[4, 5], ParkLock::Try), "no room");
        assert_eq!(parking.count(), 3);
        let mut seen = Vec::new();
        parking.give_back(2, |c| {
            seen.push(c.to_vec());
            seen.len() < 2
        });
        assert_eq!(seen, vec![vec![2, 3], vec![1]]);
        assert_eq!(parking.count(), 1, "the refused chunk stays");
        assert_eq!(parking.pop(), Some(1));
        assert_eq!((parking.pop(), parking.count()), (None, 0));
    }
}
