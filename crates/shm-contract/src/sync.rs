//! The atomics the ring algorithms are written against.
//!
//! Normal builds use `std`'s atomics, which are layout-compatible with plain
//! integers and can therefore live in shared memory. Under `--cfg loom` the rings
//! are compiled against loom's instrumented atomics instead, so the very same
//! algorithm code is model-checked; loom atomics cannot live in a mapping, so the
//! constructors that take a [`SharedMem`](crate::SharedMem) are compiled out
//! there and the loom tests build rings with `from_parts`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicBool;

/// Gives the CPU away while waiting for another thread's acknowledgement.
#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

/// Private state that one thread at a time may change, the caller proving who (see
/// `handover`); loom checks the claim under `--cfg loom`.
pub(crate) struct StateCell<T>(
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
);

impl<T> StateCell<T> {
    pub(crate) fn new(value: T) -> StateCell<T> {
        #[cfg(loom)]
        return StateCell(loom::cell::UnsafeCell::new(value));
        #[cfg(not(loom))]
        return StateCell(std::cell::UnsafeCell::new(value));
    }

    /// Runs `f` on the state.
    ///
    /// # Safety
    /// No other thread reaches the state meanwhile.
    #[inline]
    pub(crate) unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(loom)]
        // SAFETY: exclusive by the caller's contract; loom checks it.
        return self.0.with_mut(|p| f(unsafe { &mut *p }));
        #[cfg(not(loom))]
        // SAFETY: exclusive by the caller's contract.
        return f(unsafe { &mut *self.0.get() });
    }
}

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
