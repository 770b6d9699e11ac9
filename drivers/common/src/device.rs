//! A `sock:` device: one socket path, its arguments, and (once probed) its session with
//! the proxy.

use std::any::Any;
use std::cell::UnsafeCell;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use dpdk_sys as sys;

use crate::bus::{lock, ShmDriver};
use crate::devargs::DevArgs;
use crate::session::Session;

#[repr(C)]
pub struct ShmDevice {
    /// EAL's view; stays first so that `*mut rte_device` and `*const ShmDevice` agree.
    rte: UnsafeCell<sys::rte_device>,
    name: CString,
    pub args: DevArgs,
    driver: Mutex<Option<&'static ShmDriver>>,
    session: Mutex<Option<Arc<Session>>>,
    /// The driver's own state for this device (the net driver keeps its port here).
    driver_data: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

// SAFETY: the rte_device header is written by this crate only while the bus holds the
// device during scan/probe/remove, which EAL serialises; other state is behind mutexes.
unsafe impl Sync for ShmDevice {}
// SAFETY: as above; the raw pointers in the header are EAL-owned and thread-agnostic.
unsafe impl Send for ShmDevice {}

impl ShmDevice {
    /// A device for `name` (the socket path), bound to the EAL devargs it came from.
    pub fn new(name: &str, args: DevArgs, bus: *const sys::rte_bus, devargs: *mut sys::rte_devargs) -> Arc<ShmDevice> {
        let name = CString::new(name).unwrap_or_default();
        let dev = Arc::new(ShmDevice {
            rte: UnsafeCell::new(sys::rte_device {
                next: sys::rte_device__bindgen_ty_1 { tqe_next: std::ptr::null_mut(), tqe_prev: std::ptr::null_mut() },
                name: std::ptr::null(),
                bus_info: std::ptr::null(),
                driver: std::ptr::null(),
                bus,
                // No NUMA affinity: a socket is reachable from everywhere. Applications such as
                // testpmd put a device with an unknown node on socket 0, which is what --no-huge has.
                numa_node: sys::SOCKET_ID_ANY,
                devargs,
            }),
            name,
            args,
            driver: Mutex::new(None),
            session: Mutex::new(None),
            driver_data: Mutex::new(None),
        });
        // SAFETY: the device is not shared yet; the name lives as long as the device.
        unsafe { (*dev.rte.get()).name = dev.name.as_ptr() };
        dev
    }

    pub fn name(&self) -> &str {
        self.name.to_str().unwrap_or("")
    }

    pub fn rte_ptr(&self) -> *mut sys::rte_device {
        self.rte.get()
    }

    pub fn numa_node(&self) -> i32 {
        // SAFETY: read of a plain field that only this crate writes, under EAL's serialisation.
        unsafe { (*self.rte.get()).numa_node }
    }

    pub fn driver(&self) -> Option<&'static ShmDriver> {
        *lock(&self.driver)
    }

    /// Records (or clears) the driver that probed this device, in EAL's view too.
    pub fn set_driver(&self, driver: Option<&'static ShmDriver>) {
        *lock(&self.driver) = driver;
        let rte_driver = driver.map_or(std::ptr::null(), |d| d.rte_ptr());
        // SAFETY: EAL serialises probe/remove of a device; it reads this field afterwards.
        unsafe { (*self.rte.get()).driver = rte_driver };
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        lock(&self.session).clone()
    }

    pub fn set_session(&self, session: Option<Arc<Session>>) -> Option<Arc<Session>> {
        std::mem::replace(&mut *lock(&self.session), session)
    }

    pub fn driver_data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        lock(&self.driver_data).clone().and_then(|d| d.downcast::<T>().ok())
    }

    /// Whether the driver still has state for this device (a net port that is not closed).
    pub fn has_driver_data(&self) -> bool {
        lock(&self.driver_data).is_some()
    }

    pub fn set_driver_data(&self, data: Option<Arc<dyn Any + Send + Sync>>) {
        *lock(&self.driver_data) = data;
    }
}
