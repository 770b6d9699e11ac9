//! A `sock:` device: one socket path, its arguments, and (once probed) its session with
//! the proxy.
//!
//! EAL knows the device as a virtual device (`rte_vdev_device` named `sock:<path>`, see
//! the crate doc); this is the plugins' own record of it, kept in the `sock` bus
//! registry. Only this plugin's code touches it: the other plugins see a
//! `shm_driver_common::bus::DeviceInfo` copied from it.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dpdk_sys as sys;

use shm_driver_common::bus::{lock, DriverInterface};
use shm_driver_common::devargs::DevArgs;
use crate::session::Session;

/// The next device record's serial number.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

pub struct ShmDevice {
    /// Unique in the process for the record's life (`DeviceInfo::serial`).
    serial: u64,
    /// EAL's device (owned by the vdev bus, valid until the device is removed, which
    /// takes this record off the registry first). Only compared and handed to DPDK.
    rte: *mut sys::rte_device,
    /// The socket path (the EAL name without `sock:`).
    name: CString,
    pub args: DevArgs,
    driver: Mutex<Option<&'static DriverInterface>>,
    session: Mutex<Option<Arc<Session>>>,
}

// SAFETY: `rte` is only compared and passed to DPDK, never dereferenced here; other state
// is behind mutexes.
unsafe impl Sync for ShmDevice {}
// SAFETY: as above; the pointer is EAL-owned and thread-agnostic.
unsafe impl Send for ShmDevice {}

impl ShmDevice {
    /// A record for `name` (the socket path) and EAL's device `rte` that carries it.
    pub fn new(name: &str, args: DevArgs, rte: *mut sys::rte_device) -> Arc<ShmDevice> {
        Arc::new(ShmDevice {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            rte,
            name: CString::new(name).unwrap_or_default(),
            args,
            driver: Mutex::new(None),
            session: Mutex::new(None),
        })
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn name(&self) -> &str {
        self.name.to_str().unwrap_or("")
    }

    pub fn rte_ptr(&self) -> *mut sys::rte_device {
        self.rte
    }

    /// No NUMA affinity: a socket is reachable from everywhere. Applications such as
    /// testpmd put a device with an unknown node on socket 0, which is what --no-huge has.
    pub fn numa_node(&self) -> i32 {
        sys::SOCKET_ID_ANY
    }

    pub fn driver(&self) -> Option<&'static DriverInterface> {
        *lock(&self.driver)
    }

    /// Records (or clears) the net driver that took this device. EAL's view of the
    /// driver is the vdev bus's business (it records our vdev driver after probe).
    pub fn set_driver(&self, driver: Option<&'static DriverInterface>) {
        *lock(&self.driver) = driver;
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        lock(&self.session).clone()
    }

    pub fn set_session(&self, session: Option<Arc<Session>>) -> Option<Arc<Session>> {
        std::mem::replace(&mut *lock(&self.session), session)
    }
}
