//! Packet pools over buffers the application provides (for example memory it shares with
//! another process), whose free list is Rust code: [`ExtPool`].
//!
//! DPDK sees an ordinary mempool of packet mbufs: NIC rx queues fill from it, freeing an
//! mbuf returns it. Each mbuf's header lives in this process; its buffer is wherever the
//! application said. The free list is the application's [`ExtPoolOps`], which deals in
//! buffer *indices* only: this layer turns them into mbufs and back, and keeps a mark
//! per buffer (held by this process, or not), so that an index the free list hands out
//! while its mbuf is in use here, or twice, is refused instead of becoming two owners
//! of one mbuf. That is what makes a free list in memory another process writes safe
//! to use.
//!
//! Buffers leave the pool in two ways: DPDK allocates them (the ops' `get`), or the
//! application [`take`](ExtPool::take)s a given index (a buffer the other side handed
//! over). They come back when DPDK frees them (the ops' `put`), or the application
//! [`release`](ExtPool::release)s one without freeing it (handed to the other side, or
//! a take undone).

use std::any::Any;
use std::ffi::{c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::{sys, Eal, Error, Mbuf, Mempool, PktPool};
use shm_contract::freelist::HeldMarks;

/// The free list of an [`ExtPool`]. Called from DPDK's mempool operations, on whatever
/// thread allocates or frees (usually the application's data-path lcore).
pub trait ExtPoolOps: Send + Sync + 'static {
    /// Buffers that came back (their mbufs were freed): into the free list.
    fn put(&self, idx: &[u32]);
    /// Takes up to `out.len()` buffers from the free list into `out`; returns how many.
    /// Fewer (even 0) is fine: the pool asks again, a bounded number of times, and
    /// gives back what it took when it cannot get all it needs.
    fn get(&self, out: &mut [u32]) -> usize;
    /// Buffers in the free list (an estimate is fine).
    fn count(&self) -> u32;
    /// `n` indices from `get` were refused: out of range, or held by this process.
    fn refused(&self, n: u32);
}

/// Buffers moved per call of the ops: a stack array, no allocation.
const CHUNK: usize = 64;

/// How a header's address gives its buffer's index.
enum AddrIndex {
    /// The headers lie at `base + (index << shift)` (one populated chunk): the index is
    /// computed, without touching the header.
    Strided { base: usize, shift: u32 },
    /// The headers lie in a few runs of that shape, one per chunk DPDK populated (it
    /// takes memory page by page when no contiguous zone of the pool's size is free,
    /// as on a proxy whose hugepages other guests' pools have fragmented): the run is
    /// found by a scan of at most [`MAX_RUNS`], the index computed within it.
    Runs { shift: u32, runs: Box<[Run]> },
    /// Otherwise: (address, index) sorted by address, searched.
    Sorted(Box<[(usize, u32)]>),
}

/// Buffers `first..first + count`, their headers at `base + ((index - first) << shift)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    base: usize,
    first: u32,
    count: u32,
}

/// The most runs [`AddrIndex::Runs`] scans: beyond that a binary search is cheaper.
const MAX_RUNS: usize = 8;

/// What the mempool's operations use; `pool_data` points at it.
struct ExtState {
    ops: Arc<dyn ExtPoolOps>,
    count: u32,
    /// Header address of each buffer, by index; set once after populate.
    headers: OnceLock<Box<[usize]>>,
    by_addr: OnceLock<AddrIndex>,
    /// Held by this process or not, per buffer: one byte each, in one small array.
    /// Plain byte loads and stores (`take_single`): one thread uses a buffer at a time.
    marks: HeldMarks,
    /// While DPDK populates the mempool it frees every new object: those buffers are in
    /// the free list already, so such frees are ignored.
    populating: AtomicBool,
}

impl AddrIndex {
    /// The index of headers at `headers` (by buffer index).
    fn of(headers: &[usize]) -> AddrIndex {
        match strided_runs(headers) {
            Some((shift, runs)) if runs.len() == 1 => AddrIndex::Strided { base: runs[0].base, shift },
            Some((shift, runs)) => AddrIndex::Runs { shift, runs: runs.into_boxed_slice() },
            None => {
                let mut sorted: Vec<(usize, u32)> = headers.iter().enumerate().map(|(i, &a)| (a, i as u32)).collect();
                sorted.sort_unstable();
                AddrIndex::Sorted(sorted.into_boxed_slice())
            }
        }
    }

    /// Header address of buffer `idx` (below the pool's count): computed where the
    /// headers are strided, which keeps the 8-byte-per-buffer table out of the cache.
    #[inline]
    fn header(&self, idx: u32, headers: &OnceLock<Box<[usize]>>) -> Option<usize> {
        match self {
            &AddrIndex::Strided { base, shift } => Some(base + ((idx as usize) << shift)),
            AddrIndex::Runs { shift, runs } => {
                let run = runs.iter().find(|r| idx.wrapping_sub(r.first) < r.count)?;
                Some(run.base + (((idx - run.first) as usize) << shift))
            }
            AddrIndex::Sorted(_) => headers.get()?.get(idx as usize).copied(),
        }
    }
}

impl ExtState {
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
            AddrIndex::Runs { shift, runs } => {
                // Header addresses are distinct, so at most one run holds `addr`.
                let run = runs.iter().find(|r| addr.wrapping_sub(r.base) < (r.count as usize) << shift)?;
                let from_base = addr - run.base;
                if from_base & ((1usize << shift) - 1) != 0 {
                    return None;
                }
                run.first + (from_base >> shift) as u32
            }
            AddrIndex::Sorted(sorted) => {
                let at = sorted.binary_search_by_key(&addr, |&(a, _)| a).ok()?;
                sorted[at].1
            }
        };
        (idx < self.count).then_some(idx)
    }

    /// Header address of buffer `idx`, if there is such a buffer (and the pool is made).
    #[inline]
    fn header(&self, idx: u32) -> Option<usize> {
        if idx >= self.count {
            return None;
        }
        // Evenly spaced headers: the address is computed (idx is below `count`, so it is
        // a buffer's), which keeps the 8-byte-per-buffer table out of the cache.
        self.by_addr.get()?.header(idx, &self.headers)
    }

    /// Marks buffer `idx` held; its header address, or None if it was held already or
    /// there is no such buffer.
    #[inline]
    fn hold(&self, idx: u32) -> Option<usize> {
        if idx >= self.count {
            return None;
        }
        // Evenly spaced headers: the address is computed (idx is a buffer's), which keeps
        // the 8-byte-per-buffer table out of the cache.
        let addr = self.by_addr.get()?.header(idx, &self.headers)?;
        self.marks.take_single(idx).then_some(addr)
    }

    /// Buffers marked held.
    fn held(&self) -> u32 {
        self.marks.held_count()
    }

    /// Marks buffer `idx` outside; false if it was not held.
    #[inline]
    fn unhold(&self, idx: u32) -> bool {
        self.marks.give_up_single(idx)
    }
}

/// A pool of packet mbufs over the application's buffers, its free list an
/// [`ExtPoolOps`]. Cheap to clone; the mempool is freed with the last [`PktPool`]
/// reference (this value's clones, an rx queue set up with [`ExtPool::pkt_pool`]).
#[derive(Clone)]
pub struct ExtPool {
    pool: PktPool,
    state: Arc<ExtState>,
    /// The state's index when the headers lie at one stride (the usual case), copied
    /// out of it: the data loop's `take` and `release` compute an index or an address
    /// from these plain fields instead of going through the `OnceLock` and the match.
    stride: Option<Stride>,
}

/// Headers `0..count` at `base + (index << shift)` ([`AddrIndex::Strided`]).
#[derive(Clone, Copy)]
struct Stride {
    base: usize,
    shift: u32,
    count: u32,
}

impl Stride {
    /// The index of the header at `addr`, if that is exactly one of them.
    #[inline(always)]
    fn index_of(&self, addr: usize) -> Option<u32> {
        let from_base = addr.wrapping_sub(self.base);
        let idx = from_base >> self.shift;
        if from_base & ((1usize << self.shift) - 1) != 0 || idx >= self.count as usize {
            return None;
        }
        Some(idx as u32)
    }

    /// The header address of buffer `idx`, if there is such a buffer.
    #[inline(always)]
    fn header(&self, idx: u32) -> Option<usize> {
        (idx < self.count).then(|| self.base + ((idx as usize) << self.shift))
    }
}

/// The ops name, once registered.
static OPS_NAME: OnceLock<CString> = OnceLock::new();

/// Where a buffer is: its address in this process and its IO address.
#[derive(Debug, Clone, Copy)]
pub struct ExtBuffer {
    /// Address of the buffer.
    pub addr: *mut u8,
    /// Its IO address, for devices.
    pub iova: u64,
}

/// How to make an [`ExtPool`].
pub struct ExtPoolSpec<'a> {
    /// Mempool name (unique in the process).
    pub name: &'a str,
    /// Buffers.
    pub count: u32,
    /// Bytes of each buffer.
    pub data_room: u16,
    /// Bytes of private area behind each header (a multiple of 8). The headers are
    /// `64 + (128 + priv_size rounded up to 64)` bytes apart: 8 makes that 256, a power
    /// of two, so an index is computed rather than searched.
    pub priv_size: u16,
    /// Per-lcore cache size (0: none).
    pub cache: u32,
    /// NUMA socket.
    pub socket: i32,
}

impl ExtPool {
    /// Registers the mempool operations under `name`; once per process, after EAL init
    /// (a mempool names its ops by index in a per-process table: registering behind the
    /// ops of the drivers EAL loaded keeps that table like a secondary process's, such
    /// as `dpdk-dumpcap`'s).
    pub fn register_ops(_eal: &Eal, name: &CStr) -> Result<(), Error> {
        const CALL: &str = "rte_mempool_register_ops";
        if OPS_NAME.get().is_some() || name.to_bytes().len() >= sys::RTE_MEMPOOL_OPS_NAMESIZE as usize {
            return Err(Error::new(CALL, libc::EINVAL));
        }
        let mut ops = sys::rte_mempool_ops {
            alloc: Some(ops_alloc),
            free: Some(ops_free),
            enqueue: Some(ops_enqueue),
            dequeue: Some(ops_dequeue),
            get_count: Some(ops_get_count),
            ..Default::default()
        };
        for (dst, src) in ops.name.iter_mut().zip(name.to_bytes()) {
            *dst = *src as std::ffi::c_char;
        }
        // SAFETY: DPDK copies the ops into its table.
        crate::check(CALL, unsafe { sys::rte_mempool_register_ops(&ops) })?;
        let _ = OPS_NAME.set(name.to_owned());
        Ok(())
    }

    /// Makes the pool: `spec.count` mbufs, mbuf `i`'s buffer at `buffer(i)`, `data_room`
    /// bytes, its free list `ops` (which holds every buffer when this is called).
    /// `keep` is kept until the mempool is freed (for example what keeps the buffers'
    /// memory mapped). Fails with `ENOENT` before [`ExtPool::register_ops`].
    ///
    /// # Safety
    /// For every `i < spec.count`, `buffer(i).addr` is `data_room` bytes of memory that
    /// stays mapped until the mempool is freed (`keep` may guarantee it), not used as
    /// another of the pool's buffers, and `iova` its IO address.
    pub unsafe fn new(
        spec: &ExtPoolSpec<'_>,
        mut buffer: impl FnMut(u32) -> ExtBuffer,
        ops: Arc<dyn ExtPoolOps>,
        keep: Box<dyn Any + Send + Sync>,
    ) -> Result<ExtPool, Error> {
        const CALL: &str = "rte_mempool_create_empty";
        let ops_name = OPS_NAME.get().ok_or(Error::new(CALL, libc::ENOENT))?;
        let cname = CString::new(spec.name).map_err(|_| Error::new(CALL, libc::EINVAL))?;
        let count = spec.count;
        let state = Arc::new(ExtState {
            ops,
            count,
            headers: OnceLock::new(),
            by_addr: OnceLock::new(),
            marks: HeldMarks::new(count),
            populating: AtomicBool::new(true),
        });
        let elt_size = std::mem::size_of::<sys::rte_mbuf>() as c_uint + spec.priv_size as c_uint;
        // SAFETY: plain mempool creation.
        let mp = unsafe {
            sys::rte_mempool_create_empty(
                cname.as_ptr(),
                count,
                elt_size,
                spec.cache,
                std::mem::size_of::<sys::rte_pktmbuf_pool_private>() as c_uint,
                spec.socket,
                // No spreading over memory channels, and no skipping to the next page
                // where a header would cross a page boundary: the headers stay a fixed
                // stride apart, so an index is computed from an address. (With page
                // boundaries respected, a zone that does not start at a multiple of the
                // stride from a page boundary split the headers into two runs, which
                // cost the data loop a run search per packet. Devices never read or
                // write a header, only the buffer at `buf_iova`, which `init_header`
                // sets from the caller's address: the headers need no IOVA-contiguous
                // memory.)
                sys::RTE_MEMPOOL_F_NO_SPREAD | sys::RTE_MEMPOOL_F_NO_IOVA_CONTIG,
            )
        };
        if mp.is_null() {
            return Err(Error::from_rte_errno(CALL));
        }
        let ops_state: Box<dyn Any + Send + Sync> = Box::new((state.clone(), keep));
        // SAFETY: a fresh mempool nothing else frees; its ops (set below) use the state,
        // kept as the pool's ops state together with `keep`. On error the drop of
        // `pool` frees the mempool.
        let pool = unsafe { PktPool::from_raw_owning(mp, ops_state) }?;
        // SAFETY: the ops are registered (OPS_NAME is set after that); pool_config is the
        // state, alive as long as the mempool.
        crate::check("rte_mempool_set_ops_byname", unsafe {
            sys::rte_mempool_set_ops_byname(mp, ops_name.as_ptr(), Arc::as_ptr(&state) as *mut c_void)
        })?;
        // SAFETY: the private area of a mempool made with room for the packet-pool
        // private struct; what rte_pktmbuf_pool_init would write (drivers size their
        // buffers from it).
        unsafe {
            let private = sys::rte_mempool_get_priv(mp) as *mut sys::rte_pktmbuf_pool_private;
            (*private).mbuf_data_room_size = spec.data_room;
            (*private).mbuf_priv_size = spec.priv_size;
            (*private).flags = 0;
        }
        // SAFETY: populates the mempool (its frees are ignored while `populating`).
        let placed = unsafe { sys::rte_mempool_populate_default(mp) };
        if placed < 0 {
            return Err(Error::new("rte_mempool_populate_default", placed));
        }
        if placed as u32 != count {
            return Err(Error::new("rte_mempool_populate_default", libc::ENOMEM));
        }
        let mut init = HeaderInit {
            mp,
            data_room: spec.data_room,
            priv_size: spec.priv_size,
            buffer: &mut buffer,
            headers: vec![0; count as usize],
        };
        // SAFETY: `init_header` gets our HeaderInit, alive through the synchronous walk.
        unsafe { sys::rte_mempool_obj_iter(mp, Some(init_header), &mut init as *mut HeaderInit<'_> as *mut c_void) };
        let headers = std::mem::take(&mut init.headers);
        if headers.contains(&0) {
            return Err(Error::new("rte_mempool_obj_iter", libc::EFAULT));
        }
        let by_addr = AddrIndex::of(&headers);
        let stride = match by_addr {
            AddrIndex::Strided { base, shift } => Some(Stride { base, shift, count }),
            _ => None,
        };
        // Headers first: `hold` hands out nothing before the address index is set.
        let _ = state.headers.set(headers.into_boxed_slice());
        let _ = state.by_addr.set(by_addr);
        state.populating.store(false, Ordering::Release);
        Ok(ExtPool { pool, state, stride })
    }

    /// The mempool, for rx queues ([`crate::Port::rx_queue_setup_pool`]) and identity.
    #[inline]
    pub fn pkt_pool(&self) -> &PktPool {
        &self.pool
    }

    /// A view of the mempool, for counters, copies and cache flushes.
    #[inline]
    pub fn mempool(&self) -> Mempool<'_> {
        self.pool.mempool()
    }

    /// Whether an index is computed from an address (the headers lie at one
    /// power-of-two stride, in at most `MAX_RUNS` runs), not searched for.
    pub fn strided(&self) -> bool {
        matches!(self.state.by_addr.get(), Some(AddrIndex::Strided { .. } | AddrIndex::Runs { .. }))
    }

    /// How many buffers this process holds now: taken or allocated and not yet given
    /// back to the free list, so in the application's hands, in a device's queues, or
    /// in a per-lcore cache of the mempool. One byte read per buffer (a scan, for the
    /// control path); a buffer taken or given back by another thread during the scan
    /// may be counted either way.
    pub fn held_count(&self) -> u32 {
        self.state.held()
    }

    /// Index of the buffer whose header is at `addr` (a [`crate::Segment`]'s address),
    /// if that is one of this pool's.
    #[inline(always)]
    pub fn index_of_addr(&self, addr: *const sys::rte_mbuf) -> Option<u32> {
        match &self.stride {
            Some(stride) => stride.index_of(addr as usize),
            None => self.state.index_of_addr(addr as usize),
        }
    }

    /// Takes buffer `idx` for this process: its mbuf, owned by the caller, or `None` if
    /// it is held here already (or there is no such buffer). The caller answers for the
    /// buffer not being in the free list (it takes what the other side handed over).
    #[inline(always)]
    pub fn take(&self, idx: u32) -> Option<Mbuf> {
        let addr = match &self.stride {
            Some(stride) => {
                let addr = stride.header(idx)?;
                self.state.marks.take_single(idx).then_some(addr)?
            }
            None => self.state.hold(idx)?,
        };
        // SAFETY: `addr` is the header of buffer `idx`, an mbuf of this mempool made in
        // `new` (reference count 1, direct, unlinked whenever it is outside), and the
        // mempool is freed only with the last PktPool reference, which the caller's
        // `self` is. Its mark just moved to held, and this layer hands out a header
        // only while moving its mark so, so the returned value owns it exclusively.
        unsafe { Mbuf::from_raw(addr as *mut sys::rte_mbuf) }
    }

    /// Lets go of a single-segment mbuf of this pool without freeing it: its buffer is
    /// outside this process's hands again (handed to the other side, or a take undone).
    /// Returns its index, or hands `m` back if it is not one of this pool's, or chained.
    #[inline(always)]
    pub fn release(&self, m: Mbuf) -> Result<u32, Mbuf> {
        let Some(idx) = self.index_of_addr(m.as_ptr()) else {
            return Err(m);
        };
        if m.nb_segs() != 1 || !self.state.unhold(idx) {
            return Err(m);
        }
        let _ = m.into_raw();
        Ok(idx)
    }
}

struct HeaderInit<'a> {
    mp: *mut sys::rte_mempool,
    data_room: u16,
    priv_size: u16,
    buffer: &'a mut dyn FnMut(u32) -> ExtBuffer,
    headers: Vec<usize>,
}

unsafe extern "C" fn init_header(_mp: *mut sys::rte_mempool, opaque: *mut c_void, obj: *mut c_void, idx: c_uint) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: opaque is the HeaderInit that `ExtPool::new` passes; obj is one of the
        // mempool's objects, header plus private area, in this process's memory.
        unsafe {
            let init = &mut *(opaque as *mut HeaderInit<'_>);
            if idx as usize >= init.headers.len() {
                return;
            }
            let m = obj as *mut sys::rte_mbuf;
            std::ptr::write_bytes(obj as *mut u8, 0, std::mem::size_of::<sys::rte_mbuf>() + init.priv_size as usize);
            let buf = (init.buffer)(idx);
            (*m).buf_addr = buf.addr as *mut c_void;
            (*m).buf_iova = buf.iova;
            (*m).buf_len = init.data_room;
            (*m).data_off = (sys::RTE_PKTMBUF_HEADROOM as u16).min(init.data_room);
            (*m).refcnt = 1;
            (*m).nb_segs = 1;
            (*m).port = sys::RTE_MBUF_PORT_INVALID as u16;
            (*m).pool = init.mp;
            (*m).priv_size = init.priv_size;
            (*m).next = std::ptr::null_mut();
            init.headers[idx as usize] = m as usize;
        }
    }));
}

/// The headers as runs of one power-of-two stride (the first two headers' distance),
/// each run starting where the one before cannot go on; `None` if the stride is not
/// a power of two or there are more than [`MAX_RUNS`] runs.
fn strided_runs(addrs: &[usize]) -> Option<(u32, Vec<Run>)> {
    let base = *addrs.first()?;
    let stride = match addrs.get(1) {
        Some(&next) => next.checked_sub(base)?,
        None => 1,
    };
    if !stride.is_power_of_two() {
        return None;
    }
    let shift = stride.trailing_zeros();
    let mut runs = vec![Run { base, first: 0, count: 1 }];
    for (i, &addr) in addrs.iter().enumerate().skip(1) {
        let last = runs.last_mut()?;
        if addr == last.base.wrapping_add((last.count as usize) << shift) {
            last.count += 1;
        } else if runs.len() == MAX_RUNS {
            return None;
        } else {
            runs.push(Run { base: addr, first: u32::try_from(i).ok()?, count: 1 });
        }
    }
    Some((shift, runs))
}

/// The state of a mempool with our ops.
///
/// # Safety
/// `mp` is a live mempool whose ops are ours.
unsafe fn state<'a>(mp: *const sys::rte_mempool) -> Option<&'a ExtState> {
    // SAFETY: pool_data is the ExtState that `ExtPool::new` passed as pool_config
    // (copied by `ops_alloc`), kept alive as the mempool's ops state.
    unsafe { ((*mp).__bindgen_anon_1.pool_data as *const ExtState).as_ref() }
}

unsafe extern "C" fn ops_alloc(mp: *mut sys::rte_mempool) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is being created; pool_config is what set_ops_byname stored.
        unsafe { (*mp).__bindgen_anon_1.pool_data = (*mp).pool_config };
        0
    })
    .unwrap_or(-libc::EINVAL)
}

unsafe extern "C" fn ops_free(_mp: *mut sys::rte_mempool) {
    // The state is owned by the PktPool's ops state, not by the mempool.
}

unsafe extern "C" fn ops_get_count(mp: *const sys::rte_mempool) -> c_uint {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is a live mempool with our ops.
        unsafe { state(mp) }.map_or(0, |s| s.ops.count().min(s.count))
    })
    .unwrap_or(0)
}

unsafe extern "C" fn ops_enqueue(mp: *mut sys::rte_mempool, objs: *const *mut c_void, n: c_uint) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is live with our ops; objs holds n objects the caller gives back.
        let (Some(st), objs) = (unsafe { state(mp) }, unsafe { std::slice::from_raw_parts(objs, n as usize) }) else {
            return -libc::EINVAL;
        };
        if st.populating.load(Ordering::Acquire) {
            return 0;
        }
        let mut idx = [0u32; CHUNK];
        for chunk in objs.chunks(CHUNK) {
            let mut k = 0;
            let mut refused = 0;
            for &obj in chunk {
                match st.index_of_addr(obj as usize).filter(|&i| st.unhold(i)) {
                    Some(i) => {
                        idx[k] = i;
                        k += 1;
                    }
                    // Freed twice inside this process (a driver bug), or not one of
                    // ours: never give the free list the same buffer twice.
                    None => refused += 1,
                }
            }
            if refused > 0 {
                st.ops.refused(refused);
            }
            if k > 0 {
                st.ops.put(&idx[..k]);
            }
        }
        0
    })
    .unwrap_or(-libc::EINVAL)
}

unsafe extern "C" fn ops_dequeue(mp: *mut sys::rte_mempool, objs: *mut *mut c_void, n: c_uint) -> c_int {
    std::panic::catch_unwind(|| {
        // SAFETY: mp is live with our ops; objs has room for n pointers.
        let (Some(st), out) = (unsafe { state(mp) }, unsafe { std::slice::from_raw_parts_mut(objs, n as usize) })
        else {
            return -libc::EINVAL;
        };
        dequeue(st, out)
    })
    .unwrap_or(-libc::EINVAL)
}

/// Most objects one dequeue gathers before it writes any into the caller's array: the
/// size of a per-lcore cache's array, the most DPDK ever dequeues into one.
const STAGED_MAX: usize = 2 * sys::RTE_MEMPOOL_CACHE_MAX_SIZE as usize;

/// Fills `out` with the headers of `out.len()` buffers taken from the free list and
/// marked held (0), or takes none (`-ENOBUFS`).
///
/// A failed dequeue leaves `out` as it was: DPDK 22.11's `rte_mempool_do_generic_get`
/// refills a per-lcore cache by dequeuing straight into the cache's array, and when
/// that fails it keeps the objects the array held before, taking them as "intact".
/// Writing into it and then failing put headers of buffers given back to the free list
/// in the cache, in place of held ones: the cache then handed out buffers the free list
/// (in the proxy: the guest) also had, and the held ones were never seen again. That
/// happened whenever the free list ran short in the middle of a refill (a guest whose
/// rx ring can take all its buffers). Requests larger than [`STAGED_MAX`] go only to
/// the caller's own array (DPDK dequeues them there directly), which is written in
/// parts of [`STAGED_MAX`].
fn dequeue(st: &ExtState, out: &mut [*mut c_void]) -> c_int {
    let mut staged = [0u32; STAGED_MAX];
    let mut done = 0;
    while done < out.len() {
        let part = (out.len() - done).min(STAGED_MAX);
        let staged = &mut staged[..part];
        if !take_held(st, staged) {
            undo_dequeue(st, &out[..done]);
            return -libc::ENOBUFS;
        }
        for (k, &i) in staged.iter().enumerate() {
            match st.header(i) {
                Some(addr) => out[done + k] = addr as *mut c_void,
                None => {
                    // Cannot happen: `hold` found this header. Give everything back.
                    give_back_held(st, staged);
                    undo_dequeue(st, &out[..done]);
                    return -libc::ENOBUFS;
                }
            }
        }
        done += part;
    }
    0
}

/// Takes `out.len()` buffers from the free list into `out`, each marked held; or, if it
/// cannot get them all, gives back what it took and returns false.
fn take_held(st: &ExtState, out: &mut [u32]) -> bool {
    let mut got = 0usize;
    let mut idx = [0u32; CHUNK];
    // Refused entries are asked for again; a free list that keeps yielding garbage
    // must not keep the caller here, so the rounds are bounded (an honest one needs
    // exactly ceil(n / CHUNK)).
    let mut rounds = out.len().div_ceil(CHUNK) + 2;
    while got < out.len() {
        let want = (out.len() - got).min(CHUNK);
        let have = if rounds == 0 { 0 } else { st.ops.get(&mut idx[..want]).min(want) };
        rounds = rounds.saturating_sub(1);
        if have == 0 {
            // All or nothing: give back what this call took.
            give_back_held(st, &out[..got]);
            return false;
        }
        let mut refused = 0;
        for &i in &idx[..have] {
            // DPDK owns the object from here (the mempool hands it out).
            if st.hold(i).is_some() {
                out[got] = i;
                got += 1;
            } else {
                refused += 1;
            }
        }
        if refused > 0 {
            st.ops.refused(refused);
        }
    }
    true
}

/// Gives back buffers this process marked held and nobody else saw.
fn give_back_held(st: &ExtState, idx: &[u32]) {
    for &i in idx {
        st.unhold(i);
    }
    if !idx.is_empty() {
        st.ops.put(idx);
    }
}

/// Gives back the objects a failed dequeue took.
fn undo_dequeue(st: &ExtState, objs: &[*mut c_void]) {
    let mut idx = [0u32; CHUNK];
    for chunk in objs.chunks(CHUNK) {
        let mut k = 0;
        for &obj in chunk {
            if let Some(i) = st.index_of_addr(obj as usize).filter(|&i| st.unhold(i)) {
                idx[k] = i;
                k += 1;
            }
        }
        st.ops.put(&idx[..k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_runs_are_found_only_when_every_header_fits_them() {
        let one = |base, count| Run { base, first: 0, count };
        assert_eq!(strided_runs(&[4096, 4352, 4608]), Some((8, vec![one(4096, 3)])));
        assert_eq!(strided_runs(&[4096]), Some((0, vec![one(4096, 1)])));
        assert_eq!(strided_runs(&[4096, 4288]), None, "192 is not a power of two");
        assert_eq!(strided_runs(&[4096, 4000]), None);
        assert_eq!(strided_runs(&[]), None);
        // Two chunks (a page apart), then a header off the stride: three runs.
        assert_eq!(
            strided_runs(&[4096, 4352, 0x20000, 0x20100, 0x20201]),
            Some((
                8,
                vec![
                    one(4096, 2),
                    Run { base: 0x20000, first: 2, count: 2 },
                    Run { base: 0x20201, first: 4, count: 1 }
                ]
            ))
        );
        let scattered: Vec<usize> = (0..=MAX_RUNS).map(|i| 0x10000 * (i + 1)).collect();
        assert_eq!(strided_runs(&scattered[..2]), Some((16, vec![one(0x10000, 2)])));
        assert_eq!(strided_runs(&[0x10000, 0x20000, 0x50000]).map(|(_, r)| r.len()), Some(2));
        let far: Vec<usize> = (0..=MAX_RUNS).flat_map(|i| [0x100000 * (i + 1), 0x100000 * (i + 1) + 0x100]).collect();
        assert_eq!(strided_runs(&far), None, "more runs than MAX_RUNS");
    }

    /// The copy `take` and `release` use agrees with the state's strided index on every
    /// address around the pool: headers only, below `count`, aligned.
    #[test]
    fn the_strided_copy_maps_as_the_state_does() {
        let headers: Vec<usize> = (0..6).map(|i| 0x40000 + (i << 8)).collect();
        let index = AddrIndex::of(&headers);
        let AddrIndex::Strided { base, shift } = index else { panic!("one stride expected") };
        let stride = Stride { base, shift, count: 6 };
        let st = state(6, index);
        for addr in (0x40000 - 0x400)..(0x40000 + 0x800) {
            assert_eq!(stride.index_of(addr), st.index_of_addr(addr), "address {addr:#x}");
        }
        for idx in 0..8 {
            assert_eq!(stride.header(idx), st.header(idx), "index {idx}");
        }
        assert_eq!(stride.index_of(0), None);
        assert_eq!(stride.index_of(usize::MAX), None);
    }

    #[test]
    fn runs_map_addresses_and_indices_both_ways() {
        // Buffers 0-2 in a chunk at 0x20000, 3-4 in one below it at 0x8000.
        let headers = [0x20000, 0x20100, 0x20200, 0x8000, 0x8100];
        let index = AddrIndex::of(&headers);
        assert!(matches!(index, AddrIndex::Runs { shift: 8, ref runs } if runs.len() == 2));
        let st = state(5, index);
        for (i, &addr) in headers.iter().enumerate() {
            assert_eq!(st.index_of_addr(addr), Some(i as u32));
            assert_eq!(st.by_addr.get().unwrap().header(i as u32, &OnceLock::new()), Some(addr));
        }
        assert_eq!(st.index_of_addr(0x20300), None, "past the first run");
        assert_eq!(st.index_of_addr(0x8200), None, "past the second run");
        assert_eq!(st.index_of_addr(0x20080), None, "inside a header");
        assert_eq!(st.index_of_addr(0x7f00), None, "before every run");
        assert_eq!(st.by_addr.get().unwrap().header(5, &OnceLock::new()), None, "no such buffer");
    }

    struct NoOps;
    impl ExtPoolOps for NoOps {
        fn put(&self, _: &[u32]) {}
        fn get(&self, _: &mut [u32]) -> usize {
            0
        }
        fn count(&self) -> u32 {
            0
        }
        fn refused(&self, _: u32) {}
    }

    fn state(count: u32, by_addr: AddrIndex) -> ExtState {
        let st = unpopulated(count);
        let _ = st.by_addr.set(by_addr);
        st
    }

    fn unpopulated(count: u32) -> ExtState {
        unpopulated_with(count, Arc::new(NoOps))
    }

    fn unpopulated_with(count: u32, ops: Arc<dyn ExtPoolOps>) -> ExtState {
        ExtState {
            ops,
            count,
            headers: OnceLock::new(),
            by_addr: OnceLock::new(),
            marks: HeldMarks::new(count),
            populating: AtomicBool::new(false),
        }
    }

    #[test]
    fn an_index_comes_only_from_the_address_of_one_of_the_pools_headers() {
        let strided = state(8, AddrIndex::Strided { base: 0x10000, shift: 8 });
        assert_eq!(strided.index_of_addr(0x10000), Some(0));
        assert_eq!(strided.index_of_addr(0x10000 + 7 * 256), Some(7));
        assert_eq!(strided.index_of_addr(0x10000 + 8 * 256), None, "past the pool");
        assert_eq!(strided.index_of_addr(0x10000 + 100), None, "inside a header");
        assert_eq!(strided.index_of_addr(0xff00), None, "before the pool");
        let sorted = state(4, AddrIndex::Sorted(vec![(0x5000, 2), (0x7000, 0), (0x9000, 1), (0xb000, 3)].into()));
        assert_eq!(sorted.index_of_addr(0x7000), Some(0));
        assert_eq!(sorted.index_of_addr(0x5000), Some(2));
        assert_eq!(sorted.index_of_addr(0x5001), None);
    }

    #[test]
    fn a_buffer_is_held_once_and_let_go_once() {
        let unready = unpopulated(2);
        let _ = unready.headers.set(vec![0x10000, 0x10100].into());
        assert_eq!(unready.hold(0), None, "no address index yet");
        let st = state(2, AddrIndex::Strided { base: 0x10000, shift: 8 });
        let _ = st.headers.set(vec![0x10000, 0x10100].into());
        assert_eq!(st.hold(1), Some(0x10100));
        assert_eq!(st.hold(1), None, "held already");
        assert_eq!(st.hold(2), None, "no such buffer");
        assert_eq!(st.held(), 1);
        assert!(st.unhold(1));
        assert_eq!(st.held(), 0);
        assert!(!st.unhold(1), "not held");
        assert!(!st.unhold(0));
        let sorted = state(2, AddrIndex::Sorted(vec![(0x7000, 1), (0x9000, 0)].into()));
        assert_eq!(sorted.hold(0), None, "no header table yet");
        let _ = sorted.headers.set(vec![0x9000, 0x7000].into());
        assert_eq!(sorted.hold(0), Some(0x9000));
    }

    /// A free list of a few buffers, like a guest's free ring that runs short.
    #[derive(Default)]
    struct Short {
        free: std::sync::Mutex<Vec<u32>>,
        refused: std::sync::atomic::AtomicU32,
    }

    impl ExtPoolOps for Short {
        fn put(&self, idx: &[u32]) {
            self.free.lock().unwrap().extend_from_slice(idx);
        }
        fn get(&self, out: &mut [u32]) -> usize {
            let mut free = self.free.lock().unwrap();
            // All or nothing, as a free ring's bulk dequeue.
            if free.len() < out.len() {
                return 0;
            }
            let from = free.len() - out.len();
            out.copy_from_slice(&free[from..]);
            free.truncate(from);
            out.len()
        }
        fn count(&self) -> u32 {
            self.free.lock().unwrap().len() as u32
        }
        fn refused(&self, n: u32) {
            self.refused.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn strided_with(count: u32, ops: Arc<dyn ExtPoolOps>) -> ExtState {
        let st = unpopulated_with(count, ops);
        let _ = st.by_addr.set(AddrIndex::Strided { base: 0x10000, shift: 8 });
        st
    }

    #[test]
    fn a_failed_dequeue_leaves_the_callers_array_as_it_was() {
        // 100 buffers free, a request for 150 (DPDK refilling an lcore cache of 128 plus
        // a burst of 22, straight into the cache's array, which holds two cached
        // objects it keeps if the refill fails).
        let ops = Arc::new(Short::default());
        ops.put(&(0..100).collect::<Vec<_>>());
        let st = strided_with(512, ops.clone());
        let cached = [0x10000 + 500 * 256, 0x10000 + 501 * 256];
        for &addr in &cached {
            st.hold(st.index_of_addr(addr).unwrap()).unwrap();
        }
        let mut array: Vec<*mut c_void> = vec![std::ptr::null_mut(); 1024];
        array[0] = cached[0] as *mut c_void;
        array[1] = cached[1] as *mut c_void;
        let before = array.clone();
        assert_eq!(dequeue(&st, &mut array[..150]), -libc::ENOBUFS);
        assert!(array == before, "a failed dequeue wrote into the array: {:?}...", &array[..4]);
        // Everything it took went back, unheld; the cached objects are still held.
        assert_eq!(ops.count(), 100);
        assert_eq!(st.held(), 2);
        // A request that fits is served, and every buffer it hands out is held once.
        assert_eq!(dequeue(&st, &mut array[2..92]), 0);
        assert_eq!(st.held(), 92);
        assert_eq!(ops.count(), 10);
        let mut got: Vec<u32> = array[..92].iter().map(|&p| st.index_of_addr(p as usize).unwrap()).collect();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 92);
        assert_eq!(ops.refused.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_dequeue_larger_than_a_cache_is_all_or_nothing_too() {
        let ops = Arc::new(Short::default());
        let n = STAGED_MAX as u32 + 100;
        ops.put(&(0..n).collect::<Vec<_>>());
        let st = strided_with(n, ops.clone());
        let mut array: Vec<*mut c_void> = vec![std::ptr::null_mut(); n as usize + 1];
        // One more than there is: nothing is taken (the caller's own array may be written).
        assert_eq!(dequeue(&st, &mut array), -libc::ENOBUFS);
        assert_eq!((ops.count(), st.held()), (n, 0));
        assert_eq!(dequeue(&st, &mut array[..n as usize]), 0);
        assert_eq!((ops.count(), st.held()), (0, n));
    }

    #[test]
    fn entries_the_free_list_should_not_have_given_are_refused_and_asked_again() {
        let ops = Arc::new(Short::default());
        ops.put(&[1, 2, 3, 999, 4]);
        let st = strided_with(8, ops.clone());
        // Held here already: the free list must not hand it out.
        st.hold(3).unwrap();
        let mut array = [std::ptr::null_mut(); 2];
        // 999 (no such buffer) and 4, then 3 (held), then 2: two refused.
        assert_eq!(dequeue(&st, &mut array), 0);
        assert_eq!(ops.refused.load(Ordering::Relaxed), 2);
        let got: Vec<u32> = array.iter().map(|&p| st.index_of_addr(p as usize).unwrap()).collect();
        assert_eq!(got, [4, 2]);
        assert_eq!(st.held(), 3);
    }
}
