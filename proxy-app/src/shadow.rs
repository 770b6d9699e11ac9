//! Shadow mbufs: the proxy's own `rte_mbuf` headers for the buffers of a guest's pool.
//!
//! A guest pool is `[free ring][mbuf, data room][mbuf, data room]...` inside the guest's
//! region. The guest writes those mbuf headers; the proxy never reads or writes them
//! (their pointers are the guest's, and a hostile guest could change them at any time).
//! Instead, for every guest buffer the proxy keeps a *shadow* mbuf in its own memory
//! whose `buf_addr` points at that buffer's data room in the proxy's mapping of the
//! region. NIC drivers only ever see shadows.
//!
//! The shadows form a DPDK mempool with the ops [`OPS_NAME`]: taking a shadow
//! (`dequeue`) takes a buffer offset from the guest's free ring, and returning a shadow
//! (`enqueue`, e.g. after the NIC sent it) gives the offset back to the guest's free
//! ring. A NIC rx queue set up with this mempool therefore receives straight into the
//! guest's buffers.
//!
//! Every offset read from the free ring is validated ([`PoolLayout::buffer_index`]), and
//! each shadow carries an ownership mark (guest or proxy) so that an offset the guest
//! frees twice, or hands over while the proxy still holds it, is refused and counted.

use std::ffi::{c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dpdk::sys;
use shm_contract::{FreeRing, FreeRingError, PoolLayout};

use crate::region::GuestRegion;

/// Name of the proxy's mempool ops.
pub const OPS_NAME: &CStr = c"shm_proxy";

/// Objects moved per free-ring operation: a stack array, no allocation on the hot path.
const CHUNK: usize = 64;
/// Retries on a contended free ring. The guest's threads share it; a hostile guest can
/// only make our operation fail, which is counted, never make us spin forever.
const RING_RETRIES: u32 = 256;

/// Ownership marks of a shadow.
const OWNER_GUEST: u8 = 0;
const OWNER_PROXY: u8 = 1;

/// What the proxy keeps behind each shadow mbuf (its private area).
#[repr(C)]
struct ShadowPriv {
    /// Index of the guest buffer in its pool (read only when the shadows are not
    /// evenly spaced, see `ShadowCtx::contiguous`).
    index: u32,
    _pad: [u8; 4],
}

/// Size of the private area of a shadow (a multiple of RTE_MBUF_PRIV_ALIGN).
const PRIV_SIZE: u16 = 8;
const _: () = assert!(std::mem::size_of::<ShadowPriv>() == PRIV_SIZE as usize);

/// The state the mempool ops need; lives behind `rte_mempool.pool_data`.
pub struct ShadowCtx {
    pub layout: PoolLayout,
    ring: FreeRing<'static>,
    /// Shadow address of each guest buffer, by index; set once after populate.
    shadows: OnceLock<Box<[usize]>>,
    /// When the shadows lie at `base + (index << shift)` (one populated chunk, as usual):
    /// `(base, shift)`, so that a shadow's index is computed, not read from its private
    /// area (a third cache line per packet).
    contiguous: OnceLock<(usize, u32)>,
    /// Ownership mark of each buffer ([`OWNER_GUEST`] or [`OWNER_PROXY`]), by index: one
    /// byte each in one small array the data loop keeps in cache, rather than a byte in
    /// each shadow's private area. Relaxed atomics: plain byte loads and stores; the data
    /// lcore is the only writer while the pool is in use, the control thread otherwise.
    owners: Box<[AtomicU8]>,
    /// While DPDK populates the mempool it "enqueues" every new object: those buffers
    /// already sit in the guest's free ring, so such enqueues are ignored.
    populating: AtomicBool,
    /// Offsets from the free ring that were not buffers of this pool, or buffers the
    /// proxy already held: the guest's fault; the value is dropped.
    pub invalid: AtomicU64,
    /// Buffers that could not be returned to the free ring right away (a guest thread
    /// preempted between its claim of a cell and its store, for longer than our retries):
    /// kept here and returned first by the next `give_back`. Capacity is reserved for
    /// every buffer of the pool up front, so parking never allocates on the data path.
    parked: Mutex<Vec<u32>>,
    /// How many are parked; read without the lock so the usual path costs one load.
    parked_count: AtomicUsize,
    /// Buffers given up on: the ring stayed full or corrupted while the parking space
    /// was full too (only a guest that wrote garbage into its own ring gets here).
    pub lost: AtomicU64,
}

impl ShadowCtx {
    /// The shadow of guest buffer `offset` (the offset of its `rte_mbuf` in the region),
    /// or `None` if `offset` is not exactly a buffer of this pool.
    #[inline]
    pub fn shadow_of(&self, offset: u32) -> Option<*mut sys::rte_mbuf> {
        let idx = self.layout.buffer_index(offset)?;
        let shadows = self.shadows.get()?;
        shadows.get(idx as usize).map(|&a| a as *mut sys::rte_mbuf)
    }

    /// Index in this pool of one of its shadows.
    ///
    /// # Safety
    /// `m` is a shadow of this pool.
    #[inline]
    unsafe fn index_of(&self, m: *const sys::rte_mbuf) -> u32 {
        match self.contiguous.get() {
            Some(&(base, shift)) => ((m as usize - base) >> shift) as u32,
            // SAFETY: per the contract, m has our private area.
            None => unsafe { (*shadow_priv(m)).index },
        }
    }

    #[inline]
    fn owner(&self, idx: u32) -> &AtomicU8 {
        // Index of one of our shadows (the callers' contracts): always in range.
        &self.owners[idx as usize]
    }

    /// Region offset of the guest buffer behind a shadow of this pool.
    ///
    /// # Safety
    /// `m` is a shadow of this pool.
    #[inline]
    pub unsafe fn offset_of(&self, m: *const sys::rte_mbuf) -> u32 {
        // SAFETY: per the contract.
        self.layout.buffer_offset(unsafe { self.index_of(m) })
    }

    /// Marks a shadow as held by the proxy. Returns false (and counts) if it already was.
    ///
    /// # Safety
    /// `m` is a shadow of this pool; the caller is the pool's only user right now.
    #[inline]
    pub unsafe fn claim(&self, m: *mut sys::rte_mbuf) -> bool {
        // SAFETY: per the contract.
        let owner = self.owner(unsafe { self.index_of(m) });
        if owner.load(Ordering::Relaxed) != OWNER_GUEST {
            return false;
        }
        owner.store(OWNER_PROXY, Ordering::Relaxed);
        true
    }

    /// Gives a claimed shadow back to the guest's side. Returns false if the proxy did
    /// not hold it.
    ///
    /// # Safety
    /// As for [`claim`](Self::claim).
    #[inline]
    pub unsafe fn unclaim_if_held(&self, m: *mut sys::rte_mbuf) -> bool {
        // SAFETY: per the contract.
        let owner = self.owner(unsafe { self.index_of(m) });
        if owner.load(Ordering::Relaxed) != OWNER_PROXY {
            return false;
        }
        owner.store(OWNER_GUEST, Ordering::Relaxed);
        true
    }

    /// Marks a shadow as handed to the guest (its buffer now belongs to the guest).
    ///
    /// # Safety
    /// As for [`claim`](Self::claim).
    #[inline]
    pub unsafe fn release_to_guest(&self, m: *mut sys::rte_mbuf) {
        // SAFETY: per the contract.
        self.owner(unsafe { self.index_of(m) }).store(OWNER_GUEST, Ordering::Relaxed);
    }

    /// Gives buffers back to the guest's free ring; parks them when the ring does not
    /// take them now.
    fn give_back(&self, offsets: &[u32]) {
        if self.parked_count.load(Ordering::Relaxed) > 0 {
            self.retry_parked();
        }
        if self.ring.enqueue_bulk(offsets, RING_RETRIES).is_err() {
            self.park(offsets);
        }
    }

    fn park(&self, offsets: &[u32]) {
        // try_lock: the data loop never waits for the control thread (or the reverse).
        if let Ok(mut parked) = self.parked.try_lock() {
            if parked.len() + offsets.len() <= parked.capacity() {
                parked.extend_from_slice(offsets);
                self.parked_count.store(parked.len(), Ordering::Relaxed);
                return;
            }
        }
        self.lost.fetch_add(offsets.len() as u64, Ordering::Relaxed);
    }

    /// Returns parked buffers, newest first, until the ring refuses again.
    pub fn retry_parked(&self) {
        let Ok(mut parked) = self.parked.try_lock() else { return };
        while !parked.is_empty() {
            let from = parked.len().saturating_sub(CHUNK);
            if self.ring.enqueue_bulk(&parked[from..], RING_RETRIES).is_err() {
                break;
            }
            parked.truncate(from);
        }
        self.parked_count.store(parked.len(), Ordering::Relaxed);
    }

    /// Buffers parked now (for `show stats`).
    pub fn parked(&self) -> usize {
        self.parked_count.load(Ordering::Relaxed)
    }

    /// Returns a buffer the guest handed over but the proxy will not use (a queue stop
    /// found it still in the tx ring).
    pub fn return_offset(&self, offset: u32) {
        self.give_back(&[offset]);
    }
}

/// Undoes a claim made by [`ShadowCtx::claim`] when the buffer was not used after all.
///
/// # Safety
/// `m` is a shadow the caller claimed and still holds exclusively.
#[inline]
pub unsafe fn unclaim(m: *mut sys::rte_mbuf) {
    // SAFETY: per the contract m is a shadow, so its pool is one of ours.
    unsafe {
        if let Some(ctx) = ctx((*m).pool) {
            ctx.release_to_guest(m);
        }
    }
}

#[inline]
fn shadow_priv(m: *const sys::rte_mbuf) -> *mut ShadowPriv {
    (m as *mut u8).wrapping_add(std::mem::size_of::<sys::rte_mbuf>()) as *mut ShadowPriv
}

/// A guest pool as the proxy sees it: the validated layout, the free ring, and the
/// mempool of shadows. Dropping it frees the mempool; its owner makes sure no NIC queue
/// uses it any more.
pub struct ShadowPool {
    pub ctx: Arc<ShadowCtx>,
    mp: *mut sys::rte_mempool,
    /// Keeps the mapping that `ctx.ring` and the shadows' `buf_addr` point into.
    _region: Arc<GuestRegion>,
}

// SAFETY: the mempool is used under DPDK's rules (the data lcore, or the control thread
// while the pool is not in any queue); everything else is Sync.
unsafe impl Send for ShadowPool {}
// SAFETY: as above.
unsafe impl Sync for ShadowPool {}

impl ShadowPool {
    /// Makes the shadows of a validated guest pool.
    pub fn new(region: &Arc<GuestRegion>, layout: PoolLayout, name: &str, socket: i32) -> Result<ShadowPool, String> {
        // SAFETY: `_region` below keeps the mapping alive as long as the ring view.
        let mem = unsafe { region.mem_static() };
        let ring = FreeRing::new(&mem, layout.ring_offset(), layout.ring_entries()).map_err(|e| format!("free ring: {e}"))?;
        let ctx = Arc::new(ShadowCtx {
            layout,
            ring,
            shadows: OnceLock::new(),
            contiguous: OnceLock::new(),
            owners: (0..layout.count()).map(|_| AtomicU8::new(OWNER_GUEST)).collect(),
            populating: AtomicBool::new(true),
            invalid: AtomicU64::new(0),
            parked: Mutex::new(Vec::with_capacity(layout.count() as usize)),
            parked_count: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        });
        let cname = CString::new(name).map_err(|_| "bad pool name".to_string())?;
        let elt_size = std::mem::size_of::<sys::rte_mbuf>() as c_uint + PRIV_SIZE as c_uint;
        // A per-lcore cache batches the data loop's free-ring operations; the loop
        // flushes it whenever it lets go of a queue.
        let cache = match layout.count() {
            n if n >= 1024 => 256,
            n if n >= 128 => 32,
            _ => 0,
        };
        // SAFETY: plain mempool creation; every error path frees what was made.
        unsafe {
            let mp = sys::rte_mempool_create_empty(
                cname.as_ptr(),
                layout.count(),
                elt_size,
                cache,
                std::mem::size_of::<sys::rte_pktmbuf_pool_private>() as c_uint,
                socket,
                // No spreading over memory channels: the shadows stay a power-of-two
                // stride apart (256 bytes), so the data loop computes an index with a
                // shift instead of reading it from a third cache line of each shadow.
                sys::RTE_MEMPOOL_F_NO_SPREAD,
            );
            if mp.is_null() {
                return Err(format!("rte_mempool_create_empty: {}", dpdk::errno_text(sys::dpdk_sys_errno())));
            }
            let pool = ShadowPool { ctx: ctx.clone(), mp, _region: region.clone() };
            let rc = sys::rte_mempool_set_ops_byname(mp, OPS_NAME.as_ptr(), Arc::as_ptr(&ctx) as *mut c_void);
            if rc != 0 {
                return Err(format!("rte_mempool_set_ops_byname: {}", dpdk::errno_text(rc)));
            }
            // What rte_pktmbuf_pool_init would write: NIC drivers size their buffers from it.
            let private = sys::rte_mempool_get_priv(mp) as *mut sys::rte_pktmbuf_pool_private;
            (*private).mbuf_data_room_size = layout.data_room();
            (*private).mbuf_priv_size = PRIV_SIZE;
            (*private).flags = 0;
            let placed = sys::rte_mempool_populate_default(mp);
            if placed < 0 || placed as u32 != layout.count() {
                return Err(format!("rte_mempool_populate_default placed {placed} of {} shadows", layout.count()));
            }
            let mut init = ShadowInit { ctx: &ctx, region, shadows: vec![0; layout.count() as usize], mp };
            sys::rte_mempool_obj_iter(mp, Some(init_shadow), &mut init as *mut ShadowInit as *mut c_void);
            let shadows = std::mem::take(&mut init.shadows);
            if shadows.iter().any(|&a| a == 0) {
                return Err("not every shadow was initialised".into());
            }
            match even_spacing(&shadows) {
                Some(spacing) => {
                    let _ = ctx.contiguous.set(spacing);
                }
                None => crate::log_info!("{name}: shadows not evenly spaced; their index is read from each"),
            }
            let _ = ctx.shadows.set(shadows.into_boxed_slice());
            ctx.populating.store(false, Ordering::Release);
            Ok(pool)
        }
    }

    pub fn mempool(&self) -> *mut sys::rte_mempool {
        self.mp
    }

    /// Buffers in the guest's free ring now (for `show stats`).
    pub fn free_ring_count(&self) -> u32 {
        self.ctx.ring.count().min(self.ctx.layout.count())
    }

    /// Buffers neither in the free ring nor in the proxy's pool cache: held by the guest,
    /// in flight, or held by the proxy's NIC queue (for `show stats`).
    pub fn in_use(&self) -> u32 {
        // SAFETY: the mempool lives as long as self.
        unsafe { sys::rte_mempool_in_use_count(self.mp) }
    }
}

impl Drop for ShadowPool {
    fn drop(&mut self) {
        // SAFETY: created in `new`; no queue uses it any more (owner's contract).
        unsafe { sys::rte_mempool_free(self.mp) };
    }
}

/// `(base, shift)` when `addrs[i] == base + (i << shift)` for every i.
fn even_spacing(addrs: &[usize]) -> Option<(usize, u32)> {
    let base = *addrs.first()?;
    let stride = match addrs.get(1) {
        Some(&next) => next.checked_sub(base)?,
        None => 1,
    };
    if !stride.is_power_of_two() {
        return None;
    }
    let shift = stride.trailing_zeros();
    addrs.iter().enumerate().all(|(i, &a)| a == base + (i << shift)).then_some((base, shift))
}

struct ShadowInit<'a> {
    ctx: &'a ShadowCtx,
    region: &'a GuestRegion,
    shadows: Vec<usize>,
    mp: *mut sys::rte_mempool,
}

unsafe extern "C" fn init_shadow(_mp: *mut sys::rte_mempool, opaque: *mut c_void, obj: *mut c_void, idx: c_uint) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: opaque is the ShadowInit that `ShadowPool::new` passes; obj is one of
        // the mempool's objects, `elt_size` bytes of this process's memory.
        unsafe {
            let init = &mut *(opaque as *mut ShadowInit);
            let layout = &init.ctx.layout;
            if idx >= layout.count() {
                return;
            }
            let m = obj as *mut sys::rte_mbuf;
            std::ptr::write_bytes(obj as *mut u8, 0, std::mem::size_of::<sys::rte_mbuf>() + PRIV_SIZE as usize);
            let data = init.region.base().wrapping_add(layout.data_offset(idx) as usize);
            (*m).buf_addr = data as *mut c_void;
            (*m).buf_iova = init.region.iova_of(data);
            (*m).buf_len = layout.data_room();
            (*m).data_off = (sys::RTE_PKTMBUF_HEADROOM as u16).min(layout.data_room());
            (*m).refcnt = 1;
            (*m).nb_segs = 1;
            (*m).port = sys::RTE_MBUF_PORT_INVALID as u16;
            (*m).pool = init.mp;
            (*m).priv_size = PRIV_SIZE;
            (*m).next = std::ptr::null_mut();
            (*shadow_priv(m)).index = idx;
            init.shadows[idx as usize] = m as usize;
        }
    }));
}

/// The ops state of a mempool that uses our ops.
///
/// # Safety
/// `mp` is a live mempool whose ops are ours.
unsafe fn ctx<'a>(mp: *const sys::rte_mempool) -> Option<&'a ShadowCtx> {
    // SAFETY: pool_data is the ShadowCtx that `ShadowPool::new` passed as pool_config
    // (copied by `pool_alloc`), kept alive by the ShadowPool that owns the mempool.
    unsafe { ((*mp).__bindgen_anon_1.pool_data as *const ShadowCtx).as_ref() }
}

/// Registers the ops; once per process, before any shadow pool is made.
pub fn register_ops() -> Result<(), String> {
    let mut ops = sys::rte_mempool_ops {
        alloc: Some(pool_alloc),
        free: Some(pool_free),
        enqueue: Some(pool_enqueue),
        dequeue: Some(pool_dequeue),
        get_count: Some(pool_get_count),
        ..Default::default()
    };
    for (dst, src) in ops.name.iter_mut().zip(OPS_NAME.to_bytes()) {
        *dst = *src as std::ffi::c_char;
    }
    // SAFETY: DPDK copies the ops into its table.
    let rc = unsafe { sys::rte_mempool_register_ops(&ops) };
    if rc < 0 {
        return Err(format!("rte_mempool_register_ops: {} (the ops table is full)", dpdk::errno_text(rc)));
    }
    Ok(())
}

unsafe extern "C" fn pool_alloc(mp: *mut sys::rte_mempool) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is being created; pool_config is what set_ops_byname stored.
        unsafe { (*mp).__bindgen_anon_1.pool_data = (*mp).pool_config };
        0
    })
    .unwrap_or(-libc::EINVAL)
}

unsafe extern "C" fn pool_free(_mp: *mut sys::rte_mempool) {
    // The ShadowCtx is owned by the ShadowPool, not by the mempool.
}

unsafe extern "C" fn pool_get_count(mp: *const sys::rte_mempool) -> c_uint {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is a live mempool with our ops.
        unsafe { ctx(mp) }.map_or(0, |c| c.ring.count().min(c.layout.count()))
    })
    .unwrap_or(0)
}

unsafe extern "C" fn pool_enqueue(mp: *mut sys::rte_mempool, objs: *const *mut c_void, n: c_uint) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is live with our ops; objs holds n shadows of this pool that the
        // caller gives back.
        unsafe {
            let Some(ctx) = ctx(mp) else { return -libc::EINVAL };
            if ctx.populating.load(Ordering::Acquire) {
                return 0;
            }
            let objs = std::slice::from_raw_parts(objs, n as usize);
            let mut offsets = [0u32; CHUNK];
            for chunk in objs.chunks(CHUNK) {
                let mut k = 0;
                for &obj in chunk {
                    let m = obj as *mut sys::rte_mbuf;
                    if !ctx.unclaim_if_held(m) {
                        // Freed twice inside this process: a driver bug; never give the
                        // guest the same buffer twice.
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    offsets[k] = ctx.offset_of(m);
                    k += 1;
                }
                if k > 0 {
                    ctx.give_back(&offsets[..k]);
                }
            }
            0
        }
    })
    .unwrap_or(-libc::EINVAL)
}

unsafe extern "C" fn pool_dequeue(mp: *mut sys::rte_mempool, objs: *mut *mut c_void, n: c_uint) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is live with our ops; objs has room for n pointers.
        unsafe {
            let Some(ctx) = ctx(mp) else { return -libc::EINVAL };
            let Some(shadows) = ctx.shadows.get() else { return -libc::ENOBUFS };
            let out = std::slice::from_raw_parts_mut(objs, n as usize);
            let mut got = 0usize;
            let mut offsets = [0u32; CHUNK];
            // Invalid entries are skipped and dequeued again; a guest that keeps refilling
            // its free ring with garbage must not keep the data loop in here, so the
            // rounds are bounded (an honest ring needs exactly ceil(n / CHUNK)).
            let mut rounds = out.len().div_ceil(CHUNK) + 2;
            while got < out.len() {
                if rounds == 0 {
                    undo_dequeue(ctx, &out[..got]);
                    return -libc::ENOBUFS;
                }
                rounds -= 1;
                let want = (out.len() - got).min(CHUNK);
                if let Err(e) = ctx.ring.dequeue_bulk(&mut offsets[..want], RING_RETRIES) {
                    if e == FreeRingError::Contended {
                        // Hundreds of lost races or stale positions: in practice, positions
                        // the guest rewrote. Counted with the guest's invalid input.
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                    }
                    // All or nothing: give back what this call took.
                    undo_dequeue(ctx, &out[..got]);
                    return -libc::ENOBUFS;
                }
                for &off in &offsets[..want] {
                    let shadow = ctx.layout.buffer_index(off).and_then(|i| shadows.get(i as usize));
                    let Some(&shadow) = shadow else {
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let m = shadow as *mut sys::rte_mbuf;
                    if !ctx.claim(m) {
                        // The guest freed a buffer the proxy holds: ignore the duplicate.
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out[got] = m as *mut c_void;
                    got += 1;
                }
            }
            0
        }
    })
    .unwrap_or(-libc::EINVAL)
}

/// # Safety
/// `objs` are shadows of `ctx`'s pool that the proxy claimed in this dequeue.
unsafe fn undo_dequeue(ctx: &ShadowCtx, objs: &[*mut c_void]) {
    let mut offsets = [0u32; CHUNK];
    for chunk in objs.chunks(CHUNK) {
        for (slot, &obj) in offsets.iter_mut().zip(chunk) {
            let m = obj as *mut sys::rte_mbuf;
            // SAFETY: per the contract.
            unsafe {
                ctx.release_to_guest(m);
                *slot = ctx.offset_of(m);
            }
        }
        ctx.give_back(&offsets[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_contract::layout::{RegionFlags, RegionLayout};
    use shm_contract::mem::HeapMem;
    use shm_contract::PoolAdd;

    /// A pool of `count` buffers whose free ring has exactly `count` cells, in heap memory.
    fn ctx(count: u32) -> (ShadowCtx, Vec<u32>) {
        let region = RegionLayout::new(64 << 20, 4096, 1024, 1024, RegionFlags::empty()).unwrap();
        let ring_bytes = FreeRing::bytes_for(count) as u32;
        let add = PoolAdd {
            pool_id: 0,
            ring_offset: region.heap().offset,
            ring_entries: count,
            first_mbuf_offset: region.heap().offset + ring_bytes.next_multiple_of(64) + 64,
            stride: 2432,
            count,
            mbuf_size: 128,
            data_room: 2176,
        };
        let layout = add.validate(&region, &[]).unwrap();
        let mem: &'static HeapMem = Box::leak(Box::new(HeapMem::new(64 << 20)));
        let ring = FreeRing::init(&mem.mem(), layout.ring_offset(), count).unwrap();
        let offsets = (0..count).map(|i| layout.buffer_offset(i)).collect();
        let ctx = ShadowCtx {
            layout,
            ring,
            shadows: OnceLock::new(),
            contiguous: OnceLock::new(),
            owners: (0..count).map(|_| AtomicU8::new(OWNER_GUEST)).collect(),
            populating: AtomicBool::new(false),
            invalid: AtomicU64::new(0),
            parked: Mutex::new(Vec::with_capacity(count as usize)),
            parked_count: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        };
        (ctx, offsets)
    }

    #[test]
    fn buffers_the_ring_refuses_are_parked_and_returned_first_later() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs[..8]);
        assert_eq!(ctx.ring.count(), 8);
        assert_eq!(ctx.parked(), 0);
        // Full ring (a guest that put garbage in it, or a peer mid-store): parked, not lost.
        ctx.give_back(&offs[..2]);
        assert_eq!(ctx.parked(), 2);
        assert_eq!(ctx.lost.load(Ordering::Relaxed), 0);
        // Room again: the parked ones go back before the new one, which is parked in turn.
        let mut out = [0u32; 2];
        ctx.ring.dequeue_bulk(&mut out, RING_RETRIES).unwrap();
        ctx.give_back(&offs[2..3]);
        assert_eq!(ctx.ring.count(), 8);
        assert_eq!(ctx.parked(), 1);
        // The control thread's retry finds room too.
        let mut one = [0u32; 1];
        ctx.ring.dequeue_bulk(&mut one, RING_RETRIES).unwrap();
        ctx.retry_parked();
        assert_eq!(ctx.parked(), 0);
        assert_eq!(ctx.ring.count(), 8);
    }

    #[test]
    fn even_spacing_is_found_only_when_every_shadow_fits_it() {
        assert_eq!(even_spacing(&[4096, 4352, 4608]), Some((4096, 8)));
        assert_eq!(even_spacing(&[4096]), Some((4096, 0)));
        assert_eq!(even_spacing(&[4096, 4352, 4609]), None);
        assert_eq!(even_spacing(&[4096, 4288]), None, "192 is not a power of two");
        assert_eq!(even_spacing(&[4096, 4000]), None);
        assert_eq!(even_spacing(&[]), None);
    }

    #[test]
    fn parking_is_bounded_by_the_pool_and_counts_the_rest_as_lost() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs);
        ctx.give_back(&offs);
        assert_eq!(ctx.parked(), 8);
        ctx.give_back(&offs[..3]);
        assert_eq!(ctx.parked(), 8);
        assert_eq!(ctx.lost.load(Ordering::Relaxed), 3);
    }
}
