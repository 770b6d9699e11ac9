//! Instruments of `scripts/bench.sh` (see docs/benchmarks.md).
//!
//! * [`Probe`]: sends timestamped packets at a fixed rate on one ethdev port and
//!   measures the round-trip time of those that come back.
//! * [`ring_pair_probe`]: the proxy's latency mode (`dpdk-io-proxy --bench-latency`): two
//!   ethdev ports over two crossed rings, one the proxy's NIC, the other the probe's,
//!   polled from the proxy's own data loop so that no third busy thread competes for
//!   the two CPUs.
//! * `dpdk-latency-probe` (src/main.rs): the same probe as a process of its own, on a
//!   port given by `--vdev` (a memif server for the memif guests).

pub mod hist;
pub mod probe;

use std::ffi::CString;

use dpdk::{sys, Port};

pub use probe::{Probe, Report, Spec};

/// Descriptors of each ring: about what a NIC queue holds.
const RING_SIZE: u32 = 1024;

/// Makes two ring-backed ports, `nic` (rx from R1, tx to R2) and `probe` (rx from R2, tx
/// to R1), and starts a [`Probe`] on the second, owned so that a `Port::all` listing
/// no longer shows it. Returns the NIC port, which the caller configures and serves
/// like any other. Call after EAL init, on the thread that will poll the probe.
///
/// The NIC port hands the proxy mbufs of the probe's pool, which are not guest
/// buffers: the proxy copies each into a guest buffer (its `copies` counter), as it does
/// for any NIC that filled a buffer of another pool. The other direction is zero-copy:
/// the probe receives the guest's buffers and frees them back to the guest.
pub fn ring_pair_probe(spec: Spec) -> Result<(Port, Probe), String> {
    // SAFETY: reads the calling lcore's NUMA socket.
    let socket = unsafe { sys::rte_socket_id() } as i32;
    let ring = |name: &str| -> Result<*mut sys::rte_ring, String> {
        let cname = CString::new(name).map_err(|_| "ring name".to_string())?;
        // SAFETY: valid name; single producer and consumer: the data loop does both ends.
        let r = unsafe { sys::rte_ring_create(cname.as_ptr(), RING_SIZE, socket, sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ) };
        if r.is_null() {
            Err(format!("rte_ring_create({name}): {}", dpdk::Error::from_rte_errno("rte_ring_create")))
        } else {
            Ok(r)
        }
    };
    let r1 = ring("lat_to_nic")?;
    let r2 = ring("lat_to_probe")?;
    let port = |name: &str, rx: *mut sys::rte_ring, tx: *mut sys::rte_ring| -> Result<Port, String> {
        let cname = CString::new(name).map_err(|_| "port name".to_string())?;
        let (rx, tx) = ([rx], [tx]);
        // SAFETY: one valid ring each way; DPDK copies the arrays.
        let id = unsafe { sys::rte_eth_from_rings(cname.as_ptr(), rx.as_ptr(), 1, tx.as_ptr(), 1, socket.max(0) as u32) };
        if id < 0 {
            Err(format!("rte_eth_from_rings({name}): {}", dpdk::Error::from_rte_errno("rte_eth_from_rings")))
        } else {
            Ok(Port(id as u16))
        }
    };
    let nic = port("net_lat_nic", r1, r2)?;
    let probe_port = port("net_lat_probe", r2, r1)?;
    own(probe_port)?;
    let probe = Probe::new(probe_port, spec)?;
    Ok((nic, probe))
}

/// Marks `port` as owned by the probe, so the proxy's port listings leave it out.
fn own(port: Port) -> Result<(), String> {
    // SAFETY: plain data filled by the calls.
    unsafe {
        let mut owner: sys::rte_eth_dev_owner = std::mem::zeroed();
        dpdk::check("rte_eth_dev_owner_new", sys::rte_eth_dev_owner_new(&mut owner.id)).map_err(|e| e.to_string())?;
        for (dst, src) in owner.name.iter_mut().zip(b"latency-probe\0") {
            *dst = *src as std::ffi::c_char;
        }
        dpdk::check("rte_eth_dev_owner_set", sys::rte_eth_dev_owner_set(port.0, &owner)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
