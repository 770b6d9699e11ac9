//! The guest against a stand-in proxy: a thread that speaks the control protocol with
//! the contract crate's own code, and a test body that plays the proxy's data path on
//! the same region — including a proxy that writes garbage. (The real proxy is in
//! `tests/tests/rust_guest.rs`.)

use super::*;
use shm_contract::layout::RegionLayout;
use shm_contract::mem::create_region_memfd;
use shm_contract::mpmc::FreeRing;
use shm_contract::proto::transport::{recv_message, send_message, TransportError};
use shm_contract::RefuseCode;
use shm_contract::proto::Welcome;
use shm_contract::wake::Waker;
use shm_contract::{DescRing, PoolLayout, RegionFlags};
use std::os::fd::{AsFd, FromRawFd};
use std::sync::mpsc;
use std::thread;

/// What the stand-in proxy tells the test once the guest announced its pool.
struct Plane {
    mapping: Arc<Mapping>,
    layout: RegionLayout,
    pool: PoolLayout,
}

impl Plane {
    fn mem(&self) -> SharedMem<'_> {
        self.mapping.mem()
    }
    fn free_ring(&self) -> FreeRing<'_> {
        // Lifetimes: tie the view to `self`.
        let mem = self.mapping.mem();
        FreeRing::new(&mem, self.pool.ring_offset(), self.pool.ring_entries()).unwrap()
    }
    /// The status block (the guest's wake-up request is in it).
    fn status(&self) -> StatusBlock<'_> {
        // Lifetimes: tie the view to `self`.
        let mem = self.mapping.mem();
        StatusBlock::from_layout(&mem, &self.layout).unwrap()
    }
    /// Publishes one descriptor on the rx ring, then does what the real proxy does
    /// after an rx publish: signals the guest if it asked. True if it signalled. Waits
    /// for room in the ring (the guest is awake while it has descriptors to take).
    fn publish_and_wake(&self, rx: &mut DescProducer<'_>, d: Desc, waker: &Waker) -> bool {
        while rx.push_burst(&[d]).unwrap() == 0 {
            thread::yield_now();
        }
        shm_contract::wake::take_request(self.status().rx_wakeup_requested()) && waker.wake()
    }
    fn rx(&self) -> DescProducer<'_> {
        DescProducer::new(&self.mapping.mem(), self.layout.rx_ring()).unwrap()
    }
    fn tx(&self) -> DescConsumer<'_> {
        DescConsumer::new(&self.mapping.mem(), self.layout.tx_ring()).unwrap()
    }
    /// Takes a buffer from the free ring, as the proxy's NIC rx does.
    fn take_free(&self) -> u32 {
        let mut v = [0u32];
        self.free_ring().dequeue_bulk(&mut v, 16).unwrap();
        assert!(self.pool.buffer_index(v[0]).is_some());
        v[0]
    }
    fn write_data(&self, offset: u32, data_off: u16, bytes: &[u8]) {
        let at = offset + self.pool.mbuf_size() as u32 + data_off as u32;
        self.mem().write_bytes(at as usize, bytes).unwrap();
    }
    fn read_data(&self, d: &Desc) -> Vec<u8> {
        let mut out = vec![0u8; d.data_len as usize];
        let at = d.offset + self.pool.mbuf_size() as u32 + d.data_off as u32;
        self.mem().read_bytes(at as usize, &mut out).unwrap();
        out
    }
}

/// A stand-in proxy serving one guest on a socket in a fresh directory.
struct FakeProxy {
    path: std::path::PathBuf,
    plane: mpsc::Receiver<Plane>,
    /// The proxy's end of the wake-up pair, from each `QueueStart` that asked for them.
    wakers: mpsc::Receiver<Waker>,
    log: mpsc::Receiver<String>,
    goodbye_tx: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeProxy {
    fn start(name: &str) -> FakeProxy {
        let dir = std::env::temp_dir().join(format!("shm-guest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = listen(&path);
        let (plane_tx, plane) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        let (waker_tx, wakers) = mpsc::channel();
        let (goodbye_tx, goodbye_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || serve(listener, plane_tx, waker_tx, log_tx, goodbye_rx));
        FakeProxy { path, plane, wakers, log, goodbye_tx, thread: Some(thread) }
    }

    /// The wake-up socket the guest sent with its last `QueueStart`.
    fn waker(&self) -> Waker {
        self.wakers.recv_timeout(Duration::from_secs(5)).expect("no QueueStart with a wake-up socket")
    }

    fn plane(&self) -> Plane {
        self.plane.recv_timeout(Duration::from_secs(5)).expect("the guest announced no pool")
    }

    /// Every control message the proxy got so far, by kind.
    fn log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Waits for the guest to end the connection; every control message it sent.
    fn finish(&mut self) -> Vec<String> {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.log()
    }

    /// Makes the proxy say goodbye and hang up.
    fn goodbye(&mut self) {
        let _ = self.goodbye_tx.send(());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn listen(path: &Path) -> OwnedFd {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket calls on a fresh descriptor we own; addr is a valid sockaddr_un.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len), 0);
        assert_eq!(libc::listen(fd.as_raw_fd(), 4), 0);
        fd
    }
}

fn serve(
    listener: OwnedFd,
    plane: mpsc::Sender<Plane>,
    wakers: mpsc::Sender<Waker>,
    log: mpsc::Sender<String>,
    goodbye: mpsc::Receiver<()>,
) {
    // SAFETY: accept on our listening socket; the new fd is owned right away.
    let conn = unsafe { OwnedFd::from_raw_fd(libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)) };
    let mut region: Option<(Arc<Mapping>, RegionLayout)> = None;
    loop {
        if goodbye.try_recv().is_ok() {
            let _ = send_message(conn.as_fd(), &Message::Goodbye, 0, &[]);
            return;
        }
        let (msg, id, fds) = match recv_message(conn.as_fd(), Some(Duration::from_millis(20))) {
            Ok(m) => m,
            Err(TransportError::Timeout) => continue,
            Err(_) => return,
        };
        let _ = log.send(format!("{}", msg.kind()));
        let answer = match msg {
            Message::Hello(h) => {
                let entries = |n: u32| if n == 0 { 1024 } else { n };
                // As the proxy sizes it: what was asked, else the guest's pool plan.
                let size = match h.region_size {
                    0 => RegionLayout::size_for_heap(4096, entries(h.rx_ring_entries), entries(h.tx_ring_entries), h.heap_bytes)
                        .unwrap(),
                    asked => asked,
                };
                let (fd, backing) = create_region_memfd("fake-proxy", size, false).unwrap();
                let layout = RegionLayout::new(backing.size, backing.page_size, entries(h.rx_ring_entries), entries(h.tx_ring_entries), RegionFlags::empty()).unwrap();
                let mapping = Arc::new(Mapping::map(fd.as_fd(), backing.size as usize).unwrap());
                layout.write_header(&mapping.mem()).unwrap();
                let welcome = Message::Welcome(Welcome {
                    version: PROTOCOL_VERSION,
                    flags: layout.flags(),
                    region_size: layout.region_size(),
                    page_size: layout.page_size(),
                    port_id: 3,
                    queue_id: 1,
                    mac: [2, 0, 0, 0, 0, 1],
                    mtu: 1500,
                    max_rx_frame: 1518,
                    link_up: true,
                    link_speed_mbps: 10_000,
                    queue_pairs: 1,
                });
                send_message(conn.as_fd(), &welcome, id, &[fd.as_fd()]).unwrap();
                region = Some((mapping, layout));
                continue;
            }
            Message::PoolAdd(add) => {
                let (mapping, layout) = region.clone().unwrap();
                match add.validate(&layout, &[]) {
                    Ok(pool) => {
                        let _ = plane.send(Plane { mapping, layout, pool });
                        Message::PoolAck { pool_id: add.pool_id }
                    }
                    Err(e) => Message::refuse(RefuseCode::BadRequest, &e.to_string()),
                }
            }
            Message::QueueStart { flags, .. } => {
                // As the real proxy: no descriptor comes with a QueueStart; with
                // wake-ups, the proxy makes the pair and answers with the guest's end.
                assert!(fds.is_empty(), "QueueStart flags {flags:#x} with {} fds", fds.len());
                let (mapping, layout) = region.clone().unwrap();
                DescRing::init(&mapping.mem(), layout.rx_ring()).unwrap();
                DescRing::init(&mapping.mem(), layout.tx_ring()).unwrap();
                if flags & shm_contract::proto::QUEUE_FLAG_RX_WAKEUP != 0 {
                    let (waker, guest_end) = Waker::pair().unwrap();
                    let _ = wakers.send(waker);
                    send_message(conn.as_fd(), &Message::QueueStarted, id, &[guest_end.as_fd()]).unwrap();
                    continue;
                }
                Message::QueueStarted
            }
            Message::QueueStop { .. } => Message::QueueStopped,
            Message::Goodbye => return,
            other => Message::refuse(RefuseCode::BadRequest, &format!("unexpected {}", other.kind())),
        };
        send_message(conn.as_fd(), &answer, id, &[]).unwrap();
    }
}

fn small() -> Config {
    Config { buffers: 64, data_room: 512, rx_ring: 64, tx_ring: 64, ..Config::default() }
}

fn desc(offset: u32, data_off: u16, data_len: u16) -> Desc {
    Desc { offset, data_off, data_len, ..Desc::default() }
}

#[test]
fn connects_receives_and_sends_without_copies() {
    let mut proxy = FakeProxy::start("happy");
    let mut guest = Guest::connect(&proxy.path, &Config { app_name: "happy-guest".into(), ..small() }).unwrap();
    let plane = proxy.plane();
    assert_eq!(guest.info().port_id, 3);
    assert_eq!(guest.info().mac, [2, 0, 0, 0, 0, 1]);
    assert!(guest.is_running());
    assert_eq!(plane.pool.count(), 64);
    assert_eq!(plane.free_ring().count(), 64, "every buffer starts in the free ring");
    assert!(guest.recv().unwrap().is_none());

    // The proxy's NIC received a frame into a free buffer and publishes it.
    let offset = plane.take_free();
    plane.write_data(offset, 128, b"a frame of eleven");
    let mut rx = plane.rx();
    let mut d = desc(offset, 128, 17);
    d.flags = DescFlags::RSS_HASH;
    d.rss_hash = 0xabcd;
    assert_eq!(rx.push_burst(&[d]).unwrap(), 1);
    let mut pkt = guest.recv().unwrap().expect("a packet");
    assert_eq!(&pkt[..], b"a frame of eleven");
    assert_eq!(pkt.rss_hash(), Some(0xabcd));
    assert_eq!(pkt.vlan(), None);
    // In place, in the region: the proxy sees what the guest writes.
    pkt[0] = b'A';
    pkt.set_len(7).unwrap();
    guest.send(pkt).unwrap();
    let mut tx = plane.tx();
    let mut out = [Desc::default(); 4];
    assert_eq!(tx.pop_burst(&mut out).unwrap(), 1);
    assert_eq!((out[0].offset, out[0].data_off, out[0].data_len), (offset, 128, 7));
    assert_eq!(plane.read_data(&out[0]), b"A frame");
    assert_eq!(plane.free_ring().count(), 63, "a sent buffer is the proxy's until it returns it");

    // A buffer allocated by the guest.
    let pool = guest.pool();
    let mut b = pool.alloc().unwrap();
    b.copy_from(b"fresh").unwrap();
    b.set_vlan(Some(42));
    let mut burst = vec![b];
    assert_eq!(guest.send_burst(&mut burst).unwrap(), 1);
    assert!(burst.is_empty());
    assert_eq!(tx.pop_burst(&mut out).unwrap(), 1);
    assert_eq!(plane.read_data(&out[0]), b"fresh");
    assert!(out[0].flags.contains(DescFlags::VLAN));
    assert_eq!(out[0].vlan_tci, 42);

    let s = guest.stats();
    assert_eq!((s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes), (1, 17, 2, 12));
    assert_eq!((s.rx_invalid, s.free_ring_invalid, s.lost), (0, 0, 0));
    drop(guest);
    let log = proxy.finish();
    assert_eq!(log, ["Hello", "PoolAdd", "QueueStart", "QueueStop", "Goodbye"], "{log:?}");
}

#[test]
fn bad_descriptors_are_counted_and_dropped() {
    let proxy = FakeProxy::start("hostile");
    let mut guest = Guest::connect(&proxy.path, &small()).unwrap();
    let plane = proxy.plane();
    let mut rx = plane.rx();
    let a = plane.take_free();
    let b = plane.take_free();
    let c = plane.take_free();
    let (d1, d2) = (plane.take_free(), plane.take_free());
    let room = plane.pool.data_room();
    let chain = |off: u32, next: bool| Desc { flags: if next { DescFlags::NEXT } else { DescFlags::empty() }, ..desc(off, 128, 10) };
    let hostile = [
        desc(12, 0, 10),                         // the header page
        desc(a + 64, 0, 10),                     // inside a buffer
        desc(plane.pool.buffer_offset(64), 0, 1), // one past the last buffer
        desc(a, room - 9, 10),                   // data beyond the data room
        desc(a, 128, 60),                        // good
        desc(a, 128, 60),                        // the same buffer again, while held
        chain(d1, true),                         // a two-segment packet: dropped whole
        chain(d2, false),
        Desc { flags: DescFlags::from_bits_retain(0x8000), ..desc(b, 0, room) }, // unknown flag: ignored
    ];
    assert_eq!(rx.push_burst(&hostile).unwrap(), hostile.len());
    let mut got = Vec::new();
    assert_eq!(guest.recv_burst(&mut got, 32).unwrap(), 2);
    assert_eq!(got.iter().map(|p| (p.index(), p.len())).collect::<Vec<_>>(), [
        (plane.pool.buffer_index(a).unwrap(), 60),
        (plane.pool.buffer_index(b).unwrap(), room as usize)
    ]);
    let s = guest.stats();
    assert_eq!(s.rx_invalid, 5, "{s:?}");
    assert_eq!(s.rx_multiseg_dropped, 1);
    assert_eq!(s.rx_packets, 2);
    // The chain's buffers went back to the free ring; `c` is still with the "NIC".
    assert_eq!(plane.free_ring().count(), 64 - 5 + 2);
    drop(got);
    assert_eq!(plane.free_ring().count(), 64 - 1);

    // The proxy puts garbage and a held buffer into the free ring: never handed out.
    let pool = guest.pool();
    let held = pool.alloc().unwrap();
    let held_offset = plane.pool.buffer_offset(held.index());
    // Drain the free ring so that only the planted values are in it.
    let mut rest = Vec::new();
    while let Some(x) = pool.alloc() {
        rest.push(x);
    }
    plane.free_ring().enqueue_bulk(&[held_offset, 7, c], 16).unwrap();
    let got = pool.alloc().expect("the one good value");
    assert_eq!(plane.pool.buffer_offset(got.index()), c);
    assert!(pool.alloc().is_none());
    assert_eq!(guest.stats().free_ring_invalid, 2);

    // An impossible producer index: the queue stops for good.
    plane.mem().atomic_u32(plane.layout.rx_ring().offset as usize).unwrap().store(1 << 20, Ordering::Release);
    assert!(matches!(guest.recv(), Err(Error::RingCorrupt(_))));
    assert!(matches!(guest.recv(), Err(Error::Disconnected(_))));
    assert!(!guest.is_running());
    let e = guest.send(got).unwrap_err();
    assert!(matches!(e.error, Error::Disconnected(_)), "{e}");
}

#[test]
fn a_full_tx_ring_gives_the_buffer_back_and_stop_keeps_the_rx_ring_readable() {
    let mut proxy = FakeProxy::start("full");
    let mut guest = Guest::connect(&proxy.path, &Config { buffers: 128, ..small() }).unwrap();
    let plane = proxy.plane();
    let pool = guest.pool();
    let mut bufs: Vec<Buffer> = (0..70)
        .map(|i| {
            let mut b = pool.alloc().unwrap();
            b.copy_from(&[i as u8; 60]).unwrap();
            b
        })
        .collect();
    // The tx ring has 64 slots: the rest stays with the caller.
    assert_eq!(guest.send_burst(&mut bufs).unwrap(), 64);
    assert_eq!(bufs.len(), 6);
    assert_eq!(bufs[0][0], 64, "the first ones went");
    let e = guest.send(bufs.remove(0)).unwrap_err();
    assert!(matches!(e.error, Error::RingFull), "{e}");
    assert_eq!(e.buffer[0], 64, "the buffer comes back intact");
    assert_eq!(guest.stats().tx_ring_full, 2);
    // The proxy takes two: room for two more.
    let mut tx = plane.tx();
    let mut out = [Desc::default(); 2];
    assert_eq!(tx.pop_burst(&mut out).unwrap(), 2);
    assert_eq!(plane.read_data(&out[1]), [1u8; 60]);
    guest.send(e.buffer).unwrap();
    assert_eq!(guest.send_burst(&mut bufs).unwrap(), 1);
    assert_eq!(bufs.len(), 4);

    // A packet delivered before the stop is still received after it; sending is not.
    let offset = plane.take_free();
    plane.write_data(offset, 128, b"late");
    plane.rx().push_burst(&[desc(offset, 128, 4)]).unwrap();
    guest.stop().unwrap();
    assert!(!guest.is_running());
    let late = guest.recv().unwrap().expect("the packet delivered before the stop");
    assert_eq!(&late[..], b"late");
    let e = guest.send(late).unwrap_err();
    assert!(matches!(e.error, Error::NotRunning), "{e}");
    // Started again: rings from index 0 on both sides.
    guest.start().unwrap();
    assert!(guest.is_running());
    guest.send(e.buffer).unwrap();
    let mut tx = plane.tx();
    assert_eq!(tx.pop_burst(&mut out).unwrap(), 1);
    assert_eq!(plane.read_data(&out[0]), b"late");
    drop(bufs);
    drop(guest);
    assert!(proxy.finish().ends_with(&["QueueStop".to_string(), "QueueStart".into(), "QueueStop".into(), "Goodbye".into()]));
}

#[test]
fn a_proxy_goodbye_ends_the_guest() {
    let mut proxy = FakeProxy::start("goodbye");
    let mut guest = Guest::connect(&proxy.path, &small()).unwrap();
    let _plane = proxy.plane();
    guest.poll_control().unwrap();
    assert_eq!(guest.link(), (false, 0), "the fake proxy never writes the status block");
    proxy.goodbye();
    let mut err = None;
    // `goodbye` returns once the stand-in proxy has sent it and closed: it is queued.
    for _ in 0..100 {
        if let Err(e) = guest.poll_control() {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(Error::Disconnected(ref why)) if why.contains("goodbye")), "{err:?}");
    assert!(matches!(guest.recv(), Err(Error::Disconnected(_))));
    // Buffers outlive the connection harmlessly.
    let b = guest.pool().alloc();
    drop(guest);
    drop(b);
}

#[test]
fn refusals_and_bad_configurations_are_clear() {
    let missing = std::env::temp_dir().join("shm-guest-no-such-dir/sock");
    let e = Guest::connect(&missing, &small()).unwrap_err();
    assert!(e.to_string().contains("no socket at this path"), "{e}");
    let proxy = FakeProxy::start("toobig");
    // More buffers than the region asked for can hold.
    let cfg = Config { region_size: 1 << 20, buffers: 4096, ..small() };
    let e = Guest::connect(&proxy.path, &cfg).unwrap_err();
    assert!(matches!(e, Error::Config(ref m) if m.contains("do not fit")), "{e}");
    assert_eq!(app_name(&"x".repeat(40)).len(), MAX_APP_NAME);
    assert_eq!(app_name("a\0b"), "ab");
}

#[test]
fn buffers_dropped_and_allocated_on_other_threads_keep_the_pool_whole() {
    use std::sync::atomic::AtomicBool;
    let mut proxy = FakeProxy::start("threads");
    let mut guest = Guest::connect(&proxy.path, &Config { buffers: 256, ..small() }).unwrap();
    let plane = proxy.plane();
    let total = 100_000u64;
    let done = AtomicBool::new(false);
    let (to_dropper, dropper_rx) = mpsc::channel::<Buffer>();
    let pool = guest.pool();
    thread::scope(|sc| {
        // The proxy's data path: NIC rx into free buffers, tx buffers back to the free ring.
        sc.spawn(|| {
            let (mut rx, mut tx, free) = (plane.rx(), plane.tx(), plane.free_ring());
            let (mut published, mut pending) = (0u64, None);
            let mut out = [Desc::default(); 32];
            loop {
                if published < total {
                    if pending.is_none() {
                        let mut v = [0u32];
                        if free.dequeue_bulk(&mut v, 64).is_ok() {
                            assert!(plane.pool.buffer_index(v[0]).is_some(), "the guest put garbage in its free ring");
                            plane.write_data(v[0], 128, &published.to_le_bytes());
                            pending = Some(v[0]);
                        }
                    }
                    if let Some(off) = pending {
                        if rx.push_burst(&[desc(off, 128, 8)]).unwrap() == 1 {
                            pending = None;
                            published += 1;
                        }
                    }
                }
                let n = tx.pop_burst(&mut out).unwrap();
                for d in &out[..n] {
                    assert!(plane.pool.buffer_index(d.offset).is_some());
                    // A guest thread preempted between claiming a cell and filling it
                    // holds the ring up (the real proxy parks such buffers).
                    while free.enqueue_bulk(&[d.offset], 64).is_err() {
                        thread::yield_now();
                    }
                }
                if n == 0 && done.load(Ordering::Acquire) {
                    break;
                }
            }
        });
        sc.spawn(move || dropper_rx.into_iter().for_each(drop));
        sc.spawn(|| {
            while !done.load(Ordering::Acquire) {
                if let Some(mut b) = pool.alloc() {
                    b.copy_from(b"scratch").unwrap();
                }
            }
        });
        let mut burst = Vec::with_capacity(32);
        let mut next = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < total && Instant::now() < deadline {
            guest.recv_burst(&mut burst, 32).unwrap();
            for b in burst.drain(..) {
                assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), next, "in order, intact");
                next += 1;
                if b.index() % 2 == 0 {
                    to_dropper.send(b).unwrap();
                } else if let Err(e) = guest.send(b) {
                    drop(e.buffer);
                }
            }
        }
        drop(to_dropper);
        done.store(true, Ordering::Release);
    });
    let s = guest.stats();
    assert_eq!(s.rx_packets, total);
    assert_eq!((s.rx_invalid, s.free_ring_invalid, s.lost), (0, 0, 0), "{s:?}");
    // Every buffer is back: in the free ring, or parked by a drop that found the ring
    // held up (and returned by the next drop).
    assert_eq!(guest.pool().free(), 256, "{s:?}");
    let last = guest.pool().alloc();
    drop(last);
    assert_eq!(plane.free_ring().count(), 256, "the parked ones went back with the next drop");
    drop(guest);
    proxy.finish();
}

#[test]
fn a_chain_published_in_two_steps_is_read_whole() {
    let mut proxy = FakeProxy::start("chain");
    let mut guest = Guest::connect(&proxy.path, &small()).unwrap();
    let plane = proxy.plane();
    let mut rx = plane.rx();
    let (a, b, c) = (plane.take_free(), plane.take_free(), plane.take_free());
    // One packet and the first segment of a chain (a proxy publishing half a packet).
    rx.write(0, &desc(a, 128, 10));
    rx.write(1, &Desc { flags: DescFlags::NEXT, ..desc(b, 128, 10) });
    rx.publish(2);
    let first = guest.recv().unwrap().expect("the single packet");
    assert_eq!(plane.pool.buffer_offset(first.index()), a);
    // The guest's cached view now ends inside the chain; it must look again.
    assert!(guest.recv().unwrap().is_none(), "half a chain is not taken");
    rx.write(0, &desc(c, 128, 10));
    rx.publish(1);
    assert!(guest.recv().unwrap().is_none(), "a two-segment packet is dropped");
    let s = guest.stats();
    assert_eq!((s.rx_packets, s.rx_multiseg_dropped, s.rx_invalid), (1, 1, 0), "{s:?}");
    assert_eq!(plane.free_ring().count(), 64 - 1, "the chain's buffers are back");
    drop(first);
    drop(guest);
    proxy.finish();
}

fn sleepy() -> Config {
    Config { rx_wakeup: true, ..small() }
}

/// Waits (at most 10 s) until the guest, on another thread, is asleep: it has armed its
/// rx wake-up request. The flag is the guest's acknowledgement; no sleep guesses it.
/// Returns whether it was seen armed (the caller asserts it once the guest is woken).
fn until_asleep(flag: &AtomicU32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while flag.load(Ordering::Acquire) == 0 {
        if Instant::now() > deadline {
            return false;
        }
        thread::yield_now();
    }
    true
}

#[test]
fn wait_rx_sleeps_until_the_proxy_signals_and_every_start_sends_the_socket() {
    let mut proxy = FakeProxy::start("wait");
    let mut guest = Guest::connect(&proxy.path, &sleepy()).unwrap();
    let plane = proxy.plane();
    let waker = proxy.waker();
    let flag = plane.status().rx_wakeup_requested();
    assert!(guest.listen_fd().is_some());
    // One producer view for the queue's life: it starts from index 0.
    let mut rx = plane.rx();

    // Nothing comes: the wait times out, asleep, and leaves no request behind.
    let t = Instant::now();
    assert!(!guest.wait_rx(Some(Duration::from_millis(50))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(flag.load(Ordering::Relaxed), 0, "disarmed after the wait");
    assert_eq!((guest.stats().rx_sleeps, guest.stats().rx_wakeups), (1, 0));

    // A packet published while the guest sleeps wakes it.
    thread::scope(|sc| {
        let rx = &mut rx;
        sc.spawn(|| {
            // Until the guest is asleep (armed); then publish as the proxy does.
            assert!(until_asleep(flag), "the guest never armed its wake-up request");
            let off = plane.take_free();
            plane.write_data(off, 128, b"wake");
            assert!(plane.publish_and_wake(rx, desc(off, 128, 4), &waker), "the guest asked");
        });
        assert!(guest.wait_rx(Some(Duration::from_secs(10))).unwrap());
    });
    assert_eq!(&guest.recv().unwrap().expect("the packet")[..], b"wake");
    assert_eq!(guest.stats().rx_wakeups, 1);
    assert_eq!(flag.load(Ordering::Relaxed), 0);

    // Descriptors already there: no sleep, no request.
    let sleeps = guest.stats().rx_sleeps;
    let off = plane.take_free();
    rx.write(0, &desc(off, 128, 1));
    rx.publish(1);
    assert!(guest.wait_rx(None).unwrap());
    assert_eq!(guest.stats().rx_sleeps, sleeps);
    assert!(guest.arm_rx_wakeup().unwrap(), "nothing armed while there is work");
    assert_eq!(flag.load(Ordering::Relaxed), 0);
    drop(guest.recv().unwrap().expect("the packet"));

    // A stopped queue would never wake anyone; started again, a fresh socket goes along.
    guest.stop().unwrap();
    assert!(matches!(guest.wait_rx(None), Err(Error::NotRunning)));
    guest.start().unwrap();
    let waker = proxy.waker();
    let mut rx = plane.rx(); // both rings start from 0 again
    assert!(!guest.arm_rx_wakeup().unwrap(), "armed on the empty ring");
    let off = plane.take_free();
    assert!(plane.publish_and_wake(&mut rx, desc(off, 128, 2), &waker));
    assert_eq!(guest.disarm_rx_wakeup(), 1, "the wake-up arrived on the socket of the new start");
    assert!(guest.recv().unwrap().is_some());
    drop(guest);
    let log = proxy.finish();
    assert_eq!(log, ["Hello", "PoolAdd", "QueueStart", "QueueStop", "QueueStart", "QueueStop", "Goodbye"], "{log:?}");
}

#[test]
fn wait_rx_hybrid_returns_with_the_packet_whether_it_spins_or_sleeps() {
    let mut proxy = FakeProxy::start("hybrid");
    let mut guest = Guest::connect(&proxy.path, &sleepy()).unwrap();
    let plane = proxy.plane();
    let waker = proxy.waker();
    let flag = plane.status().rx_wakeup_requested();
    let mut rx = plane.rx();
    let mut spin = crate::AdaptiveSpin::default();

    // Nothing comes: spins its budget (none yet), sleeps, times out, disarmed.
    assert!(!guest.wait_rx_hybrid(&mut spin, Some(Duration::from_millis(30))).unwrap());
    assert_eq!((spin.caught_spinning(), spin.slept()), (0, 1));
    assert_eq!(spin.budget(), Duration::ZERO, "a long wait: no spinning next time");
    assert_eq!(flag.load(Ordering::Relaxed), 0);

    // A packet already there: caught at once, no sleep.
    let sleeps = guest.stats().rx_sleeps;
    let off = plane.take_free();
    rx.write(0, &desc(off, 128, 1));
    rx.publish(1);
    assert!(guest.wait_rx_hybrid(&mut spin, None).unwrap());
    assert_eq!(spin.caught_spinning(), 1);
    assert_eq!(guest.stats().rx_sleeps, sleeps);
    drop(guest.recv().unwrap().expect("the packet"));

    // Packets published from another thread, now and then: every wait ends with one,
    // by spinning or by a wake-up, and leaves no request behind.
    let rounds = 200u64;
    thread::scope(|sc| {
        let rx = &mut rx;
        sc.spawn(|| {
            let free = plane.free_ring();
            for i in 0..rounds {
                // Pacing (not a wait): some packets come while the guest spins, some
                // after it fell asleep.
                thread::sleep(Duration::from_micros(if i % 2 == 0 { 5 } else { 300 }));
                let mut v = [0u32];
                while free.dequeue_bulk(&mut v, 64).is_err() {
                    thread::yield_now();
                }
                plane.publish_and_wake(rx, desc(v[0], 128, 3), &waker);
            }
        });
        for _ in 0..rounds {
            assert!(guest.wait_rx_hybrid(&mut spin, Some(Duration::from_secs(10))).unwrap(), "timed out");
            drop(guest.recv().unwrap().expect("a packet after the wait"));
        }
    });
    assert_eq!(spin.caught_spinning() + spin.slept(), 2 + rounds);
    assert_eq!(flag.load(Ordering::Relaxed), 0);
    drop(guest);
    proxy.finish();
}

#[test]
fn no_wakeup_is_lost_when_packets_race_the_sleeps() {
    // The proxy publishes one packet at a time at irregular moments (often exactly
    // while the guest arms); each wait must end with the packet, never by timeout.
    let mut proxy = FakeProxy::start("race");
    let mut guest = Guest::connect(&proxy.path, &Config { buffers: 256, ..sleepy() }).unwrap();
    let plane = proxy.plane();
    let waker = proxy.waker();
    let total = 20_000u64;
    thread::scope(|sc| {
        sc.spawn(|| {
            let (mut rx, free) = (plane.rx(), plane.free_ring());
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..total {
                let mut v = [0u32];
                while free.dequeue_bulk(&mut v, 64).is_err() {
                    thread::yield_now();
                }
                plane.write_data(v[0], 128, &i.to_le_bytes());
                plane.publish_and_wake(&mut rx, desc(v[0], 128, 8), &waker);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                match rng % 8 {
                    // Random pacing (not a wait), so that wake-ups race the guest's arming.
                    0 => thread::sleep(Duration::from_micros(rng % 200)),
                    1 | 2 => thread::yield_now(),
                    _ => (0..rng % 2000).for_each(|_| std::hint::spin_loop()),
                }
            }
        });
        let mut next = 0u64;
        while next < total {
            match guest.recv().unwrap() {
                Some(b) => {
                    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), next);
                    next += 1;
                }
                None => assert!(
                    guest.wait_rx(Some(Duration::from_secs(10))).unwrap(),
                    "a lost wake-up: slept 10 s on a packet (after {next})"
                ),
            }
        }
    });
    let s = guest.stats();
    assert_eq!(s.rx_packets, total);
    assert!(s.rx_sleeps > 0 && s.rx_wakeups > 0, "{s:?}");
    eprintln!("{total} packets: {} sleeps, {} wake-ups", s.rx_sleeps, s.rx_wakeups);
    drop(guest);
    proxy.finish();
}

#[test]
fn a_sleeping_guest_wakes_when_the_proxy_leaves_and_wake_ups_are_opt_in() {
    let mut proxy = FakeProxy::start("sleep-bye");
    let mut guest = Guest::connect(&proxy.path, &sleepy()).unwrap();
    let plane = proxy.plane();
    let _waker = proxy.waker();
    let flag = plane.status().rx_wakeup_requested();
    let was_asleep = thread::scope(|sc| {
        let leave = sc.spawn(|| {
            // The proxy leaves once the guest is asleep.
            let asleep = until_asleep(flag);
            proxy.goodbye();
            asleep
        });
        let t = Instant::now();
        let e = guest.wait_rx(None).unwrap_err();
        assert!(matches!(e, Error::Disconnected(ref why) if why.contains("goodbye")), "{e}");
        assert!(t.elapsed() < Duration::from_secs(15));
        leave.join().unwrap()
    });
    assert!(was_asleep, "the proxy left before the guest was asleep");
    assert!(matches!(guest.wait_rx(None), Err(Error::Disconnected(_))));
    drop(guest);

    // Without Config::rx_wakeup: no socket, no flag in QueueStart, a clear error.
    let mut proxy = FakeProxy::start("no-wake");
    let mut guest = Guest::connect(&proxy.path, &small()).unwrap();
    assert!(guest.listen_fd().is_none());
    assert!(matches!(guest.wait_rx(None), Err(Error::Config(ref m)) if m.contains("rx_wakeup")));
    assert!(proxy.wakers.try_recv().is_err());
    drop(guest);
    proxy.finish();
}

#[cfg(feature = "tokio")]
#[test]
fn async_recv_sleeps_in_the_reactor_and_is_cancel_safe() {
    let mut proxy = FakeProxy::start("async");
    let guest = Guest::connect(&proxy.path, &Config { buffers: 256, ..sleepy() }).unwrap();
    let plane = proxy.plane();
    let waker = proxy.waker();
    let flag = plane.status().rx_wakeup_requested();
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().unwrap();
    let total = 2_000u64;
    let mut guest = rt.block_on(async { AsyncGuest::new(guest) }).unwrap();
    thread::scope(|sc| {
        sc.spawn(|| {
            let (mut rx, free) = (plane.rx(), plane.free_ring());
            for i in 0..total {
                let mut v = [0u32];
                while free.dequeue_bulk(&mut v, 64).is_err() {
                    thread::yield_now();
                }
                plane.write_data(v[0], 128, &i.to_le_bytes());
                plane.publish_and_wake(&mut rx, desc(v[0], 128, 8), &waker);
                if i % 4 == 0 {
                    // Pacing (not a wait): lets the receiver fall asleep now and then.
                    thread::sleep(Duration::from_micros(200));
                }
            }
        });
        rt.block_on(async {
            let mut next = 0u64;
            let mut burst = Vec::with_capacity(32);
            while next < total {
                let n = tokio::time::timeout(Duration::from_secs(10), guest.recv_burst(&mut burst, 32))
                    .await
                    .unwrap_or_else(|_| panic!("a lost wake-up after {next}"))
                    .unwrap();
                assert!(n > 0);
                for b in burst.drain(..) {
                    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), next);
                    next += 1;
                }
            }
        });
    });
    let s = guest.guest().stats();
    assert_eq!(s.rx_packets, total);
    assert!(s.rx_sleeps > 0 && s.rx_wakeups > 0, "{s:?}");
    eprintln!("async: {total} packets: {} sleeps, {} wake-ups", s.rx_sleeps, s.rx_wakeups);
    // A wait cancelled while armed takes its request back.
    rt.block_on(async {
        assert!(tokio::time::timeout(Duration::from_millis(30), guest.recv()).await.is_err());
    });
    assert_eq!(flag.load(Ordering::Relaxed), 0, "a cancelled wait disarms");
    // The proxy leaving ends a wait.
    let t = Instant::now();
    let (e, was_asleep) = thread::scope(|sc| {
        let leave = sc.spawn(|| {
            // The proxy leaves once the guest sleeps in the reactor.
            let asleep = until_asleep(flag);
            proxy.goodbye();
            asleep
        });
        (rt.block_on(guest.recv()).unwrap_err(), leave.join().unwrap())
    });
    assert!(matches!(e, Error::Disconnected(_)), "{e}");
    assert!(was_asleep, "the proxy left before the guest was asleep");
    assert!(t.elapsed() < Duration::from_secs(15));
    drop(guest.into_inner());
}

#[test]
fn a_server_running_as_another_user_than_expected_gets_nothing() {
    let mut proxy = FakeProxy::start("impostor");
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let err = Guest::connect(&proxy.path, &Config { proxy_uid: Some(me + 4242), ..small() }).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Client(ClientError::UntrustedServer(_))), "{text}");
    assert!(text.contains(&format!("server uid {me}")) && text.contains(&format!("expected uid {}", me + 4242)), "{text}");
    // The stand-in saw the connection close without a single message (no Hello).
    assert_eq!(proxy.finish(), Vec::<String>::new());
}
