#![cfg_attr(test, allow(dead_code))]
//! `librte_mempool_shm.so`: mempool ops `shm`, which place a packet-mbuf pool inside the
//! shared region of a `sock:` device, so that the proxy and this process can both
//! allocate and free the same mbufs.
//!
//! A pool is `[free ring][objects]` in the region's heap. The free ring holds the offsets
//! of free mbufs (see `shm_contract::mpmc`); the proxy takes buffers from it for NIC rx
//! and gives buffers back to it after NIC tx. Only pktmbuf pools can live there: the
//! proxy treats every object as an mbuf with a data room.
//!
//! The bus makes `shm` the platform mempool ops once it has probed a device, so
//! `rte_pktmbuf_pool_create` in an unmodified application lands here, and so does every
//! other pool created with `rte_mbuf_best_mempool_ops()`. A pool the region cannot host
//! (not a packet pool, a data room of 0 as indirect-mbuf pools have, larger than the
//! region's free space) is handed to DPDK's ring ops in `alloc` and lives in private
//! memory; the net driver copies its packets into region buffers on tx.

use std::ffi::{c_int, c_uint, c_void};

use dpdk_sys as sys;
use shm_contract::client::PoolFootprint;
use shm_contract::{FreeRing, FreeRingError, PoolLayout};
use shm_driver_common::bus::{BusInterface, DeviceHandle, PoolRequest, RegionHandle};
use shm_driver_common::ffi::{guard, str_from_c};
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::plugin_constructor;

static LOG: LogType = LogType::new("mempool.shm", "mempool_shm");

pub const OPS_NAME: &[u8] = b"shm";

/// The guest's own threads may race each other and the proxy on the free ring; they are
/// cooperative, so give them plenty of retries before reporting contention.
const GUEST_RETRIES: u32 = 1 << 16;
/// Objects converted per ring operation; a stack array, so no allocation on the hot path.
const CHUNK: usize = 64;

/// Whether mempool ops named `shm` are registered already.
fn ops_registered() -> bool {
    // SAFETY: constructors run one at a time during EAL init (plugin loading), before any
    // other thread registers ops; the table's names are NUL-terminated arrays and only the
    // first `num_ops` entries are used.
    unsafe {
        let table = &*std::ptr::addr_of!(sys::rte_mempool_ops_table);
        let n = (table.num_ops as usize).min(table.ops.len());
        table.ops[..n].iter().any(|o| {
            let name = std::ffi::CStr::from_ptr(o.name.as_ptr());
            name.to_bytes() == OPS_NAME
        })
    }
}

fn init() {
    LOG.register(INFO);
    // A second copy of this plugin (`-d` plus the one installed in DPDK's driver
    // directory): the first one loaded serves, this one stays out of the way quietly.
    if ops_registered() {
        LOG.notice(format_args!(
            "mempool ops 'shm' are already registered (another copy of librte_mempool_shm.so was loaded first); this copy stays inactive"
        ));
        return;
    }
    let mut ops = sys::rte_mempool_ops {
        alloc: Some(pool_alloc),
        free: Some(pool_free),
        enqueue: Some(pool_enqueue),
        dequeue: Some(pool_dequeue),
        get_count: Some(pool_get_count),
        calc_mem_size: Some(pool_calc_mem_size),
        populate: Some(pool_populate),
        ..Default::default()
    };
    for (dst, src) in ops.name.iter_mut().zip(OPS_NAME) {
        *dst = *src as std::ffi::c_char;
    }
    // SAFETY: DPDK copies the ops into its table; `ops` may go away afterwards.
    let rc = unsafe { sys::rte_mempool_register_ops(&ops) };
    if rc < 0 {
        LOG.error(format_args!(
            "cannot register mempool ops 'shm' ({}): the ops table is full or the name is taken",
            shm_driver_common::errno_text(-rc)
        ));
    }
}
plugin_constructor!(MEMPOOL_SHM_CONSTRUCTOR, init);

/// One pool in a region. Lives behind `rte_mempool.pool_data` from `alloc` to `free`.
/// Immutable after `alloc` except for `populated`, so the hot path takes no lock: what
/// enqueue and dequeue need (the free ring, the layout, the base) is fetched from the
/// bus plugin once, in `alloc`; the bus is called again only to announce (populate)
/// and to withdraw (free) the pool.
struct RegionMempool {
    /// Name of the device, for messages.
    device_name: String,
    id: u32,
    ring: FreeRing<'static>,
    layout: PoolLayout,
    base: *mut u8,
    /// Objects placed so far by `populate`.
    populated: std::sync::atomic::AtomicU32,
    name: String,
    /// Keeps the mapping alive for `ring` and `base` (last: dropped after them).
    region: RegionHandle,
}

// SAFETY: `base` points into the region kept alive by `region`; everything else is Sync.
unsafe impl Send for RegionMempool {}
// SAFETY: as above; the ring and layout are views with atomic access only.
unsafe impl Sync for RegionMempool {}

impl RegionMempool {
    #[inline]
    fn offset_of(&self, obj: *mut c_void) -> u32 {
        offset_in(self.base, obj)
    }

    #[inline]
    fn object_at(&self, offset: u32) -> *mut c_void {
        object_in(self.base, offset)
    }
}

/// Region offset of an object of the region mapped at `base`.
#[inline]
fn offset_in(base: *mut u8, obj: *mut c_void) -> u32 {
    (obj as usize).wrapping_sub(base as usize) as u32
}

/// The object at `offset` of the region mapped at `base`.
#[inline]
fn object_in(base: *mut u8, offset: u32) -> *mut c_void {
    // SAFETY (for callers): the offset was validated by `layout.buffer_index`.
    base.wrapping_add(offset as usize) as *mut c_void
}

/// The pool state of a mempool that uses our ops.
///
/// # Safety
/// `mp` is a live mempool whose ops are ours and whose `alloc` succeeded.
unsafe fn region_mempool<'a>(mp: *const sys::rte_mempool) -> Option<&'a RegionMempool> {
    // SAFETY: pool_data is null or the Box that `pool_alloc` stored.
    unsafe { ((*mp).__bindgen_anon_1.pool_data as *const RegionMempool).as_ref() }
}

fn mempool_name(mp: *const sys::rte_mempool) -> String {
    // SAFETY: the name is a NUL-terminated array inside the live mempool.
    unsafe { str_from_c((*mp).name.as_ptr()) }.map(|s| s.into_owned()).unwrap_or_default()
}

/// Which device's region a new pool goes to: the one named by `pool_config` (the net
/// driver's internal pools), else the first attached device with room.
fn choose_device(bus: &'static BusInterface, mp: *const sys::rte_mempool, bytes: u64) -> Result<(DeviceHandle, RegionHandle), String> {
    // SAFETY: reading a plain field of a live mempool.
    let config = unsafe { (*mp).pool_config };
    if !config.is_null() {
        // The net driver names its device by EAL's device pointer; the bus only compares it.
        let device =
            bus.device_by_rte(config as *const sys::rte_device).ok_or("pool_config does not name a sock: device")?;
        let region = device.region().ok_or("its device is not attached to a proxy")?;
        return Ok((device, region));
    }
    let attached: Vec<(DeviceHandle, RegionHandle)> =
        bus.devices().into_iter().filter_map(|d| d.region().map(|r| (d, r))).collect();
    if attached.is_empty() {
        return Err("no sock: device is attached, so there is no shared region to place it in".into());
    }
    let (size, free, name) = {
        let (dev, region) = &attached[0];
        (region.len() as u64, region.largest_free(4096), dev.info().map(|i| i.name().to_string()).unwrap_or_default())
    };
    if let Some(found) = attached.into_iter().find(|(_, region)| region.largest_free(4096) >= bytes) {
        return Ok(found);
    }
    Err(format!(
        "it needs {} MiB but the region of sock:{name} ({} MiB) has {} MiB free; \
         ask for a smaller pool (testpmd: --total-num-mbufs=N) or a larger region (devarg region_size=..., capped by the proxy)",
        bytes.div_ceil(1 << 20),
        size >> 20,
        free >> 20
    ))
}

unsafe extern "C" fn pool_alloc(mp: *mut sys::rte_mempool) -> c_int {
    guard(&LOG, "alloc", -libc::EINVAL, || {
        let name = mempool_name(mp);
        match alloc(mp, &name) {
            Ok(pool) => {
                // SAFETY: mp is live; pool_data is ours to set in alloc.
                unsafe { (*mp).__bindgen_anon_1.pool_data = Box::into_raw(Box::new(pool)) as *mut c_void };
                0
            }
            Err(why) => {
                // SAFETY: reading a plain field of a live mempool.
                if !unsafe { (*mp).pool_config }.is_null() {
                    // One of the net driver's internal pools: it exists to be in the region.
                    LOG.error(format_args!("pool '{name}' cannot live in shared memory: {why}"));
                    return -libc::ENOMEM;
                }
                match host_privately(mp) {
                    Ok((ops, rc)) => {
                        if rc == 0 {
                            LOG.notice(format_args!(
                                "pool '{name}' cannot live in the shared region ({why}); it goes to \
                                 private memory with DPDK's '{ops}' ops instead, and its packets are \
                                 copied into region buffers on tx (counted in tx_copied_packets)"
                            ));
                        }
                        rc
                    }
                    Err(fallback) => {
                        LOG.error(format_args!("pool '{name}' cannot live in shared memory: {why}; {fallback}"));
                        -libc::ENOMEM
                    }
                }
            }
        }
    })
}

/// Hands a pool the region cannot host to DPDK's own ring ops, as `rte_mempool_create`
/// would have chosen them from the pool's flags, and runs their `alloc`. Called from our
/// `alloc`: the pool is not created yet, so its ops can still change, and everything DPDK
/// does with it afterwards (size, populate, get, put, free) goes to those ops. Returns the
/// ops' name and their `alloc`'s result.
fn host_privately(mp: *mut sys::rte_mempool) -> Result<(&'static str, c_int), String> {
    // SAFETY: reading a plain field of a live mempool.
    let flags = unsafe { (*mp).flags };
    let (sp, sc) = (flags & sys::RTE_MEMPOOL_F_SP_PUT != 0, flags & sys::RTE_MEMPOOL_F_SC_GET != 0);
    let ops: &'static std::ffi::CStr = match (sp, sc) {
        (true, true) => c"ring_sp_sc",
        (true, false) => c"ring_sp_mc",
        (false, true) => c"ring_mp_sc",
        (false, false) => c"ring_mp_mc",
    };
    let ops_name = ops.to_str().unwrap_or("ring");
    // SAFETY: mp is live and not populated (DPDK calls alloc before placing objects);
    // set_ops_byname refuses a created pool. A null pool_config is what ring ops expect.
    let rc = unsafe { sys::rte_mempool_set_ops_byname(mp, ops.as_ptr(), std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "DPDK's '{ops_name}' mempool ops are not available for a private pool ({})",
            shm_driver_common::errno_text(-rc)
        ));
    }
    // rte_mempool_ops_alloc is internal to DPDK (not exported to plugins): call the new
    // ops' alloc through the ops table, as DPDK's inline rte_mempool_get_ops does.
    // SAFETY: set_ops_byname stored a valid index below num_ops in the live pool; the
    // table is DPDK's process-wide array and the ring ops' alloc sets up pool_data.
    let rc = unsafe {
        let index = (*mp).ops_index as usize;
        let table = &*std::ptr::addr_of!(sys::rte_mempool_ops_table);
        match table.ops.get(index).and_then(|o| o.alloc) {
            Some(alloc) => alloc(mp),
            None => return Err(format!("DPDK's '{ops_name}' mempool ops have no alloc")),
        }
    };
    Ok((ops_name, rc))
}

fn alloc(mp: *mut sys::rte_mempool, name: &str) -> Result<RegionMempool, String> {
    let bus = BusInterface::find().map_err(|e| e.to_string())?;
    // SAFETY: mp is a live mempool being populated; these are plain fields, and the
    // private area is a pktmbuf pool's when private_data_size says so.
    let (count, header, elt, trailer, data_room, priv_size) = unsafe {
        let m = &*mp;
        if (m.private_data_size as usize) < std::mem::size_of::<sys::rte_pktmbuf_pool_private>() {
            return Err("not a packet mbuf pool (only rte_pktmbuf pools can be shared with the proxy)".into());
        }
        (
            m.size,
            m.header_size,
            m.elt_size,
            m.trailer_size,
            sys::rte_pktmbuf_data_room_size(mp),
            sys::rte_pktmbuf_priv_size(mp),
        )
    };
    let mbuf_size = std::mem::size_of::<sys::rte_mbuf>() as u32 + priv_size as u32;
    if elt != mbuf_size + data_room as u32 {
        return Err(format!(
            "its elements ({elt} bytes) are not mbufs of {mbuf_size} + {data_room} bytes (only rte_pktmbuf pools can be shared)"
        ));
    }
    let stride = header + elt + trailer;
    let PoolFootprint { bytes, .. } = PoolFootprint::new(count, stride)?;
    let (device, region) = choose_device(bus, mp, bytes)?;
    let device_name = device.info().map(|i| i.name().to_string()).unwrap_or_default();
    // The bus plugin places it (id, heap bytes, layout checked against the other pools).
    let request = PoolRequest { mempool: mp as u64, count, stride, header_size: header, mbuf_size: mbuf_size as u16, data_room };
    let record = region.place_pool(&request).map_err(|e| e.to_string())?;
    let give_back = |why: String| {
        if let Err(e) = region.remove_pool(record.pool.pool_id) {
            LOG.warning(format_args!("sock:{device_name}: pool '{name}': {e}"));
        }
        why
    };
    // Our own copy of its layout, checked by the contract's rules against the region's
    // (the bus checked it against the other pools).
    let layout = record.pool.validate(&region.layout, &[]).map_err(|e| give_back(format!("its layout is invalid: {e}")))?;
    // SAFETY: the RegionHandle stored in the pool keeps the mapping alive for the view.
    let mem = unsafe { region.mem_static() };
    let ring = FreeRing::init(&mem, layout.ring_offset(), layout.ring_entries()).map_err(|e| give_back(format!("free ring: {e}")))?;
    Ok(RegionMempool {
        base: region.base(),
        device_name,
        id: record.pool.pool_id,
        ring,
        layout,
        populated: std::sync::atomic::AtomicU32::new(0),
        name: name.to_string(),
        region,
    })
}

unsafe extern "C" fn pool_free(mp: *mut sys::rte_mempool) {
    guard(&LOG, "free", (), || {
        // SAFETY: mp is live and its pool_data is the Box from alloc, taken back once here.
        let pool = unsafe {
            let data = (*mp).__bindgen_anon_1.pool_data as *mut RegionMempool;
            if data.is_null() {
                return;
            }
            (*mp).__bindgen_anon_1.pool_data = std::ptr::null_mut();
            Box::from_raw(data)
        };
        // The proxy forgets it (if a live session uses the region), the region frees it.
        if let Err(e) = pool.region.remove_pool(pool.id) {
            LOG.warning(format_args!("sock:{}: pool '{}': {e}", pool.device_name, pool.name));
        }
    })
}

/// DPDK reserves a memzone of this size from the application's heap for every chunk;
/// the objects are placed in the shared region instead, so ask for a token amount.
unsafe extern "C" fn pool_calc_mem_size(
    _mp: *const sys::rte_mempool,
    _obj_num: u32,
    _pg_shift: u32,
    min_chunk_size: *mut usize,
    align: *mut usize,
) -> isize {
    // SAFETY: DPDK passes valid out-pointers.
    unsafe {
        *min_chunk_size = 64;
        *align = 64;
    }
    64
}

/// Places the objects densely in the pool's part of the region (ignoring the token
/// memory DPDK reserved), hands each to DPDK's callback (which links it into the pool's
/// object list), puts them all in the free ring, then announces the pool to the proxy.
unsafe extern "C" fn pool_populate(
    mp: *mut sys::rte_mempool,
    max_objs: c_uint,
    _vaddr: *mut c_void,
    _iova: sys::rte_iova_t,
    _len: usize,
    obj_cb: sys::rte_mempool_populate_obj_cb_t,
    obj_cb_arg: *mut c_void,
) -> c_int {
    guard(&LOG, "populate", -libc::EINVAL, || {
        // SAFETY: called on a pool whose alloc succeeded.
        let Some(pool) = (unsafe { region_mempool(mp) }) else { return -libc::EINVAL };
        let done = pool.populated.load(std::sync::atomic::Ordering::Relaxed);
        let todo = (pool.layout.count() - done).min(max_objs);
        // SAFETY: plain EAL query.
        let iova_is_va = unsafe { sys::rte_eal_iova_mode() } == sys::RTE_IOVA_VA;
        for i in done..done + todo {
            let obj = pool.object_at(pool.layout.buffer_offset(i));
            let iova = if iova_is_va { obj as u64 } else { u64::MAX /* RTE_BAD_IOVA */ };
            if let Some(cb) = obj_cb {
                // SAFETY: DPDK's callback for an object that lies inside the region, with room
                // for the object header before it (the layout reserves header_size bytes).
                unsafe { cb(mp, obj_cb_arg, obj, iova) };
            }
        }
        // A custom populate enqueues what it placed (DPDK's own helper does the same).
        let mut offsets = [0u32; CHUNK];
        let mut next = done;
        while next < done + todo {
            let n = (done + todo - next).min(CHUNK as u32);
            for (k, dst) in offsets[..n as usize].iter_mut().enumerate() {
                *dst = pool.layout.buffer_offset(next + k as u32);
            }
            if let Err(e) = pool.ring.enqueue_bulk(&offsets[..n as usize], GUEST_RETRIES) {
                LOG.error(format_args!("pool '{}': cannot fill the free ring: {e}", pool.name));
                return -libc::ENOBUFS;
            }
            next += n;
        }
        let populated = done + todo;
        pool.populated.store(populated, std::sync::atomic::Ordering::Relaxed);
        if populated == pool.layout.count() {
            if let Err(why) = announce(pool) {
                LOG.error(format_args!("sock:{}: pool '{}': {why}", pool.device_name, pool.name));
                return -libc::EIO;
            }
        }
        todo as c_int
    })
}

/// Tells the proxy that serves the pool's region now about the pool: its device's, or,
/// once that device was removed and its socket probed again with the same region (see
/// `bus_shm`), the new device's.
fn announce(pool: &RegionMempool) -> Result<(), String> {
    pool.region.announce_pool(pool.id).map_err(|e| e.to_string())?;
    LOG.info(format_args!(
        "sock:{}: pool '{}' ({} mbufs of {} bytes data room) placed in the shared region",
        pool.device_name,
        pool.name,
        pool.layout.count(),
        pool.layout.data_room()
    ));
    Ok(())
}

unsafe extern "C" fn pool_enqueue(mp: *mut sys::rte_mempool, objs: *const *mut c_void, n: c_uint) -> c_int {
    guard(&LOG, "enqueue", -libc::ENOBUFS, || {
        // SAFETY: called on a pool whose alloc succeeded; DPDK passes n valid object pointers.
        let (pool, objs) = unsafe {
            let Some(pool) = region_mempool(mp) else { return -libc::EINVAL };
            (pool, std::slice::from_raw_parts(objs, n as usize))
        };
        let mut offsets = [0u32; CHUNK];
        for chunk in objs.chunks(CHUNK) {
            for (dst, obj) in offsets.iter_mut().zip(chunk) {
                *dst = pool.offset_of(*obj);
            }
            if pool.ring.enqueue_bulk(&offsets[..chunk.len()], GUEST_RETRIES).is_err() {
                // The ring holds every object of the pool, so this means corruption.
                LOG.error(format_args!("pool '{}': free ring refused {} objects", pool.name, chunk.len()));
                return -libc::ENOBUFS;
            }
        }
        0
    })
}

unsafe extern "C" fn pool_dequeue(mp: *mut sys::rte_mempool, objs: *mut *mut c_void, n: c_uint) -> c_int {
    guard(&LOG, "dequeue", -libc::ENOENT, || {
        // SAFETY: called on a pool whose alloc succeeded; DPDK passes room for n pointers.
        let (pool, objs) = unsafe {
            let Some(pool) = region_mempool(mp) else { return -libc::EINVAL };
            (pool, std::slice::from_raw_parts_mut(objs, n as usize))
        };
        match dequeue_objects(&pool.ring, &pool.layout, pool.base, objs) {
            Ok(()) => 0,
            Err(TakeError::Ring(FreeRingError::Empty)) => -libc::ENOENT,
            Err(TakeError::Ring(_)) => -libc::ENOBUFS,
            Err(TakeError::Invalid(offset)) => {
                LOG.error(format_args!("pool '{}': dropped invalid offset {offset:#x} from the free ring", pool.name));
                -libc::ENOENT
            }
        }
    })
}

/// Fills `objs` with objects of the pool at `base` taken from its free ring, or takes
/// none and leaves `objs` as it was (up to [`STAGED_MAX`] objects; see there).
fn dequeue_objects(ring: &FreeRing<'_>, layout: &PoolLayout, base: *mut u8, objs: &mut [*mut c_void]) -> Result<(), TakeError> {
    let mut staged = [0u32; STAGED_MAX];
    let mut done = 0;
    while done < objs.len() {
        let part = (objs.len() - done).min(STAGED_MAX);
        if let Err(e) = take_offsets(ring, layout, &mut staged[..part]) {
            // All or nothing: give back what this call already took.
            let mut offsets = [0u32; CHUNK];
            for chunk in objs[..done].chunks(CHUNK) {
                for (dst, &obj) in offsets.iter_mut().zip(chunk) {
                    *dst = offset_in(base, obj);
                }
                give_back_offsets(ring, &offsets[..chunk.len()]);
            }
            return Err(e);
        }
        for (dst, &offset) in objs[done..done + part].iter_mut().zip(&staged[..part]) {
            // take_offsets validated the offset (`layout.buffer_index`).
            *dst = object_in(base, offset);
        }
        done += part;
    }
    Ok(())
}

/// Most objects one dequeue gathers before it writes any into the caller's array: the
/// size of a per-lcore cache's array, the most DPDK ever dequeues into one.
///
/// A failed dequeue must leave the array as it was: DPDK 22.11's
/// `rte_mempool_do_generic_get` refills a per-lcore cache by dequeuing straight into
/// the cache's array, and when that fails it keeps the objects the array held before,
/// taking them as "intact". Objects written into it by a dequeue that then failed and
/// gave them back to the free ring would stay in the cache: handed out by this process
/// while the free ring (and so the proxy's NIC) had them too, while the objects they
/// replaced were never seen again. A free ring that runs short in the middle of a
/// refill (rings that can take all of a pool's buffers) made that happen. Requests
/// larger than this go only to the caller's own array (DPDK dequeues them there
/// directly), which is written in parts of this size.
const STAGED_MAX: usize = 2 * sys::RTE_MEMPOOL_CACHE_MAX_SIZE as usize;

/// Why [`take_offsets`] took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TakeError {
    /// The free ring did not have them (or was contended).
    Ring(FreeRingError),
    /// The free ring held a value that is no object of the pool (the proxy writes the
    /// ring too): dropped, the rest given back.
    Invalid(u32),
}

/// Takes `out.len()` offsets of the pool's objects from its free ring into `out`, or
/// none: what it took is given back.
fn take_offsets(ring: &FreeRing<'_>, layout: &PoolLayout, out: &mut [u32]) -> Result<(), TakeError> {
    let mut taken = 0;
    while taken < out.len() {
        let want = (out.len() - taken).min(CHUNK);
        let chunk = &mut out[taken..taken + want];
        if let Err(e) = ring.dequeue_bulk(chunk, GUEST_RETRIES) {
            give_back_offsets(ring, &out[..taken]);
            return Err(TakeError::Ring(e));
        }
        // The proxy writes this ring too: never turn a value into a pointer unchecked.
        if let Some(&bad) = chunk.iter().find(|&&offset| layout.buffer_index(offset).is_none()) {
            for &offset in chunk.iter().filter(|&&offset| layout.buffer_index(offset).is_some()) {
                give_back_offsets(ring, &[offset]);
            }
            give_back_offsets(ring, &out[..taken]);
            return Err(TakeError::Invalid(bad));
        }
        taken += want;
    }
    Ok(())
}

/// Returns offsets this process took from the free ring.
fn give_back_offsets(ring: &FreeRing<'_>, offsets: &[u32]) {
    for chunk in offsets.chunks(CHUNK) {
        let _ = ring.enqueue_bulk(chunk, GUEST_RETRIES);
    }
}

unsafe extern "C" fn pool_get_count(mp: *const sys::rte_mempool) -> c_uint {
    guard(&LOG, "get_count", 0, || {
        // SAFETY: called on a pool whose alloc succeeded.
        unsafe { region_mempool(mp) }.map_or(0, |pool| pool.ring.count())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_contract::layout::{RegionFlags, RegionLayout};
    use shm_contract::PoolAdd;
    use shm_contract::mem::HeapMem;

    /// A pool of `count` buffers whose free ring has `count.next_power_of_two()` cells,
    /// in heap memory, the ring empty.
    fn pool(count: u32) -> (HeapMem, PoolLayout) {
        let region = RegionLayout::new(64 << 20, 4096, 1024, 1024, RegionFlags::empty()).unwrap();
        let ring_entries = count.next_power_of_two();
        let ring_bytes = FreeRing::bytes_for(ring_entries) as u32;
        let add = PoolAdd {
            pool_id: 0,
            ring_offset: region.heap().offset,
            ring_entries,
            first_mbuf_offset: region.heap().offset + ring_bytes.next_multiple_of(64),
            stride: 2432,
            count,
            mbuf_size: 128,
            data_room: 2176,
        };
        let layout = add.validate(&region, &[]).unwrap();
        let mem = HeapMem::new(64 << 20);
        FreeRing::init(&mem.mem(), layout.ring_offset(), ring_entries).unwrap();
        (mem, layout)
    }

    #[test]
    fn a_failed_take_gives_everything_back_and_writes_nothing_past_what_it_took() {
        let (mem, layout) = pool(4096);
        let view = mem.mem();
        let ring = FreeRing::new(&view, layout.ring_offset(), layout.ring_entries()).unwrap();
        let offsets: Vec<u32> = (0..100).map(|i| layout.buffer_offset(i)).collect();
        give_back_offsets(&ring, &offsets);
        // A cache refill of 150 with 100 free: nothing taken.
        let mut staged = [0u32; 150];
        assert_eq!(take_offsets(&ring, &layout, &mut staged), Err(TakeError::Ring(FreeRingError::Empty)));
        assert_eq!(ring.count(), 100);
        // 100 are there: taken, each once.
        let mut all = [0u32; 100];
        take_offsets(&ring, &layout, &mut all).unwrap();
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, offsets);
        assert_eq!(ring.count(), 0);
    }

    #[test]
    fn a_failed_dequeue_leaves_the_callers_array_as_it_was() {
        let (mem, layout) = pool(4096);
        let view = mem.mem();
        let ring = FreeRing::new(&view, layout.ring_offset(), layout.ring_entries()).unwrap();
        let base = std::ptr::null_mut::<u8>().wrapping_add(1 << 40);
        give_back_offsets(&ring, &(0..100).map(|i| layout.buffer_offset(i)).collect::<Vec<_>>());
        // DPDK refilling an lcore cache that holds two objects (4000 and 4001) with 150
        // more, straight into the cache's array; it keeps the two if the refill fails.
        let mut cache: Vec<*mut c_void> = vec![std::ptr::null_mut(); STAGED_MAX];
        cache[0] = object_in(base, layout.buffer_offset(4000));
        cache[1] = object_in(base, layout.buffer_offset(4001));
        let before = cache.clone();
        assert_eq!(dequeue_objects(&ring, &layout, base, &mut cache[..150]), Err(TakeError::Ring(FreeRingError::Empty)));
        assert!(cache == before, "a failed dequeue wrote into the array: {:?}...", &cache[..4]);
        assert_eq!(ring.count(), 100);
        // Larger than a cache's array, and more than there is: nothing taken either.
        let mut big: Vec<*mut c_void> = vec![std::ptr::null_mut(); STAGED_MAX + 1];
        give_back_offsets(&ring, &(100..4096).map(|i| layout.buffer_offset(i)).collect::<Vec<_>>());
        let mut all = vec![std::ptr::null_mut(); 4096];
        dequeue_objects(&ring, &layout, base, &mut all[..4096 - STAGED_MAX]).unwrap();
        assert_eq!(dequeue_objects(&ring, &layout, base, &mut big), Err(TakeError::Ring(FreeRingError::Empty)));
        assert_eq!(ring.count(), STAGED_MAX as u32);
        dequeue_objects(&ring, &layout, base, &mut big[..STAGED_MAX]).unwrap();
        assert_eq!(ring.count(), 0);
        let mut got: Vec<u32> = all[..4096 - STAGED_MAX].iter().chain(&big[..STAGED_MAX]).map(|&o| offset_in(base, o)).collect();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 4096, "every object handed out once");
    }

    #[test]
    fn a_value_that_is_no_object_is_dropped_and_the_rest_given_back() {
        let (mem, layout) = pool(256);
        let view = mem.mem();
        let ring = FreeRing::new(&view, layout.ring_offset(), layout.ring_entries()).unwrap();
        let good: Vec<u32> = (0..70).map(|i| layout.buffer_offset(i)).collect();
        give_back_offsets(&ring, &good[..66]);
        give_back_offsets(&ring, &[12345]);
        give_back_offsets(&ring, &good[66..]);
        let mut staged = [0u32; 71];
        assert_eq!(take_offsets(&ring, &layout, &mut staged), Err(TakeError::Invalid(12345)));
        assert_eq!(ring.count(), 70, "every good offset back, the bad one gone");
    }
}
