//! Buffer lifetime: a guest's pool (its shadow mempool) and region outlive every buffer
//! of it that the NIC holds (docs/threat-model.md, R5/R7; proxy-app/src/quarantine.rs).
//!
//! The NIC is `net_ring0`, DPDK's ring PMD: with no arguments its tx queue q enqueues
//! the mbufs on a ring that its rx queue q reads, so what the proxy sends comes back on
//! the same queue, and until the proxy reads it the ring *holds* the sent buffers (as a
//! physical NIC holds them until it completes the transmit). The proxy reads a guest's
//! NIC queue only while the guest's rx ring has room: a guest that sends more than its
//! rx ring takes leaves the rest in the NIC. The guests are the protocol-level client of
//! `e2e_tests::hostile` (honest here), which shows every answer of the proxy.
//!
//! Run one at a time (`--test-threads=1`).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::hostile::{hello, Attached};
use e2e_tests::*;
use shm_contract::mpmc::FreeRing;
use shm_contract::proto::transport::{recv_message, send_message, TransportError};
use shm_contract::{Desc, Message, PoolAdd};

/// The proxy with one `net_ring0` port serving queue 0 on `sock`, ready.
fn ring_proxy(s: &Scratch, sock: &Path) -> Proc {
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_ring0".into()],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            ..Default::default()
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    proxy
}

/// The guests' region (room for two pools of 2304-byte buffers) and ring sizes.
const REGION: u64 = 32 << 20;
const RING: u32 = 256;

/// A guest with one pool of 1024 buffers, all of them its own (the ring PMD never takes
/// rx buffers), its queue started.
fn ready(sock: &Path) -> Result<Attached, String> {
    let mut g = Attached::attach(sock, &hello(REGION, RING))?;
    g.add_pool(1024, 1024)?;
    g.start()?;
    Ok(g)
}

/// `show stats`: the socket's counters and those of the last line (`mempools=`...).
fn stats(proxy: &mut Proc, sock: &Path) -> (HashMap<String, String>, HashMap<String, String>) {
    let before = proxy.out.text().matches("mempools=").count();
    proxy.send("show stats");
    proxy
        .out
        .wait_for("a stats answer", Duration::from_secs(10), |t| t.matches("mempools=").count() > before)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    let text = proxy.out.text();
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with("unclaimed="))
        .map(|l| l.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
        .unwrap_or_else(|| panic!("no 'unclaimed=' line\n{text}"));
    (proxy_socket_stats(&text, sock), last)
}

/// A counter that must be there.
fn must(kv: &HashMap<String, String>, key: &str) -> u64 {
    kv.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no counter '{key}' in {kv:?}"))
}

/// Valid one-segment descriptors for `offsets`.
fn packets(offsets: &[u32]) -> Vec<Desc> {
    offsets.iter().map(|&offset| Desc { offset, data_off: 128, data_len: 60, ..Desc::default() }).collect()
}

/// Waits until the socket's `key` reaches `want`.
fn wait_counter(proxy: &mut Proc, sock: &Path, key: &str, want: u64) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = stats(proxy, sock);
        if must(&st, key) >= want {
            return st;
        }
        assert!(Instant::now() < deadline, "{key} stayed below {want}: {st:?}\n{}", proxy.out.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Announces a second pool (id 1) of `count` buffers behind pool 0, all kept by the
/// guest (its free ring empty); returns the buffers' offsets.
fn add_second_pool(g: &mut Attached, count: u32) -> Vec<u32> {
    let p0 = g.pool.expect("pool 0 first");
    let end0 = p0.buffer_offset(p0.count() - 1) + 2304;
    let ring_offset = end0.next_multiple_of(4096);
    let ring_entries = count.next_power_of_two();
    let add = PoolAdd {
        pool_id: 1,
        ring_offset,
        ring_entries,
        first_mbuf_offset: ring_offset + (FreeRing::bytes_for(ring_entries) as u32).next_multiple_of(4096),
        stride: 2304,
        count,
        mbuf_size: 128,
        data_room: 2176,
    };
    let layout = add.validate(&g.layout, &[p0]).expect("a valid second pool");
    FreeRing::init(&g.mem(), ring_offset, ring_entries).expect("free ring");
    match g.request(&Message::PoolAdd(add)) {
        Ok(Message::PoolAck { pool_id: 1 }) => {}
        other => panic!("PoolAdd of pool 1 answered {other:?}"),
    }
    (0..count).map(|i| layout.buffer_offset(i)).collect()
}

/// The next answer on the guest's socket within `timeout` (link news skipped).
fn next_answer(g: &Attached, timeout: Duration) -> Option<(Message, u32)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv_message(g.sock.as_fd(), Some(left)) {
            Ok((Message::LinkStatus { .. }, _, _)) => continue,
            Ok((m, id, _)) => return Some((m, id)),
            Err(TransportError::Timeout) => return None,
            Err(e) => panic!("the proxy closed the connection: {e}"),
        }
    }
}

/// Sends 400 packets of pool 1 on a guest whose rx ring (256) it never empties: about
/// 250 come back into the rx ring (copied into pool 0), the rest stay in the NIC.
fn leave_pool1_buffers_in_the_nic(proxy: &mut Proc, sock: &Path, g: &mut Attached, pool1: &[u32]) {
    let sent = g.push_tx(&packets(&pool1[..400]), Duration::from_secs(5));
    assert_eq!(sent, 400);
    wait_counter(proxy, sock, "tx_packets", 400);
    // The loop stops reading the NIC once the rx ring is full.
    std::thread::sleep(Duration::from_millis(300));
}

/// A guest leaves while the NIC holds buffers it sent: its pools and region are
/// quarantined, the buffers come back into them (never into a newer pool), the quarantine
/// is released, and the next guest on the socket sees nothing of it.
/// What [`pool1_in_the_nic`] set up.
struct PoolInNic {
    proxy: Proc,
    g: Attached,
    /// Pool 1's buffers (offsets).
    pool1: Vec<u32>,
    /// The proxy's mempools before the guest came.
    baseline: u64,
}

/// A guest of a `net_ring` proxy on `sock` with two pools: pool 0 feeds rx (all its
/// buffers in the free ring: received packets are copied into it); pool 1's buffers are
/// the guest's, to send, and the NIC now holds some of them
/// ([`leave_pool1_buffers_in_the_nic`]).
fn pool1_in_the_nic(s: &Scratch, sock: &Path) -> PoolInNic {
    let mut proxy = ring_proxy(s, sock);
    let baseline = must(&stats(&mut proxy, sock).1, "mempools");
    let mut g = Attached::attach(sock, &hello(REGION, RING)).expect("attach");
    g.add_pool(1024, 0).expect("pool 0");
    let pool1 = add_second_pool(&mut g, 512);
    g.start().expect("queue start");
    leave_pool1_buffers_in_the_nic(&mut proxy, sock, &mut g, &pool1);
    PoolInNic { proxy, g, pool1, baseline }
}

#[test]
fn a_guest_that_leaves_with_buffers_in_the_nic_is_quarantined_until_they_come_back() {
    let s = Scratch::new("lifetime_leave");
    let sock = s.path("ring.sock");
    let mut proxy = ring_proxy(&s, &sock);
    let (_, last) = stats(&mut proxy, &sock);
    let baseline = must(&last, "mempools");
    assert_eq!(must(&last, "quarantined"), 0);

    // Guest A keeps all 1024 buffers of its pool (the ring PMD never takes rx buffers).
    let mut a = ready(&sock).expect("guest A");
    let to_send = packets(&a.owned.split_off(1024 - 600));
    let sent = a.push_tx(&to_send, Duration::from_secs(5));
    assert_eq!(sent, 600);
    let st = wait_counter(&mut proxy, &sock, "tx_packets", 600);
    std::thread::sleep(Duration::from_millis(300));
    let (st_a, _) = stats(&mut proxy, &sock);
    let delivered = must(&st_a, "rx_packets");
    assert!(delivered < 300, "the rx ring of 256 took {delivered} packets: {st:?}");
    let held = 600 - delivered - must(&st_a, "rx_dropped");
    assert!(held >= 300, "the NIC holds {held} buffers: {st_a:?}");
    let unclaimed_before = must(&stats(&mut proxy, &sock).1, "unclaimed");

    // A leaves without a word.
    drop(a);
    let quarantined = format!("guest 'hostile' left {held} buffers in port 0 queue 0");
    wait_or_dump(&proxy, &quarantined, 10);
    // The loop drains the queue that has no guest any more: the ring gives the buffers
    // back, into A's retired pool, and the quarantine ends.
    wait_or_dump(&proxy, "quarantine released: the NIC gave back the last buffers of guest 'hostile'", 10);
    let (_, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&last, "unclaimed") - unclaimed_before, held, "every held buffer came back through the NIC");
    assert_eq!(must(&last, "quarantined"), 0);
    assert_eq!(must(&last, "quarantined_in_nic"), 0);
    assert_eq!(must(&last, "mempools"), baseline, "A's shadow mempool is freed once its buffers are back");

    // Guest B, same socket, same pool id, same buffer offsets: only its own packets.
    let mut b = ready(&sock).expect("guest B");
    let before = stats(&mut proxy, &sock).0;
    let to_send = packets(&b.owned.split_off(1024 - 100));
    let sent = b.push_tx(&to_send, Duration::from_secs(5));
    assert_eq!(sent, 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while got < 100 && Instant::now() < deadline {
        got += b.drain_rx();
        std::thread::sleep(Duration::from_millis(10));
    }
    let (st_b, _) = stats(&mut proxy, &sock);
    assert_eq!(got, 100, "B gets back exactly its own 100 packets: {st_b:?}");
    for key in ["rx_dropped", "invalid", "copies", "tx_dropped"] {
        assert_eq!(must(&st_b, key), must(&before, key), "B's {key} moved: {st_b:?}");
    }
    assert_eq!(must(&st_b, "rx_packets") - must(&before, "rx_packets"), 100);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, last) = stats(&mut proxy, &sock);
        if must(&last, "mempools") == baseline {
            assert_eq!(must(&last, "quarantined"), 0, "B left nothing in the NIC");
            break;
        }
        assert!(Instant::now() < deadline, "mempools stayed above {baseline}: {last:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = proxy.out.text();
    assert_eq!(text.matches("quarantine released").count(), 1, "{text}");
}

/// A guest deletes a pool while the NIC holds buffers of it: the answer waits until the
/// NIC gave them back, and comes then.
#[test]
fn a_pool_delete_is_answered_once_the_nic_gave_its_buffers_back() {
    let s = Scratch::new("lifetime_pool_del");
    let sock = s.path("ring.sock");
    let PoolInNic { mut proxy, mut g, pool1, baseline } = pool1_in_the_nic(&s, &sock);
    let (st, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&last, "mempools"), baseline + 2);
    let delivered = must(&st, "rx_packets");
    assert!(delivered < 300 && must(&st, "copies") == delivered, "{st:?}");

    let request = 77;
    send_message(g.sock.as_fd(), &Message::PoolDel { pool_id: 1 }, request, &[]).unwrap();
    wait_or_dump(&proxy, "pool 1: the NIC still holds", 5);
    // Nothing comes back while the guest's rx ring stays full: no answer.
    assert!(next_answer(&g, Duration::from_millis(1500)).is_none(), "PoolDel answered with buffers in the NIC");
    let (_, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&last, "deleting"), 1);
    let in_nic = must(&last, "quarantined_in_nic");
    assert_eq!(in_nic, 400 - delivered - must(&st, "rx_dropped"), "{last:?}");

    // The guest takes its rx ring: the proxy reads the NIC again, and pool 1's buffers
    // come back (their packets copied into pool 0).
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        g.drain_rx();
        if let Some(a) = next_answer(&g, Duration::from_millis(20)) {
            break a;
        }
        assert!(Instant::now() < deadline, "no answer to PoolDel after the NIC gave back\n{}", proxy.out.text());
    };
    match answer {
        (Message::PoolAck { pool_id: 1 }, id) => assert_eq!(id, request),
        other => panic!("PoolDel answered {other:?}"),
    }
    wait_or_dump(&proxy, "pool 1: the NIC gave back its last buffers after", 5);
    let (st, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&st, "rx_packets"), 400, "every packet reached the guest: {st:?}");
    assert_eq!(must(&st, "invalid"), 0);
    assert_eq!(must(&last, "deleting"), 0);
    assert_eq!(must(&last, "mempools"), baseline + 1, "pool 1's shadow mempool is freed");
    // The id is the guest's again.
    let again = add_second_pool(&mut g, 512);
    assert_eq!(again, pool1);
    drop(g);
    let deadline = Instant::now() + Duration::from_secs(10);
    while must(&stats(&mut proxy, &sock).1, "mempools") != baseline {
        assert!(Instant::now() < deadline, "mempools stayed above {baseline}\n{}", proxy.out.text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pool delete whose buffers the NIC keeps (here: the guest stopped its queue, so
/// nothing reads the ring) is refused after a bound, within the guests' request timeout;
/// the pool stays quarantined and is freed when the buffers come back later.
#[test]
fn a_pool_delete_whose_buffers_stay_in_the_nic_is_refused_after_a_bound_and_freed_later() {
    let s = Scratch::new("lifetime_pool_del_late");
    let sock = s.path("ring.sock");
    let PoolInNic { mut proxy, mut g, baseline, .. } = pool1_in_the_nic(&s, &sock);
    match g.request(&Message::QueueStop { queue: 0 }) {
        Ok(Message::QueueStopped) => {}
        other => panic!("QueueStop answered {other:?}"),
    }
    let asked = Instant::now();
    send_message(g.sock.as_fd(), &Message::PoolDel { pool_id: 1 }, 91, &[]).unwrap();
    let (answer, id) = next_answer(&g, Duration::from_secs(6)).expect("an answer within the guests' 5 s timeout");
    let waited = asked.elapsed();
    assert_eq!(id, 91);
    match answer {
        Message::Refuse { reason, .. } => assert!(reason.contains("the NIC still holds"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(5), "answered after {waited:?}");
    let (_, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&last, "mempools"), baseline + 2, "the pool stays until its buffers are back");
    assert!(must(&last, "quarantined_in_nic") > 0);

    // The queue runs again: the ring is read, the buffers come back, the pool goes,
    // with no second answer.
    g.start().expect("queue start");
    wait_or_dump(&proxy, "pool 1: the NIC gave back its last buffers after", 10);
    assert!(next_answer(&g, Duration::from_millis(300)).is_none(), "a second answer to one PoolDel");
    let (st, last) = stats(&mut proxy, &sock);
    assert_eq!(must(&last, "mempools"), baseline + 1);
    assert_eq!(must(&last, "deleting"), 0);
    assert_eq!(must(&st, "invalid"), 0);
}
