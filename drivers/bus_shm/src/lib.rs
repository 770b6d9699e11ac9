#![cfg_attr(test, allow(dead_code))]
//! `librte_bus_shm.so`: the DPDK bus `sock`.
//!
//! `-a sock:/run/io/sock[,args]` (or `port attach sock:/run/io/sock` at run time) creates a
//! device per socket path. Probing a device connects to the IO proxy behind the socket,
//! performs the versioned handshake, maps the shared region it receives and hands the
//! device to the net driver, which creates the ethdev. A device that cannot be probed is
//! reported in one log line and skipped: the application keeps its other ports.
//!
//! The callbacks below are EAL's entry points; each catches panics and logs. The state
//! they work on (devices, drivers, sessions) is `shm_driver_common::bus::ShmBus`.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use dpdk_sys as sys;
use shm_driver_common::bus::{lock, ShmBus};
use shm_driver_common::devargs::{self, DevArgs};
use shm_driver_common::device::ShmDevice;
use shm_driver_common::ffi::{guard, str_from_c};
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::session::Session;
use shm_driver_common::plugin_constructor;

static LOG: LogType = LogType::new("bus.shm", "bus_shm");

static BUS: ShmBus = ShmBus::new(sys::rte_bus {
    next: sys::rte_bus__bindgen_ty_1 { tqe_next: std::ptr::null_mut(), tqe_prev: std::ptr::null_mut() },
    name: std::ptr::null(),
    scan: Some(bus_scan),
    probe: Some(bus_probe),
    find_device: Some(bus_find_device),
    plug: Some(bus_plug),
    unplug: Some(bus_unplug),
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
});

fn init() {
    LOG.register(INFO);
    // An application may load two copies of this plugin: one with `-d` and the one
    // installed in DPDK's driver directory, which EAL loads into every application. The
    // first copy loaded (the `-d` one: EAL loads those before the directory) serves; a
    // second bus named "sock" would scan and probe the same devices again.
    // SAFETY: plain lookup in EAL's bus list by a valid C string.
    if !unsafe { sys::rte_bus_find_by_name(shm_driver_common::bus::BUS_NAME.as_ptr()) }.is_null() {
        LOG.notice(format_args!(
            "a 'sock' bus is already registered (another copy of librte_bus_shm.so was loaded first); this copy stays inactive"
        ));
        return;
    }
    // SAFETY: BUS is a static, registered once, from the constructor, before EAL uses it.
    unsafe { BUS.register() };
}
plugin_constructor!(BUS_SHM_CONSTRUCTOR, init);

/// Names we already complained about: EAL asks `parse` about a name several times.
static REPORTED_NAMES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn report_once(name: &str, message: std::fmt::Arguments<'_>) {
    let mut reported = lock(&REPORTED_NAMES);
    if reported.get_or_insert_with(HashSet::new).insert(name.to_string()) {
        LOG.error(message);
    }
}

/// EAL asks every bus whether it knows a device name (with any `,args` still attached).
/// We claim path-like names only, so we never take another bus's devices.
unsafe extern "C" fn bus_parse(name: *const c_char, _addr: *mut c_void) -> c_int {
    guard(&LOG, "parse", 1, || {
        // SAFETY: EAL passes a NUL-terminated name.
        let Some(full) = (unsafe { str_from_c(name) }) else { return 1 };
        let full = full.strip_prefix("sock:").unwrap_or(&full);
        let (path, _) = devargs::split_name(full);
        if !devargs::looks_like_socket_path(path) {
            return 1;
        }
        if path.len() > devargs::MAX_NAME_LEN {
            report_once(
                path,
                format_args!(
                    "sock:{path}: socket path is {} bytes; DPDK device names must be shorter than {} \
                     (use a shorter path, e.g. a symlink to its directory)",
                    path.len(),
                    devargs::MAX_NAME_LEN + 1
                ),
            );
        }
        0
    })
}

/// Creates a device for every `sock` devargs that has none yet. Runs before DPDK memory
/// exists (and again on hot-plug): plain Rust allocation only.
unsafe extern "C" fn bus_scan() -> c_int {
    guard(&LOG, "scan", -1, || {
        let mut da: *mut sys::rte_devargs = std::ptr::null_mut();
        loop {
            // SAFETY: iterates EAL's devargs list by bus name; `da` is null or the previous entry.
            da = unsafe { sys::rte_devargs_next(shm_driver_common::bus::BUS_NAME.as_ptr(), da) };
            if da.is_null() {
                break;
            }
            // SAFETY: `da` is a live devargs entry; name is a NUL-terminated array, data a C string.
            let (name, args) = unsafe {
                let name = str_from_c((*da).name.as_ptr()).unwrap_or_default().into_owned();
                let args = str_from_c((*da).data).unwrap_or_default().into_owned();
                (name, args)
            };
            let path = name.strip_prefix("sock:").unwrap_or(&name).to_string();
            if BUS.device_by_name(&path).is_some() {
                continue;
            }
            match DevArgs::parse(&args) {
                Ok(parsed) => BUS.add_device(ShmDevice::new(&path, parsed, BUS.rte_ptr(), da)),
                Err(e) => report_once(&path, format_args!("sock:{path}: {e}; device skipped")),
            }
        }
        0
    })
}

/// Probes every device not probed yet. A failure is logged and the device skipped: the
/// application continues with its other ports.
unsafe extern "C" fn bus_probe() -> c_int {
    guard(&LOG, "probe", 0, || {
        for dev in BUS.devices() {
            if dev.driver().is_none() {
                let _ = probe_device(&dev);
            }
        }
        0
    })
}

fn probe_device(dev: &Arc<ShmDevice>) -> Result<(), ()> {
    let Some(driver) = BUS.driver() else {
        LOG.error(format_args!(
            "sock:{}: no driver on the sock bus; load librte_net_shm.so (-d) to get an ethdev",
            dev.name()
        ));
        return Err(());
    };
    let session = match Session::open(dev, &LOG) {
        Ok(session) => session,
        Err(e) => {
            LOG.error(format_args!("sock:{}: {e}", dev.name()));
            return Err(());
        }
    };
    dev.set_session(Some(session.clone()));
    shm_driver_common::session::use_shared_mempool_ops(&LOG);
    if let Err(e) = (driver.probe)(dev) {
        LOG.error(format_args!("sock:{}: {e}", dev.name()));
        dev.set_session(None);
        session.close();
        return Err(());
    }
    dev.set_driver(Some(driver));
    Ok(())
}

unsafe extern "C" fn bus_find_device(
    start: *const sys::rte_device,
    cmp: sys::rte_dev_cmp_t,
    data: *const c_void,
) -> *mut sys::rte_device {
    guard(&LOG, "find_device", std::ptr::null_mut(), || {
        let Some(cmp) = cmp else { return std::ptr::null_mut() };
        let devices = BUS.devices();
        let mut skipping = !start.is_null();
        for dev in &devices {
            if skipping {
                skipping = !std::ptr::eq(dev.rte_ptr(), start);
                continue;
            }
            // SAFETY: EAL's comparator, called with one of our live devices and its own data.
            if unsafe { cmp(dev.rte_ptr(), data) } == 0 {
                return dev.rte_ptr();
            }
        }
        std::ptr::null_mut()
    })
}

/// Hot-plug (`port attach sock:/path`): EAL has scanned, now probe this one device.
unsafe extern "C" fn bus_plug(rte: *mut sys::rte_device) -> c_int {
    guard(&LOG, "plug", -libc::EIO, || {
        let Some(dev) = BUS.device_by_rte(rte) else { return -libc::ENODEV };
        if dev.driver().is_some() {
            if dev.has_driver_data() {
                return -libc::EEXIST;
            }
            // The application closed the port (`port close`) and attaches it again: its
            // session ended with the port, so this is a fresh probe with a fresh session.
            dev.set_driver(None);
            if let Some(old) = dev.set_session(None) {
                old.close();
            }
        }
        match probe_device(&dev) {
            Ok(()) => 0,
            Err(()) => {
                // The devargs that EAL frees after a failed plug must not be left on a device.
                BUS.remove_device(&dev);
                -libc::EIO
            }
        }
    })
}

/// Hot-unplug (`port detach`, application exit): the driver closes its port, the session
/// with the proxy ends. The region stays mapped while mempools still live in it.
unsafe extern "C" fn bus_unplug(rte: *mut sys::rte_device) -> c_int {
    guard(&LOG, "unplug", -libc::EIO, || {
        let Some(dev) = BUS.device_by_rte(rte) else { return -libc::ENODEV };
        remove_device(&dev);
        0
    })
}

fn remove_device(dev: &Arc<ShmDevice>) {
    if let Some(driver) = dev.driver() {
        if let Err(e) = (driver.remove)(dev) {
            LOG.warning(format_args!("sock:{}: remove: {e}", dev.name()));
        }
    }
    dev.set_driver(None);
    if let Some(session) = dev.set_session(None) {
        session.close();
    }
    BUS.remove_device(dev);
}

unsafe extern "C" fn bus_cleanup() -> c_int {
    guard(&LOG, "cleanup", -1, || {
        for dev in BUS.devices() {
            remove_device(&dev);
        }
        0
    })
}

/// Our devices do no DMA of their own: any IOVA mode suits them.
unsafe extern "C" fn bus_get_iommu_class() -> sys::rte_iova_mode {
    sys::RTE_IOVA_DC
}
