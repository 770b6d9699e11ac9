//! Packet-mbuf pools owned by the application ([`PktPool`]), borrowed views of
//! mempools ([`Mempool`]) and the count of the process's mempools.

use std::any::Any;
use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::{sys, Eal, Error};

/// A packet-mbuf pool in this process's own memory.
///
/// Dropping it frees the mempool, unless an rx queue still takes buffers from it
/// ([`crate::Port::rx_queue_setup_pool`]) or another clone lives: then the mempool is
/// freed with the last of them. The pool holds EAL alive until it is freed.
#[derive(Clone)]
pub struct PktPool {
    inner: Arc<PoolInner>,
}

/// The mempool itself; freed when the last reference (the application's [`PktPool`], an
/// rx queue's) goes.
pub(crate) struct PoolInner {
    mp: NonNull<sys::rte_mempool>,
    /// What the mempool's ops need until it is freed ([`PktPool::from_raw_owning`]);
    /// dropped after the mempool (fields drop after `Drop::drop`).
    _ops_state: Option<Box<dyn Any + Send + Sync>>,
    _eal: Eal,
}

// SAFETY: a mempool is usable from any thread (per-lcore caches are keyed by lcore id),
// and the pointer is freed only once, by the last reference.
unsafe impl Send for PoolInner {}
// SAFETY: as above.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: created by `PktPool::new`; this is the last reference (no queue set up
        // by this crate uses it any more), and EAL lives as long as `_eal`.
        unsafe { sys::rte_mempool_free(self.mp.as_ptr()) };
    }
}

impl PktPool {
    /// Creates a pool of `count` packet mbufs (`rte_pktmbuf_pool_create`) with a
    /// per-lcore cache of `cache`, `data_room` bytes of buffer each, on NUMA `socket`.
    /// Fails with `ENODEV` when EAL is not initialised.
    pub fn new(name: &str, count: u32, cache: u32, data_room: u16, socket: i32) -> Result<PktPool, Error> {
        const CALL: &str = "rte_pktmbuf_pool_create";
        let eal = Eal::require(CALL)?;
        let cname = CString::new(name).map_err(|_| Error::new(CALL, libc::EINVAL))?;
        // SAFETY: valid arguments; EAL is initialised (held by `eal`); the pool is owned
        // by the returned value.
        let mp = unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, data_room, socket) };
        let mp = NonNull::new(mp).ok_or_else(|| Error::from_rte_errno(CALL))?;
        Ok(PktPool { inner: Arc::new(PoolInner { mp, _ops_state: None, _eal: eal }) })
    }

    /// Takes ownership of a mempool made elsewhere (for example with the
    /// application's own mempool ops): it is freed with `rte_mempool_free` when the last
    /// reference goes, and can then be given to [`crate::Port::rx_queue_setup_pool`].
    /// Fails with `ENODEV` when EAL is not initialised, `EINVAL` for null.
    ///
    /// # Safety
    /// `mp` is a live mempool of packet mbufs that nothing else frees, and whatever its
    /// ops need stays valid until it is freed.
    pub unsafe fn from_raw(mp: *mut sys::rte_mempool) -> Result<PktPool, Error> {
        // SAFETY: per this function's contract.
        unsafe { Self::adopt(mp, None) }
    }

    /// Like [`PktPool::from_raw`], for a mempool whose ops use `ops_state` (for example
    /// the object their `pool_data` points at): it is kept, and dropped only after the
    /// mempool is freed, so the ops can use it for as long as the mempool exists. On
    /// error `ops_state` is dropped and the mempool is not freed.
    ///
    /// # Safety
    /// As for [`PktPool::from_raw`], with "whatever its ops need" covered by `ops_state`
    /// where it is not otherwise alive.
    pub unsafe fn from_raw_owning(
        mp: *mut sys::rte_mempool,
        ops_state: Box<dyn Any + Send + Sync>,
    ) -> Result<PktPool, Error> {
        // SAFETY: per this function's contract.
        unsafe { Self::adopt(mp, Some(ops_state)) }
    }

    /// # Safety
    /// As for [`PktPool::from_raw_owning`].
    unsafe fn adopt(mp: *mut sys::rte_mempool, ops_state: Option<Box<dyn Any + Send + Sync>>) -> Result<PktPool, Error> {
        const CALL: &str = "rte_mempool_free";
        let eal = Eal::require(CALL)?;
        let mp = NonNull::new(mp).ok_or(Error::new(CALL, libc::EINVAL))?;
        Ok(PktPool { inner: Arc::new(PoolInner { mp, _ops_state: ops_state, _eal: eal }) })
    }

    /// The raw mempool, for data-path calls (`rte_pktmbuf_alloc_bulk`, ...). Valid while
    /// this value lives.
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.inner.mp.as_ptr()
    }

    /// A view of the mempool, for its counters.
    pub fn mempool(&self) -> Mempool<'_> {
        Mempool { mp: self.inner.mp, _pool: PhantomData }
    }

    /// Another reference to the mempool, for a queue that takes buffers from it.
    pub(crate) fn inner(&self) -> Arc<PoolInner> {
        self.inner.clone()
    }
}

impl std::fmt::Debug for PktPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PktPool").field("name", &self.mempool().name()).finish()
    }
}

/// A borrowed view of a live mempool: its name and counters.
#[derive(Clone, Copy)]
pub struct Mempool<'a> {
    mp: NonNull<sys::rte_mempool>,
    _pool: PhantomData<&'a sys::rte_mempool>,
}

impl<'a> Mempool<'a> {
    /// A view of a mempool this crate does not own (null: None).
    ///
    /// # Safety
    /// `mp` is a live mempool that is not freed during `'a`.
    pub unsafe fn from_ptr(mp: *mut sys::rte_mempool) -> Option<Mempool<'a>> {
        NonNull::new(mp).map(|mp| Mempool { mp, _pool: PhantomData })
    }

    /// The raw mempool.
    pub fn as_ptr(self) -> *mut sys::rte_mempool {
        self.mp.as_ptr()
    }

    /// The mempool's name.
    pub fn name(self) -> String {
        // SAFETY: the mempool is live for 'a; its name is a NUL-terminated array inside it.
        unsafe { CStr::from_ptr((*self.mp.as_ptr()).name.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// How many of its elements are allocated (not in the pool nor in its caches);
    /// approximate while other threads use the pool.
    pub fn in_use_count(self) -> u32 {
        // SAFETY: the mempool is live for 'a; the call only reads counters.
        unsafe { sys::rte_mempool_in_use_count(self.mp.as_ptr()) }
    }

    /// How many of its elements are free (in the pool and its caches); approximate while
    /// other threads use the pool.
    pub fn avail_count(self) -> u32 {
        // SAFETY: as above.
        unsafe { sys::rte_mempool_avail_count(self.mp.as_ptr()) }
    }
}

impl std::fmt::Debug for Mempool<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mempool").field("name", &self.name()).finish()
    }
}

/// How many mempools exist in this process (`rte_mempool_walk`); 0 without EAL.
pub fn mempool_count() -> usize {
    let Some(_eal) = Eal::current() else { return 0 };
    let mut n = 0usize;
    walk(&mut |_| n += 1);
    n
}

/// Calls `f` for every mempool of the process, under DPDK's mempool list lock. Only the
/// raw pointer is handed out: a pool freed by another thread meanwhile is not locked out
/// of the list by that lock, so nothing here reads through it. A panic of `f` stops the
/// walk and is resumed after it (it never unwinds through DPDK). EAL must be alive.
fn walk(f: &mut dyn FnMut(*mut sys::rte_mempool)) {
    struct Walk<'f> {
        f: &'f mut dyn FnMut(*mut sys::rte_mempool),
        panic: Option<Box<dyn Any + Send>>,
    }
    unsafe extern "C" fn visit(mp: *mut sys::rte_mempool, arg: *mut c_void) {
        // SAFETY: `arg` is the `Walk` below, alive and not otherwise borrowed during the
        // walk, which calls this function synchronously on the walking thread.
        let walk = unsafe { &mut *(arg as *mut Walk<'_>) };
        if walk.panic.is_none() {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (walk.f)(mp))) {
                walk.panic = Some(p);
            }
        }
    }
    let mut state = Walk { f, panic: None };
    // SAFETY: the walk calls `visit` synchronously with our state; EAL is alive (the
    // caller holds it).
    unsafe { sys::rte_mempool_walk(Some(visit), &mut state as *mut Walk<'_> as *mut c_void) };
    if let Some(p) = state.panic {
        resume_unwind(p);
    }
}
