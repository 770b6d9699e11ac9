//! The `sock` bus object and the interface the three plugins share through it.
//!
//! The bus plugin owns the only instance (a static in `librte_bus_shm.so`, registered
//! with EAL). EAL sees `sock:` devices as virtual devices (the vdev bus, whose devices
//! DPDK 22.11's ethdev iterator can find by devargs); this bus is the plugins' registry
//! of them: their records, sessions with the proxy, regions and drivers. The mempool
//! and net plugins find it with `rte_bus_find_by_name("sock")`. Behind the `rte_bus`
//! header there is a [`BusInterface`]: a `#[repr(C)]` table that starts with an
//! [`InterfaceHeader`] (magic, version, size), then `extern "C"` functions; the net
//! driver registers a [`DriverInterface`] of the same kind. A plugin checks the header
//! before it touches anything else ([`check_bus`]) and refuses a table of another
//! interface version, or a shorter one, instead of misreading it.
//!
//! What crosses between the plugins is only this:
//! - opaque [`Handle`]s (a number, never an address): a device, a weak reference to a
//!   device, a region. Only the bus plugin turns one into its own objects, and each
//!   function of the table looks the number up in the bus plugin's tables first: a null
//!   handle, a released one, one of another kind or a made-up one is refused (an error
//!   code or a null handle), never followed. Each handle is one reference: the caller
//!   gives it back with the table's `*_release`, which the wrappers below
//!   ([`DeviceHandle`], [`WeakDevice`], [`RegionHandle`]) do on drop.
//! - plain `#[repr(C)]` records, copied in or out through a pointer the caller owns:
//!   [`DeviceInfo`] (with its [`ProxyRecord`]), [`RegionView`] (with [`RingRecord`]s),
//!   [`PoolRequest`], [`PoolRecord`], [`QueueStartRequest`], [`DeviceEventRecord`],
//!   [`Reason`]. Each field is documented where it is declared; the receiving plugin
//!   rebuilds its own Rust values from them (a [`RegionView`] becomes a `RegionLayout`
//!   validated again by the contract's rules).
//!
//! The bus plugin's code does everything to its objects (requests to the proxy, pool
//! placement in a region's heap, queue start and stop, closing a session, reference
//! counting); the other plugins fetch what their data path needs (the region's base,
//! length and layout, a pool's layout) once, at queue setup or pool creation, and keep
//! it in their own state: no burst and no mempool enqueue or dequeue calls through the
//! table. No function of either table unwinds: each catches a panic, logs it and
//! returns an error.
//!
//! Nothing here depends on the plugins coming from one build: no Rust type crosses, so
//! plugins of any build that speak this [`INTERFACE_VERSION`] work together. Any change
//! of a table's functions, their meaning or a record's fields takes the next version.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, CStr};
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use dpdk_sys as sys;
use shm_contract::layout::{Area, RingArea, MAX_QUEUE_PAIRS};
use shm_contract::{PoolAdd, RegionFlags, RegionLayout, SharedMem};

pub const BUS_NAME: &CStr = c"sock";
/// The file the net and mempool plugins load when the bus is not loaded yet.
pub const BUS_LIBRARY: &CStr = c"librte_bus_shm.so";

/// `magic` of a [`BusInterface`].
pub const BUS_INTERFACE_MAGIC: u64 = u64::from_le_bytes(*b"SHMBUSIF");
/// `magic` of a [`DriverInterface`].
pub const DRIVER_INTERFACE_MAGIC: u64 = u64::from_le_bytes(*b"SHMDRVIF");
/// The version of [`BusInterface`], [`DriverInterface`] and the records they pass: any
/// change of their fields or of a function's meaning takes the next number.
/// 1: devices crossed as Rust records (guarded by a build id). 2: handles and
/// `#[repr(C)]` records only.
pub const INTERFACE_VERSION: u32 = 2;

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
        }
    }
}

/// An opaque reference to an object of the bus plugin (a device, a weak reference to
/// one, a region): a number the bus plugin looks up in its own tables, never an
/// address. 0 is no object. Each handle is one reference, given back with the table's
/// matching `*_release`.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u64);

impl Handle {
    pub const NONE: Handle = Handle(0);

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// What happened to a device's proxy, told to its driver in order from the bus's event
/// thread for the device, which holds no lock of the session: the driver's handler may
/// take its port state while a request of the driver holding it is still in progress.
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
    /// 1 proxy lost, 2 proxy back, 3 reclaim, 4 link; other values are skipped.
    pub kind: u32,
    /// `Link`: 1 up, 0 down.
    pub up: u32,
    /// `Link`: the speed in Mbit/s.
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

/// Bytes of [`DeviceInfo::name`] (a socket path is at most 107 bytes, and DPDK device
/// names are shorter still).
pub const DEVICE_NAME_CAP: usize = 128;

/// What the proxy told a device at the handshake (the contract's `Welcome`, as plain
/// numbers).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyRecord {
    /// The negotiated protocol major.
    pub protocol_version: u16,
    /// The proxy's NIC port.
    pub port_id: u16,
    /// The NIC queue of queue pair 0.
    pub queue_id: u16,
    /// Queue pairs the socket offers.
    pub queue_pairs: u16,
    /// The port's MAC address.
    pub mac: [u8; 6],
    /// The port's MTU.
    pub mtu: u16,
    /// The largest frame the port receives.
    pub max_rx_frame: u32,
    /// 1: the region is hugepage memory.
    pub hugepages: u32,
}

impl From<&shm_contract::proto::Welcome> for ProxyRecord {
    fn from(p: &shm_contract::proto::Welcome) -> Self {
        ProxyRecord {
            protocol_version: p.version,
            port_id: p.port_id,
            queue_id: p.queue_id,
            queue_pairs: p.queue_pairs,
            mac: p.mac,
            mtu: p.mtu,
            max_rx_frame: p.max_rx_frame,
            hugepages: p.hugepages() as u32,
        }
    }
}

/// A device as the bus plugin sees it now (filled by `device_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceInfo {
    /// A number of the device record, unique in the process for its life: a device
    /// removed and probed again gets another.
    pub serial: u64,
    /// EAL's device (owned by the vdev bus); only compared and handed to DPDK.
    pub rte: *mut sys::rte_device,
    /// The NUMA node to allocate for the device on (`SOCKET_ID_ANY`).
    pub numa_node: i32,
    /// 1: the device has a session with its proxy (it was probed and is not removed).
    pub attached: u32,
    /// 1: the session's connection is up (not lost, not closed).
    pub alive: u32,
    /// 1: the proxy's link is up (and the connection alive).
    pub link_up: u32,
    /// The link speed in Mbit/s.
    pub link_speed_mbps: u32,
    /// What the proxy said at the handshake (zeros when not attached).
    pub proxy: ProxyRecord,
    /// The socket path (the device name without `sock:`), NUL-terminated.
    pub name: [u8; DEVICE_NAME_CAP],
}

impl DeviceInfo {
    pub fn empty() -> DeviceInfo {
        DeviceInfo {
            serial: 0,
            rte: std::ptr::null_mut(),
            numa_node: 0,
            attached: 0,
            alive: 0,
            link_up: 0,
            link_speed_mbps: 0,
            proxy: ProxyRecord::default(),
            name: [0; DEVICE_NAME_CAP],
        }
    }

    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(self.name.len());
        std::str::from_utf8(&self.name[..end]).unwrap_or("")
    }

    /// Stores `name`, cut to fit with its NUL.
    pub fn set_name(&mut self, name: &str) {
        let mut len = name.len().min(DEVICE_NAME_CAP - 1);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        self.name = [0; DEVICE_NAME_CAP];
        self.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    }
}

/// One descriptor ring of a region: where it starts and how many entries it has.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingRecord {
    pub offset: u32,
    pub entries: u32,
}

/// A mapped region as its owner (the bus plugin) validated it: where it is mapped in
/// this process and its layout as plain numbers (filled by `region_view`). The mapping
/// stays valid while the caller holds the region handle it asked with.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RegionView {
    /// Where the region is mapped.
    pub base: *mut u8,
    /// Its length in bytes (the layout's region size).
    pub len: u64,
    /// The page size of its backing.
    pub page_size: u64,
    /// The layout's flags (`RegionFlags` bits).
    pub flags: u32,
    /// 1: hugepage memory.
    pub hugepages: u32,
    /// Queue pairs with rings in the region (entries of `rings` used).
    pub queue_pairs: u32,
    /// Offset of the status block.
    pub status_offset: u32,
    /// The heap, where the pools live.
    pub heap_offset: u32,
    pub heap_size: u32,
    /// (rx, tx) ring of each queue pair.
    pub rings: [[RingRecord; 2]; MAX_QUEUE_PAIRS as usize],
}

impl RegionView {
    pub fn empty() -> RegionView {
        RegionView {
            base: std::ptr::null_mut(),
            len: 0,
            page_size: 0,
            flags: 0,
            hugepages: 0,
            queue_pairs: 0,
            status_offset: 0,
            heap_offset: 0,
            heap_size: 0,
            rings: [[RingRecord::default(); 2]; MAX_QUEUE_PAIRS as usize],
        }
    }

    /// The view of a region mapped at `base` with `layout`.
    pub fn of(base: *mut u8, layout: &RegionLayout, hugepages: bool) -> RegionView {
        let mut view = RegionView {
            base,
            len: layout.region_size(),
            page_size: layout.page_size(),
            flags: layout.flags().bits(),
            hugepages: hugepages as u32,
            queue_pairs: layout.queue_pairs(),
            status_offset: layout.status_offset(),
            heap_offset: layout.heap().offset,
            heap_size: layout.heap().size,
            ..RegionView::empty()
        };
        for (pair, out) in view.rings.iter_mut().enumerate().take(layout.queue_pairs() as usize) {
            if let Some((rx, tx)) = layout.rings_of(pair as u32) {
                *out = [RingRecord { offset: rx.offset, entries: rx.entries }, RingRecord { offset: tx.offset, entries: tx.entries }];
            }
        }
        view
    }

    /// The layout these numbers describe, checked again by the contract's rules.
    pub fn layout(&self) -> Result<RegionLayout, String> {
        let pairs = (self.queue_pairs as usize).min(MAX_QUEUE_PAIRS as usize);
        let rings: Vec<(RingArea, RingArea)> = self.rings[..pairs]
            .iter()
            .map(|[rx, tx]| (RingArea { offset: rx.offset, entries: rx.entries }, RingArea { offset: tx.offset, entries: tx.entries }))
            .collect();
        if pairs != self.queue_pairs as usize {
            return Err(format!("{} queue pairs, at most {MAX_QUEUE_PAIRS}", self.queue_pairs));
        }
        RegionLayout::from_parts(
            self.len,
            self.page_size,
            RegionFlags::from_bits_retain(self.flags),
            &rings,
            self.status_offset,
            Area { offset: self.heap_offset, size: self.heap_size },
        )
        .map_err(|e| format!("the bus's region layout is invalid: {e}"))
    }
}

/// A pool to place in a region (`pool_place`): the mempool's geometry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolRequest {
    /// The `rte_mempool` in this process, as an address (only compared, never followed
    /// by the bus).
    pub mempool: u64,
    /// Objects.
    pub count: u32,
    /// Bytes from one object's header to the next (header + element + trailer).
    pub stride: u32,
    /// The mempool's object header before each `rte_mbuf`.
    pub header_size: u32,
    /// `rte_mbuf` plus private area.
    pub mbuf_size: u16,
    /// The data room of each mbuf.
    pub data_room: u16,
}

/// A pool placed in a region: the contract's announcement of it (`PoolAdd`, itself
/// `#[repr(C)]`: its fields are part of this interface) and the mempool that owns it
/// (`pool_place`, `pool_at`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolRecord {
    /// What a guest announces to the proxy; the receiver validates it against its layout.
    pub pool: PoolAdd,
    /// The owning `rte_mempool`'s address (as in [`PoolRequest::mempool`]).
    pub mempool: u64,
}

/// `queue_start`'s request: the contract's `QueueStart`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStartRequest {
    /// The queue pair.
    pub queue: u16,
    pub _reserved: u16,
    /// `QUEUE_FLAG_*` bits (`QUEUE_FLAG_RX_WAKEUP`: the answer carries one wake-up
    /// socket, handed to the caller).
    pub flags: u32,
    /// The pool the proxy fills the pair's NIC rx from.
    pub rx_pool_id: u32,
    /// The most buffers the proxy keeps in the rx ring.
    pub rx_depth: u32,
}

/// Bytes of a [`Reason`].
pub const REASON_CAP: usize = 256;

/// Why a call failed, in words, for the caller's log: NUL-terminated UTF-8 (cut).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Reason {
    pub text: [u8; REASON_CAP],
}

impl Default for Reason {
    fn default() -> Self {
        Reason { text: [0; REASON_CAP] }
    }
}

impl Reason {
    pub fn as_str(&self) -> &str {
        let end = self.text.iter().position(|&b| b == 0).unwrap_or(REASON_CAP);
        match std::str::from_utf8(&self.text[..end]) {
            Ok(s) => s,
            // Cut inside a character: the valid part.
            Err(e) => std::str::from_utf8(&self.text[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// Writes `text` (cut to fit) into `out`, if `out` is not null.
    ///
    /// # Safety
    /// `out` is null or points to a writable `Reason`.
    pub unsafe fn write(out: *mut Reason, text: &str) {
        let mut reason = Reason::default();
        let len = text.len().min(REASON_CAP - 1);
        reason.text[..len].copy_from_slice(&text.as_bytes()[..len]);
        // SAFETY: per the contract, null or writable.
        if let Some(out) = unsafe { out.as_mut() } {
            *out = reason;
        }
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What a driver of `sock:` devices provides (the net plugin's ethdev driver). The bus
/// plugin calls `probe` once a device is connected to its proxy and `remove` when it is
/// unplugged (both: 0 or a negative errno; the driver logs why); `event` tells it about
/// the proxy (gone, back). The device handle is valid for the call only (the driver
/// takes its own reference with `device_retain`). None of them may unwind.
#[repr(C)]
pub struct DriverInterface {
    pub header: InterfaceHeader,
    pub name: *const c_char,
    pub probe: unsafe extern "C" fn(Handle) -> c_int,
    pub remove: unsafe extern "C" fn(Handle) -> c_int,
    pub event: unsafe extern "C" fn(Handle, DeviceEventRecord),
}

// SAFETY: a constant table: a static C string and functions.
unsafe impl Sync for DriverInterface {}

impl DriverInterface {
    pub const fn new(
        name: &'static CStr,
        probe: unsafe extern "C" fn(Handle) -> c_int,
        remove: unsafe extern "C" fn(Handle) -> c_int,
        event: unsafe extern "C" fn(Handle, DeviceEventRecord),
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
}

/// The table behind the `sock` bus's `rte_bus` header: how the mempool and net plugins
/// reach the bus plugin's objects. Every function catches panics and refuses a null or
/// unknown handle (an errno code below 0, a null handle, or 0 bytes). A function that
/// returns a handle hands over one reference; `*_retain` returns a new handle (another
/// reference) for the same object.
#[repr(C)]
pub struct BusInterface {
    pub header: InterfaceHeader,
    /// 1: added; 0: a driver of that name is registered already (a second copy of the
    /// same plugin: the first one serves); negative errno: refused.
    pub register_driver: unsafe extern "C" fn(*const DriverInterface) -> c_int,
    pub unregister_driver: unsafe extern "C" fn(*const DriverInterface),
    /// The device whose EAL device is this one (the pointer is only compared), or none.
    pub device_by_rte: unsafe extern "C" fn(*const sys::rte_device) -> Handle,
    /// The `index`th registered device, or none past the last.
    pub device_at: unsafe extern "C" fn(usize) -> Handle,
    /// Another reference to the device, or none.
    pub device_retain: unsafe extern "C" fn(Handle) -> Handle,
    /// Gives one reference back: 0, or -EINVAL for an unknown handle.
    pub device_release: unsafe extern "C" fn(Handle) -> c_int,
    /// A weak reference (it does not keep the device), or none.
    pub device_downgrade: unsafe extern "C" fn(Handle) -> Handle,
    /// The device of a weak reference while it lives (one reference), or none.
    pub weak_upgrade: unsafe extern "C" fn(Handle) -> Handle,
    pub weak_release: unsafe extern "C" fn(Handle) -> c_int,
    /// Fills `*out` with the device's [`DeviceInfo`]: 0 or -EINVAL.
    pub device_info: unsafe extern "C" fn(Handle, *mut DeviceInfo) -> c_int,
    /// The region of the device's session (one reference), or none (not attached).
    pub device_region: unsafe extern "C" fn(Handle) -> Handle,
    /// Starts a queue pair at the proxy (`QueueStart`). With `QUEUE_FLAG_RX_WAKEUP` the
    /// wake-up socket of the answer is stored in `*wake_fd` (the caller owns it; else
    /// -1). 0, or a negative errno with `*reason` (-ENOTCONN: no live session).
    pub queue_start: unsafe extern "C" fn(Handle, *const QueueStartRequest, *mut c_int, *mut Reason) -> c_int,
    /// Stops a queue pair at the proxy (`QueueStop`): 0 once the proxy stopped it, or a
    /// negative errno with `*reason` (-ENOTCONN: no live session, nothing asked).
    pub queue_stop: unsafe extern "C" fn(Handle, u16, *mut Reason) -> c_int,
    /// Ends the device's session (goodbye to the proxy, no reconnecting): 0 or -EINVAL.
    pub close_session: unsafe extern "C" fn(Handle) -> c_int,
    /// Another reference to the region, or none.
    pub region_retain: unsafe extern "C" fn(Handle) -> Handle,
    /// Gives one reference back; the mapping goes with the last one.
    pub region_release: unsafe extern "C" fn(Handle) -> c_int,
    /// Fills `*out` with the region's [`RegionView`]: 0 or -EINVAL.
    pub region_view: unsafe extern "C" fn(Handle, *mut RegionView) -> c_int,
    /// The largest free block of the region's heap at this alignment, in bytes.
    pub region_largest_free: unsafe extern "C" fn(Handle, u64) -> u64,
    /// Places a pool in the region's heap (its id, its bytes, its layout checked like
    /// the proxy checks it) and records it: fills `*out`. 0, or a negative errno with
    /// `*reason` (-ENOSPC: no room or no free pool id).
    pub pool_place: unsafe extern "C" fn(Handle, *const PoolRequest, *mut PoolRecord, *mut Reason) -> c_int,
    /// Announces a placed pool to the proxy of the session that uses the region now
    /// (`PoolAdd`): 0, or a negative errno with `*reason`.
    pub pool_announce: unsafe extern "C" fn(Handle, u32, *mut Reason) -> c_int,
    /// Withdraws a pool: `PoolDel` to a live session that uses the region (a failure is
    /// told in `*reason`, the pool goes anyway), then its bytes and id are freed.
    /// 0, 1 (removed, the proxy did not confirm: see `*reason`) or -EINVAL.
    pub pool_remove: unsafe extern "C" fn(Handle, u32, *mut Reason) -> c_int,
    /// Fills `*out` with the `index`th pool of the region: 0, or -ENOENT past the last.
    pub pool_at: unsafe extern "C" fn(Handle, usize, *mut PoolRecord) -> c_int,
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
    /// The header of this version's table: the bus plugin writes its table as
    /// `BusInterface { header: BusInterface::HEADER, <its functions> }`.
    pub const HEADER: InterfaceHeader = InterfaceHeader::of::<BusInterface>(BUS_INTERFACE_MAGIC);
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
                write!(f, "librte_bus_shm.so does not fit this plugin: {why}; use the three plugins of one release")
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

/// Checks the interface found behind a bus header.
///
/// # Safety
/// `interface` points to at least an [`InterfaceHeader`] that stays valid for the process.
pub unsafe fn check_bus(interface: *const BusInterface) -> Result<&'static BusInterface, InterfaceError> {
    // SAFETY: per the contract the header is readable; copied out before it is judged.
    let header = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*interface).header)) };
    header.check::<BusInterface>(BUS_INTERFACE_MAGIC)?;
    // SAFETY: a table of this version and at least this size; it lives for the process
    // (per the contract).
    Ok(unsafe { &*interface })
}

/// An errno code (below 0) and the reason a table function gave.
#[derive(Debug, Clone)]
pub struct CallError {
    pub errno: c_int,
    pub reason: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", crate::errno_text(-self.errno))
        } else {
            write!(f, "{}", self.reason)
        }
    }
}

fn call_result(rc: c_int, reason: &Reason) -> Result<c_int, CallError> {
    if rc < 0 {
        Err(CallError { errno: rc, reason: reason.as_str().to_string() })
    } else {
        Ok(rc)
    }
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

    /// The bus's interface if the bus is registered, checked to be ours and of this
    /// interface version.
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
        // SAFETY: a checked table; the driver table is a static.
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

    /// Takes one more reference to a device handle the bus passed to a driver callback
    /// (valid for that call only).
    pub fn retain_device(&'static self, device: Handle) -> Option<DeviceHandle> {
        // SAFETY: a checked table; the bus looks the handle up.
        DeviceHandle::adopt(self, unsafe { (self.device_retain)(device) })
    }

    /// Every registered device.
    pub fn devices(&'static self) -> Vec<DeviceHandle> {
        let mut out = Vec::new();
        // SAFETY: a checked table; none past the last device.
        while let Some(dev) = DeviceHandle::adopt(self, unsafe { (self.device_at)(out.len()) }) {
            out.push(dev);
        }
        out
    }
}

/// One reference to a device of the bus plugin.
pub struct DeviceHandle {
    bus: &'static BusInterface,
    handle: Handle,
}

impl DeviceHandle {
    /// Takes over the one reference the bus handed out with `handle` (none: `None`).
    fn adopt(bus: &'static BusInterface, handle: Handle) -> Option<DeviceHandle> {
        (!handle.is_none()).then_some(DeviceHandle { bus, handle })
    }

    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// The device as the bus sees it now (`None`: the bus refused the handle, which a
    /// handle of ours never is).
    pub fn info(&self) -> Option<DeviceInfo> {
        let mut info = DeviceInfo::empty();
        // SAFETY: a checked table; `info` is ours to fill.
        let rc = unsafe { (self.bus.device_info)(self.handle, &mut info) };
        (rc == 0).then_some(info)
    }

    /// The region of the device's session, if it has one.
    pub fn region(&self) -> Option<RegionHandle> {
        // SAFETY: a checked table; the bus looks the handle up.
        let handle = unsafe { (self.bus.device_region)(self.handle) };
        RegionHandle::adopt(self.bus, handle)
    }

    /// A weak reference to this device.
    pub fn downgrade(&self) -> WeakDevice {
        // SAFETY: a checked table; the bus looks the handle up.
        let weak = unsafe { (self.bus.device_downgrade)(self.handle) };
        WeakDevice { bus: self.bus, weak }
    }

    /// `QueueStart` at the proxy; the wake-up socket of the answer when asked for.
    pub fn queue_start(&self, request: &QueueStartRequest) -> Result<Option<OwnedFd>, CallError> {
        let mut fd: c_int = -1;
        let mut reason = Reason::default();
        // SAFETY: a checked table; the request, fd and reason are ours for the call.
        let rc = unsafe { (self.bus.queue_start)(self.handle, request, &mut fd, &mut reason) };
        call_result(rc, &reason)?;
        // SAFETY: per the table, a descriptor stored in `fd` is the caller's to own.
        Ok((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `QueueStop` at the proxy: Ok once the proxy stopped the pair.
    pub fn queue_stop(&self, queue: u16) -> Result<(), CallError> {
        let mut reason = Reason::default();
        // SAFETY: a checked table; the reason is ours for the call.
        let rc = unsafe { (self.bus.queue_stop)(self.handle, queue, &mut reason) };
        call_result(rc, &reason).map(|_| ())
    }

    /// Ends the device's session with its proxy.
    pub fn close_session(&self) {
        // SAFETY: a checked table; the bus looks the handle up.
        unsafe { (self.bus.close_session)(self.handle) };
    }
}

impl Clone for DeviceHandle {
    fn clone(&self) -> Self {
        // SAFETY: a checked table; our reference keeps the device, so the bus knows it.
        let handle = unsafe { (self.bus.device_retain)(self.handle) };
        DeviceHandle { bus: self.bus, handle }
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        if !self.handle.is_none() {
            // SAFETY: a checked table; gives back the one reference this value holds.
            unsafe { (self.bus.device_release)(self.handle) };
        }
    }
}

/// A device reference that does not keep the device (a port or a pool of a device that
/// may be unplugged).
pub struct WeakDevice {
    bus: &'static BusInterface,
    weak: Handle,
}

impl WeakDevice {
    pub fn upgrade(&self) -> Option<DeviceHandle> {
        if self.weak.is_none() {
            return None;
        }
        // SAFETY: a checked table; the bus looks the handle up.
        DeviceHandle::adopt(self.bus, unsafe { (self.bus.weak_upgrade)(self.weak) })
    }
}

impl Drop for WeakDevice {
    fn drop(&mut self) {
        if !self.weak.is_none() {
            // SAFETY: a checked table; gives back the one weak reference this value holds.
            unsafe { (self.bus.weak_release)(self.weak) };
        }
    }
}

/// One reference to a region of the bus plugin, with what this plugin needs of it
/// fetched once: its mapping and its layout (validated again here). The mapping stays
/// valid while this value lives.
pub struct RegionHandle {
    bus: &'static BusInterface,
    handle: Handle,
    base: *mut u8,
    len: usize,
    hugepages: bool,
    pub layout: RegionLayout,
}

// SAFETY: `base` is the start of a mapping kept by our reference, usable from any thread;
// the handle is a number the bus looks up under its own lock.
unsafe impl Send for RegionHandle {}
// SAFETY: as above; nothing here is mutable.
unsafe impl Sync for RegionHandle {}

impl RegionHandle {
    /// Takes over the one reference in `handle` and fetches the region's view. A view the
    /// bus fills wrongly (a layout that breaks the contract) gives the reference back.
    fn adopt(bus: &'static BusInterface, handle: Handle) -> Option<RegionHandle> {
        if handle.is_none() {
            return None;
        }
        let release = || {
            // SAFETY: a checked table; gives back the reference we were handed.
            unsafe { (bus.region_release)(handle) };
        };
        let mut view = RegionView::empty();
        // SAFETY: a checked table; `view` is ours to fill.
        if unsafe { (bus.region_view)(handle, &mut view) } != 0 || view.base.is_null() {
            release();
            return None;
        }
        let Ok(layout) = view.layout() else {
            release();
            return None;
        };
        Some(RegionHandle { bus, handle, base: view.base, len: view.len as usize, hugepages: view.hugepages != 0, layout })
    }

    pub fn handle(&self) -> Handle {
        self.handle
    }

    pub fn base(&self) -> *mut u8 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    /// The region as a `'static` view.
    ///
    /// # Safety
    /// The caller keeps this handle (or a clone) for as long as it uses the view.
    pub unsafe fn mem_static(&self) -> SharedMem<'static> {
        // SAFETY: the mapping is valid for its whole length while our reference lives,
        // which the caller guarantees.
        unsafe { SharedMem::from_raw(self.base, self.len) }
    }

    pub fn largest_free(&self, align: u64) -> u64 {
        // SAFETY: a checked table; the bus looks the handle up.
        unsafe { (self.bus.region_largest_free)(self.handle, align) }
    }

    /// Places a pool in the region's heap (see `BusInterface::pool_place`).
    pub fn place_pool(&self, request: &PoolRequest) -> Result<PoolRecord, CallError> {
        let mut out = PoolRecord::default();
        let mut reason = Reason::default();
        // SAFETY: a checked table; request, out and reason are ours for the call.
        let rc = unsafe { (self.bus.pool_place)(self.handle, request, &mut out, &mut reason) };
        call_result(rc, &reason).map(|_| out)
    }

    /// Announces pool `pool_id` to the proxy that serves the region now.
    pub fn announce_pool(&self, pool_id: u32) -> Result<(), CallError> {
        let mut reason = Reason::default();
        // SAFETY: a checked table; the reason is ours for the call.
        let rc = unsafe { (self.bus.pool_announce)(self.handle, pool_id, &mut reason) };
        call_result(rc, &reason).map(|_| ())
    }

    /// Withdraws pool `pool_id` (see `BusInterface::pool_remove`): Err only when the
    /// proxy did not confirm; the pool is gone from the region either way.
    pub fn remove_pool(&self, pool_id: u32) -> Result<(), String> {
        let mut reason = Reason::default();
        // SAFETY: a checked table; the reason is ours for the call.
        match unsafe { (self.bus.pool_remove)(self.handle, pool_id, &mut reason) } {
            0 => Ok(()),
            _ => Err(reason.as_str().to_string()),
        }
    }

    /// Every pool placed in the region.
    pub fn pools(&self) -> Vec<PoolRecord> {
        let mut out = Vec::new();
        loop {
            let mut pool = PoolRecord::default();
            // SAFETY: a checked table; `pool` is ours to fill.
            if unsafe { (self.bus.pool_at)(self.handle, out.len(), &mut pool) } != 0 {
                return out;
            }
            out.push(pool);
        }
    }

    /// The pool of this region owned by `mempool`, if any.
    pub fn pool_of_mempool(&self, mempool: *const sys::rte_mempool) -> Option<PoolRecord> {
        self.pools().into_iter().find(|p| p.mempool == mempool as u64)
    }
}

impl Clone for RegionHandle {
    fn clone(&self) -> Self {
        // SAFETY: a checked table; our reference keeps the region, so the bus knows it.
        let handle = unsafe { (self.bus.region_retain)(self.handle) };
        RegionHandle { bus: self.bus, handle, base: self.base, len: self.len, hugepages: self.hugepages, layout: self.layout }
    }
}

impl Drop for RegionHandle {
    fn drop(&mut self) {
        if !self.handle.is_none() {
            // SAFETY: a checked table; gives back the one reference this value holds.
            unsafe { (self.bus.region_release)(self.handle) };
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

    unsafe extern "C" fn no_probe(_: Handle) -> c_int {
        0
    }
    unsafe extern "C" fn no_event(_: Handle, _: DeviceEventRecord) {}
    unsafe extern "C" fn no_register(_: *const DriverInterface) -> c_int {
        1
    }
    unsafe extern "C" fn no_unregister(_: *const DriverInterface) {}
    unsafe extern "C" fn no_device(_: *const sys::rte_device) -> Handle {
        Handle::NONE
    }
    unsafe extern "C" fn no_device_at(_: usize) -> Handle {
        Handle::NONE
    }
    unsafe extern "C" fn no_handle(_: Handle) -> Handle {
        Handle::NONE
    }
    unsafe extern "C" fn refuse(_: Handle) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_info(_: Handle, _: *mut DeviceInfo) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_queue_start(_: Handle, _: *const QueueStartRequest, _: *mut c_int, _: *mut Reason) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_queue_stop(_: Handle, _: u16, _: *mut Reason) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_view(_: Handle, _: *mut RegionView) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_free(_: Handle, _: u64) -> u64 {
        0
    }
    unsafe extern "C" fn no_place(_: Handle, _: *const PoolRequest, _: *mut PoolRecord, _: *mut Reason) -> c_int {
        -libc::EINVAL
    }
    unsafe extern "C" fn no_pool_at(_: Handle, _: usize, _: *mut PoolRecord) -> c_int {
        -libc::EINVAL
    }

    fn bus() -> BusInterface {
        BusInterface {
            header: BusInterface::HEADER,
            register_driver: no_register,
            unregister_driver: no_unregister,
            device_by_rte: no_device,
            device_at: no_device_at,
            device_retain: no_handle,
            device_release: refuse,
            device_downgrade: no_handle,
            weak_upgrade: no_handle,
            weak_release: refuse,
            device_info: no_info,
            device_region: no_handle,
            queue_start: no_queue_start,
            queue_stop: no_queue_stop,
            close_session: refuse,
            region_retain: no_handle,
            region_release: refuse,
            region_view: no_view,
            region_largest_free: no_free,
            pool_place: no_place,
            pool_announce: no_queue_stop_u32,
            pool_remove: no_queue_stop_u32,
            pool_at: no_pool_at,
        }
    }
    unsafe extern "C" fn no_queue_stop_u32(_: Handle, _: u32, _: *mut Reason) -> c_int {
        -libc::EINVAL
    }

    #[test]
    fn a_bus_of_this_version_is_taken() {
        let bus = Box::leak(Box::new(bus()));
        // SAFETY: a live table.
        let found = unsafe { check_bus(bus) }.unwrap();
        assert!(std::ptr::eq(found, bus));
        assert_eq!(bus.header.size as usize, std::mem::size_of::<BusInterface>());
        assert_eq!(bus.header.version, 2);
    }

    #[test]
    fn a_bus_of_another_version_is_refused_before_it_is_read() {
        for version in [1, INTERFACE_VERSION + 1] {
            let mut bus = bus();
            bus.header.version = version;
            // SAFETY: a live table (the check reads only its header).
            let err = unsafe { check_bus(&bus) }.map(|_| ()).unwrap_err();
            assert_eq!(err, InterfaceError::OtherVersion { theirs: version });
            let text = BusLookupError::Refused(err).to_string();
            assert!(text.contains(&format!("interface version {version}")), "{text}");
            assert!(text.contains("use the three plugins of one release"), "{text}");
        }
    }

    #[test]
    fn a_short_table_and_a_foreign_magic_are_refused() {
        let mut short = bus();
        short.header.size = std::mem::size_of::<InterfaceHeader>() as u32;
        // SAFETY: live tables (the checks read only their headers).
        unsafe {
            assert_eq!(
                check_bus(&short).map(|_| ()),
                Err(InterfaceError::TooSmall { size: short.header.size, needed: std::mem::size_of::<BusInterface>() })
            );
            // One byte short of this version's table (an older, shorter table of the
            // same number would be read past its end).
            short.header.size = std::mem::size_of::<BusInterface>() as u32 - 1;
            assert!(matches!(check_bus(&short), Err(InterfaceError::TooSmall { .. })));
            let mut foreign = bus();
            foreign.header.magic = DRIVER_INTERFACE_MAGIC;
            assert_eq!(check_bus(&foreign).map(|_| ()), Err(InterfaceError::NotOurs));
        }
    }

    #[test]
    fn driver_tables_are_checked() {
        static DRIVER: DriverInterface = DriverInterface::new(c"test", no_probe, no_probe, no_event);
        // SAFETY: a static table, a null pointer, and live modified copies.
        unsafe {
            assert_eq!(DriverInterface::checked(&DRIVER).unwrap().name(), c"test");
            assert_eq!(DriverInterface::checked(std::ptr::null()).map(|_| ()), Err(InterfaceError::NotOurs));
            let old = DriverInterface { header: InterfaceHeader { version: 1, ..DRIVER.header }, ..DriverInterface::new(c"old", no_probe, no_probe, no_event) };
            assert_eq!(DriverInterface::checked(&old).map(|_| ()), Err(InterfaceError::OtherVersion { theirs: 1 }));
            let short = DriverInterface { header: InterfaceHeader { size: 16, ..DRIVER.header }, ..DriverInterface::new(c"short", no_probe, no_probe, no_event) };
            assert_eq!(
                DriverInterface::checked(&short).map(|_| ()),
                Err(InterfaceError::TooSmall { size: 16, needed: std::mem::size_of::<DriverInterface>() })
            );
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

    #[test]
    fn a_region_view_gives_back_its_layout_and_a_broken_one_is_refused() {
        let layout = RegionLayout::with_queue_pairs(64 << 20, 4096, 1024, 512, 2, RegionFlags::empty()).unwrap();
        let base = std::ptr::null_mut::<u8>().wrapping_add(1 << 30);
        let view = RegionView::of(base, &layout, true);
        assert_eq!((view.base, view.len, view.hugepages, view.queue_pairs), (base, 64 << 20, 1, 2));
        assert_eq!(view.layout(), Ok(layout));
        let mut too_many = view;
        too_many.queue_pairs = MAX_QUEUE_PAIRS + 1;
        assert!(too_many.layout().is_err());
        let mut overlapping = view;
        overlapping.heap_offset = view.rings[0][0].offset;
        assert!(overlapping.layout().is_err());
    }

    #[test]
    fn handles_a_refusing_bus_gives_are_none_and_nothing_is_released() {
        let bus: &'static BusInterface = Box::leak(Box::new(bus()));
        assert!(bus.device_by_rte(std::ptr::null()).is_none());
        assert!(bus.retain_device(Handle(7)).is_none());
        assert!(bus.devices().is_empty());
        // A region whose view the bus refuses is not adopted.
        assert!(RegionHandle::adopt(bus, Handle(9)).is_none());
    }

    #[test]
    fn reasons_and_names_are_cut_to_fit_and_stay_text() {
        let mut reason = Reason::default();
        let long = "é".repeat(REASON_CAP);
        // SAFETY: a live Reason; null is allowed.
        unsafe {
            Reason::write(&mut reason, &long);
            Reason::write(std::ptr::null_mut(), "ignored");
        }
        assert!(reason.as_str().len() < REASON_CAP && long.starts_with(reason.as_str()), "{reason:?}");
        let mut info = DeviceInfo::empty();
        info.set_name(&"ü".repeat(DEVICE_NAME_CAP));
        assert!(info.name().len() < DEVICE_NAME_CAP && info.name().chars().all(|c| c == 'ü'));
        info.set_name("/run/io/sock");
        assert_eq!(info.name(), "/run/io/sock");
    }
}
