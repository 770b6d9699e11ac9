//! The public C API of `librte_net_shm.so`, for applications that want to know more
//! about a `net_shm` port than ethdev tells (like DPDK's `rte_pmd_<driver>_*` functions).
//!
//! The C header, `rte_pmd_shm.h`, is generated from this file by cbindgen
//! (`drivers/net_shm/cbindgen.toml`; the meson build and the tests run it), so this file
//! is the only definition: keep it self-contained, with plain `repr(C)` types.
//!
//! Every function returns 0 or a negative errno: `-EINVAL` (null output pointer),
//! `-ENODEV` (no such port), `-ENOTSUP` (the port is not a `net_shm` port of this copy of
//! the driver), `-ENOTCONN` (the port has no session with its proxy right now).

use std::ffi::{c_int, c_void};

use dpdk_sys as sys;

use crate::{ops, Port, LOG};
use shm_driver_common::ffi::guard;

/// The shared region behind a `net_shm` port.
#[repr(C)]
pub struct rte_pmd_shm_region_info {
    /// Size of the region in bytes.
    pub size: u64,
    /// Where the region is mapped in this process.
    pub base: *mut c_void,
    /// Bytes of the region's heap, where this process's packet pools live.
    pub heap_size: u64,
    /// 1 when the proxy backed the region with hugepages, 0 for normal pages.
    pub hugepages: u32,
    /// Entries of the rx descriptor ring (proxy to this process).
    pub rx_ring_entries: u32,
    /// Entries of the tx descriptor ring (this process to proxy).
    pub tx_ring_entries: u32,
    /// The proxy's NIC port served to this port.
    pub proxy_port_id: u16,
    /// The proxy's NIC queue served to this port.
    pub proxy_queue_id: u16,
}

/// Counters of a `net_shm` port since its last stats reset (the same numbers as
/// `rte_eth_stats_get` and the driver's xstats).
#[repr(C)]
pub struct rte_pmd_shm_counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Transmitted packets whose buffers were already in the shared region: no copy.
    pub tx_zero_copy_packets: u64,
    /// Transmitted packets copied into a region buffer first (mbufs from another pool,
    /// indirect or shared mbufs).
    pub tx_copied_packets: u64,
    /// Transmissions refused because the tx ring was full.
    pub tx_ring_full: u64,
    /// Packets dropped on transmit for want of a region buffer to copy into.
    pub tx_dropped: u64,
    /// Descriptors from the proxy that failed validation.
    pub rx_invalid_descriptors: u64,
    /// How often the proxy went away.
    pub link_down_events: u64,
}

/// The port behind `port_id` if it is one of ours.
fn our_port<'a>(port_id: u16) -> Result<&'a Port, c_int> {
    // SAFETY: plain query of ethdev's port table.
    if unsafe { sys::rte_eth_dev_is_valid_port(port_id) } == 0 {
        return Err(-libc::ENODEV);
    }
    // SAFETY: a valid port id indexes ethdev's static array of devices; only dev_ops is
    // compared before `Port::of`, whose contract is that the ops are ours.
    unsafe {
        let dev = std::ptr::addr_of_mut!(sys::rte_eth_devices).cast::<sys::rte_eth_dev>().add(port_id as usize);
        if !std::ptr::eq((*dev).dev_ops, ops::dev_ops()) {
            return Err(-libc::ENOTSUP);
        }
        Port::of(dev).ok_or(-libc::ENOTSUP)
    }
}

/// Describes the shared region of `port_id`: fills `*info`.
///
/// Returns 0, -EINVAL (`info` is NULL), -ENODEV (no such port), -ENOTSUP (not a
/// net_shm port) or -ENOTCONN (no session with the proxy right now).
///
/// # Safety
/// `info` is null or points to writable memory for one `rte_pmd_shm_region_info`.
#[no_mangle]
pub unsafe extern "C" fn rte_pmd_shm_get_region_info(port_id: u16, info: *mut rte_pmd_shm_region_info) -> c_int {
    guard(&LOG, "rte_pmd_shm_get_region_info", -libc::EIO, || {
        if info.is_null() {
            return -libc::EINVAL;
        }
        let port = match our_port(port_id) {
            Ok(p) => p,
            Err(rc) => return rc,
        };
        let Some(attachment) = port.attachment() else { return -libc::ENOTCONN };
        let region = &attachment.region;
        let out = rte_pmd_shm_region_info {
            size: region.len() as u64,
            base: region.base() as *mut c_void,
            heap_size: region.layout.heap().size as u64,
            hugepages: region.hugepages() as u32,
            rx_ring_entries: region.layout.rx_ring().entries,
            tx_ring_entries: region.layout.tx_ring().entries,
            proxy_port_id: attachment.proxy.port_id,
            proxy_queue_id: attachment.proxy.queue_id,
        };
        // SAFETY: the caller gives room for one struct; checked non-null above.
        unsafe { info.write(out) };
        0
    })
}

/// Reads the counters of `port_id` (since its last stats reset) into `*counters`.
///
/// Returns 0, -EINVAL (`counters` is NULL), -ENODEV (no such port) or -ENOTSUP (not a
/// net_shm port).
///
/// # Safety
/// `counters` is null or points to writable memory for one `rte_pmd_shm_counters`.
#[no_mangle]
pub unsafe extern "C" fn rte_pmd_shm_get_counters(port_id: u16, counters: *mut rte_pmd_shm_counters) -> c_int {
    guard(&LOG, "rte_pmd_shm_get_counters", -libc::EIO, || {
        if counters.is_null() {
            return -libc::EINVAL;
        }
        let port = match our_port(port_id) {
            Ok(p) => p,
            Err(rc) => return rc,
        };
        let (now, base) = ops::snapshot(port);
        let s = now.since(&base);
        let out = rte_pmd_shm_counters {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            tx_zero_copy_packets: s.tx_packets.saturating_sub(s.tx_copies),
            tx_copied_packets: s.tx_copies,
            tx_ring_full: s.tx_ring_full,
            tx_dropped: s.tx_dropped,
            rx_invalid_descriptors: s.rx_invalid,
            link_down_events: s.link_down_events,
        };
        // SAFETY: the caller gives room for one struct; checked non-null above.
        unsafe { counters.write(out) };
        0
    })
}
