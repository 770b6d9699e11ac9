//! The `sock` bus object and what the three plugins share through it.
//!
//! The bus plugin owns the only instance (a static in `librte_bus_shm.so`, registered
//! with EAL). EAL sees `sock:` devices as virtual devices (the vdev bus, whose devices
//! DPDK 22.11's ethdev iterator can find by devargs); this bus is the plugins' registry
//! of them: their records, sessions and drivers. The mempool and net plugins find it with `rte_bus_find_by_name("sock")`
//! and use the Rust state behind the `rte_bus` header. All three plugins link this
//! crate from the same build, so its types have one layout; `BUILD_ID` (checked before
//! anything behind the header is touched) refuses a plugin from another build.

use std::cell::UnsafeCell;
use std::ffi::{c_void, CStr};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use dpdk_sys as sys;

use crate::device::ShmDevice;

pub const BUS_NAME: &CStr = c"sock";
const BUS_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUS01");
/// Identifies this compilation of the shared plugin code (see build.rs).
pub const BUILD_ID: &str = env!("SHM_DRIVER_BUILD_ID");
/// The file the net and mempool plugins load when the bus is not loaded yet.
pub const BUS_LIBRARY: &CStr = c"librte_bus_shm.so";

const fn build_id_bytes() -> [u8; 16] {
    let id = BUILD_ID.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < out.len() && i < id.len() {
        out[i] = id[i];
        i += 1;
    }
    out
}

/// What a driver of `sock:` devices provides (the net plugin's ethdev driver). The bus
/// plugin calls `probe` once a device is connected to its proxy and `remove` when it is
/// unplugged; `event` tells it about the proxy (gone, back).
pub struct ShmDriver {
    pub name: &'static CStr,
    pub probe: fn(&Arc<ShmDevice>) -> Result<(), String>,
    pub remove: fn(&Arc<ShmDevice>) -> Result<(), String>,
    pub event: fn(&Arc<ShmDevice>, DeviceEvent),
}

impl ShmDriver {
    pub const fn new(
        name: &'static CStr,
        probe: fn(&Arc<ShmDevice>) -> Result<(), String>,
        remove: fn(&Arc<ShmDevice>) -> Result<(), String>,
        event: fn(&Arc<ShmDevice>, DeviceEvent),
    ) -> Self {
        ShmDriver { name, probe, remove, event }
    }
}

/// What happened to a device's proxy, told to its driver from the EAL interrupt thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The proxy closed the connection or died: link down, the data path must stop.
    ProxyLost,
    /// A new session is up (reconnected): the driver may restart its queues.
    ProxyBack,
    /// The proxy is gone and the device is about to hand its region to a new one, which
    /// zeroes the rings: take back every buffer they still hold for us (from the
    /// reconnect thread, once the application's bursts have seen the queues inactive).
    Reclaim,
    /// The proxy reported a link change.
    Link { up: bool, speed_mbps: u32 },
}

#[repr(C)]
pub struct ShmBus {
    /// EAL's view; stays first: EAL hands callbacks `&rte_bus`.
    rte: UnsafeCell<sys::rte_bus>,
    magic: u64,
    build_id: [u8; 16],
    drivers: Mutex<Vec<&'static ShmDriver>>,
    devices: Mutex<Vec<Arc<ShmDevice>>>,
}

// SAFETY: EAL writes the rte_bus header (its list linkage) only while registering, before
// any other thread exists; everything else is behind mutexes.
unsafe impl Sync for ShmBus {}

#[derive(Debug)]
pub enum BusLookupError {
    NotLoaded(String),
    OtherBuild { theirs: String },
    NotOurs,
}

impl fmt::Display for BusLookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusLookupError::NotLoaded(why) => write!(
                f,
                "the 'sock' bus is not loaded ({why}); load librte_bus_shm.so with -d, next to this plugin"
            ),
            BusLookupError::OtherBuild { theirs } => write!(
                f,
                "librte_bus_shm.so comes from another build ({theirs}, this plugin is {BUILD_ID}); use the three plugins of one build"
            ),
            BusLookupError::NotOurs => write!(f, "a bus named 'sock' exists but is not this project's"),
        }
    }
}

impl ShmBus {
    /// `rte` is the bus header with its callbacks; its name is set here.
    pub const fn new(mut rte: sys::rte_bus) -> Self {
        rte.name = BUS_NAME.as_ptr();
        ShmBus {
            rte: UnsafeCell::new(rte),
            magic: BUS_MAGIC,
            build_id: build_id_bytes(),
            drivers: Mutex::new(Vec::new()),
            devices: Mutex::new(Vec::new()),
        }
    }

    /// Registers the bus with EAL. Called once, from the bus plugin's constructor.
    ///
    /// # Safety
    /// `self` is a static that is never moved, and no other thread uses it yet.
    pub unsafe fn register(&'static self) {
        // SAFETY: per the contract, nobody else looks at the header yet; EAL links it into
        // its list through the UnsafeCell.
        unsafe { sys::rte_bus_register(self.rte.get()) }
    }

    pub fn rte_ptr(&self) -> *const sys::rte_bus {
        self.rte.get()
    }

    /// The bus, for the net and mempool plugins. Loads the bus plugin next to the caller
    /// when it is not loaded yet (plugins in a directory load in no particular order).
    pub fn find_or_load() -> Result<&'static ShmBus, BusLookupError> {
        match Self::find() {
            Err(BusLookupError::NotLoaded(_)) => {
                // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime
                // (DPDK never unloads plugins), so it is deliberately not closed.
                let handle = unsafe { libc::dlopen(BUS_LIBRARY.as_ptr(), libc::RTLD_NOW) };
                if handle.is_null() {
                    // SAFETY: dlerror returns a thread-local message or null.
                    let why = unsafe { crate::ffi::str_from_c(libc::dlerror()) }
                        .map(|s| s.into_owned())
                        .unwrap_or_else(|| "dlopen failed".into());
                    return Err(BusLookupError::NotLoaded(why));
                }
                Self::find()
            }
            other => other,
        }
    }

    /// The bus if it is registered, checked to be ours and from this build.
    pub fn find() -> Result<&'static ShmBus, BusLookupError> {
        // SAFETY: plain lookup in EAL's bus list by a valid C string.
        let rte = unsafe { sys::rte_bus_find_by_name(BUS_NAME.as_ptr()) };
        if rte.is_null() {
            return Err(BusLookupError::NotLoaded("no bus named 'sock' is registered".into()));
        }
        let bus = rte as *const ShmBus;
        // SAFETY: only this project registers a bus named "sock", and its static is a
        // ShmBus whose `magic` and `build_id` follow the rte_bus header (repr(C)). They are
        // read before anything else so that a plugin of another build is refused before it
        // interprets Rust fields whose layout may differ.
        let (magic, build_id) = unsafe {
            (
                std::ptr::read_volatile(std::ptr::addr_of!((*bus).magic)),
                std::ptr::read_volatile(std::ptr::addr_of!((*bus).build_id)),
            )
        };
        if magic != BUS_MAGIC {
            return Err(BusLookupError::NotOurs);
        }
        if build_id != build_id_bytes() {
            return Err(BusLookupError::OtherBuild { theirs: String::from_utf8_lossy(&build_id).into_owned() });
        }
        // SAFETY: checked above; the static lives for the whole process.
        Ok(unsafe { &*bus })
    }

    /// Adds `driver` unless a driver of that name is registered already (a second copy
    /// of the same plugin, loaded both with `-d` and from DPDK's driver directory): the
    /// first one serves. Returns whether `driver` was added.
    pub fn register_driver(&self, driver: &'static ShmDriver) -> bool {
        let mut drivers = lock(&self.drivers);
        if drivers.iter().any(|d| std::ptr::eq(*d, driver) || d.name == driver.name) {
            return false;
        }
        drivers.push(driver);
        true
    }

    pub fn unregister_driver(&self, driver: &'static ShmDriver) {
        lock(&self.drivers).retain(|d| !std::ptr::eq(*d, driver));
    }

    /// The driver for a device. This bus has one kind of device, so the first driver serves it.
    pub fn driver(&self) -> Option<&'static ShmDriver> {
        lock(&self.drivers).first().copied()
    }

    pub fn devices(&self) -> Vec<Arc<ShmDevice>> {
        lock(&self.devices).clone()
    }

    pub fn add_device(&self, device: Arc<ShmDevice>) {
        lock(&self.devices).push(device);
    }

    pub fn remove_device(&self, device: &Arc<ShmDevice>) {
        let mut devices = lock(&self.devices);
        devices.retain(|d| !Arc::ptr_eq(d, device));
    }

    pub fn device_by_name(&self, name: &str) -> Option<Arc<ShmDevice>> {
        lock(&self.devices).iter().find(|d| d.name() == name).cloned()
    }

    /// Our device behind an `rte_device` pointer EAL gives us, or `None` if it is not one
    /// of ours (never cast blindly: EAL callbacks can be handed other buses' devices).
    pub fn device_by_rte(&self, rte: *const sys::rte_device) -> Option<Arc<ShmDevice>> {
        lock(&self.devices).iter().find(|d| std::ptr::eq(d.rte_ptr(), rte)).cloned()
    }

    /// Our device behind an opaque pointer that one of our plugins stored earlier.
    pub fn device_by_ptr(&self, ptr: *const c_void) -> Option<Arc<ShmDevice>> {
        self.device_by_rte(ptr as *const sys::rte_device)
    }
}

/// Locks a mutex even if a panicking thread poisoned it: the state behind our mutexes
/// stays consistent across a panic (every update is a single assignment or push).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
