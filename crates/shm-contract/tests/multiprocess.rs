//! Buffers circulating between real processes through a real sealed memfd.
//!
//! The test (the "guest") creates a region with one pool, then re-executes this
//! test binary twice: a "proxy" child and a "churn" child, each handed its end
//! of a `SOCK_SEQPACKET` socket pair on fd 100 and the memfd by `SCM_RIGHTS`
//! (`Welcome`, then `PoolAdd`/`PoolAck`, `QueueStart`/`QueueStarted`, ...).
//!
//! * the proxy dequeues buffers from the free ring, stamps them and produces
//!   them on the rx ring ("NIC rx"), and consumes the tx ring, checks the stamps
//!   and frees the buffers back ("NIC tx"); it tracks which buffers it holds and
//!   fails on any duplicate or foreign offset;
//! * the guest's "lcore" thread forwards rx to tx and also allocates fresh
//!   buffers for tx;
//! * a guest thread and the churn child allocate from and free to the free ring
//!   in random bulks.
//!
//! After a couple of seconds everything is stopped in order, and every buffer
//! must be back in the free ring exactly once. Every wait is bounded.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shm_contract::mem::{check_region_fd, create_region_memfd, Mapping};
use shm_contract::proto::transport::{recv_message, send_message, TransportError};
use shm_contract::proto::{Message, Welcome, PROTOCOL_VERSION};
use shm_contract::{
    Desc, DescConsumer, DescProducer, DescRing, FreeRing, FreeRingError, PoolAdd, PoolLayout,
    RegionFlags, RegionLayout, SharedMem,
};

const ROLE_ENV: &str = "SHM_CONTRACT_MP_ROLE";
const CHILD_SOCK_FD: i32 = 100;
const RUN_TIME: Duration = Duration::from_secs(2);
/// Bound on every phase; far above what a loaded 2-core machine needs.
const PHASE_LIMIT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));

const REGION_SIZE: u64 = 8 << 20;
const BUFFERS: u32 = 1000;
const RING_ENTRIES: u32 = 1024;
const STRIDE: u32 = 256;

// Test-only control words, in the first page of the heap, one cache line each.
const CTL_STOP_CHURN: usize = 0;
const CTL_PROXY_RX_STOPPED: usize = 64;
const CTL_GUEST_TX_DONE: usize = 128;
const CTL_SIZE: u32 = 4096;

struct Control<'a> {
    stop_churn: &'a AtomicU32,
    proxy_rx_stopped: &'a AtomicU32,
    guest_tx_done: &'a AtomicU32,
}

fn control<'a>(mem: &SharedMem<'a>, layout: &RegionLayout) -> Control<'a> {
    let base = layout.heap().offset as usize;
    Control {
        stop_churn: mem.atomic_u32(base + CTL_STOP_CHURN).unwrap(),
        proxy_rx_stopped: mem.atomic_u32(base + CTL_PROXY_RX_STOPPED).unwrap(),
        guest_tx_done: mem.atomic_u32(base + CTL_GUEST_TX_DONE).unwrap(),
    }
}

fn pool_add(layout: &RegionLayout) -> PoolAdd {
    let ring_offset = layout.heap().offset + CTL_SIZE;
    let ring_bytes = FreeRing::bytes_for(RING_ENTRIES) as u32;
    PoolAdd {
        pool_id: 0,
        ring_offset,
        ring_entries: RING_ENTRIES,
        first_mbuf_offset: (ring_offset + ring_bytes).next_multiple_of(64) + 64,
        stride: STRIDE,
        count: BUFFERS,
        mbuf_size: 128,
        data_room: 128,
    }
}

/// A tiny xorshift generator, so the test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % n + 1
    }
}

/// The first 8 bytes of a buffer's data room carry `offset << 32 | counter`,
/// written by whoever hands the buffer over and checked by the receiver (the
/// counter also travels in the descriptor's `rss_hash`).
fn stamp<'a>(mem: &SharedMem<'a>, pool: &PoolLayout, idx: u32) -> &'a AtomicU64 {
    mem.atomic_u64(pool.data_offset(idx) as usize).unwrap()
}

fn stamped_desc(mem: &SharedMem<'_>, pool: &PoolLayout, offset: u32, counter: &mut u32) -> Desc {
    let idx = pool.buffer_index(offset).expect("offset from the free ring is not a buffer");
    *counter = counter.wrapping_add(1);
    stamp(mem, pool, idx).store((offset as u64) << 32 | *counter as u64, Ordering::Relaxed);
    Desc {
        offset,
        data_off: 0,
        data_len: 60,
        rss_hash: *counter,
        ..Desc::default()
    }
}

/// Checks a received descriptor: a buffer of the pool with the right stamp.
fn check_desc(mem: &SharedMem<'_>, pool: &PoolLayout, d: &Desc) -> Result<u32, String> {
    let idx = pool
        .buffer_index(d.offset)
        .ok_or_else(|| format!("foreign offset {:#x}", d.offset))?;
    let got = stamp(mem, pool, idx).load(Ordering::Relaxed);
    let want = (d.offset as u64) << 32 | d.rss_hash as u64;
    if got != want {
        return Err(format!("buffer {idx}: stamp {got:#x}, expected {want:#x}"));
    }
    Ok(idx)
}

/// Allocates and frees random bulks until told to stop, then frees all it holds.
fn churn(free: FreeRing<'_>, pool: &PoolLayout, stop: &AtomicU32, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut held: Vec<u32> = Vec::new();
    let mut ops = 0u64;
    let deadline = Instant::now() + PHASE_LIMIT;
    while stop.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "churn never told to stop");
        let k = rng.upto(8) as usize;
        if held.len() >= k && (rng.next().is_multiple_of(2) || held.len() > 64) {
            let at = held.len() - k;
            if free.enqueue_bulk(&held[at..], 1000).is_ok() {
                held.truncate(at);
                ops += 1;
            }
        } else {
            let mut out = [0u32; 8];
            match free.dequeue_bulk(&mut out[..k], 1000) {
                Ok(()) => {
                    for &off in &out[..k] {
                        assert!(pool.buffer_index(off).is_some(), "churn got foreign offset {off:#x}");
                    }
                    held.extend_from_slice(&out[..k]);
                    ops += 1;
                }
                Err(FreeRingError::Empty) | Err(FreeRingError::Contended) => std::thread::yield_now(),
                Err(e) => panic!("churn dequeue: {e}"),
            }
        }
    }
    while !held.is_empty() {
        assert!(Instant::now() < deadline, "churn cannot give its buffers back");
        if free.enqueue_bulk(&held, 1000).is_ok() {
            held.clear();
        }
    }
    ops
}

/// The guest's data-path thread: forwards rx to tx, and sends fresh buffers
/// while `alloc` is set. Finishes once the proxy stopped rx and everything it
/// holds went out on tx. Returns (forwarded, allocated).
fn lcore(mem: SharedMem<'_>, layout: &RegionLayout, pool: &PoolLayout, alloc: &AtomicBool) -> (u64, u64) {
    let ctl = control(&mem, layout);
    let free = FreeRing::new(&mem, pool.ring_offset(), pool.ring_entries()).unwrap();
    let mut rx = DescConsumer::new(&mem, layout.rx_ring()).unwrap();
    let mut tx = DescProducer::new(&mem, layout.tx_ring()).unwrap();
    let mut pending: VecDeque<Desc> = VecDeque::new();
    let mut burst = [Desc::default(); 32];
    let mut rng = Rng(0x1234_5678);
    let (mut forwarded, mut allocated) = (0u64, 0u64);
    let mut counter = 0u32;
    let deadline = Instant::now() + RUN_TIME + PHASE_LIMIT;
    loop {
        assert!(Instant::now() < deadline, "lcore never finished");
        let n = rx.pop_burst(&mut burst).expect("rx ring corrupt");
        for d in &burst[..n] {
            check_desc(&mem, pool, d).unwrap_or_else(|e| panic!("guest rx: {e}"));
            pending.push_back(stamped_desc(&mem, pool, d.offset, &mut counter));
        }
        forwarded += n as u64;
        if alloc.load(Ordering::Relaxed) {
            let k = rng.upto(8) as usize;
            let mut out = [0u32; 8];
            if free.dequeue_bulk(&mut out[..k], 1000).is_ok() {
                for &off in &out[..k] {
                    pending.push_back(stamped_desc(&mem, pool, off, &mut counter));
                }
                allocated += k as u64;
            }
        }
        let pushed = tx.push_burst(pending.make_contiguous()).expect("tx ring corrupt");
        pending.drain(..pushed);
        if !alloc.load(Ordering::Relaxed)
            && ctl.proxy_rx_stopped.load(Ordering::Acquire) == 1
            && rx.available(1).expect("rx ring corrupt") == 0
            && pending.is_empty()
        {
            ctl.guest_tx_done.store(1, Ordering::Release);
            return (forwarded, allocated);
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
}

fn spawn_child(role: &str, sock: &OwnedFd) -> Child {
    let exe = std::env::current_exe().unwrap();
    let raw = sock.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "child_entry_point", "--nocapture", "--test-threads=1", "--quiet"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if raw == CHILD_SOCK_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CHILD_SOCK_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn wait_child(child: &mut Child, what: &str) {
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} child failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} child did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn expect(sock: BorrowedFd<'_>, want: &Message, id: u32) {
    let (msg, got_id, _) = recv_message(sock, IO_TIMEOUT).unwrap();
    assert_eq!((&msg, got_id), (want, id));
}

/// Hands a child the region: Welcome with the memfd, then the pool.
fn attach_child(sock: BorrowedFd<'_>, memfd: BorrowedFd<'_>, layout: &RegionLayout, pool: &PoolAdd) {
    let welcome = Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        flags: layout.flags(),
        region_size: layout.region_size(),
        page_size: layout.page_size(),
        port_id: 0,
        queue_id: 0,
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
        max_rx_frame: 1518,
        link_up: true,
        link_speed_mbps: 10_000,
        queue_pairs: 1,
    });
    send_message(sock, &welcome, 1, &[memfd]).unwrap();
    send_message(sock, &Message::PoolAdd(*pool), 2, &[]).unwrap();
    expect(sock, &Message::PoolAck { pool_id: pool.pool_id }, 2);
}

#[test]
fn buffers_circulate_between_processes_without_loss_or_duplication() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return;
    }
    let (memfd, backing) = create_region_memfd("shm-contract-mp", REGION_SIZE, false).unwrap();
    let map = Mapping::map(memfd.as_fd(), backing.size as usize).unwrap();
    let mem = map.mem();
    let layout = RegionLayout::new(backing.size, backing.page_size, 256, 256, RegionFlags::empty()).unwrap();
    layout.write_header(&mem).unwrap();
    DescRing::init(&mem, layout.rx_ring()).unwrap();
    DescRing::init(&mem, layout.tx_ring()).unwrap();
    let add = pool_add(&layout);
    let pool = add.validate(&layout, &[]).unwrap();
    let free = FreeRing::init(&mem, pool.ring_offset(), pool.ring_entries()).unwrap();
    let all: Vec<u32> = (0..BUFFERS).map(|i| pool.buffer_offset(i)).collect();
    free.enqueue_bulk(&all, 0).unwrap();
    let ctl = control(&mem, &layout);

    let (proxy_sock, proxy_child_sock) = socket_pair();
    let (churn_sock, churn_child_sock) = socket_pair();
    let mut proxy = spawn_child("proxy", &proxy_child_sock);
    let mut churner = spawn_child("churn", &churn_child_sock);
    drop((proxy_child_sock, churn_child_sock));
    attach_child(proxy_sock.as_fd(), memfd.as_fd(), &layout, &add);
    attach_child(churn_sock.as_fd(), memfd.as_fd(), &layout, &add);
    send_message(proxy_sock.as_fd(), &Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue: 0 }, 3, &[]).unwrap();
    expect(proxy_sock.as_fd(), &Message::QueueStarted, 3);

    let alloc = AtomicBool::new(true);
    let (forwarded, allocated, churned) = std::thread::scope(|s| {
        let lcore = s.spawn(|| lcore(mem, &layout, &pool, &alloc));
        let churner_thread = s.spawn(|| churn(free, &pool, ctl.stop_churn, 0xdead_beef_cafe));
        std::thread::sleep(RUN_TIME);
        // Stop in order: churners give everything back, the lcore stops
        // allocating, the proxy stops rx and drains, the lcore drains.
        ctl.stop_churn.store(1, Ordering::Release);
        let churned = churner_thread.join().unwrap();
        wait_child(&mut churner, "churn");
        alloc.store(false, Ordering::Relaxed);
        send_message(proxy_sock.as_fd(), &Message::QueueStop { queue: 0 }, 4, &[]).unwrap();
        expect(proxy_sock.as_fd(), &Message::QueueStopped, 4);
        let (forwarded, allocated) = lcore.join().unwrap();
        (forwarded, allocated, churned)
    });
    send_message(proxy_sock.as_fd(), &Message::Goodbye, 5, &[]).unwrap();
    wait_child(&mut proxy, "proxy");
    eprintln!("forwarded {forwarded} rx buffers, sent {allocated} fresh ones, {churned} churn operations");
    assert!(forwarded > 0 && allocated > 0 && churned > 0, "nothing moved");

    assert_eq!(free.count(), BUFFERS, "buffers missing from the free ring");
    let mut back = vec![0u32; BUFFERS as usize];
    free.dequeue_bulk(&mut back, 0).unwrap();
    assert_eq!(free.dequeue_bulk(&mut [0], 0), Err(FreeRingError::Empty));
    back.sort_unstable();
    assert_eq!(back, all, "a buffer was lost or duplicated");
}

/// Entry point of the re-executed children; does nothing in a normal run.
#[test]
fn child_entry_point() {
    let Some(role) = std::env::var_os(ROLE_ENV) else {
        return;
    };
    // SAFETY: the parent put our end of the socket pair on this descriptor and
    // nothing else in this process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(CHILD_SOCK_FD) };
    let (msg, _, mut fds) = recv_message(sock.as_fd(), IO_TIMEOUT).unwrap();
    let Message::Welcome(welcome) = msg else {
        panic!("expected Welcome, got {msg:?}")
    };
    assert_eq!(fds.len(), 1, "Welcome must carry the memfd");
    let memfd = fds.remove(0);
    check_region_fd(memfd.as_fd(), welcome.region_size).unwrap();
    let map = Mapping::map(memfd.as_fd(), welcome.region_size as usize).unwrap();
    let mem = map.mem();
    let layout = RegionLayout::read_header(&mem).unwrap();
    let (msg, id, _) = recv_message(sock.as_fd(), IO_TIMEOUT).unwrap();
    let Message::PoolAdd(add) = msg else {
        panic!("expected PoolAdd, got {msg:?}")
    };
    let pool = add.validate(&layout, &[]).unwrap();
    send_message(sock.as_fd(), &Message::PoolAck { pool_id: add.pool_id }, id, &[]).unwrap();
    match role.to_str() {
        Some("churn") => {
            let free = FreeRing::new(&mem, pool.ring_offset(), pool.ring_entries()).unwrap();
            churn(free, &pool, control(&mem, &layout).stop_churn, std::process::id() as u64 | 1 << 40);
        }
        Some("proxy") => proxy(sock.as_fd(), mem, &layout, &pool),
        other => panic!("unknown role {other:?}"),
    }
}

/// The proxy's side: NIC rx from the free ring to the rx ring, NIC tx from the
/// tx ring back to the free ring, validating everything that comes from the
/// guest and failing on any duplicate or foreign buffer.
fn proxy(sock: BorrowedFd<'_>, mem: SharedMem<'_>, layout: &RegionLayout, pool: &PoolLayout) {
    let (msg, id, _) = recv_message(sock, IO_TIMEOUT).unwrap();
    assert_eq!(msg, Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue: 0 });
    let ctl = control(&mem, layout);
    let free = FreeRing::new(&mem, pool.ring_offset(), pool.ring_entries()).unwrap();
    let mut rx = DescProducer::new(&mem, layout.rx_ring()).unwrap();
    let mut tx = DescConsumer::new(&mem, layout.tx_ring()).unwrap();
    send_message(sock, &Message::QueueStarted, id, &[]).unwrap();

    let mut held = vec![false; pool.count() as usize];
    let mut to_free: Vec<u32> = Vec::new();
    let mut rng = Rng(0x5555_aaaa_1234);
    let mut counter = 0u32;
    let mut running = true;
    let mut stop_id = 0;
    let deadline = Instant::now() + RUN_TIME + PHASE_LIMIT;
    let mut bufs = [0u32; 32];
    let mut descs = [Desc::default(); 32];
    let (mut rx_count, mut tx_count) = (0u64, 0u64);
    for iteration in 0u64.. {
        assert!(Instant::now() < deadline, "proxy never stopped");
        if running {
            let room = rx.free_slots(32).expect("rx ring corrupt").min(32);
            let k = (rng.upto(32) as u32).min(room) as usize;
            // Bounded retries: a guest can never make the proxy spin.
            if k > 0 && free.dequeue_bulk(&mut bufs[..k], 8).is_ok() {
                for (i, &off) in bufs[..k].iter().enumerate() {
                    let idx = pool.buffer_index(off).unwrap_or_else(|| panic!("foreign offset {off:#x} in free ring"));
                    assert!(!held[idx as usize], "buffer {idx} dequeued twice");
                    rx.write(i as u32, &stamped_desc(&mem, pool, off, &mut counter));
                }
                rx.publish(k as u32);
                rx_count += k as u64;
            }
        }
        let n = tx.pop_burst(&mut descs).expect("tx ring corrupt");
        for d in &descs[..n] {
            let idx = check_desc(&mem, pool, d).unwrap_or_else(|e| panic!("proxy tx: {e}"));
            assert!(!held[idx as usize], "buffer {idx} sent twice");
            held[idx as usize] = true;
            to_free.push(d.offset);
        }
        tx_count += n as u64;
        if !to_free.is_empty() && free.enqueue_bulk(&to_free, 8).is_ok() {
            for &off in &to_free {
                if let Some(idx) = pool.buffer_index(off) {
                    held[idx as usize] = false;
                }
            }
            to_free.clear();
        }
        if running && iteration % 64 == 0 {
            match recv_message(sock, Some(Duration::ZERO)) {
                Ok((Message::QueueStop { .. }, id, _)) => {
                    running = false;
                    stop_id = id;
                    ctl.proxy_rx_stopped.store(1, Ordering::Release);
                }
                Ok((other, _, _)) => panic!("unexpected {other:?}"),
                Err(TransportError::Timeout) => {}
                Err(e) => panic!("control socket: {e}"),
            }
        }
        if !running
            && ctl.guest_tx_done.load(Ordering::Acquire) == 1
            && rx.free_slots(rx.entries()).expect("rx ring corrupt") == rx.entries()
            && tx.available(1).expect("tx ring corrupt") == 0
            && to_free.is_empty()
        {
            break;
        }
        if n == 0 {
            std::thread::yield_now();
        }
    }
    assert!(held.iter().all(|&h| !h), "proxy still holds buffers");
    eprintln!("proxy: {rx_count} rx, {tx_count} tx");
    send_message(sock, &Message::QueueStopped, stop_id, &[]).unwrap();
    let (msg, _, _) = recv_message(sock, IO_TIMEOUT).unwrap();
    assert_eq!(msg, Message::Goodbye);
}
