//! The zero-copy path through the lifecycle a DPDK user drives: testpmd's port commands
//! (stop/start, close, detach, attach), the RFC's demo of four guests on two ports with
//! two queues each, the smallest private memory an unmodified testpmd runs with, and
//! an application's private pool (copied on tx, counted, never rejected).
//!
//! Real parts only: the proxy with net_null ports, Debian's unmodified dpdk-testpmd with
//! our three plugins. Run one at a time (`--test-threads=1`).

use std::path::Path;
use std::time::Duration;

use e2e_tests::*;

fn guest_with(scratch: &Scratch, socket: &Path, name: &str, memory_mb: u32, devargs: &str, args: &[&str]) -> Proc {
    start_testpmd(
        scratch,
        &GuestConfig {
            socket,
            devargs,
            memory_mb,
            testpmd_args: args.iter().map(|s| s.to_string()).collect(),
            name,
        },
    )
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The value of one `name: value` line of testpmd's `show port xstats`, the last one shown.
fn last_xstat(out: &str, name: &str) -> u64 {
    let key = format!("{name}: ");
    out.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no xstat {name} in\n{out}"))
}

fn null_proxy(s: &Scratch, ports: usize, sockets: &[(std::path::PathBuf, u16, u16)]) -> Proc {
    let mut eal = Vec::new();
    for p in 0..ports {
        eal.push("--vdev".to_string());
        eal.push(format!("net_null{p}"));
    }
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal,
            commands: sockets
                .iter()
                .map(|(path, port, queue)| format!("socket {} port {port} queue {queue}", path.display()))
                .collect(),
            extra: vec!["--stats-period".into(), "0".into()],
            netns: None,
        },
    );
    wait_until_or_dump(&proxy, "ready", 30, |t| t.contains("IO_PROXY: ready"));
    proxy
}

/// Forwards for `secs` seconds in an interactive testpmd, then shows the PMD's xstats.
fn forward_for(g: &mut Proc, secs: u64) {
    let shown = count(&g.out.text(), "tx_zero_copy_packets");
    g.send("start");
    std::thread::sleep(Duration::from_secs(secs));
    g.send("stop");
    g.send("show port xstats 0");
    wait_until_or_dump(g, "xstats", 20, |t| count(t, "tx_zero_copy_packets") > shown);
}

#[test]
fn testpmd_port_commands_reattach_and_leave_the_proxy_healthy() {
    let s = Scratch::new("portcmds");
    let sock = s.path("q0/sock");
    let proxy = null_proxy(&s, 1, &[(sock.clone(), 0, 0)]);
    let dev = format!("sock:{}", sock.display());
    let mut g = guest_with(&s, &sock, "guest", 32, "region_size=64M", &["-i", "--forward-mode=macswap", "--total-num-mbufs=4096"]);
    wait_until_or_dump(&g, "link check", 30, |t| t.contains("Checking link statuses"));
    forward_for(&mut g, 1);
    let first = g.out.text();
    assert!(last_xstat(&first, "tx_zero_copy_packets") > 1000, "{first}");

    // stop/start: the proxy stops and restarts the queue.
    g.send("port stop 0");
    g.send("port start 0");
    wait_until_or_dump(&proxy, "restart", 20, |t| count(t, "queue started") >= 2);
    forward_for(&mut g, 1);

    // close (the session ends with the port), detach the device by its devargs (found
    // through the ethdev iterator), then attach it again: a new session on the same socket.
    g.send("port stop 0");
    g.send("port close 0");
    wait_until_or_dump(&g, "close", 20, |t| t.contains("Port 0 is closed"));
    wait_until_or_dump(&proxy, "goodbye after close", 10, |t| count(t, "detached: the guest said goodbye") >= 1);
    g.send(&format!("device detach {dev}"));
    wait_until_or_dump(&g, "device detach", 20, |t| t.contains(&format!("Device {dev} is detached")));
    g.send(&format!("port attach {dev}"));
    wait_until_or_dump(&g, "attach", 20, |t| count(t, "Port 0 is attached") >= 1);
    g.send("port start all");
    wait_until_or_dump(&proxy, "queue after attach", 20, |t| count(t, "queue started") >= 3);
    forward_for(&mut g, 1);
    let after_close = g.out.text();
    assert!(last_xstat(&after_close, "tx_zero_copy_packets") > 1000, "{after_close}");
    assert_eq!(last_xstat(&after_close, "tx_copied_packets"), 0);

    // stop, detach (closes and removes the device), attach again.
    g.send("port stop 0");
    g.send("port detach 0");
    wait_until_or_dump(&g, "detach", 20, |t| t.contains("is detached"));
    g.send(&format!("port attach {dev}"));
    wait_until_or_dump(&g, "second attach", 20, |t| count(t, "Port 0 is attached") >= 2);
    g.send("port start all");
    wait_until_or_dump(&proxy, "queue after detach", 20, |t| count(t, "queue started") >= 4);
    forward_for(&mut g, 1);
    let after_detach = g.out.text();
    assert!(last_xstat(&after_detach, "tx_zero_copy_packets") > 1000, "{after_detach}");
    assert_eq!(last_xstat(&after_detach, "rx_invalid_descriptors"), 0);

    g.send("quit");
    let (code, gout) = g.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "testpmd did not quit cleanly\n{gout}");
    assert!(!gout.contains("PANIC"), "{gout}");
    wait_until_or_dump(&proxy, "three sessions ended", 10, |t| count(t, "detached: the guest said goodbye") >= 3);

    // The proxy is healthy: the next guest is served on the same socket.
    let next = guest_with(&s, &sock, "next", 32, "region_size=64M", &["--forward-mode=macswap", "--total-num-mbufs=4096", "--stats-period", "1"]);
    wait_until_or_dump(&next, "traffic", 30, |t| t.contains("Rx-pps"));
    std::thread::sleep(Duration::from_secs(1));
    let (_, nout) = next.interrupt(Duration::from_secs(20));
    assert!(testpmd_counter(&testpmd_port_stats(&nout, 0), "TX-packets") > 1000, "{nout}");
    let out = quit_proxy(proxy);
    let stats = proxy_socket_stats(&out, &sock);
    assert_eq!(counter(&stats, "guests_served"), 4, "{stats:?}");
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");
}

/// The RFC's demo: two NIC ports with two queues each, one guest per queue, all at once.
#[test]
fn four_guests_share_two_ports_with_two_queues_each() {
    let s = Scratch::new("rfc4");
    let sockets: Vec<(std::path::PathBuf, u16, u16)> =
        [(0, 0), (0, 1), (1, 0), (1, 1)].iter().map(|&(p, q)| (s.path(&format!("socket_{p}_{q}/sock")), p, q)).collect();
    let proxy = null_proxy(&s, 2, &sockets);
    let guests: Vec<Proc> = sockets
        .iter()
        .enumerate()
        .map(|(i, (path, _, _))| {
            guest_with(&s, path, &format!("guest{i}"), 16, "region_size=32M", &["--forward-mode=macswap", "--total-num-mbufs=2048", "--stats-period", "1"])
        })
        .collect();
    for g in &guests {
        wait_until_or_dump(g, "forwarding", 60, |t| t.contains("Rx-pps"));
    }
    wait_until_or_dump(&proxy, "four queues", 30, |t| count(t, "queue started") >= 4);
    // Every guest gets its own time on the shared CPU.
    std::thread::sleep(Duration::from_secs(4));
    for (i, g) in guests.into_iter().enumerate() {
        let (code, out) = g.interrupt(Duration::from_secs(30));
        assert_eq!(code, Some(0), "guest {i}\n{out}");
        let fwd = testpmd_port_stats(&out, 0);
        assert!(testpmd_counter(&fwd, "TX-packets") > 1000, "guest {i} forwarded too little: {fwd:?}\n{out}");
    }
    let out = quit_proxy(proxy);
    for (path, port, queue) in &sockets {
        let stats = proxy_socket_stats(&out, path);
        assert_eq!(stats.get("port").map(String::as_str), Some(port.to_string().as_str()), "{stats:?}");
        assert_eq!(stats.get("queue").map(String::as_str), Some(queue.to_string().as_str()), "{stats:?}");
        assert!(counter(&stats, "tx_packets") > 1000, "{stats:?}");
        assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");
        assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    }
}

/// The smallest `-m` an unmodified testpmd runs with when its packet pool lives in the
/// shared region: 8 MiB (below that, testpmd's own port array does not fit, see README).
#[test]
fn testpmd_forwards_with_8_mib_of_private_memory() {
    let s = Scratch::new("small-m");
    let sock = s.path("q0/sock");
    let mut proxy = null_proxy(&s, 1, &[(sock.clone(), 0, 0)]);
    let g = guest_with(&s, &sock, "guest", 8, "region_size=32M", &["--forward-mode=macswap", "--total-num-mbufs=4096", "--stats-period", "1"]);
    wait_until_or_dump(&g, "forwarding", 30, |t| t.contains("Rx-pps"));
    std::thread::sleep(Duration::from_secs(2));
    let (code, out) = g.interrupt(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("placed in the shared region"), "the packet pool must be in the shared region\n{out}");
    assert!(testpmd_counter(&testpmd_port_stats(&out, 0), "TX-packets") > 1000, "{out}");
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{pout}");
    assert_eq!(counter(&proxy_socket_stats(&pout, &sock), "invalid"), 0);
}

/// An application pool in private memory (`--mp-alloc=anon`): rx still lands zero-copy
/// in an internal pool in the region; what the application sends from its private pool
/// (txonly, three-segment packets) is copied into shared buffers and counted.
#[test]
fn private_pool_packets_are_copied_and_counted_not_rejected() {
    let s = Scratch::new("private");
    let sock = s.path("q0/sock");
    let mut proxy = null_proxy(&s, 1, &[(sock.clone(), 0, 0)]);
    let mut g = guest_with(
        &s,
        &sock,
        "guest",
        64,
        "region_size=64M",
        &["-i", "--forward-mode=txonly", "--mp-alloc=anon", "--total-num-mbufs=4096", "--txpkts=64,1000,500"],
    );
    wait_until_or_dump(&g, "link check", 30, |t| t.contains("Checking link statuses"));
    forward_for(&mut g, 2);
    g.send("port stop 0");
    wait_until_or_dump(&proxy, "queue stop", 20, |t| t.contains("queue stopped"));
    g.send("quit");
    let (code, out) = g.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}");
    let sent = last_xstat(&out, "tx_good_packets");
    assert!(sent > 1000, "{out}");
    assert_eq!(last_xstat(&out, "tx_copied_packets"), sent, "every private packet is copied\n{out}");
    assert_eq!(last_xstat(&out, "tx_zero_copy_packets"), 0);
    assert_eq!(last_xstat(&out, "tx_good_bytes"), sent * 1564, "three segments, 1564 bytes each");
    proxy.send("show stats");
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{pout}");
    let stats = proxy_socket_stats(&pout, &sock);
    let took = counter(&stats, "tx_packets") + counter(&stats, "tx_dropped") + counter(&stats, "tx_returned");
    assert_eq!(took, sent, "the proxy took every packet the guest sent: {stats:?}");
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
}

/// A guest whose application gives up after our device was probed (here testpmd cannot
/// fit its port table in `-m 4`) exits through EAL cleanup, which closes the port from
/// the net plugin while the bus plugin opened the session: the control socket must be
/// unregistered from EAL's interrupt thread before it is closed (it once was not, and
/// EAL panicked on the closed descriptor).
#[test]
fn a_guest_failing_after_probe_exits_without_a_panic() {
    let s = Scratch::new("early-exit");
    let sock = s.path("q0/sock");
    let proxy = null_proxy(&s, 1, &[(sock.clone(), 0, 0)]);
    for round in 0..3 {
        let g = guest_with(&s, &sock, &format!("guest{round}"), 4, "region_size=32M", &["--forward-mode=macswap"]);
        let (code, out) = g.wait(Duration::from_secs(30));
        assert!(out.contains("attached to proxy"), "{out}");
        assert!(out.contains("rte_zmalloc(32 struct rte_port) failed"), "{out}");
        assert!(!out.contains("PANIC"), "round {round}:\n{out}");
        assert_eq!(code, Some(1), "testpmd exits with its own error code\n{out}");
    }
    wait_until_or_dump(&proxy, "three goodbyes", 10, |t| count(t, "detached") >= 3);
    quit_proxy(proxy);
}
