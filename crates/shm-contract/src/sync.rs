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
