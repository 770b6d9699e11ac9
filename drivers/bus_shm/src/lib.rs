#![cfg_attr(test, allow(dead_code))]
//! `librte_bus_shm.so`: `sock:` devices, and the `sock` bus that is the plugins' registry.
//!
//! `-a sock:/run/io/sock[,args]`, `--vdev sock:/run/io/sock[,args]`, or at run time
//! `rte_dev_probe("sock:/run/io/sock")` (testpmd's `port attach`, Open vSwitch's
//! `options:dpdk-devargs=sock:/run/io/sock`) creates a device per socket path. EAL keeps
//! it on its virtual-device bus: DPDK 22.11's ethdev iterator (`rte_eth_iterator_init`,
//! which `RTE_ETH_FOREACH_MATCHING_DEV`, Open vSwitch and testpmd's `device detach` use to
//! find a device's ports by devargs) walks only the pci, vdev, fslmc and dpaa buses and
//! refuses any other ("Bus ... does not support iterating"), whatever the bus provides.
//! The vdev bus finds our driver by its alias `sock:`, the prefix of every such name.
//!
//! Probing a device connects to the IO proxy behind the socket, performs the versioned
//! handshake, maps the shared region it receives and hands the device to the net
//! driver, which creates the ethdev. A device that cannot be probed is reported in one
//! log line and skipped: the application keeps its other ports.
//!
//! The callbacks below are EAL's entry points; each catches panics and logs. The state
//! they work on (devices, drivers, sessions) is the [`Registry`] here; the net and mempool
//! plugins find the bus by its name `sock` and reach the registry only through the
//! `#[repr(C)]`, versioned `shm_driver_common::bus::BusInterface` behind its header.

use std::cell::UnsafeCell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex, Weak};

use dpdk_sys as sys;
use shm_driver_common::bus::{lock, BusInterface, DevicePtr, DriverInterface, ShmBus};
use shm_driver_common::devargs::{self, DevArgs};
use shm_driver_common::device::ShmDevice;
use shm_driver_common::ffi::{guard, str_from_c};
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::session::{Region, Session};
use shm_driver_common::{errno_text, plugin_constructor};

static LOG: LogType = LogType::new("bus.shm", "bus_shm");

/// The prefix of every `sock:` device name, the vdev driver's alias.
const NAME_PREFIX: &str = "sock:";

/// The registry. EAL requires scan, probe and find_device of every bus; devices reach
/// us through the vdev driver below, so there is nothing to scan or probe here, and
/// `parse` claims no name (a name this bus claimed would be this bus's device, which
/// the ethdev iterator cannot walk).
static BUS: ShmBus = ShmBus::new(
    sys::rte_bus {
    next: sys::rte_bus__bindgen_ty_1 { tqe_next: std::ptr::null_mut(), tqe_prev: std::ptr::null_mut() },
    name: std::ptr::null(),
    scan: Some(bus_scan),
    probe: Some(bus_probe),
    find_device: Some(bus_find_device),
    plug: None,
    unplug: None,
    parse: Some(bus_parse),
    devargs_parse: None,
    dma_map: None,
    dma_unmap: None,
    conf: sys::rte_bus_conf { scan_mode: sys::RTE_BUS_SCAN_UNDEFINED },
    get_iommu_class: Some(bus_get_iommu_class),
    dev_iterate: None,
    hot_unplug_handler: None,
    sigbus_handler: None,
    cleanup: Some(bus_cleanup),
    },
    BusInterface {
        header: BusInterface::HEADER,
        build_id: BusInterface::BUILD_ID,
        register_driver: if_register_driver,
        unregister_driver: if_unregister_driver,
        device_by_rte: if_device_by_rte,
        device_at: if_device_at,
        device_retain: if_device_retain,
        device_release: if_device_release,
        device_downgrade: if_device_downgrade,
        weak_upgrade: if_weak_upgrade,
        weak_release: if_weak_release,
    },
);

/// The registry: the drivers of `sock:` devices (the net plugin's) and the devices.
/// Only this plugin's code touches it; the others go through the bus interface.
struct Registry {
    drivers: Mutex<Vec<&'static DriverInterface>>,
    devices: Mutex<Vec<Arc<ShmDevice>>>,
}

static REGISTRY: Registry = Registry { drivers: Mutex::new(Vec::new()), devices: Mutex::new(Vec::new()) };

impl Registry {
    /// The driver for a device. This bus has one kind of device, so the first driver serves it.
    fn driver(&self) -> Option<&'static DriverInterface> {
        lock(&self.drivers).first().copied()
    }

    fn devices(&self) -> Vec<Arc<ShmDevice>> {
        lock(&self.devices).clone()
    }

    fn add_device(&self, device: Arc<ShmDevice>) {
        lock(&self.devices).push(device);
    }

    fn remove_device(&self, device: &Arc<ShmDevice>) {
        lock(&self.devices).retain(|d| !Arc::ptr_eq(d, device));
    }

    fn device_by_name(&self, name: &str) -> Option<Arc<ShmDevice>> {
        lock(&self.devices).iter().find(|d| d.name() == name).cloned()
    }

    /// Our device behind an `rte_device` pointer EAL (or one of our plugins) gives us, or
    /// `None` if it is not one of ours (never cast blindly: EAL callbacks can be handed
    /// other buses' devices).
    fn device_by_rte(&self, rte: *const sys::rte_device) -> Option<Arc<ShmDevice>> {
        lock(&self.devices).iter().find(|d| std::ptr::eq(d.rte_ptr(), rte)).cloned()
    }
}

// The bus interface's functions. Devices cross it as `Arc::into_raw` pointers (one
// strong reference each) and weak references as `Weak::into_raw`; only these functions
// turn them back.

unsafe extern "C" fn if_register_driver(driver: *const DriverInterface) -> c_int {
    guard(&LOG, "register_driver", -libc::EIO, || {
        // SAFETY: the caller passes its static driver table (or garbage of another
        // version, which the header check refuses before anything else is read).
        let driver: &'static DriverInterface = match unsafe { DriverInterface::checked(driver) } {
            Ok(driver) => driver,
            Err(why) => {
                LOG.error(format_args!("a sock: driver was refused: {why}; use the three plugins of one build"));
                return -libc::EPROTO;
            }
        };
        let mut drivers = lock(&REGISTRY.drivers);
        if drivers.iter().any(|d| std::ptr::eq(*d, driver) || d.name() == driver.name()) {
            return 0;
        }
        drivers.push(driver);
        1
    })
}

unsafe extern "C" fn if_unregister_driver(driver: *const DriverInterface) {
    guard(&LOG, "unregister_driver", (), || lock(&REGISTRY.drivers).retain(|d| !std::ptr::eq(*d, driver)))
}

unsafe extern "C" fn if_device_by_rte(rte: *const sys::rte_device) -> DevicePtr {
    guard(&LOG, "device_by_rte", std::ptr::null(), || REGISTRY.device_by_rte(rte).map_or(std::ptr::null(), Arc::into_raw))
}

unsafe extern "C" fn if_device_at(index: usize) -> DevicePtr {
    guard(&LOG, "device_at", std::ptr::null(), || {
        lock(&REGISTRY.devices).get(index).cloned().map_or(std::ptr::null(), Arc::into_raw)
    })
}

unsafe extern "C" fn if_device_retain(device: DevicePtr) {
    // SAFETY: the caller holds a reference this interface handed out (or the pointer
    // passed to its driver callback, which the bus holds for the call).
    unsafe { Arc::increment_strong_count(device) }
}

unsafe extern "C" fn if_device_release(device: DevicePtr) {
    // SAFETY: the caller gives back one reference this interface handed out.
    unsafe { Arc::decrement_strong_count(device) }
}

unsafe extern "C" fn if_device_downgrade(device: DevicePtr) -> *const c_void {
    guard(&LOG, "device_downgrade", std::ptr::null(), || {
        // SAFETY: the caller holds a reference (as for retain); the temporary Arc is
        // forgotten, so its count is unchanged.
        let strong = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(device) });
        Weak::into_raw(Arc::downgrade(&strong)) as *const c_void
    })
}

unsafe extern "C" fn if_weak_upgrade(weak: *const c_void) -> DevicePtr {
    guard(&LOG, "weak_upgrade", std::ptr::null(), || {
        // SAFETY: the caller holds this weak reference (from device_downgrade); the
        // temporary Weak is forgotten, so its count is unchanged.
        let weak = std::mem::ManuallyDrop::new(unsafe { Weak::from_raw(weak as *const ShmDevice) });
        weak.upgrade().map_or(std::ptr::null(), Arc::into_raw)
    })
}

unsafe extern "C" fn if_weak_release(weak: *const c_void) {
    // SAFETY: the caller gives back one weak reference from device_downgrade.
    drop(unsafe { Weak::from_raw(weak as *const ShmDevice) })
}

/// Our driver on the vdev bus, linked into its driver list by `rte_vdev_register`.
struct VdevDriver(UnsafeCell<sys::rte_vdev_driver>);
// SAFETY: written once by the constructor before registration; EAL reads it afterwards.
unsafe impl Sync for VdevDriver {}

static VDEV_DRIVER: VdevDriver = VdevDriver(UnsafeCell::new(sys::rte_vdev_driver {
    next: sys::rte_vdev_driver__bindgen_ty_1 { tqe_next: std::ptr::null_mut(), tqe_prev: std::ptr::null_mut() },
    driver: sys::rte_driver {
        next: sys::rte_driver__bindgen_ty_1 { tqe_next: std::ptr::null_mut(), tqe_prev: std::ptr::null_mut() },
        // What applications see as the port's driver name (rte_eth_dev_info.driver_name).
        name: c"net_shm".as_ptr(),
        // The vdev bus gives a device to the driver whose name or alias its name starts with.
        alias: c"sock:".as_ptr(),
    },
    probe: Some(vdev_probe),
    remove: Some(vdev_remove),
    dma_map: None,
    dma_unmap: None,
    drv_flags: 0,
}));

fn init() {
    LOG.register(INFO);
    // An application may load two copies of this plugin: one with `-d` and the one
    // installed in DPDK's driver directory, which EAL loads into every application. The
    // first copy loaded (the `-d` one: EAL loads those before the directory) serves; a
    // second one would register a second driver for the same devices.
    // SAFETY: plain lookup in EAL's bus list by a valid C string.
    if !unsafe { sys::rte_bus_find_by_name(shm_driver_common::bus::BUS_NAME.as_ptr()) }.is_null() {
        LOG.notice(format_args!(
            "a 'sock' bus is already registered (another copy of librte_bus_shm.so was loaded first); this copy stays inactive"
        ));
        return;
    }
    // SAFETY: BUS and VDEV_DRIVER are statics, registered once, from the constructor,
    // before EAL uses them.
    unsafe {
        BUS.register();
        sys::rte_vdev_register(VDEV_DRIVER.0.get());
    }
}
plugin_constructor!(BUS_SHM_CONSTRUCTOR, init);

/// The region of each socket's last session, by socket path: when a device is removed
/// while pools of the application still live in its region (Open vSwitch keeps its
/// packet pool across `del-port`/`add-port`; testpmd keeps its pools across `device
/// detach`/`port attach`), probing the same socket again hands that region back to the
/// proxy, so those pools serve the new port without copies. Weak: the pools keep a
/// region alive, not this list.
static EARLIER_REGIONS: Mutex<Vec<(String, Weak<Region>)>> = Mutex::new(Vec::new());

/// The earlier region of socket `path` if pools still live in it and no session uses it.
fn earlier_region(path: &str) -> Option<Arc<Region>> {
    let mut regions = lock(&EARLIER_REGIONS);
    regions.retain(|(_, r)| r.strong_count() > 0);
    let region = regions.iter().find(|(p, _)| p == path)?.1.upgrade()?;
    let in_use = REGISTRY.devices().iter().any(|d| d.session().is_some_and(|s| Arc::ptr_eq(&s.region, &region)));
    (!in_use && !region.pools().is_empty()).then_some(region)
}

fn remember_region(path: &str, region: &Arc<Region>) {
    let mut regions = lock(&EARLIER_REGIONS);
    regions.retain(|(p, r)| r.strong_count() > 0 && p != path);
    regions.push((path.to_string(), Arc::downgrade(region)));
}

/// Names we already complained about: EAL asks `parse` about a name several times.
static REPORTED_NAMES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn report_once(name: &str, message: std::fmt::Arguments<'_>) {
    let mut reported = lock(&REPORTED_NAMES);
    if reported.get_or_insert_with(HashSet::new).insert(name.to_string()) {
        LOG.error(message);
    }
}

/// EAL asks every bus whether it knows a device name. For `sock:<path>` it first asks
/// about `<path>` alone; refusing it sends EAL on to the vdev bus with the whole name.
/// A path too long for DPDK's device names gets a hint here, where we still see it.
unsafe extern "C" fn bus_parse(name: *const c_char, _addr: *mut c_void) -> c_int {
    guard(&LOG, "parse", 1, || {
        // SAFETY: EAL passes a NUL-terminated name.
        let Some(full) = (unsafe { str_from_c(name) }) else { return 1 };
        let path = full.strip_prefix(NAME_PREFIX).unwrap_or(&full);
        let (path, _) = devargs::split_name(path);
        if devargs::looks_like_socket_path(path) && NAME_PREFIX.len() + path.len() > devargs::MAX_NAME_LEN {
            report_once(
                path,
                format_args!(
                    "sock:{path}: the device name is {} bytes; DPDK device names must be shorter than {} \
                     (use a shorter socket path, e.g. a symlink to its directory)",
                    NAME_PREFIX.len() + path.len(),
                    devargs::MAX_NAME_LEN + 1
                ),
            );
        }
        1
    })
}

unsafe extern "C" fn bus_scan() -> c_int {
    0
}

unsafe extern "C" fn bus_probe() -> c_int {
    0
}

/// The vdev bus has created the device `sock:<path>[,args]` (from `-a`, `--vdev` or a
/// hot-plug): connect it to its proxy and create its ethdev.
unsafe extern "C" fn vdev_probe(vdev: *mut sys::rte_vdev_device) -> c_int {
    guard(&LOG, "probe", -libc::EIO, || {
        // SAFETY: the vdev bus passes a live device; its name and devargs are C strings
        // that live as long as the device.
        let (rte, name, args) = unsafe {
            let rte = std::ptr::addr_of_mut!((*vdev).device);
            let name = str_from_c((*rte).name).unwrap_or_default().into_owned();
            let args = match (*rte).devargs.as_ref() {
                Some(da) => str_from_c(da.__bindgen_anon_1.args).unwrap_or_default().into_owned(),
                None => String::new(),
            };
            (rte, name, args)
        };
        let Some(path) = name.strip_prefix(NAME_PREFIX).filter(|p| devargs::looks_like_socket_path(p)) else {
            LOG.error(format_args!("{name}: not a sock:<socket path> name; device skipped"));
            return -libc::EINVAL;
        };
        if let Some(old) = REGISTRY.device_by_name(path) {
            // Another EAL device for the same socket path (the same path given twice,
            // e.g. once with different arguments): one socket serves one device.
            if !std::ptr::eq(old.rte_ptr(), rte) {
                LOG.error(format_args!("sock:{path}: this socket is already used by another device; device skipped"));
                return -libc::EEXIST;
            }
            REGISTRY.remove_device(&old);
        }
        let parsed = match DevArgs::parse(&args) {
            Ok(parsed) => parsed,
            Err(e) => {
                LOG.error(format_args!("sock:{path}: {e}; device skipped"));
                return -libc::EINVAL;
            }
        };
        let dev = ShmDevice::new(path, parsed, rte);
        REGISTRY.add_device(dev.clone());
        match probe_device(&dev) {
            Ok(()) => 0,
            Err(()) => {
                REGISTRY.remove_device(&dev);
                -libc::EIO
            }
        }
    })
}

fn probe_device(dev: &Arc<ShmDevice>) -> Result<(), ()> {
    let Some(driver) = REGISTRY.driver() else {
        LOG.error(format_args!(
            "sock:{}: no driver for sock: devices; load librte_net_shm.so (-d) to get an ethdev",
            dev.name()
        ));
        return Err(());
    };
    let session = match Session::open(dev, &LOG, earlier_region(dev.name())) {
        Ok(session) => session,
        Err(e) => {
            LOG.error(format_args!("sock:{}: {e}", dev.name()));
            return Err(());
        }
    };
    remember_region(dev.name(), &session.region);
    dev.set_session(Some(session.clone()));
    shm_driver_common::session::use_shared_mempool_ops(&LOG);
    // SAFETY: a checked driver table; the device lives for the call (we hold `dev`).
    let rc = unsafe { (driver.probe)(Arc::as_ptr(dev)) };
    if rc != 0 {
        LOG.error(format_args!("sock:{}: the net driver did not take the device ({})", dev.name(), errno_text(-rc)));
        dev.set_session(None);
        session.close();
        return Err(());
    }
    dev.set_driver(Some(driver));
    Ok(())
}

/// Hot-unplug (`rte_dev_remove`: testpmd's `port detach`/`device detach`, Open vSwitch
/// deleting the port), and EAL cleanup at exit: the driver closes its port if the
/// application has not, the session with the proxy ends. The region stays mapped while
/// mempools still live in it.
unsafe extern "C" fn vdev_remove(vdev: *mut sys::rte_vdev_device) -> c_int {
    guard(&LOG, "remove", -libc::EIO, || {
        // SAFETY: the vdev bus passes a live device.
        let rte = unsafe { std::ptr::addr_of_mut!((*vdev).device) };
        let Some(dev) = REGISTRY.device_by_rte(rte) else { return -libc::ENODEV };
        remove_device(&dev);
        0
    })
}

unsafe extern "C" fn bus_find_device(
    start: *const sys::rte_device,
    cmp: sys::rte_dev_cmp_t,
    data: *const c_void,
) -> *mut sys::rte_device {
    guard(&LOG, "find_device", std::ptr::null_mut(), || {
        // Our devices are the vdev bus's: it answers for them.
        let _ = (start, cmp, data);
        std::ptr::null_mut()
    })
}

fn remove_device(dev: &Arc<ShmDevice>) {
    if let Some(driver) = dev.driver() {
        // SAFETY: a checked driver table; the device lives for the call (we hold `dev`).
        let rc = unsafe { (driver.remove)(Arc::as_ptr(dev)) };
        if rc != 0 {
            LOG.warning(format_args!("sock:{}: remove: {}", dev.name(), errno_text(-rc)));
        }
    }
    dev.set_driver(None);
    if let Some(session) = dev.set_session(None) {
        session.close();
    }
    REGISTRY.remove_device(dev);
}

/// EAL cleanup: the vdev bus removes its devices first (it was registered before us);
/// whatever is left in the registry ends here.
unsafe extern "C" fn bus_cleanup() -> c_int {
    guard(&LOG, "cleanup", -1, || {
        for dev in REGISTRY.devices() {
            remove_device(&dev);
        }
        0
    })
}

/// Our devices do no DMA of their own: any IOVA mode suits them.
unsafe extern "C" fn bus_get_iommu_class() -> sys::rte_iova_mode {
    sys::RTE_IOVA_DC
}
