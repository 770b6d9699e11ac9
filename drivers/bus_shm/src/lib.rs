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

mod device;
mod handles;
mod heap;
mod session;

use std::cell::UnsafeCell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex, Weak};

use dpdk_sys as sys;
use shm_contract::proto::QUEUE_FLAG_RX_WAKEUP;
use shm_contract::Message;
use shm_driver_common::bus::{
    lock, BusInterface, DeviceEvent, DeviceInfo, DriverInterface, Handle, PoolRecord, PoolRequest, ProxyRecord,
    QueueStartRequest, Reason, RegionView, ShmBus,
};
use shm_driver_common::devargs::{self, DevArgs};
use shm_driver_common::ffi::{guard, str_from_c};
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::{errno_text, plugin_constructor};

use crate::device::ShmDevice;
use crate::handles::HANDLES;
use crate::session::{Region, Session};

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
        register_driver: if_register_driver,
        unregister_driver: if_unregister_driver,
        device_by_rte: if_device_by_rte,
        device_at: if_device_at,
        device_retain: if_device_retain,
        device_release: if_device_release,
        device_downgrade: if_device_downgrade,
        weak_upgrade: if_weak_upgrade,
        weak_release: if_weak_release,
        device_info: if_device_info,
        device_region: if_device_region,
        queue_start: if_queue_start,
        queue_stop: if_queue_stop,
        close_session: if_close_session,
        region_retain: if_region_retain,
        region_release: if_region_release,
        region_view: if_region_view,
        region_largest_free: if_region_largest_free,
        pool_place: if_pool_place,
        pool_announce: if_pool_announce,
        pool_remove: if_pool_remove,
        pool_at: if_pool_at,
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

// The bus interface's functions. Devices and regions cross it as handles (see
// `handles`): each function looks its handle up and refuses one it does not know.

unsafe extern "C" fn if_register_driver(driver: *const DriverInterface) -> c_int {
    guard(&LOG, "register_driver", -libc::EIO, || {
        // SAFETY: the caller passes its static driver table (or garbage of another
        // version, which the header check refuses before anything else is read).
        let driver: &'static DriverInterface = match unsafe { DriverInterface::checked(driver) } {
            Ok(driver) => driver,
            Err(why) => {
                LOG.error(format_args!("a sock: driver was refused: {why}; use the three plugins of one release"));
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

unsafe extern "C" fn if_device_by_rte(rte: *const sys::rte_device) -> Handle {
    guard(&LOG, "device_by_rte", Handle::NONE, || {
        REGISTRY.device_by_rte(rte).map_or(Handle::NONE, |d| HANDLES.devices.insert(d))
    })
}

unsafe extern "C" fn if_device_at(index: usize) -> Handle {
    guard(&LOG, "device_at", Handle::NONE, || {
        let device = lock(&REGISTRY.devices).get(index).cloned();
        device.map_or(Handle::NONE, |d| HANDLES.devices.insert(d))
    })
}

unsafe extern "C" fn if_device_retain(device: Handle) -> Handle {
    guard(&LOG, "device_retain", Handle::NONE, || HANDLES.devices.get(device).map_or(Handle::NONE, |d| HANDLES.devices.insert(d)))
}

unsafe extern "C" fn if_device_release(device: Handle) -> c_int {
    guard(&LOG, "device_release", -libc::EIO, || if HANDLES.devices.remove(device).is_some() { 0 } else { -libc::EINVAL })
}

unsafe extern "C" fn if_device_downgrade(device: Handle) -> Handle {
    guard(&LOG, "device_downgrade", Handle::NONE, || {
        HANDLES.devices.get(device).map_or(Handle::NONE, |d| HANDLES.weak_devices.insert(Arc::downgrade(&d)))
    })
}

unsafe extern "C" fn if_weak_upgrade(weak: Handle) -> Handle {
    guard(&LOG, "weak_upgrade", Handle::NONE, || {
        HANDLES.weak_devices.get(weak).and_then(|w| w.upgrade()).map_or(Handle::NONE, |d| HANDLES.devices.insert(d))
    })
}

unsafe extern "C" fn if_weak_release(weak: Handle) -> c_int {
    guard(&LOG, "weak_release", -libc::EIO, || if HANDLES.weak_devices.remove(weak).is_some() { 0 } else { -libc::EINVAL })
}

unsafe extern "C" fn if_device_info(device: Handle, out: *mut DeviceInfo) -> c_int {
    guard(&LOG, "device_info", -libc::EIO, || {
        let Some(dev) = HANDLES.devices.get(device) else { return -libc::EINVAL };
        if out.is_null() {
            return -libc::EINVAL;
        }
        let mut info = DeviceInfo::empty();
        info.serial = dev.serial();
        info.rte = dev.rte_ptr();
        info.numa_node = dev.numa_node();
        info.set_name(dev.name());
        if let Some(session) = dev.session() {
            let (up, speed) = session.link();
            info.attached = 1;
            info.alive = session.is_alive() as u32;
            info.link_up = up as u32;
            info.link_speed_mbps = speed;
            info.proxy = ProxyRecord::from(&session.proxy);
        }
        // SAFETY: checked non-null; the caller gives room for one record.
        unsafe { out.write(info) };
        0
    })
}

unsafe extern "C" fn if_device_region(device: Handle) -> Handle {
    guard(&LOG, "device_region", Handle::NONE, || {
        let session = HANDLES.devices.get(device).and_then(|d| d.session());
        session.map_or(Handle::NONE, |s| HANDLES.regions.insert(s.region.clone()))
    })
}

/// The device's session if it is alive; else -ENOTCONN (or -EINVAL: an unknown
/// handle), and why.
fn live_session(device: Handle) -> Result<Arc<Session>, (c_int, String)> {
    let dev = HANDLES.devices.get(device).ok_or((-libc::EINVAL, "not a device handle of this bus".to_string()))?;
    dev.session().filter(|s| s.is_alive()).ok_or((-libc::ENOTCONN, "not connected to the proxy".to_string()))
}

unsafe extern "C" fn if_queue_start(device: Handle, request: *const QueueStartRequest, wake_fd: *mut c_int, reason: *mut Reason) -> c_int {
    guard(&LOG, "queue_start", -libc::EIO, || {
        // SAFETY: the caller's request for this call, or null.
        let Some(request) = (unsafe { request.as_ref() }).copied() else { return -libc::EINVAL };
        if wake_fd.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: checked non-null; the caller's int.
        unsafe { wake_fd.write(-1) };
        let fail = |rc: c_int, why: String| {
            // SAFETY: the caller's reason, or null.
            unsafe { Reason::write(reason, &why) };
            rc
        };
        let session = match live_session(device) {
            Ok(s) => s,
            Err((rc, why)) => return fail(rc, why),
        };
        let message = Message::QueueStart {
            rx_pool_id: request.rx_pool_id,
            flags: request.flags,
            rx_depth: request.rx_depth,
            queue: request.queue,
        };
        let (answer, mut fds) = match session.transact_with_fds(&message) {
            Ok(a) => a,
            Err(e) => return fail(-libc::EIO, e.to_string()),
        };
        if answer != Message::QueueStarted {
            return fail(-libc::EPROTO, format!("the proxy answered {} to QueueStart", answer.kind()));
        }
        let wanted = if request.flags & QUEUE_FLAG_RX_WAKEUP != 0 { 1 } else { 0 };
        if fds.len() != wanted {
            return fail(
                -libc::EPROTO,
                format!("QueueStarted came with {} descriptors, {wanted} asked for", fds.len()),
            );
        }
        if let Some(fd) = fds.pop() {
            // SAFETY: checked non-null; the caller owns the descriptor from here.
            unsafe { wake_fd.write(fd.into_raw_fd()) };
        }
        0
    })
}

unsafe extern "C" fn if_queue_stop(device: Handle, queue: u16, reason: *mut Reason) -> c_int {
    guard(&LOG, "queue_stop", -libc::EIO, || {
        let fail = |rc: c_int, why: String| {
            // SAFETY: the caller's reason, or null.
            unsafe { Reason::write(reason, &why) };
            rc
        };
        let session = match live_session(device) {
            Ok(s) => s,
            Err((rc, why)) => return fail(rc, why),
        };
        match session.transact(&Message::QueueStop { queue }) {
            Ok(Message::QueueStopped) => 0,
            Ok(other) => fail(-libc::EPROTO, format!("the proxy answered {} to QueueStop", other.kind())),
            Err(e) => fail(-libc::EIO, e.to_string()),
        }
    })
}

unsafe extern "C" fn if_close_session(device: Handle) -> c_int {
    guard(&LOG, "close_session", -libc::EIO, || {
        let Some(dev) = HANDLES.devices.get(device) else { return -libc::EINVAL };
        if let Some(session) = dev.session() {
            session.close();
        }
        0
    })
}

unsafe extern "C" fn if_region_retain(region: Handle) -> Handle {
    guard(&LOG, "region_retain", Handle::NONE, || HANDLES.regions.get(region).map_or(Handle::NONE, |r| HANDLES.regions.insert(r)))
}

unsafe extern "C" fn if_region_release(region: Handle) -> c_int {
    guard(&LOG, "region_release", -libc::EIO, || if HANDLES.regions.remove(region).is_some() { 0 } else { -libc::EINVAL })
}

unsafe extern "C" fn if_region_view(region: Handle, out: *mut RegionView) -> c_int {
    guard(&LOG, "region_view", -libc::EIO, || {
        let Some(region) = HANDLES.regions.get(region) else { return -libc::EINVAL };
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: checked non-null; the caller gives room for one record.
        unsafe { out.write(region.view()) };
        0
    })
}

unsafe extern "C" fn if_region_largest_free(region: Handle, align: u64) -> u64 {
    guard(&LOG, "region_largest_free", 0, || HANDLES.regions.get(region).map_or(0, |r| r.heap_largest_free(align)))
}

/// The device whose session uses `region` now, and that session.
fn device_of_region(region: &Arc<Region>) -> Option<(Arc<ShmDevice>, Arc<Session>)> {
    REGISTRY.devices().into_iter().find_map(|d| {
        let session = d.session().filter(|s| Arc::ptr_eq(&s.region, region))?;
        Some((d, session))
    })
}

unsafe extern "C" fn if_pool_place(region: Handle, request: *const PoolRequest, out: *mut PoolRecord, reason: *mut Reason) -> c_int {
    guard(&LOG, "pool_place", -libc::EIO, || {
        let Some(region) = HANDLES.regions.get(region) else { return -libc::EINVAL };
        // SAFETY: the caller's request for this call, or null.
        let Some(request) = (unsafe { request.as_ref() }).copied() else { return -libc::EINVAL };
        if out.is_null() {
            return -libc::EINVAL;
        }
        let name = device_of_region(&region).map(|(d, _)| d.name().to_string()).unwrap_or_default();
        match region.place_pool(&request, &name) {
            Ok(record) => {
                // SAFETY: checked non-null; the caller gives room for one record.
                unsafe { out.write(record) };
                0
            }
            Err((rc, why)) => {
                // SAFETY: the caller's reason, or null.
                unsafe { Reason::write(reason, &why) };
                rc
            }
        }
    })
}

unsafe extern "C" fn if_pool_announce(region: Handle, pool_id: u32, reason: *mut Reason) -> c_int {
    guard(&LOG, "pool_announce", -libc::EIO, || {
        let fail = |rc: c_int, why: String| {
            // SAFETY: the caller's reason, or null.
            unsafe { Reason::write(reason, &why) };
            rc
        };
        let Some(region) = HANDLES.regions.get(region) else { return -libc::EINVAL };
        let Some(pool) = region.pools().into_iter().find(|p| p.id == pool_id) else {
            return fail(-libc::ENOENT, format!("the region has no pool {pool_id}"));
        };
        let Some((_, session)) = device_of_region(&region) else { return fail(-libc::ENODEV, "the device is gone".into()) };
        match session.transact(&Message::PoolAdd(pool.layout.to_pool_add())) {
            Ok(Message::PoolAck { pool_id: acked }) if acked == pool_id => 0,
            Ok(other) => fail(-libc::EPROTO, format!("the proxy answered {} to the pool announcement", other.kind())),
            Err(e) => fail(-libc::EIO, format!("the proxy did not accept the pool: {e}")),
        }
    })
}

unsafe extern "C" fn if_pool_remove(region: Handle, pool_id: u32, reason: *mut Reason) -> c_int {
    guard(&LOG, "pool_remove", -libc::EIO, || {
        let Some(region) = HANDLES.regions.get(region) else { return -libc::EINVAL };
        let mut rc = 0;
        if let Some((_, session)) = device_of_region(&region).filter(|(_, s)| s.is_alive()) {
            if let Err(e) = session.transact(&Message::PoolDel { pool_id }) {
                // SAFETY: the caller's reason, or null.
                unsafe { Reason::write(reason, &format!("the proxy did not release it: {e}")) };
                rc = 1;
            }
        }
        if !region.forget_pool(pool_id) {
            return -libc::EINVAL;
        }
        rc
    })
}

unsafe extern "C" fn if_pool_at(region: Handle, index: usize, out: *mut PoolRecord) -> c_int {
    guard(&LOG, "pool_at", -libc::EIO, || {
        let Some(region) = HANDLES.regions.get(region) else { return -libc::EINVAL };
        if out.is_null() {
            return -libc::EINVAL;
        }
        let Some(pool) = region.pools().get(index).map(|p| p.record()) else { return -libc::ENOENT };
        // SAFETY: checked non-null; the caller gives room for one record.
        unsafe { out.write(pool) };
        0
    })
}

/// Calls `driver` about `dev` with a handle valid for the call.
fn call_driver(dev: &Arc<ShmDevice>, call: impl FnOnce(Handle) -> c_int) -> c_int {
    let handle = HANDLES.devices.insert(dev.clone());
    let rc = call(handle);
    HANDLES.devices.remove(handle);
    rc
}

/// Tells the device's driver about `event` (from the session's event thread).
pub(crate) fn notify_driver(driver: &'static DriverInterface, dev: &Arc<ShmDevice>, event: DeviceEvent) {
    call_driver(dev, |handle| {
        // SAFETY: a checked driver table; the handle is valid for the call.
        unsafe { (driver.event)(handle, event.into()) };
        0
    });
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
    session::use_shared_mempool_ops(&LOG);
    // SAFETY: a checked driver table; the handle is valid for the call.
    let rc = call_driver(dev, |handle| unsafe { (driver.probe)(handle) });
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
        // SAFETY: a checked driver table; the handle is valid for the call.
        let rc = call_driver(dev, |handle| unsafe { (driver.remove)(handle) });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A device record of this plugin without a session (none can be made without a
    /// proxy), behind a handle; and a weak handle to it.
    fn device() -> (Arc<ShmDevice>, Handle, Handle) {
        let dev = ShmDevice::new("/run/test/sock", DevArgs::default(), std::ptr::null_mut());
        let handle = HANDLES.devices.insert(dev.clone());
        let weak = HANDLES.weak_devices.insert(Arc::downgrade(&dev));
        (dev, handle, weak)
    }

    #[test]
    fn every_table_function_refuses_a_null_or_foreign_handle() {
        let (_dev, device, weak) = device();
        // Null, never handed out, and handles of another kind (a weak handle where a
        // device is wanted, a device handle where a region or a weak one is wanted).
        let not_devices = [Handle::NONE, Handle(u64::MAX), Handle(0x5eed_0000_0000), weak];
        let not_regions = [Handle::NONE, Handle(u64::MAX), device, weak];
        let not_weak = [Handle::NONE, Handle(u64::MAX), device];
        let einval = -libc::EINVAL;
        // SAFETY: the functions are called as the other plugins call them, with valid
        // out-pointers; the handles are what is tested.
        unsafe {
            for bad in not_devices {
                assert_eq!(if_device_retain(bad), Handle::NONE);
                assert_eq!(if_device_release(bad), einval);
                assert_eq!(if_device_downgrade(bad), Handle::NONE);
                let mut info = DeviceInfo::empty();
                info.serial = 77;
                assert_eq!(if_device_info(bad, &mut info), einval);
                assert_eq!(info.serial, 77, "nothing written for a refused handle");
                assert_eq!(if_device_region(bad), Handle::NONE);
                let mut fd = 5;
                let mut reason = Reason::default();
                assert_eq!(if_queue_start(bad, &QueueStartRequest::default(), &mut fd, &mut reason), einval);
                assert_eq!(fd, -1);
                assert!(reason.as_str().contains("not a device handle"), "{reason:?}");
                assert_eq!(if_queue_stop(bad, 0, &mut reason), einval);
                assert_eq!(if_close_session(bad), einval);
            }
            for bad in not_weak {
                assert_eq!(if_weak_upgrade(bad), Handle::NONE);
                assert_eq!(if_weak_release(bad), einval);
            }
            for bad in not_regions {
                assert_eq!(if_region_retain(bad), Handle::NONE);
                assert_eq!(if_region_release(bad), einval);
                let mut view = RegionView::empty();
                assert_eq!(if_region_view(bad, &mut view), einval);
                assert!(view.base.is_null());
                assert_eq!(if_region_largest_free(bad, 4096), 0);
                let mut pool = PoolRecord::default();
                let mut reason = Reason::default();
                let request = PoolRequest { count: 1024, stride: 2432, mbuf_size: 128, data_room: 2176, ..Default::default() };
                assert_eq!(if_pool_place(bad, &request, &mut pool, &mut reason), einval);
                assert_eq!(pool, PoolRecord::default());
                assert_eq!(if_pool_announce(bad, 0, &mut reason), einval);
                assert_eq!(if_pool_remove(bad, 0, &mut reason), einval);
                assert_eq!(if_pool_at(bad, 0, &mut pool), einval);
            }
            // The handles tested stay live: nothing above released them by mistake.
            assert_eq!(if_device_release(device), 0);
            assert_eq!(if_weak_release(weak), 0);
        }
    }

    #[test]
    fn a_device_handle_is_one_reference_and_a_released_one_is_refused() {
        let (dev, device, weak) = device();
        // SAFETY: as above.
        unsafe {
            let mut info = DeviceInfo::empty();
            assert_eq!(if_device_info(device, &mut info), 0);
            assert_eq!((info.serial, info.name(), info.attached, info.alive), (dev.serial(), "/run/test/sock", 0, 0));
            assert_eq!(if_device_info(device, std::ptr::null_mut()), -libc::EINVAL);
            // Not attached: no region, no queue to start, nothing to close.
            assert_eq!(if_device_region(device), Handle::NONE);
            let mut fd = 0;
            assert_eq!(if_queue_start(device, &QueueStartRequest::default(), &mut fd, std::ptr::null_mut()), -libc::ENOTCONN);
            assert_eq!(if_queue_start(device, std::ptr::null(), &mut fd, std::ptr::null_mut()), -libc::EINVAL);
            assert_eq!(if_queue_stop(device, 0, std::ptr::null_mut()), -libc::ENOTCONN);
            assert_eq!(if_close_session(device), 0);
            let again = if_device_retain(device);
            assert!(!again.is_none() && again != device);
            assert_eq!(Arc::strong_count(&dev), 3);
            assert_eq!(if_device_release(device), 0);
            assert_eq!(if_device_release(device), -libc::EINVAL, "released twice");
            assert_eq!(if_device_info(device, &mut info), -libc::EINVAL, "used after release");
            let upgraded = if_weak_upgrade(weak);
            assert!(!upgraded.is_none());
            assert_eq!(if_device_release(upgraded), 0);
            assert_eq!(if_device_release(again), 0);
            assert_eq!(Arc::strong_count(&dev), 1);
            drop(dev);
            assert_eq!(if_weak_upgrade(weak), Handle::NONE, "the device is gone");
            assert_eq!(if_weak_release(weak), 0);
        }
    }
}
