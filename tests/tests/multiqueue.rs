//! One `sock:` device with several queue pairs (issue 17 item 5): the proxy serves two
//! NIC queues of a net_null port on one socket (`queues 0,1`), unmodified testpmd
//! configures two rx and two tx queues on it and forwards with two lcores, one per
//! queue. Both queues carry traffic, seen in the proxy's per-pair counters and in the
//! guest's per-queue xstats, each looked up by name.
//!
//! Run one at a time (`--test-threads=1`): the proxy and the guest share the machine's
//! two CPUs.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_tests::*;

/// A proxy on a `net_null` port that serves `sock` with the port's NIC queues `queues`
/// (`"0,1"`: pair 0 is NIC queue 0, pair 1 NIC queue 1), once it is ready.
fn null_proxy_on_queues(s: &Scratch, sock: &Path, queues: &str) -> Proc {
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![format!("socket {} port 0 queues {queues}", sock.display())],
            extra: vec![],
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    proxy
}

/// testpmd with a main lcore and `forwarding` more, all on the guest's CPU (they share
/// it: the point is two forwarding threads on two queues, not speed).
fn testpmd_lcores(scratch: &Scratch, socket: &Path, name: &str, forwarding: usize, args: &[&str]) -> Proc {
    let (_, cpu) = cpus();
    let lcores: Vec<String> = (0..=forwarding).map(|l| format!("{l}@{cpu}")).collect();
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", TESTPMD]);
    cmd.args(["--lcores", &lcores.join(","), "--no-huge", "-m", "64", "--no-pci"]);
    cmd.args(["--file-prefix", &scratch.prefix(name)]);
    cmd.args(plugin_args());
    cmd.args(["-a", &format!("sock:{}", socket.display())]);
    cmd.arg("--");
    cmd.args(args);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    cmd.current_dir(&scratch.dir);
    Proc::spawn(name, cmd)
}

/// The last `key=value` line of the proxy's output that starts with `first`.
fn last_line(out: &str, first: &str) -> HashMap<String, String> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with(first))
        .unwrap_or_else(|| panic!("no line starting with '{first}' in the proxy's output:\n{out}"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A counter that must be there.
fn must(stats: &HashMap<String, String>, key: &str) -> u64 {
    stats
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {key} in {stats:?}"))
}

/// An xstat of testpmd's `show port xstats` output that must be there.
fn xstat(out: &str, name: &str) -> u64 {
    let key = format!("{name}: ");
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no xstat {name} in the guest's output:\n{out}"))
}

/// Lets testpmd `g` forward for `time`, prints its xstats and stops its port, waits
/// until the proxy saw both queue pairs of `sock` stop and printed its (then final)
/// counters, and ends testpmd: its exit code and output, and the proxy's output.
fn forward_then_stop_both_pairs(mut g: Proc, proxy: &mut Proc, sock: &Path, time: Duration) -> (Option<i32>, String, String) {
    g.send("start");
    std::thread::sleep(time);
    g.send("stop");
    g.send("show port xstats 0");
    g.send("port stop 0");
    wait_or_dump(&g, "tx_copied_packets", 20);
    wait_until_or_dump(proxy, "both pairs stopped", 20, |t| t.matches("queue stopped (pair").count() >= 2);
    // The guest's port is stopped: the proxy's counters are final.
    proxy.send("show stats");
    wait_until_or_dump(proxy, "stats", 10, |t| t.lines().any(|l| l.starts_with(&format!("socket={} ", sock.display()))));
    g.send("quit");
    let (code, gout) = g.wait(Duration::from_secs(20));
    (code, gout, proxy.out.text())
}

#[test]
fn testpmd_forwards_on_two_queue_pairs_of_one_socket_with_two_lcores() {
    let s = Scratch::new("mq");
    let sock = s.path("mq/sock");
    let mut proxy = null_proxy_on_queues(&s, &sock, "0,1");
    let mut g = testpmd_lcores(
        &s,
        &sock,
        "mq",
        2,
        &["-i", "--forward-mode=macswap", "--rxq=2", "--txq=2", "--nb-cores=2", "--total-num-mbufs=16384"],
    );
    wait_or_dump(&g, "Checking link statuses", 30);
    // testpmd starts the port at launch: one QueueStart per pair.
    wait_until_or_dump(&proxy, "both pairs started", 30, |t| t.matches("queue started (pair").count() >= 2);
    let attach = proxy.out.text();
    assert!(attach.contains("queue started (pair 0: port 0 queue 0)"), "{attach}");
    assert!(attach.contains("queue started (pair 1: port 0 queue 1)"), "{attach}");
    g.send("show config fwd");
    let (_, gout, out) = forward_then_stop_both_pairs(g, &mut proxy, &sock, Duration::from_secs(5));
    let pairs: Vec<HashMap<String, String>> =
        (0..2).map(|k| last_line(&out, &format!("pair={k} of={} ", sock.display()))).collect();
    let total = last_line(&out, &format!("socket={} ", sock.display()));
    assert_eq!(total.get("queue").map(String::as_str), Some("0,1"), "{total:?}");
    // Two forwarding lcores, one per queue pair (testpmd's own stream list).
    for q in 0..2 {
        let stream = format!("RX P=0/Q={q} (socket 0) -> TX P=0/Q={q} (socket 0)");
        assert!(gout.contains(&stream), "no forwarding stream on queue {q}:\n{gout}");
    }
    let mut sums = [0u64; 2];
    for (k, pair) in pairs.iter().enumerate() {
        assert_eq!(must(pair, "queue"), k as u64, "pair {k} is NIC queue {k}: {pair:?}");
        let (proxy_rx, proxy_tx) = (must(pair, "rx_packets"), must(pair, "tx_packets"));
        let (guest_rx, guest_tx) = (xstat(&gout, &format!("rx_q{k}_packets")), xstat(&gout, &format!("tx_q{k}_packets")));
        println!("pair {k}: proxy rx {proxy_rx} tx {proxy_tx}; guest rx_q{k}_packets {guest_rx} tx_q{k}_packets {guest_tx}");
        assert!(guest_rx > 10_000 && guest_tx > 10_000, "queue {k} carried little: rx {guest_rx} tx {guest_tx}\n{gout}");
        // What the guest sent on queue k, the proxy took on pair k (sent, dropped by the
        // NIC, or handed back unsent at the stop).
        let took = proxy_tx + must(pair, "tx_dropped") + must(pair, "tx_returned");
        assert_eq!(guest_tx, took, "queue {k}: guest sent {guest_tx}, proxy took {took} ({pair:?})");
        // What the proxy delivered on pair k and the guest did not take before it stopped
        // stays within a ring (the plugins' default, 4096 entries).
        assert!(guest_rx <= proxy_rx && proxy_rx - guest_rx <= 4096, "queue {k}: guest {guest_rx}, proxy {proxy_rx}");
        assert_eq!(must(pair, "invalid"), 0, "{pair:?}");
        assert_eq!(must(pair, "copies"), 0, "{pair:?}");
        sums[0] += proxy_rx;
        sums[1] += proxy_tx;
    }
    // The socket's line adds its pairs up; the port-wide xstats add the queues up.
    assert_eq!((must(&total, "rx_packets"), must(&total, "tx_packets")), (sums[0], sums[1]), "{total:?}");
    let (q_rx, q_tx) = ((0..2).map(|k| xstat(&gout, &format!("rx_q{k}_packets"))).sum::<u64>(), (0..2).map(|k| xstat(&gout, &format!("tx_q{k}_packets"))).sum::<u64>());
    assert_eq!((xstat(&gout, "rx_good_packets"), xstat(&gout, "tx_good_packets")), (q_rx, q_tx));
    assert_eq!(xstat(&gout, "tx_copied_packets"), 0);
    assert_eq!(xstat(&gout, "rx_invalid_descriptors"), 0);
    quit_proxy(proxy);
}

#[test]
fn a_multi_queue_socket_refuses_more_queues_than_it_offers() {
    let s = Scratch::new("mqlim");
    let sock = s.path("mq/sock");
    let proxy = null_proxy_on_queues(&s, &sock, "1,0");
    // Three queues on a socket with two: testpmd sees the device's maxima and gives up.
    let out = run_until(testpmd_lcores(&s, &sock, "mq3", 1, &["-i", "--rxq=3", "--txq=3", "--total-num-mbufs=8192"]), "max_rx_queues (2)");
    assert!(out.contains("can't be greater than max_rx_queues (2)"), "{out}");
    // One queue: pair 0, which is NIC queue 1 here.
    let mut g = testpmd_lcores(&s, &sock, "mq1", 1, &["-i", "--total-num-mbufs=8192"]);
    wait_or_dump(&g, "Checking link statuses", 30);
    wait_until_or_dump(&proxy, "pair 0 started", 30, |t| t.contains("queue started (pair 0: port 0 queue 1)"));
    g.send("quit");
    let _ = g.wait(Duration::from_secs(20));
    let out = quit_proxy(proxy);
    assert!(!out.contains("queue started (pair 1"), "a one-queue guest started pair 1:\n{out}");
}

/// Waits until the guest printed `needle`, then ends it; its whole output.
fn run_until(mut g: Proc, needle: &str) -> String {
    wait_or_dump(&g, needle, 30);
    g.send("quit");
    g.wait(Duration::from_secs(20)).1
}

#[test]
fn each_queue_pair_has_its_own_rings_and_refusals_name_the_pair() {
    use e2e_tests::hostile::{hello, Attached};
    use shm_contract::spsc::PROD_INDEX_OFFSET;
    use shm_contract::{Message, RefuseCode};
    use std::sync::atomic::Ordering;

    let s = Scratch::new("mqraw");
    let sock = s.path("mq/sock");
    let mut proxy = null_proxy_on_queues(&s, &sock, "0,1");
    let mut g = Attached::attach(&sock, &hello(32 << 20, 256)).unwrap();
    assert_eq!(g.welcome.queue_pairs, 2);
    assert_eq!(g.layout.queue_pairs(), 2);
    g.add_pool(1024, 0).unwrap();
    let refused = |answer: Message, reason: &str| match answer {
        Message::Refuse { code: RefuseCode::BadRequest, reason: r } => assert_eq!(r, reason),
        other => panic!("expected a refusal '{reason}', got {other:?}"),
    };
    let start = |queue: u16| Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue };
    refused(g.request(&start(2)).unwrap(), "queue 2 does not exist: this socket offers 2 queue pair(s)");
    refused(g.request(&Message::QueueStop { queue: 9 }).unwrap(), "queue 9 does not exist: this socket offers 2 queue pair(s)");
    // Pair 1 only: NIC queue 1's packets fill pair 1's rx ring; pair 0's stays empty.
    assert_eq!(g.request(&start(1)).unwrap(), Message::QueueStarted);
    refused(g.request(&start(1)).unwrap(), "queue 1 is already started");
    wait_until_or_dump(&proxy, "pair 1 started", 10, |t| t.contains("queue started (pair 1: port 0 queue 1)"));
    std::thread::sleep(Duration::from_millis(500));
    let produced = |pair: u32| {
        let (rx, _) = g.layout.rings_of(pair).unwrap();
        g.mem().atomic_u32((rx.offset + PROD_INDEX_OFFSET) as usize).unwrap().load(Ordering::Acquire)
    };
    assert_eq!(produced(0), 0, "pair 0 is not started");
    // The guest consumes nothing: the proxy fills the ring as far as it has room for
    // bursts, then leaves the packets in the NIC.
    let filled = produced(1);
    assert!(filled > 128 && filled <= 256, "pair 1's rx ring holds {filled}");
    proxy.send("show stats");
    let pair_line = |k: usize| format!("pair={k} of={} ", sock.display());
    wait_until_or_dump(&proxy, "pair lines", 10, |t| t.contains(&pair_line(1)));
    let out = proxy.out.text();
    let (p0, p1) = (last_line(&out, &pair_line(0)), last_line(&out, &pair_line(1)));
    assert_eq!((must(&p0, "rx_packets"), must(&p0, "tx_packets")), (0, 0), "{p0:?}");
    // net_null's packets are one segment: one descriptor each.
    assert_eq!(must(&p1, "rx_packets"), filled as u64, "{p1:?}");
    let total = last_line(&out, &format!("socket={} ", sock.display()));
    assert_eq!(must(&total, "bad_requests"), 3, "{total:?}");
    assert_eq!(must(&total, "rx_packets"), filled as u64, "{total:?}");
    assert_eq!(g.request(&Message::QueueStop { queue: 1 }).unwrap(), Message::QueueStopped);
    drop(g);
    quit_proxy(proxy);
}

/// Fewer rx than tx queues (what Open vSwitch configures by default: one rx queue, a tx
/// queue per thread) on a two-pair socket: both pairs start, and what the proxy delivers
/// on pair 1 is received on rx queue 0, whose bursts read pair 1's ring after its own.
/// Then the reverse, two rx and one tx queue: both pairs start, pair 1 receive-only.
#[test]
fn fewer_rx_than_tx_queues_receive_every_pair_on_the_rx_queues_there_are() {
    let s = Scratch::new("mqneq");
    let sock = s.path("mq/sock");
    let mut proxy = null_proxy_on_queues(&s, &sock, "0,1");
    let g = testpmd_lcores(&s, &sock, "mq12", 1, &["-i", "--forward-mode=macswap", "--rxq=1", "--txq=2", "--total-num-mbufs=16384"]);
    wait_or_dump(&g, "Checking link statuses", 30);
    wait_until_or_dump(&proxy, "both pairs started", 30, |t| t.matches("queue started (pair").count() >= 2);
    let (gcode, gout, out) = forward_then_stop_both_pairs(g, &mut proxy, &sock, Duration::from_secs(3));
    assert_eq!(gcode, Some(0), "{gout}");
    assert!(gout.contains("1 rx and 2 tx queues"), "{gout}");
    let pairs: Vec<HashMap<String, String>> = (0..2).map(|k| last_line(&out, &format!("pair={k} of={} ", sock.display()))).collect();
    let (rx0, rx1) = (must(&pairs[0], "rx_packets"), must(&pairs[1], "rx_packets"));
    let guest_rx = xstat(&gout, "rx_q0_packets");
    println!("1 rx / 2 tx: proxy pair 0 rx {rx0}, pair 1 rx {rx1}; guest rx_q0_packets {guest_rx}, tx_q0_packets {}", xstat(&gout, "tx_q0_packets"));
    // net_null fills both NIC queues; pair 1's packets reached the guest on queue 0.
    assert!(rx1 > 10_000, "{:?}", pairs[1]);
    assert!(guest_rx > rx0, "rx queue 0 took only pair 0's packets: guest {guest_rx}, pair 0 {rx0}, pair 1 {rx1}");
    // What was delivered and not taken before the stop stays within the two rings.
    assert!(guest_rx <= rx0 + rx1 && rx0 + rx1 - guest_rx <= 2 * 4096, "guest {guest_rx}, proxy {rx0} + {rx1}");
    assert_eq!(xstat(&gout, "rx_invalid_descriptors"), 0);
    for pair in &pairs {
        assert_eq!(must(pair, "invalid"), 0, "{pair:?}");
    }

    // The reverse: two rx queues, one tx queue.
    let mut g = testpmd_lcores(&s, &sock, "mq21", 1, &["-i", "--forward-mode=macswap", "--rxq=2", "--txq=1", "--total-num-mbufs=16384"]);
    wait_or_dump(&g, "Checking link statuses", 30);
    wait_until_or_dump(&proxy, "both pairs started again", 30, |t| t.matches("queue started (pair").count() >= 4);
    g.send("start");
    std::thread::sleep(Duration::from_secs(2));
    g.send("stop");
    g.send("show port xstats 0");
    wait_or_dump(&g, "tx_copied_packets", 20);
    g.send("quit");
    let (gcode, gout) = g.wait(Duration::from_secs(20));
    assert_eq!(gcode, Some(0), "{gout}");
    assert!(xstat(&gout, "tx_q0_packets") > 10_000, "{gout}");
    quit_proxy(proxy);
}
