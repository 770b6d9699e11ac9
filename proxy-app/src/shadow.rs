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

use dpdk::{sys, Mbuf, Mempool, PktPool};
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
    /// Index of the guest buffer in its pool (for a person reading a dump; the proxy
    /// finds an index from the shadow's address, see [`AddrIndex`]).
    index: u32,
    _pad: [u8; 4],
}

/// How a shadow's address gives its index in the pool.
enum AddrIndex {
    /// The shadows lie at `base + (index << shift)` (one populated chunk, as usual): the
    /// index is computed, without touching the shadow.
    Strided { base: usize, shift: u32 },
    /// Otherwise: (address, index) sorted by address, searched.
    Sorted(Box<[(usize, u32)]>),
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
    /// Index of each shadow, by address; set with `shadows`.
    by_addr: OnceLock<AddrIndex>,
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
    /// Index in this pool of the buffer whose `rte_mbuf` is at region offset `offset`,
    /// or `None` if `offset` is not exactly a buffer of this pool.
    #[inline]
    pub fn index_of_offset(&self, offset: u32) -> Option<u32> {
        self.layout.buffer_index(offset)
    }

    /// Index in this pool of the shadow at `addr`, or `None` if no shadow of this pool
    /// is there.
    #[inline]
    fn index_of_addr(&self, addr: usize) -> Option<u32> {
        let idx = match self.by_addr.get()? {
            &AddrIndex::Strided { base, shift } => {
                let from_base = addr.wrapping_sub(base);
                if from_base & ((1usize << shift) - 1) != 0 {
                    return None;
                }
                u32::try_from(from_base >> shift).ok()?
            }
            AddrIndex::Sorted(sorted) => {
                let at = sorted.binary_search_by_key(&addr, |&(a, _)| a).ok()?;
                sorted[at].1
            }
        };
        (idx < self.layout.count()).then_some(idx)
    }

    /// Index in this pool of a packet's first segment, if it is one of its shadows.
    #[inline]
    pub fn index_of(&self, m: &Mbuf) -> Option<u32> {
        self.index_of_addr(m.as_ptr() as usize)
    }

    #[inline]
    fn owner(&self, idx: u32) -> Option<&AtomicU8> {
        self.owners.get(idx as usize)
    }

    /// Region offset of the guest buffer behind the segment at `addr` (a
    /// [`dpdk::Segment`]'s address), if that is a shadow of this pool.
    #[inline]
    pub fn offset_of_segment(&self, addr: *const sys::rte_mbuf) -> Option<u32> {
        self.index_of_addr(addr as usize).map(|idx| self.layout.buffer_offset(idx))
    }

    /// Takes buffer `idx` for the proxy: its shadow, as a packet the caller owns, or
    /// `None` if the proxy holds it already (or there is no such buffer).
    ///
    /// The caller is the pool's only user right now (the data loop while the queue is
    /// polled, the control thread otherwise).
    #[inline]
    pub fn claim(&self, idx: u32) -> Option<Mbuf> {
        let addr = *self.shadows.get()?.get(idx as usize)?;
        let owner = self.owner(idx)?;
        if owner.load(Ordering::Relaxed) != OWNER_GUEST {
            return None;
        }
        owner.store(OWNER_PROXY, Ordering::Relaxed);
        // SAFETY: `addr` is shadow `idx`, an mbuf of this pool's mempool made by
        // `ShadowPool::new` (reference count 1, direct, unlinked whenever the guest has
        // it), whose mempool is freed only after every user of the pool let go (the
        // data loop and the rx queue hold its `PktPool`). Its mark just moved from the
        // guest to the proxy, and the proxy uses a shadow only while it holds the mark,
        // so the returned value owns it exclusively.
        unsafe { Mbuf::from_raw(addr as *mut sys::rte_mbuf) }
    }

    /// Hands a shadow of this pool to the guest's side without returning it to the free
    /// ring: the guest owns the buffer now (an rx descriptor names it), or still does (a
    /// claim undone). Hands `m` back if it is not a single shadow of this pool.
    #[inline]
    pub fn release_to_guest(&self, m: Mbuf) -> Result<(), Mbuf> {
        let Some(idx) = self.index_of(&m) else { return Err(m) };
        if m.nb_segs() != 1 {
            return Err(m);
        }
        if let Some(owner) = self.owner(idx) {
            owner.store(OWNER_GUEST, Ordering::Relaxed);
        }
        // The shadow is the guest's now: it comes back through the free ring.
        let _ = m.into_raw();
        Ok(())
    }

    /// Gives the mark of buffer `idx` back to the guest. Returns false if the proxy did
    /// not hold it.
    #[inline]
    fn unclaim_if_held(&self, idx: u32) -> bool {
        let Some(owner) = self.owner(idx) else { return false };
        if owner.load(Ordering::Relaxed) != OWNER_PROXY {
            return false;
        }
        owner.store(OWNER_GUEST, Ordering::Relaxed);
        true
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

}

#[inline]
fn shadow_priv(m: *const sys::rte_mbuf) -> *mut ShadowPriv {
    (m as *mut u8).wrapping_add(std::mem::size_of::<sys::rte_mbuf>()) as *mut ShadowPriv
}

/// A guest pool as the proxy sees it: the validated layout and free ring ([`ShadowCtx`])
/// and the mempool of shadows, owned through the DPDK layer ([`PktPool`]). The mempool
/// keeps its ops state and the guest's mapping alive until it is freed, which is when
/// its last user lets go: this value, an rx queue set up with it, the data loop.
pub struct ShadowPool {
    pub ctx: Arc<ShadowCtx>,
    pool: PktPool,
}

/// A guest pool as a queue uses it: cheap to clone.
#[derive(Clone)]
pub struct GuestPool {
    pub ctx: Arc<ShadowCtx>,
    pub pool: PktPool,
}

impl ShadowPool {
    /// Makes the shadows of a validated guest pool.
    pub fn new(region: &Arc<GuestRegion>, layout: PoolLayout, name: &str, socket: i32) -> Result<ShadowPool, String> {
        // SAFETY: the mempool below keeps `region` (its ops state) alive as long as the
        // ring view, which lives in the ShadowCtx it keeps too.
        let mem = unsafe { region.mem_static() };
        let ring = FreeRing::new(&mem, layout.ring_offset(), layout.ring_entries()).map_err(|e| format!("free ring: {e}"))?;
        let ctx = Arc::new(ShadowCtx {
            layout,
            ring,
            shadows: OnceLock::new(),
            by_addr: OnceLock::new(),
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
        // SAFETY: plain mempool creation.
        let mp = unsafe {
            sys::rte_mempool_create_empty(
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
            )
        };
        if mp.is_null() {
            // SAFETY: reads this thread's rte_errno.
            return Err(format!("rte_mempool_create_empty: {}", dpdk::errno_text(unsafe { sys::dpdk_sys_errno() })));
        }
        let ops_state: (Arc<ShadowCtx>, Arc<GuestRegion>) = (ctx.clone(), region.clone());
        // SAFETY: a fresh mempool nothing else frees; its ops (set below) use the
        // ShadowCtx, kept with the guest's mapping as the pool's ops state. On error the
        // mempool is freed by the drop of `pool`.
        let pool = unsafe { PktPool::from_raw_owning(mp, Box::new(ops_state)) }.map_err(|e| e.to_string())?;
        // SAFETY: the ops were registered at startup; pool_config is the ShadowCtx, which
        // lives as long as the mempool (its ops state).
        let rc = unsafe { sys::rte_mempool_set_ops_byname(mp, OPS_NAME.as_ptr(), Arc::as_ptr(&ctx) as *mut c_void) };
        if rc != 0 {
            return Err(format!("rte_mempool_set_ops_byname: {}", dpdk::errno_text(rc)));
        }
        // SAFETY: the private area of a mempool made with room for the packet-pool
        // private struct; what rte_pktmbuf_pool_init would write (NIC drivers size their
        // buffers from it).
        unsafe {
            let private = sys::rte_mempool_get_priv(mp) as *mut sys::rte_pktmbuf_pool_private;
            (*private).mbuf_data_room_size = layout.data_room();
            (*private).mbuf_priv_size = PRIV_SIZE;
            (*private).flags = 0;
        }
        // SAFETY: populates the mempool with our ops set (the enqueues are ignored while
        // `populating`).
        let placed = unsafe { sys::rte_mempool_populate_default(mp) };
        if placed < 0 || placed as u32 != layout.count() {
            return Err(format!("rte_mempool_populate_default placed {placed} of {} shadows", layout.count()));
        }
        let mut init = ShadowInit { ctx: &ctx, region, shadows: vec![0; layout.count() as usize], mp };
        // SAFETY: `init_shadow` gets our ShadowInit, alive through the synchronous walk.
        unsafe { sys::rte_mempool_obj_iter(mp, Some(init_shadow), &mut init as *mut ShadowInit as *mut c_void) };
        let shadows = std::mem::take(&mut init.shadows);
        if shadows.contains(&0) {
            return Err("not every shadow was initialised".into());
        }
        let by_addr = match even_spacing(&shadows) {
            Some((base, shift)) => AddrIndex::Strided { base, shift },
            None => {
                crate::log_info!("{name}: shadows not evenly spaced; their index is looked up by address");
                let mut sorted: Vec<(usize, u32)> = shadows.iter().enumerate().map(|(i, &a)| (a, i as u32)).collect();
                sorted.sort_unstable();
                AddrIndex::Sorted(sorted.into_boxed_slice())
            }
        };
        let _ = ctx.by_addr.set(by_addr);
        let _ = ctx.shadows.set(shadows.into_boxed_slice());
        ctx.populating.store(false, Ordering::Release);
        Ok(ShadowPool { ctx, pool })
    }

    /// The pool as a queue holds it.
    pub fn guest_pool(&self) -> GuestPool {
        GuestPool { ctx: self.ctx.clone(), pool: self.pool.clone() }
    }

    /// The mempool of shadows.
    pub fn pool(&self) -> &PktPool {
        &self.pool
    }

    /// Buffers in the guest's free ring now (for `show stats`).
    pub fn free_ring_count(&self) -> u32 {
        self.ctx.ring.count().min(self.ctx.layout.count())
    }

    /// Buffers neither in the free ring nor in the proxy's pool cache: held by the guest,
    /// in flight, or held by the proxy's NIC queue (for `show stats`).
    pub fn in_use(&self) -> u32 {
        self.pool.mempool().in_use_count()
    }
}

impl GuestPool {
    /// The mempool of shadows, as a view.
    #[inline]
    pub fn mempool(&self) -> Mempool<'_> {
        self.pool.mempool()
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
    // (copied by `pool_alloc`), kept alive as the mempool's ops state (PktPool).
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
                    let held = ctx.index_of_addr(obj as usize).filter(|&idx| ctx.unclaim_if_held(idx));
                    let Some(idx) = held else {
                        // Freed twice inside this process (a driver bug), or not one of
                        // ours: never give the guest the same buffer twice.
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    offsets[k] = ctx.layout.buffer_offset(idx);
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
                    let Some(idx) = ctx.layout.buffer_index(off).filter(|&i| (i as usize) < shadows.len()) else {
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    // The guest freed a buffer the proxy holds: ignore the duplicate.
                    let Some(m) = ctx.claim(idx) else {
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    // DPDK owns the object from here (the mempool hands it out).
                    out[got] = m.into_raw() as *mut c_void;
                    got += 1;
                }
            }
            0
        }
    })
    .unwrap_or(-libc::EINVAL)
}

/// Gives back the shadows a failed dequeue took (`objs`, claimed by it).
fn undo_dequeue(ctx: &ShadowCtx, objs: &[*mut c_void]) {
    let mut offsets = [0u32; CHUNK];
    for chunk in objs.chunks(CHUNK) {
        let mut k = 0;
        for &obj in chunk {
            // Per the contract these are ours; anything else is left alone.
            if let Some(idx) = ctx.index_of_addr(obj as usize).filter(|&idx| ctx.unclaim_if_held(idx)) {
                offsets[k] = ctx.layout.buffer_offset(idx);
                k += 1;
            }
        }
        ctx.give_back(&offsets[..k]);
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
            by_addr: OnceLock::new(),
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
    fn a_shadow_index_comes_only_from_an_address_of_one_of_the_pools_shadows() {
        let (strided, _) = ctx(8);
        let _ = strided.by_addr.set(AddrIndex::Strided { base: 0x10000, shift: 8 });
        assert_eq!(strided.index_of_addr(0x10000), Some(0));
        assert_eq!(strided.index_of_addr(0x10000 + 7 * 256), Some(7));
        assert_eq!(strided.index_of_addr(0x10000 + 8 * 256), None, "past the pool");
        assert_eq!(strided.index_of_addr(0x10000 + 100), None, "inside a shadow");
        assert_eq!(strided.index_of_addr(0xff00), None, "before the pool");
        let (sorted, _) = ctx(4);
        let by_addr = vec![(0x5000, 2), (0x7000, 0), (0x9000, 1), (0xb000, 3)];
        let _ = sorted.by_addr.set(AddrIndex::Sorted(by_addr.into_boxed_slice()));
        assert_eq!(sorted.index_of_addr(0x7000), Some(0));
        assert_eq!(sorted.index_of_addr(0x5000), Some(2));
        assert_eq!(sorted.index_of_addr(0x5001), None);
        // Nothing to claim before the shadows exist.
        assert!(sorted.claim(0).is_none());
        assert!(!sorted.unclaim_if_held(0), "the guest holds it");
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
