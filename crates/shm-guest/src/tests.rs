//! The guest against a stand-in proxy: a thread that speaks the control protocol with
//! the contract crate's own code, and a test body that plays the proxy's data path on
//! the same region — including a proxy that writes garbage. (The real proxy is in
//! `tests/tests/rust_guest.rs`.)

use super::*;
use shm_contract::layout::RegionLayout;
use shm_contract::mem::create_region_memfd;
use shm_contract::mpmc::FreeRing;
use shm_contract::proto::transport::{recv_message, send_message};
use shm_contract::{DescRing, PoolLayout};
use std::os::fd::AsFd;
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
        let (goodbye_tx, goodbye_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || serve(listener, plane_tx, log_tx, goodbye_rx));
        FakeProxy { path, plane, log, goodbye_tx, thread: Some(thread) }
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

fn serve(listener: OwnedFd, plane: mpsc::Sender<Plane>, log: mpsc::Sender<String>, goodbye: mpsc::Receiver<()>) {
    // SAFETY: accept on our listening socket; the new fd is owned right away.
    let conn = unsafe { OwnedFd::from_raw_fd(libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)) };
    let mut region: Option<(Arc<Mapping>, RegionLayout)> = None;
    loop {
        if goodbye.try_recv().is_ok() {
            let _ = send_message(conn.as_fd(), &Message::Goodbye, 0, &[]);
            return;
        }
        let (msg, id, _) = match recv_message(conn.as_fd(), Some(Duration::from_millis(20))) {
            Ok(m) => m,
            Err(TransportError::Timeout) => continue,
            Err(_) => return,
        };
        let _ = log.send(format!("{}", msg.kind()));
        let answer = match msg {
            Message::Hello(h) => {
                let (fd, backing) = create_region_memfd("fake-proxy", h.region_size, false).unwrap();
                let entries = |n: u32| if n == 0 { 1024 } else { n };
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
            Message::QueueStart { .. } => {
                let (mapping, layout) = region.clone().unwrap();
                DescRing::init(&mapping.mem(), layout.rx_ring()).unwrap();
                DescRing::init(&mapping.mem(), layout.tx_ring()).unwrap();
                Message::QueueStarted
            }
            Message::QueueStop => Message::QueueStopped,
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
    for _ in 0..100 {
        if let Err(e) = guest.poll_control() {
            err = Some(e);
            break;
        }
        thread::sleep(Duration::from_millis(10));
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
