//! A device's session with its proxy: the control socket, the handshake, the mapped
//! region, and the watch on the socket that tells the driver when the proxy goes away.

use std::ffi::{c_int, c_void, CStr};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use dpdk_sys as sys;
use shm_contract::client::{self, ClientError, Listener, RequestIds, Unsolicited};
use shm_contract::mem::Mapping;
use shm_contract::proto::transport::send_message;
use shm_contract::proto::{Hello, HELLO_FLAG_REATTACH, PROTOCOL_VERSION_MIN};
use shm_contract::client::PoolFootprint;
use shm_contract::{Message, PoolAdd, PoolLayout, RegionLayout, SharedMem, PROTOCOL_VERSION};
use shm_driver_common::bus::{PoolRecord, PoolRequest, RegionView};

use shm_driver_common::bus::{lock, DeviceEvent};
use crate::device::ShmDevice;
use crate::heap::HeapAllocator;
use shm_driver_common::log::LogType;

use shm_contract::proto::Welcome;

/// Why a session call failed: the client core's errors.
pub type SessionError = ClientError;

/// The shared region, mapped. Outlives the session that brought it: mempools placed in it
/// keep it alive (an application may keep using its pool after a port is detached).
pub struct Region {
    mapping: Mapping,
    /// The memfd behind the mapping, kept so that the region can be handed to a new
    /// proxy when the device reattaches (its pools' objects are in this mapping, and
    /// the application holds pointers into it).
    memfd: OwnedFd,
    pub layout: RegionLayout,
    pub hugepages: bool,
    heap: Mutex<HeapAllocator>,
    /// Pools placed in this region, by id (the proxy knows pools by id).
    pools: Mutex<Vec<RegionPool>>,
}

/// A pool placed in a region: its validated layout and the mempool that owns it.
#[derive(Clone)]
pub struct RegionPool {
    pub id: u32,
    pub layout: PoolLayout,
    /// The `rte_mempool` in this process, as an address (only compared, never followed here).
    pub mempool: u64,
    /// Where the pool's bytes start in the heap (to give them back).
    pub heap_offset: u64,
}

impl RegionPool {
    pub fn record(&self) -> PoolRecord {
        PoolRecord { pool: self.layout.to_pool_add(), mempool: self.mempool }
    }
}

impl Region {
    pub fn mem(&self) -> SharedMem<'_> {
        self.mapping.mem()
    }

    pub fn base(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    pub fn heap_alloc(&self, len: u64, align: u64) -> Option<u64> {
        lock(&self.heap).alloc(len, align)
    }

    pub fn heap_free(&self, offset: u64) {
        lock(&self.heap).free(offset)
    }

    pub fn heap_largest_free(&self, align: u64) -> u64 {
        lock(&self.heap).largest_free(align)
    }

    /// Every pool placed in this region.
    pub fn pools(&self) -> Vec<RegionPool> {
        lock(&self.pools).clone()
    }

    /// The region as the other plugins see it.
    pub fn view(&self) -> RegionView {
        RegionView::of(self.base(), &self.layout, self.hugepages)
    }

    /// Places a pool of `request`'s geometry in the heap: a free id, its bytes (free
    /// ring, then the objects), its layout validated as the proxy will validate it
    /// (against the region and the other pools), recorded. Errors: an errno and why.
    pub fn place_pool(&self, request: &PoolRequest, device_name: &str) -> Result<PoolRecord, (i32, String)> {
        let PoolFootprint { ring_entries, objects_start, bytes } =
            PoolFootprint::new(request.count, request.stride).map_err(|e| (-libc::EINVAL, e))?;
        // One lock for the id, the bytes and the record: two pools placed at once get
        // different ids.
        let mut pools = lock(&self.pools);
        let id = (0..shm_contract::pool::MAX_POOLS)
            .find(|id| pools.iter().all(|p| p.id != *id))
            .ok_or((-libc::ENOSPC, "the region already holds the most pools it can".to_string()))?;
        let heap_offset = self.heap_alloc(bytes, 4096).ok_or_else(|| {
            (
                -libc::ENOSPC,
                format!(
                    "it needs {} MiB but the region of sock:{device_name} has {} MiB free; ask for a smaller pool \
                     (testpmd: --total-num-mbufs=N) or a larger region (devarg region_size=...)",
                    bytes.div_ceil(1 << 20),
                    self.heap_largest_free(4096) >> 20
                ),
            )
        })?;
        let add = PoolAdd {
            pool_id: id,
            ring_offset: heap_offset as u32,
            ring_entries,
            first_mbuf_offset: (heap_offset + objects_start) as u32 + request.header_size,
            stride: request.stride,
            count: request.count,
            mbuf_size: request.mbuf_size,
            data_room: request.data_room,
        };
        // The same validation the proxy applies: if it fails here, it is our bug.
        let others: Vec<PoolLayout> = pools.iter().map(|p| p.layout).collect();
        let layout = match add.validate(&self.layout, &others) {
            Ok(layout) => layout,
            Err(e) => {
                self.heap_free(heap_offset);
                return Err((-libc::EINVAL, format!("its layout is invalid: {e}")));
            }
        };
        let pool = RegionPool { id, layout, mempool: request.mempool, heap_offset };
        let record = pool.record();
        pools.push(pool);
        Ok(record)
    }

    /// Forgets pool `id` and frees its bytes; false if there is no such pool.
    pub fn forget_pool(&self, id: u32) -> bool {
        let mut pools = lock(&self.pools);
        let Some(at) = pools.iter().position(|p| p.id == id) else { return false };
        let pool = pools.remove(at);
        drop(pools);
        self.heap_free(pool.heap_offset);
        true
    }
}

pub struct Session {
    /// The control socket of the current connection; replaced when the device reattaches.
    socket: Mutex<Arc<OwnedFd>>,
    /// Ourselves, for the reconnect thread that a lost connection starts.
    me: Weak<Session>,
    /// Reattach by ourselves when the connection is lost (devarg `reconnect`).
    reconnect: bool,
    /// Whom to accept as the proxy when reattaching (devarg `proxy_uid`).
    proxy_uid: Option<u32>,
    /// `close` was called: never reconnect again.
    closed: AtomicBool,
    /// The reconnect thread waits here between attempts; `close` wakes it at once.
    retry_wait: (Mutex<()>, Condvar),
    /// A reconnect thread runs.
    reconnecting: AtomicBool,
    /// Successful reattachments so far.
    pub reattached: AtomicU64,
    hello: Hello,
    /// Held for a whole request/response exchange, so replies are never interleaved;
    /// the ids of the current connection's requests.
    control: Mutex<RequestIds>,
    pub region: Arc<Region>,
    /// What the proxy said at the handshake.
    pub proxy: Welcome,
    alive: AtomicBool,
    link_up: AtomicBool,
    link_speed: AtomicU32,
    timeout: Duration,
    device: Weak<ShmDevice>,
    device_name: String,
    watch: Mutex<Option<SocketWatch>>,
    /// Our interrupt handle while a deferred unregistration is pending; freed by
    /// `release_after_unregister` (EAL passes that callback its own copy of the handle).
    deferred_handle: std::sync::atomic::AtomicPtr<sys::rte_intr_handle>,
    /// What the driver is told goes through the device's event thread (see
    /// [`start_event_thread`]); `None` if that thread could not be started.
    events: Option<mpsc::Sender<Delivery>>,
    log: &'static LogType,
}

/// An event for the driver, and whom to tell when the driver has handled it.
struct Delivery {
    event: DeviceEvent,
    done: Option<mpsc::SyncSender<()>>,
}

/// Starts the thread that tells the device's driver what happened to the proxy, in
/// order; what the session sends it goes there.
///
/// Never the thread that noticed it: that may be the application's, inside a request
/// of the driver that holds the driver's port state (a queue start whose answer never
/// comes because the proxy died), or the interrupt thread holding the exchange lock
/// such a request waits for; the driver's handlers take that port state, so telling
/// the driver there would deadlock. This thread holds no lock of the session; the
/// driver's request in progress ends (answered, failed or timed out) and lets it on.
/// It ends when the session is dropped (its sender with it).
fn start_event_thread(dev: &Arc<ShmDevice>) -> io::Result<mpsc::Sender<Delivery>> {
    let (tx, rx) = mpsc::channel::<Delivery>();
    let device = Arc::downgrade(dev);
    std::thread::Builder::new().name("shm-events".into()).spawn(move || {
        for Delivery { event, done } in rx {
            if let Some(dev) = device.upgrade() {
                deliver(&dev, event);
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    })?;
    Ok(tx)
}

/// Calls the driver's event handler, if a driver has the device.
fn deliver(dev: &Arc<ShmDevice>, event: DeviceEvent) {
    if let Some(driver) = dev.driver() {
        // A panic must not take the application down, nor end the event thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::notify_driver(driver, dev, event)));
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("device", &self.device_name).field("proxy", &self.proxy).finish()
    }
}

impl Session {
    /// Connects to the device's socket, performs the handshake, maps the region, and
    /// starts watching the socket.
    ///
    /// `earlier` is the region of an earlier session on the same socket that pools of
    /// this process still live in (the device was removed and is probed again; Open
    /// vSwitch keeps its packet pool across `del-port` and `add-port`): it is handed to
    /// the proxy as a reconnect hands it back, so those pools serve the new session as
    /// they did the old one. If the proxy cannot take it (the socket now has another
    /// queue count, so another layout), the session gets a new region and the log says
    /// that packets of those pools will be copied.
    pub fn open(dev: &Arc<ShmDevice>, log: &'static LogType, earlier: Option<Arc<Region>>) -> Result<Arc<Session>, SessionError> {
        let hello = Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION,
            flags: 0,
            region_size: dev.args.region_size,
            rx_ring_entries: dev.args.rx_ring,
            tx_ring_entries: dev.args.tx_ring,
            app_name: program_name(),
            // The application creates its pools after the handshake: no plan to state.
            heap_bytes: 0,
        };
        let path = Path::new(dev.name());
        let mut attached = None;
        if let Some(region) = earlier {
            match attach_region(path, dev.args.proxy_uid, &hello, &region, dev.args.timeout) {
                Ok(RegionAttached { socket, welcome: info, ids }) => {
                    log.info(format_args!(
                        "sock:{}: attached to proxy port {} queue {} with the region of the earlier session on this \
                         socket ({} MiB, its {} pool(s) of this process stay zero-copy), protocol {}",
                        dev.name(),
                        info.port_id,
                        info.queue_id,
                        region.len() >> 20,
                        region.pools().len(),
                        info.version
                    ));
                    attached = Some((socket, info.link_up, info.link_speed_mbps, info, region, ids));
                }
                // A proxy that is not there or refuses us outright refuses a new region too.
                Err(e @ (SessionError::Connect(_) | SessionError::UntrustedServer(_))) => return Err(e),
                Err(e) => log.notice(format_args!(
                    "sock:{}: the proxy did not take back the region of the earlier session ({e}); using a new \
                     region: packets of pools in the earlier one are copied on tx",
                    dev.name()
                )),
            }
        }
        let (socket, link_up, link_speed_mbps, proxy, region, ids) = match attached {
            Some(a) => a,
            None => {
                // The server is verified (SO_PEERCRED) before the Hello: never a word to an impostor.
                let client::Attached { socket, welcome: proxy, fds } =
                    client::attach(path, dev.args.proxy_uid, &hello, &[], dev.args.timeout)?;
                let (region_size, hugepages) = (proxy.region_size, proxy.hugepages());
                let region = Region::new(client::map_region(&proxy, fds)?, hugepages);
                log.info(format_args!(
                    "sock:{}: attached to proxy port {} queue {}: region {} MiB on {}, protocol {}",
                    dev.name(),
                    proxy.port_id,
                    proxy.queue_id,
                    region_size >> 20,
                    if hugepages { format!("{} KiB hugepages", region.layout.page_size() >> 10) } else { "normal 4 KiB pages".into() },
                    proxy.version
                ));
                (socket, proxy.link_up, proxy.link_speed_mbps, proxy, Arc::new(region), RequestIds::default())
            }
        };
        let events = start_event_thread(dev)
            .map_err(|e| {
                log.error(format_args!(
                    "sock:{}: cannot start the device's event thread ({e}); the proxy's news reaches the driver on \
                     the thread that notices it",
                    dev.name()
                ))
            })
            .ok();
        let session = Arc::new_cyclic(|me| Session {
            socket: Mutex::new(Arc::new(socket)),
            me: me.clone(),
            reconnect: dev.args.reconnect,
            proxy_uid: dev.args.proxy_uid,
            closed: AtomicBool::new(false),
            retry_wait: (Mutex::new(()), Condvar::new()),
            reconnecting: AtomicBool::new(false),
            reattached: AtomicU64::new(0),
            hello,
            control: Mutex::new(ids),
            link_up: AtomicBool::new(link_up),
            link_speed: AtomicU32::new(link_speed_mbps),
            proxy,
            region,
            alive: AtomicBool::new(true),
            timeout: dev.args.timeout,
            device: Arc::downgrade(dev),
            device_name: dev.name().to_string(),
            watch: Mutex::new(None),
            deferred_handle: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            events,
            log,
        });
        session.watch_socket();
        Ok(session)
    }

    fn watch_socket(self: &Arc<Self>) {
        match SocketWatch::start(self) {
            Ok(watch) => *lock(&self.watch) = Some(watch),
            Err(e) => self.log.warning(format_args!(
                "sock:{}: cannot watch the control socket ({e}); a dead proxy will only be noticed on the next request",
                self.device_name
            )),
        }
    }

    fn socket(&self) -> Arc<OwnedFd> {
        lock(&self.socket).clone()
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub fn link(&self) -> (bool, u32) {
        (self.is_alive() && self.link_up.load(Ordering::Relaxed), self.link_speed.load(Ordering::Relaxed))
    }

    /// Sends `request` and waits for its answer, handling unsolicited messages that arrive
    /// meanwhile. A `Refuse` answer becomes `SessionError::Refused`.
    pub fn transact(&self, request: &Message) -> Result<Message, SessionError> {
        self.transact_with_fds(request).map(|(answer, _)| answer)
    }

    /// As [`transact`](Self::transact), also returning the descriptors that came with
    /// the answer (the wake-up end with `QueueStarted`); the caller checks them.
    pub fn transact_with_fds(&self, request: &Message) -> Result<(Message, Vec<OwnedFd>), SessionError> {
        if !self.is_alive() {
            return Err(SessionError::Closed);
        }
        let mut ids = lock(&self.control);
        let socket = self.socket();
        let id = ids.next_id();
        client::transact(socket.as_fd(), request, id, self.timeout, &mut SessionListener(self)).map_err(|e| self.fail(e))
    }

    /// Messages the proxy sends on its own: link news is passed on to the driver; a
    /// goodbye (or a `Refuse` on its own) loses the connection.
    fn handle_unsolicited(&self, msg: Unsolicited) -> Result<(), SessionError> {
        match msg {
            Unsolicited::Link { up, speed_mbps } => {
                self.link_up.store(up, Ordering::Relaxed);
                self.link_speed.store(speed_mbps, Ordering::Relaxed);
                self.notify(DeviceEvent::Link { up, speed_mbps });
                Ok(())
            }
            Unsolicited::Goodbye => {
                self.mark_lost();
                Err(SessionError::Ended("the proxy said goodbye".into()))
            }
            Unsolicited::Refused { code, reason } => {
                self.mark_lost();
                Err(SessionError::Ended(format!("the proxy ended the connection ({code:?}): {reason}")))
            }
        }
    }

    fn fail(&self, e: SessionError) -> SessionError {
        if matches!(e, SessionError::Closed | SessionError::Ended(_) | SessionError::Transport(_)) {
            self.mark_lost();
        }
        e
    }

    fn mark_lost(&self) {
        if self.alive.swap(false, Ordering::AcqRel) {
            let again = self.reconnect && !self.closed.load(Ordering::Acquire);
            self.log.warning(format_args!(
                "sock:{}: proxy connection lost; link down{}",
                self.device_name,
                if again { "; reconnecting when the proxy is back" } else { "" }
            ));
            self.notify(DeviceEvent::ProxyLost);
            if again {
                self.start_reconnect();
            }
        }
    }

    /// Starts the thread that reattaches the device once a proxy serves its socket again.
    fn start_reconnect(&self) {
        let Some(me) = self.me.upgrade() else { return };
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let name = format!("shm-reconn-{}", self.proxy.queue_id);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            // A panic must not take the application down: the device just stays down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| me.reconnect_loop()));
            me.reconnecting.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            self.reconnecting.store(false, Ordering::Release);
            self.log.error(format_args!("sock:{}: cannot start the reconnect thread: {e}; the port stays down", self.device_name));
        }
    }

    /// Retries until a proxy takes the region back, `close` is called, or the device is gone.
    fn reconnect_loop(self: &Arc<Self>) {
        // Take back what the rings still hold (the new proxy zeroes them): the driver
        // waits there until the application's threads acknowledge that they left any
        // burst that began before the loss.
        self.notify_and_wait(DeviceEvent::Reclaim);
        let mut last_complaint = String::new();
        let mut attempts = 0u64;
        while !self.closed.load(Ordering::Acquire) && self.device.strong_count() > 0 {
            attempts += 1;
            match self.reattach() {
                Ok(()) => {
                    let n = self.reattached.fetch_add(1, Ordering::Relaxed) + 1;
                    self.log.notice(format_args!(
                        "sock:{}: reattached to the proxy (attempt {attempts}, reattachment {n}); link {}",
                        self.device_name,
                        if self.link_up.load(Ordering::Relaxed) { "up" } else { "down" }
                    ));
                    self.notify(DeviceEvent::ProxyBack);
                    return;
                }
                // No proxy yet: quietly try again.
                Err(SessionError::Connect(e))
                    if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
                {
                    self.wait_before_retry(RECONNECT_PERIOD)
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_complaint {
                        self.log.warning(format_args!("sock:{}: cannot reattach yet: {text}; retrying", self.device_name));
                        last_complaint = text;
                    }
                    self.wait_before_retry(RECONNECT_PERIOD * 10);
                }
            }
        }
    }

    /// Waits `period` before the next attempt to reach a proxy, or less if `close` is
    /// called meanwhile.
    fn wait_before_retry(&self, period: Duration) {
        let (mutex, condvar) = &self.retry_wait;
        let guard = lock(mutex);
        let _ = condvar.wait_timeout_while(guard, period, |_| !self.closed.load(Ordering::Acquire));
    }

    /// One reattach attempt: a new connection, a `Hello` that hands our region back,
    /// our pools announced again. Installs the connection only when all of it worked.
    fn reattach(self: &Arc<Self>) -> Result<(), SessionError> {
        let RegionAttached { socket, welcome: info, ids } =
            attach_region(Path::new(&self.device_name), self.proxy_uid, &self.hello, &self.region, self.timeout)?;
        if (info.mac, info.mtu, info.port_id, info.queue_id) != (self.proxy.mac, self.proxy.mtu, self.proxy.port_id, self.proxy.queue_id) {
            self.log.warning(format_args!(
                "sock:{}: the proxy now serves port {} queue {} (MAC {}, MTU {}); the ethdev keeps what it had",
                self.device_name,
                info.port_id,
                info.queue_id,
                info.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                info.mtu
            ));
        }
        // Install the new connection: the old watch (if the loss was seen by a request
        // rather than by the watch) goes first, so it never looks at the new socket.
        if let Some(watch) = lock(&self.watch).take() {
            watch.stop();
        }
        {
            let mut control = lock(&self.control);
            *lock(&self.socket) = Arc::new(socket);
            *control = ids;
            self.link_up.store(info.link_up, Ordering::Relaxed);
            self.link_speed.store(info.link_speed_mbps, Ordering::Relaxed);
            if self.closed.load(Ordering::Acquire) {
                return Err(SessionError::Closed);
            }
            self.alive.store(true, Ordering::Release);
        }
        self.watch_socket();
        Ok(())
    }

    /// Tells the driver `event` from the event thread, without waiting.
    fn notify(&self, event: DeviceEvent) {
        self.send_event(event, None);
    }

    /// Tells the driver `event` from the event thread, after what was told before, and
    /// waits until it has handled it. Only from a thread that holds no lock of the
    /// session or the driver (the reconnect thread).
    fn notify_and_wait(&self, event: DeviceEvent) {
        let (done, handled) = mpsc::sync_channel(1);
        if self.send_event(event, Some(done)) {
            let _ = handled.recv();
        }
    }

    /// Whether the event went to the event thread; if there is none, it is handled
    /// here and now.
    fn send_event(&self, event: DeviceEvent, done: Option<mpsc::SyncSender<()>>) -> bool {
        if let Some(events) = &self.events {
            if events.send(Delivery { event, done }).is_ok() {
                return true;
            }
        }
        if let Some(dev) = self.device.upgrade() {
            deliver(&dev, event);
        }
        false
    }

    /// Ends the session: says goodbye if the proxy is still there, stops watching the
    /// socket. The region stays mapped while anything (a mempool) still holds it.
    pub fn close(&self) {
        {
            // Under the lock: a reconnect thread between its check and its wait still
            // gets the notification.
            let _retry = lock(&self.retry_wait.0);
            self.closed.store(true, Ordering::Release);
        }
        self.retry_wait.1.notify_all();
        if let Some(watch) = lock(&self.watch).take() {
            watch.stop();
        }
        let socket = self.socket();
        if self.alive.swap(false, Ordering::AcqRel) {
            let _exchange = lock(&self.control);
            let _ = send_message(socket.as_fd(), &Message::Goodbye, 0, &[]);
        }
        // SAFETY: shutdown on our own open socket; wakes anything blocked on it.
        unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Called from the EAL interrupt thread when the socket is readable or hung up.
    fn on_socket_event(&self) {
        // Wait for any request in flight: its owner reads its own answer.
        let _exchange = lock(&self.control);
        let socket = self.socket();
        if client::read_unsolicited(socket.as_fd(), &mut SessionListener(self)).is_err() {
            self.mark_lost();
        }
        if !self.is_alive() {
            self.stop_watch_from_callback();
        }
    }

    /// EAL's epoll is level-triggered: a hung-up socket must stop being watched, or the
    /// interrupt thread would spin on it. Inside the callback only the deferred API works.
    fn stop_watch_from_callback(&self) {
        if let Some(watch) = lock(&self.watch).take() {
            watch.stop_deferred();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(watch) = lock(&self.watch).take() {
            watch.stop();
        }
    }
}

impl Region {
    fn new(mapped: client::MappedRegion, hugepages: bool) -> Region {
        let client::MappedRegion { mapping, memfd, layout } = mapped;
        let heap = HeapAllocator::new(layout.heap().offset as u64, layout.heap().size as u64);
        Region { mapping, memfd, layout, hugepages, heap: Mutex::new(heap), pools: Mutex::new(Vec::new()) }
    }
}

/// How often a lost device tries to reach its proxy again.
const RECONNECT_PERIOD: Duration = Duration::from_millis(100);

/// A connection to a proxy that took a region of ours back.
struct RegionAttached {
    socket: OwnedFd,
    welcome: Welcome,
    /// The ids the connection used so far (one per pool announced).
    ids: RequestIds,
}

/// Attaches to the proxy at `path` handing it `region` (whose pools live in this
/// process): a reattaching `Hello` with the region's memfd and sizes, the proxy's layout
/// checked to be the one our queues and pools use, every pool announced again. Used
/// when the proxy comes back (reconnect) and when a device is probed again on a socket
/// whose earlier region still holds pools.
fn attach_region(path: &Path, proxy_uid: Option<u32>, base: &Hello, region: &Region, timeout: Duration) -> Result<RegionAttached, SessionError> {
    let hello = Hello {
        flags: HELLO_FLAG_REATTACH,
        region_size: region.len() as u64,
        rx_ring_entries: region.layout.rx_ring().entries,
        tx_ring_entries: region.layout.tx_ring().entries,
        ..base.clone()
    };
    // The server is verified (SO_PEERCRED) before the Hello that hands over our
    // region's memfd.
    let client::Attached { socket, welcome, fds } = client::attach(path, proxy_uid, &hello, &[region.memfd.as_fd()], timeout)?;
    drop(fds);
    // The proxy wrote the header again: it must describe the layout our queues and
    // pools already use.
    client::check_reattached(&region.mem(), &welcome, &region.layout)?;
    // Nobody else uses the new connection yet: link news meanwhile is skipped (the
    // Welcome's link state is refreshed by the next one).
    let mut ids = RequestIds::default();
    for pool in region.pools() {
        let msg = Message::PoolAdd(pool.layout.to_pool_add());
        match client::transact(socket.as_fd(), &msg, ids.next_id(), timeout, &mut ReattachListener)? {
            (Message::PoolAck { pool_id }, _) if pool_id == pool.id => {}
            (other, _) => return Err(SessionError::Protocol(format!("expected PoolAck, got {}", other.kind()))),
        }
    }
    Ok(RegionAttached { socket, welcome, ids })
}

/// The session's handling of what arrives besides answers.
struct SessionListener<'a>(&'a Session);

impl Listener for SessionListener<'_> {
    fn unsolicited(&mut self, msg: Unsolicited) -> Result<(), ClientError> {
        self.0.handle_unsolicited(msg)
    }

    fn ignored(&mut self, msg: &Message, id: u32) {
        self.0.log.warning(format_args!(
            "sock:{}: ignoring an unexpected {} from the proxy (request {id})",
            self.0.device_name,
            msg.kind()
        ));
    }
}

/// A reattaching connection's: link news is skipped, a goodbye ends the attempt.
struct ReattachListener;

impl Listener for ReattachListener {
    fn unsolicited(&mut self, msg: Unsolicited) -> Result<(), ClientError> {
        match msg {
            Unsolicited::Link { .. } => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }
}

fn program_name() -> String {
    std::fs::read_to_string("/proc/self/comm").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Makes the platform mempool ops our shared-memory ops, so that packet pools created
/// after a `sock:` device is probed live in its region. Done only when a device is really
/// probed: a plugin auto-loaded into an unrelated application changes nothing.
pub fn use_shared_mempool_ops(log: &LogType) {
    const OPS: &CStr = c"shm";
    // SAFETY: reads the name of the current platform ops, a static C string or null.
    let current = unsafe { shm_driver_common::ffi::str_from_c(sys::rte_mbuf_platform_mempool_ops()) };
    if current.as_deref() == Some("shm") {
        return;
    }
    if !mempool_ops_registered("shm") {
        log.warning(format_args!(
            "mempool ops 'shm' not registered (librte_mempool_shm.so not loaded): packet buffers \
             will be private and every transmitted packet copied"
        ));
        return;
    }
    // SAFETY: valid C string; DPDK keeps its own copy.
    let rc = unsafe { sys::rte_mbuf_set_platform_mempool_ops(OPS.as_ptr()) };
    if rc != 0 {
        log.warning(format_args!(
            "cannot make 'shm' the platform mempool ops ({}); pools will use {:?}",
            shm_driver_common::errno_text(-rc),
            current
        ));
    }
}

fn mempool_ops_registered(name: &str) -> bool {
    // SAFETY: the ops table is a process-wide array; entries below num_ops are initialised
    // and their names are NUL-terminated arrays.
    unsafe {
        let table = std::ptr::addr_of!(sys::rte_mempool_ops_table);
        let count = ((*table).num_ops as usize).min((*table).ops.len());
        (0..count).any(|i| shm_driver_common::ffi::str_from_c((*table).ops[i].name.as_ptr()).as_deref() == Some(name))
    }
}

/// Registration of the control socket with EAL's interrupt thread.
struct SocketWatch {
    handle: *mut sys::rte_intr_handle,
    /// One strong reference to the session, owned by the registration.
    arg: *const Session,
    /// The callback exactly as registered (EAL unregisters by address).
    callback: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: the handle and the leaked Arc are only used to unregister, from any thread.
unsafe impl Send for SocketWatch {}

impl SocketWatch {
    fn start(session: &Arc<Session>) -> Result<SocketWatch, String> {
        // SAFETY: plain EAL calls on a fresh handle; the fd stays open while registered
        // because the registration owns a reference to the session that owns the fd.
        unsafe {
            let handle = sys::rte_intr_instance_alloc(sys::RTE_INTR_INSTANCE_F_PRIVATE);
            if handle.is_null() {
                return Err("no memory for an interrupt handle".into());
            }
            // The socket is replaced only after this watch is stopped (`reattach`).
            if sys::rte_intr_fd_set(handle, session.socket().as_raw_fd()) != 0
                || sys::rte_intr_type_set(handle, sys::RTE_INTR_HANDLE_EXT) != 0
            {
                sys::rte_intr_instance_free(handle);
                return Err("cannot set up the interrupt handle".into());
            }
            let arg = Arc::into_raw(session.clone());
            let callback: unsafe extern "C" fn(*mut c_void) = socket_event_trampoline;
            let rc = sys::rte_intr_callback_register(handle, Some(callback), arg as *mut c_void);
            if rc != 0 {
                drop(Arc::from_raw(arg));
                sys::rte_intr_instance_free(handle);
                return Err(shm_driver_common::errno_text(-rc));
            }
            Ok(SocketWatch { handle, arg, callback })
        }
    }

    /// Unregisters, waiting for a callback in progress on the interrupt thread to return.
    fn stop(self) {
        // SAFETY: plain EAL query.
        if unsafe { sys::rte_thread_is_intr() } != 0 {
            // On the interrupt thread (an application's event callback closing the
            // port): our callback is either not running, and unregistering works at
            // once, or it is the one that called us, and only the deferred API works.
            // SAFETY: unregisters what `start` registered.
            let rc = unsafe { sys::rte_intr_callback_unregister(self.handle, Some(self.callback), self.arg as *mut c_void) };
            if rc == -libc::EAGAIN {
                return self.stop_deferred();
            }
            return self.release(rc);
        }
        // SAFETY: unregisters what `start` registered. While the callback runs, EAL
        // refuses (-EAGAIN); the _sync variant retries until the interrupt thread has
        // left the callback (which waits at most for one request's timeout, the time
        // a request in flight may hold the control lock).
        let rc = unsafe { sys::rte_intr_callback_unregister_sync(self.handle, Some(self.callback), self.arg as *mut c_void) };
        self.release(rc)
    }

    /// After unregistering with result `rc`: frees what the registration owned.
    fn release(self, rc: c_int) {
        // SAFETY: when `rc` says the registration is gone, nothing else refers to the
        // handle or to the session reference it owned.
        unsafe {
            if rc > 0 {
                sys::rte_intr_instance_free(self.handle);
                drop(Arc::from_raw(self.arg));
            } else {
                // Never matched: the registration (if any) keeps its session, and so the
                // fd EAL polls, alive. Leaking one session beats EAL polling a closed (or
                // reused) descriptor.
                (*self.arg).log.warning(format_args!(
                    "sock:{}: cannot unregister the control socket from EAL ({}); keeping it",
                    (*self.arg).device_name,
                    shm_driver_common::errno_text(-rc)
                ));
            }
        }
    }
}

impl SocketWatch {
    fn stop_deferred(self) {
        // SAFETY: arg is the registration's live session reference.
        unsafe { (*self.arg).deferred_handle.store(self.handle, Ordering::Release) };
        // SAFETY: called from inside our own callback; EAL removes the registration after the
        // callback returns and then calls `release_after_unregister` with the same argument.
        let rc = unsafe {
            sys::rte_intr_callback_unregister_pending(
                self.handle,
                Some(self.callback),
                self.arg as *mut c_void,
                Some(release_after_unregister),
            )
        };
        if rc < 0 {
            // Not registered any more: release now.
            // SAFETY: nothing else refers to the handle or the reference.
            unsafe {
                (*self.arg).deferred_handle.store(std::ptr::null_mut(), Ordering::Release);
                sys::rte_intr_instance_free(self.handle);
                drop(Arc::from_raw(self.arg));
            }
        }
    }
}

unsafe extern "C" fn release_after_unregister(_eal_copy: *mut sys::rte_intr_handle, arg: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: EAL calls this once, after removing the registration that owned `arg`.
        // The handle it passes is EAL's own copy, which EAL frees itself; ours was parked
        // in the session by `stop_deferred`.
        unsafe {
            let session = Arc::from_raw(arg as *const Session);
            let ours = session.deferred_handle.swap(std::ptr::null_mut(), Ordering::AcqRel);
            if !ours.is_null() {
                sys::rte_intr_instance_free(ours);
            }
            drop(session);
        }
    });
}

unsafe extern "C" fn socket_event_trampoline(arg: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `arg` is the session reference owned by the registration, alive until
        // unregistration, which waits for this callback to return.
        let session = unsafe { &*(arg as *const Session) };
        session.on_socket_event();
    });
}
