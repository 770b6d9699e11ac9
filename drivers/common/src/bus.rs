//! The `sock` bus object and the interface the three plugins share through it.
//!
//! The bus plugin owns the only instance (a static in `librte_bus_shm.so`, registered
//! with EAL). EAL sees `sock:` devices as virtual devices (the vdev bus, whose devices
//! DPDK 22.11's ethdev iterator can find by devargs); this bus is the plugins' registry
//! of them: their records, sessions and drivers. The mempool and net plugins find it with
//! `rte_bus_find_by_name("sock")`. Behind the `rte_bus` header there is a
//! [`BusInterface`]: a `#[repr(C)]` table that starts with an [`InterfaceHeader`] (magic,
//! version, size), then plain data and `extern "C"` functions, through which they reach
//! the registry; the net driver registers a [`DriverInterface`] of the same kind. A
//! plugin checks the header before it touches anything else ([`check_bus`]) and refuses
//! a bus of another interface version instead of misreading it.
//!
//! The devices the interface hands out ([`DeviceHandle`]) are `ShmDevice` records of this
//! crate (with their session and region), shared as Rust types: the interface carries the
//! build id of this crate, and a plugin from another build is refused as well.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use dpdk_sys as sys;

use crate::device::ShmDevice;

pub const BUS_NAME: &CStr = c"sock";
/// Identifies this compilation of the shared plugin code (see build.rs).
pub const BUILD_ID: &str = env!("SHM_DRIVER_BUILD_ID");
/// The file the net and mempool plugins load when the bus is not loaded yet.
pub const BUS_LIBRARY: &CStr = c"librte_bus_shm.so";

/// `magic` of a [`BusInterface`].
pub const BUS_INTERFACE_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSIF");
/// `magic` of a [`DriverInterface`].
pub const DRIVER_INTERFACE_MAGIC: u64 = u64::from_le_bytes(*b"SHMDRVIF");
/// The version of [`BusInterface`], [`DriverInterface`] and [`DeviceEventRecord`]: any
/// change of their fields or of a function's meaning takes the next number.
pub const INTERFACE_VERSION: u32 = 1;

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

/// The first field of every table the plugins share: what it is, which version, how
/// many bytes it has. Read (volatile, by copy) and checked before anything behind it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceHeader {
    pub magic: u64,
    pub version: u32,
    /// `size_of` the whole table, header included.
    pub size: u32,
}

impl InterfaceHeader {
    /// The header of a table of type `T` of this build.
    pub const fn of<T>(magic: u64) -> InterfaceHeader {
        InterfaceHeader { magic, version: INTERFACE_VERSION, size: std::mem::size_of::<T>() as u32 }
    }

    /// Whether this header (found in memory) describes a table of type `T` that this
    /// build can read.
    pub fn check<T>(&self, magic: u64) -> Result<(), InterfaceError> {
        if self.magic != magic {
            return Err(InterfaceError::NotOurs);
        }
        if self.version != INTERFACE_VERSION {
            return Err(InterfaceError::OtherVersion { theirs: self.version });
        }
        if (self.size as usize) < std::mem::size_of::<T>() {
            return Err(InterfaceError::TooSmall { size: self.size, needed: std::mem::size_of::<T>() });
        }
        Ok(())
    }
}

/// Why a shared table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceError {
    /// Not one of this project's tables.
    NotOurs,
    /// Another interface version: a plugin of another release.
    OtherVersion { theirs: u32 },
    /// The table is shorter than this version's: it would be read past its end.
    TooSmall { size: u32, needed: usize },
    /// The same interface, but the device records behind it are another build's Rust types.
    OtherBuild { theirs: String },
}

impl fmt::Display for InterfaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceError::NotOurs => write!(f, "it is not this project's (wrong magic)"),
            InterfaceError::OtherVersion { theirs } => {
                write!(f, "it has interface version {theirs}, this plugin speaks version {INTERFACE_VERSION}")
            }
            InterfaceError::TooSmall { size, needed } => {
                write!(f, "its interface table has {size} bytes, version {INTERFACE_VERSION} has {needed}")
            }
            InterfaceError::OtherBuild { theirs } => write!(f, "it comes from build {theirs}, this plugin is build {BUILD_ID}"),
        }
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

const EVENT_PROXY_LOST: u32 = 1;
const EVENT_PROXY_BACK: u32 = 2;
const EVENT_RECLAIM: u32 = 3;
const EVENT_LINK: u32 = 4;

/// A [`DeviceEvent`] as it crosses the interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEventRecord {
    pub kind: u32,
    /// `Link`: 1 up, 0 down.
    pub up: u32,
    pub speed_mbps: u32,
}

impl From<DeviceEvent> for DeviceEventRecord {
    fn from(event: DeviceEvent) -> Self {
        let (kind, up, speed_mbps) = match event {
            DeviceEvent::ProxyLost => (EVENT_PROXY_LOST, 0, 0),
            DeviceEvent::ProxyBack => (EVENT_PROXY_BACK, 0, 0),
            DeviceEvent::Reclaim => (EVENT_RECLAIM, 0, 0),
            DeviceEvent::Link { up, speed_mbps } => (EVENT_LINK, up as u32, speed_mbps),
        };
        DeviceEventRecord { kind, up, speed_mbps }
    }
}

impl DeviceEventRecord {
    /// The event, or `None` for a kind this version does not know.
    pub fn event(&self) -> Option<DeviceEvent> {
        match self.kind {
            EVENT_PROXY_LOST => Some(DeviceEvent::ProxyLost),
            EVENT_PROXY_BACK => Some(DeviceEvent::ProxyBack),
            EVENT_RECLAIM => Some(DeviceEvent::Reclaim),
            EVENT_LINK => Some(DeviceEvent::Link { up: self.up != 0, speed_mbps: self.speed_mbps }),
            _ => None,
        }
    }
}

/// A device as it crosses the interface: the `ShmDevice` record inside the bus's
/// reference-counted allocation. Only the bus plugin's functions count references.
pub type DevicePtr = *const ShmDevice;

/// What a driver of `sock:` devices provides (the net plugin's ethdev driver). The bus
/// plugin calls `probe` once a device is connected to its proxy and `remove` when it is
/// unplugged (both: 0 or a negative errno; the driver logs why); `event` tells it about
/// the proxy (gone, back). The device pointer is valid for the call. None of them may
/// unwind.
#[repr(C)]
pub struct DriverInterface {
    pub header: InterfaceHeader,
    pub name: *const c_char,
    pub probe: unsafe extern "C" fn(DevicePtr) -> c_int,
    pub remove: unsafe extern "C" fn(DevicePtr) -> c_int,
    pub event: unsafe extern "C" fn(DevicePtr, DeviceEventRecord),
}

// SAFETY: a constant table: a static C string and functions.
unsafe impl Sync for DriverInterface {}

impl DriverInterface {
    pub const fn new(
        name: &'static CStr,
        probe: unsafe extern "C" fn(DevicePtr) -> c_int,
        remove: unsafe extern "C" fn(DevicePtr) -> c_int,
        event: unsafe extern "C" fn(DevicePtr, DeviceEventRecord),
    ) -> Self {
        DriverInterface {
            header: InterfaceHeader::of::<DriverInterface>(DRIVER_INTERFACE_MAGIC),
            name: name.as_ptr(),
            probe,
            remove,
            event,
        }
    }

    /// Checks a driver table handed to the bus before anything behind its header is read.
    ///
    /// # Safety
    /// `driver` is null or points to at least an [`InterfaceHeader`] that stays valid.
    pub unsafe fn checked<'a>(driver: *const DriverInterface) -> Result<&'a DriverInterface, InterfaceError> {
        if driver.is_null() {
            return Err(InterfaceError::NotOurs);
        }
        // SAFETY: per the contract the header is readable; copied out before it is judged.
        let header = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*driver).header)) };
        header.check::<DriverInterface>(DRIVER_INTERFACE_MAGIC)?;
        // SAFETY: checked above: a table of this version and at least this size.
        Ok(unsafe { &*driver })
    }

    pub fn name(&self) -> &CStr {
        // SAFETY: the constructor takes a static C string.
        unsafe { CStr::from_ptr(self.name) }
    }

    /// Tells the driver about `event` on `device`.
    pub fn notify(&self, device: &ShmDevice, event: DeviceEvent) {
        // SAFETY: the table was checked when it was registered; the device lives for the call.
        unsafe { (self.event)(device, event.into()) }
    }
}

/// The table behind the `sock` bus's `rte_bus` header: how the mempool and net plugins
/// reach the registry. Every function catches panics (a null or negative answer).
/// Devices it returns carry one reference, which the caller gives back with
/// `device_release` ([`DeviceHandle`] does this).
#[repr(C)]
pub struct BusInterface {
    pub header: InterfaceHeader,
    /// The build of this crate: the device records are its Rust types.
    pub build_id: [u8; 16],
    /// 1: added; 0: a driver of that name is registered already (a second copy of the
    /// same plugin: the first one serves); negative errno: refused.
    pub register_driver: unsafe extern "C" fn(*const DriverInterface) -> c_int,
    pub unregister_driver: unsafe extern "C" fn(*const DriverInterface),
    /// The device whose EAL device is this one, or null.
    pub device_by_rte: unsafe extern "C" fn(*const sys::rte_device) -> DevicePtr,
    /// The `index`th registered device, or null past the last.
    pub device_at: unsafe extern "C" fn(usize) -> DevicePtr,
    pub device_retain: unsafe extern "C" fn(DevicePtr),
    pub device_release: unsafe extern "C" fn(DevicePtr),
    /// A weak reference (it does not keep the device), or null.
    pub device_downgrade: unsafe extern "C" fn(DevicePtr) -> *const c_void,
    /// The device of a weak reference while it lives (one reference), or null.
    pub weak_upgrade: unsafe extern "C" fn(*const c_void) -> DevicePtr,
    pub weak_release: unsafe extern "C" fn(*const c_void),
}

/// The bus object the bus plugin registers: EAL's header, then the interface.
#[repr(C)]
pub struct ShmBus {
    /// EAL's view; stays first: EAL hands callbacks `&rte_bus`.
    rte: UnsafeCell<sys::rte_bus>,
    interface: BusInterface,
}

// SAFETY: EAL writes the rte_bus header (its list linkage) only while registering, before
// any other thread exists; the interface is constant.
unsafe impl Sync for ShmBus {}

impl BusInterface {
    /// The header of this build's table: the bus plugin writes its table as
    /// `BusInterface { header: BusInterface::HEADER, build_id: BusInterface::BUILD_ID, <its functions> }`.
    pub const HEADER: InterfaceHeader = InterfaceHeader::of::<BusInterface>(BUS_INTERFACE_MAGIC);
    /// The build id this build's table carries.
    pub const BUILD_ID: [u8; 16] = build_id_bytes();
}

#[derive(Debug)]
pub enum BusLookupError {
    NotLoaded(String),
    Refused(InterfaceError),
}

impl fmt::Display for BusLookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusLookupError::NotLoaded(why) => write!(
                f,
                "the 'sock' bus is not loaded ({why}); load librte_bus_shm.so with -d, next to this plugin"
            ),
            BusLookupError::Refused(InterfaceError::NotOurs) => {
                write!(f, "a bus named 'sock' exists but is not this project's")
            }
            BusLookupError::Refused(why) => {
                write!(f, "librte_bus_shm.so does not fit this plugin: {why}; use the three plugins of one build")
            }
        }
    }
}

impl ShmBus {
    /// `rte` is the bus header with its callbacks (its name is set here), `interface` the
    /// table the other plugins use.
    pub const fn new(mut rte: sys::rte_bus, interface: BusInterface) -> Self {
        rte.name = BUS_NAME.as_ptr();
        ShmBus { rte: UnsafeCell::new(rte), interface }
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
}

/// Checks the interface found behind a bus header: its header first, then the build id.
///
/// # Safety
/// `interface` points to at least an [`InterfaceHeader`] that stays valid for the process.
pub unsafe fn check_bus(interface: *const BusInterface) -> Result<&'static BusInterface, InterfaceError> {
    // SAFETY: per the contract the header is readable; copied out before it is judged.
    let header = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*interface).header)) };
    header.check::<BusInterface>(BUS_INTERFACE_MAGIC)?;
    // SAFETY: a table of this version and at least this size: the build id is inside it.
    let build_id = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*interface).build_id)) };
    if build_id != build_id_bytes() {
        return Err(InterfaceError::OtherBuild { theirs: String::from_utf8_lossy(&build_id).into_owned() });
    }
    // SAFETY: checked above; it lives for the process (per the contract).
    Ok(unsafe { &*interface })
}

impl BusInterface {
    /// The bus, for the net and mempool plugins. Loads the bus plugin next to the caller
    /// when it is not loaded yet (plugins in a directory load in no particular order).
    pub fn find_or_load() -> Result<&'static BusInterface, BusLookupError> {
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

    /// The bus's interface if the bus is registered, checked to be ours, of this
    /// interface version and from this build.
    pub fn find() -> Result<&'static BusInterface, BusLookupError> {
        // SAFETY: plain lookup in EAL's bus list by a valid C string.
        let rte = unsafe { sys::rte_bus_find_by_name(BUS_NAME.as_ptr()) };
        if rte.is_null() {
            return Err(BusLookupError::NotLoaded("no bus named 'sock' is registered".into()));
        }
        // SAFETY: only this project registers a bus named "sock", and its static is a
        // ShmBus (repr(C)): the interface follows the rte_bus header, and its header is
        // checked before anything else in it is read.
        unsafe {
            let interface = std::ptr::addr_of!((*(rte as *const ShmBus)).interface);
            check_bus(interface).map_err(BusLookupError::Refused)
        }
    }

    /// Adds `driver` unless a driver of that name is registered already. Returns whether
    /// it was added.
    pub fn register_driver(&self, driver: &'static DriverInterface) -> Result<bool, String> {
        // SAFETY: a checked table of this version; the driver table is a static.
        match unsafe { (self.register_driver)(driver) } {
            rc if rc > 0 => Ok(true),
            0 => Ok(false),
            rc => Err(crate::errno_text(-rc)),
        }
    }

    /// The device of EAL's device `rte` (also an opaque pointer one of our plugins
    /// stored, like a pool's `pool_config`), if it is one of ours.
    #[allow(clippy::not_unsafe_ptr_arg_deref, reason = "the bus only compares the pointer with its devices'")]
    pub fn device_by_rte(&'static self, rte: *const sys::rte_device) -> Option<DeviceHandle> {
        // SAFETY: a checked table; the bus only compares the pointer.
        DeviceHandle::adopt(self, unsafe { (self.device_by_rte)(rte) })
    }

    /// A weak reference to `device`, a pointer the bus handed to a driver callback.
    ///
    /// # Safety
    /// `device` is live for the call (the bus holds it while it calls its driver).
    pub unsafe fn downgrade(&'static self, device: DevicePtr) -> WeakDevice {
        // SAFETY: a checked table; the device is live per the contract.
        let weak = unsafe { (self.device_downgrade)(device) };
        WeakDevice { bus: self, weak }
    }

    /// Every registered device.
    pub fn devices(&'static self) -> Vec<DeviceHandle> {
        let mut out = Vec::new();
        // SAFETY: a checked table; null past the last device.
        while let Some(dev) = DeviceHandle::adopt(self, unsafe { (self.device_at)(out.len()) }) {
            out.push(dev);
        }
        out
    }
}

/// One reference to a device, from the bus interface.
pub struct DeviceHandle {
    bus: &'static BusInterface,
    device: NonNull<ShmDevice>,
}

// SAFETY: the record is Sync (see device.rs) and the reference count is the bus's atomic one.
unsafe impl Send for DeviceHandle {}
// SAFETY: as above.
unsafe impl Sync for DeviceHandle {}

impl DeviceHandle {
    /// Takes over the one reference the bus handed out with `device` (null: none).
    fn adopt(bus: &'static BusInterface, device: DevicePtr) -> Option<DeviceHandle> {
        NonNull::new(device as *mut ShmDevice).map(|device| DeviceHandle { bus, device })
    }

    /// A weak reference to this device.
    pub fn downgrade(&self) -> WeakDevice {
        // SAFETY: our reference keeps the device alive for the call.
        unsafe { self.bus.downgrade(self.device.as_ptr()) }
    }
}

impl Deref for DeviceHandle {
    type Target = ShmDevice;
    fn deref(&self) -> &ShmDevice {
        // SAFETY: our reference keeps the record alive.
        unsafe { self.device.as_ref() }
    }
}

impl Clone for DeviceHandle {
    fn clone(&self) -> Self {
        // SAFETY: a checked table; our reference keeps the device alive for the call.
        unsafe { (self.bus.device_retain)(self.device.as_ptr()) };
        DeviceHandle { bus: self.bus, device: self.device }
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        // SAFETY: gives back the one reference this handle holds.
        unsafe { (self.bus.device_release)(self.device.as_ptr()) }
    }
}

/// A device reference that does not keep the device (a port or a pool of a device that
/// may be unplugged).
pub struct WeakDevice {
    bus: &'static BusInterface,
    weak: *const c_void,
}

// SAFETY: the weak count is the bus's atomic one; the pointer is only handed back to it.
unsafe impl Send for WeakDevice {}
// SAFETY: as above.
unsafe impl Sync for WeakDevice {}

impl WeakDevice {
    pub fn upgrade(&self) -> Option<DeviceHandle> {
        if self.weak.is_null() {
            return None;
        }
        // SAFETY: a checked table; our weak reference is live.
        DeviceHandle::adopt(self.bus, unsafe { (self.bus.weak_upgrade)(self.weak) })
    }
}

impl Drop for WeakDevice {
    fn drop(&mut self) {
        if !self.weak.is_null() {
            // SAFETY: gives back the one weak reference this value holds.
            unsafe { (self.bus.weak_release)(self.weak) }
        }
    }
}

/// Locks a mutex even if a panicking thread poisoned it: the state behind our mutexes
/// stays consistent across a panic (every update is a single assignment or push).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn no_probe(_: DevicePtr) -> c_int {
        0
    }
    unsafe extern "C" fn no_event(_: DevicePtr, _: DeviceEventRecord) {}
    unsafe extern "C" fn no_register(_: *const DriverInterface) -> c_int {
        1
    }
    unsafe extern "C" fn no_unregister(_: *const DriverInterface) {}
    unsafe extern "C" fn no_device(_: *const sys::rte_device) -> DevicePtr {
        std::ptr::null()
    }
    unsafe extern "C" fn no_device_at(_: usize) -> DevicePtr {
        std::ptr::null()
    }
    unsafe extern "C" fn no_count(_: DevicePtr) {}
    unsafe extern "C" fn no_weak(_: DevicePtr) -> *const c_void {
        std::ptr::null()
    }
    unsafe extern "C" fn no_upgrade(_: *const c_void) -> DevicePtr {
        std::ptr::null()
    }
    unsafe extern "C" fn no_weak_release(_: *const c_void) {}

    fn bus() -> BusInterface {
        BusInterface {
            header: BusInterface::HEADER,
            build_id: BusInterface::BUILD_ID,
            register_driver: no_register,
            unregister_driver: no_unregister,
            device_by_rte: no_device,
            device_at: no_device_at,
            device_retain: no_count,
            device_release: no_count,
            device_downgrade: no_weak,
            weak_upgrade: no_upgrade,
            weak_release: no_weak_release,
        }
    }


    #[test]
    fn a_bus_of_this_version_and_build_is_taken() {
        let bus = Box::leak(Box::new(bus()));
        // SAFETY: a live table.
        let found = unsafe { check_bus(bus) }.unwrap();
        assert!(std::ptr::eq(found, bus));
        assert_eq!(bus.header.size as usize, std::mem::size_of::<BusInterface>());
    }

    #[test]
    fn a_bus_of_another_version_is_refused_before_it_is_read() {
        let mut bus = bus();
        bus.header.version = INTERFACE_VERSION + 1;
        // SAFETY: a live table (the check reads only its header).
        let err = unsafe { check_bus(&bus) }.map(|_| ()).unwrap_err();
        assert_eq!(err, InterfaceError::OtherVersion { theirs: INTERFACE_VERSION + 1 });
        let text = BusLookupError::Refused(err).to_string();
        assert!(text.contains(&format!("interface version {}", INTERFACE_VERSION + 1)), "{text}");
        assert!(text.contains("use the three plugins of one build"), "{text}");
    }

    #[test]
    fn a_short_table_a_foreign_magic_and_another_build_are_refused() {
        let mut short = bus();
        short.header.size = std::mem::size_of::<InterfaceHeader>() as u32;
        // SAFETY: live tables (the checks read only what they have checked).
        unsafe {
            assert_eq!(
                check_bus(&short).map(|_| ()),
                Err(InterfaceError::TooSmall { size: short.header.size, needed: std::mem::size_of::<BusInterface>() })
            );
            let mut foreign = bus();
            foreign.header.magic = DRIVER_INTERFACE_MAGIC;
            assert_eq!(check_bus(&foreign).map(|_| ()), Err(InterfaceError::NotOurs));
            let mut other = bus();
            other.build_id = *b"0123456789abcdef";
            assert_eq!(
                check_bus(&other).map(|_| ()),
                Err(InterfaceError::OtherBuild { theirs: "0123456789abcdef".into() })
            );
        }
    }

    #[test]
    fn driver_tables_are_checked() {
        static DRIVER: DriverInterface = DriverInterface::new(c"test", no_probe, no_probe, no_event);
        // SAFETY: a static table, a null pointer, and a live modified copy.
        unsafe {
            assert_eq!(DriverInterface::checked(&DRIVER).unwrap().name(), c"test");
            assert_eq!(DriverInterface::checked(std::ptr::null()).map(|_| ()), Err(InterfaceError::NotOurs));
            let old = DriverInterface { header: InterfaceHeader { version: 0, ..DRIVER.header }, ..DriverInterface::new(c"old", no_probe, no_probe, no_event) };
            assert_eq!(DriverInterface::checked(&old).map(|_| ()), Err(InterfaceError::OtherVersion { theirs: 0 }));
        }
    }

    #[test]
    fn events_cross_the_interface_and_unknown_kinds_are_dropped() {
        for event in [
            DeviceEvent::ProxyLost,
            DeviceEvent::ProxyBack,
            DeviceEvent::Reclaim,
            DeviceEvent::Link { up: true, speed_mbps: 10_000 },
            DeviceEvent::Link { up: false, speed_mbps: 0 },
        ] {
            assert_eq!(DeviceEventRecord::from(event).event(), Some(event));
        }
        assert_eq!(DeviceEventRecord { kind: 0, up: 0, speed_mbps: 0 }.event(), None);
        assert_eq!(DeviceEventRecord { kind: 99, up: 1, speed_mbps: 1 }.event(), None);
    }
}
