//! Crashes and restarts, with real processes only: guests killed with SIGKILL under
//! full load, again and again, must leave the proxy exactly as it was (descriptors,
//! memory, pools); a proxy killed with SIGKILL and started again must get its guest
//! back without restarting the guest application.
//!
//! Run one at a time (`--test-threads=1`): the proxy and the guests share the machine's
//! two CPUs. `SHM_CRASH_KILLS=N` changes the number of guest kills (default 50).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::*;

/// Guests ask for a small region: a testpmd with 8192 mbufs needs about 20 MiB.
const GUEST_DEVARGS: &str = "region_size=64M";

/// Waits until `needle` occurs at least `n` times in the output.
fn wait_count(p: &Proc, needle: &str, n: usize, secs: u64) {
    wait_until_or_dump(p, &format!("{n} x '{needle}'"), secs, |t| t.matches(needle).count() >= n);
}

/// Waits until `needle` appears in what `p` printed after byte `from`.
fn wait_after(p: &Proc, from: usize, needle: &str, secs: u64) -> Result<(), String> {
    p.out.wait_for(&format!("'{needle}' after byte {from}"), Duration::from_secs(secs), |t| {
        t.get(from..).is_some_and(|rest| rest.contains(needle))
    })
}

/// Asks the proxy for `show stats` and returns that answer only.
fn query_stats(proxy: &mut Proc) -> String {
    let before = proxy.out.text().matches("mempools=").count();
    let from = proxy.out.text().len();
    proxy.send("show stats");
    proxy
        .out
        .wait_for("a 'show stats' answer", Duration::from_secs(10), |t| t.matches("mempools=").count() > before)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    let text = proxy.out.text();
    let answer = &text[from..];
    let end = answer.find("mempools=").map(|i| answer[i..].find('\n').map_or(answer.len(), |j| i + j)).unwrap();
    answer[..end].to_string()
}

/// `key=value` pairs of the answer's line that starts with `prefix`.
fn line_kv(answer: &str, prefix: &str) -> HashMap<String, String> {
    answer
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        })
        .unwrap_or_else(|| panic!("no line starting with '{prefix}' in\n{answer}"))
}

/// Open descriptors and resident memory (KiB) of a process. Panics when they cannot be
/// read (a process gone reads as no leak otherwise).
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    (fds, rss)
}

fn macswap_guest(s: &Scratch, sock: &Path, name: &str, interactive: bool) -> Proc {
    let args: Vec<String> = vec!["--forward-mode=macswap".into(), "--total-num-mbufs=8192".into()];
    if !interactive {
        return start_testpmd(s, &GuestConfig { socket: sock, devargs: GUEST_DEVARGS, memory_mb: 32, testpmd_args: args, name });
    }
    // Interactive testpmd prints command answers with stdio, which a pipe would buffer
    // until exit: line-buffer it (stdbuf), so that each answer can be waited for.
    let (_, cpu) = cpus();
    let mut cmd = std::process::Command::new("stdbuf");
    cmd.args(["-oL", "-eL", TESTPMD]);
    cmd.args(["--lcores", &format!("0@{cpu},1@{cpu}"), "--no-huge", "-m", "32", "--no-pci"]);
    cmd.args(["--file-prefix", &s.prefix(name)]);
    cmd.args(plugin_args());
    cmd.args(["-a", &format!("sock:{},{GUEST_DEVARGS}", sock.display())]);
    cmd.arg("--").arg("-i").args(&args);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    cmd.current_dir(&s.dir);
    Proc::spawn(name, cmd)
}

/// The scenario: kill -9 a guest under full load, many times in a row. After
/// every kill the proxy must be back to its baseline: same descriptors, no mempool left
/// over, its parking pool as before; resident memory within a small tolerance (the
/// allocator keeps some freed memory). The next guest must get traffic within a second
/// of its queue start.
#[test]
fn fifty_guest_kills_under_load_leak_nothing() {
    let kills: usize = std::env::var("SHM_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    // Resident memory may grow this much over the whole loop (allocator caches, the
    // first guest's one-time allocations are already in the baseline).
    const RSS_TOLERANCE_KIB: u64 = 8 * 1024;
    let s = Scratch::new("crash");
    let sock = s.path("q0/sock");
    let mut proxy = start_null_proxy(&s, &sock);
    let pid = proxy.pid();
    let started = Instant::now();
    let mut baseline: Option<(usize, u64, u64, u64)> = None;
    let mut max_first_traffic = Duration::ZERO;
    let mut rss_seen = Vec::new();
    // One warm-up guest first: its one-time allocations (DPDK memzones, the log, the
    // stats strings) belong in the baseline.
    for round in 0..=kills {
        let g = macswap_guest(&s, &sock, &format!("g{round}"), false);
        wait_count(&proxy, "queue started", round + 1, 60);
        let queue_started = Instant::now();
        let rx_before = counter(&proxy_socket_stats(&query_stats(&mut proxy), &sock), "rx_packets");
        // Traffic within a second of the queue start.
        let mut attached = String::new();
        loop {
            let answer = query_stats(&mut proxy);
            if counter(&proxy_socket_stats(&answer, &sock), "rx_packets") > rx_before {
                attached = answer;
                break;
            }
            if queue_started.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let first_traffic = queue_started.elapsed();
        assert!(!attached.is_empty(), "round {round}: no traffic 5 s after the queue started\n{}", proxy.out.text());
        max_first_traffic = max_first_traffic.max(first_traffic);
        let live = line_kv(&attached, &format!("socket={} ", sock.display()));
        assert!(counter(&live, "pools") >= 1, "round {round}: the guest's pool is not announced: {live:?}");
        assert!(counter(&live, "pool_buffers") >= 8192, "{live:?}");
        // Under load; let it run a little so the kill lands mid-traffic.
        std::thread::sleep(Duration::from_millis(300));
        g.kill_group();
        let _ = g.wait(Duration::from_secs(10));
        wait_count(&proxy, "detached", round + 1, 10);
        let after = query_stats(&mut proxy);
        let sock_line = line_kv(&after, &format!("socket={} ", sock.display()));
        assert_eq!(counter(&sock_line, "pools"), 0, "round {round}: {sock_line:?}");
        assert_eq!(sock_line.get("guest").map(String::as_str), Some("-"), "round {round}: {sock_line:?}");
        assert_eq!(counter(&sock_line, "invalid"), 0, "round {round}: {sock_line:?}");
        let parking = counter(&line_kv(&after, "port=0 "), "parking_in_use");
        let mempools = counter(&line_kv(&after, "unclaimed="), "mempools");
        let (fds, rss) = fds_and_rss(pid);
        rss_seen.push(rss);
        match baseline {
            None => {
                baseline = Some((fds, rss, mempools, parking));
                eprintln!("baseline after the warm-up guest: fds={fds} rss={rss} KiB mempools={mempools} parking_in_use={parking}");
            }
            Some((fds0, rss0, mempools0, parking0)) => {
                assert_eq!(fds, fds0, "round {round}: the proxy's open descriptors changed");
                assert_eq!(mempools, mempools0, "round {round}: a mempool was left over\n{after}");
                // The detached queue is drained as idle by the data loop, so a snapshot
                // may catch one rx burst (32) of it in flight; a leak grows past that.
                assert!(parking <= parking0 + 32, "round {round}: parking pool buffers in use grew from {parking0} to {parking}\n{after}");
                assert!(
                    rss <= rss0 + RSS_TOLERANCE_KIB,
                    "round {round}: resident memory grew from {rss0} to {rss} KiB (history {rss_seen:?})"
                );
            }
        }
        assert!(proxy.is_running(), "round {round}: the proxy died\n{}", proxy.out.text());
    }
    let elapsed = started.elapsed();
    let (fds0, rss0, _, _) = baseline.unwrap();
    let (fds, rss) = fds_and_rss(pid);
    eprintln!(
        "{kills} kills in {:.1} s ({:.2} s per guest); fds {fds0} -> {fds}; VmRSS {rss0} -> {rss} KiB (min {} max {}); \
         slowest first traffic after queue start: {max_first_traffic:?}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / (kills + 1) as f64,
        rss_seen.iter().min().unwrap(),
        rss_seen.iter().max().unwrap(),
    );
    assert!(max_first_traffic < Duration::from_secs(1), "a guest waited {max_first_traffic:?} for traffic");
    let out = quit_proxy(proxy);
    assert_eq!(counter(&proxy_socket_stats(&out, &sock), "guests_served"), kills as u64 + 1);
}

/// The proxy is killed with SIGKILL under load: the guest (an interactive testpmd that
/// keeps running) sees its link go down; a new proxy on the same socket path takes the
/// guest's region back, the link comes up again and traffic flows, with no restart of
/// the guest application. Twice, to show that a reattached guest reattaches again.
#[test]
fn a_killed_proxy_is_replaced_and_the_guest_reconnects_by_itself() {
    let s = Scratch::new("proxykill");
    let sock = s.path("q0/sock");
    let mut proxy = start_null_proxy(&s, &sock);
    let mut g = macswap_guest(&s, &sock, "guest", true);
    wait_or_dump(&g, "Checking link statuses", 60);
    g.send("start");
    wait_or_dump(&proxy, "queue started", 30);
    let port_info = |g: &mut Proc, want: &str| -> Result<(), String> {
        // The link changes asynchronously: ask until it says what we expect.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let from = g.out.text().len();
            g.send("show port info 0");
            let seen = wait_after(g, from, "Link status", 5);
            if seen.is_ok() && g.out.text()[from..].contains(&format!("Link status: {want}")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the guest's link never became {want}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    port_info(&mut g, "up").unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    for round in 1..=2 {
        std::thread::sleep(Duration::from_secs(1));
        let before_kill = counter(&proxy_socket_stats(&query_stats(&mut proxy), &sock), "rx_packets");
        assert!(before_kill > 1000, "round {round}: no traffic before the kill ({before_kill})");
        proxy.kill_group();
        let (_, _) = proxy.wait(Duration::from_secs(10));
        wait_count(&g, "proxy connection lost", round, 10);
        port_info(&mut g, "down").unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
        // A new proxy on the same path (its stale socket file is replaced).
        let restarted = Instant::now();
        proxy = start_null_proxy(&s, &sock);
        wait_or_dump(&proxy, "reattached its region", 30);
        wait_or_dump(&proxy, "queue started", 30);
        let back = restarted.elapsed();
        wait_count(&g, "reattached to the proxy", round, 10);
        port_info(&mut g, "up").unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
        // Traffic flows through the new proxy to the same guest.
        let t0 = Instant::now();
        let mut rx = 0;
        while t0.elapsed() < Duration::from_secs(10) {
            let stats = proxy_socket_stats(&query_stats(&mut proxy), &sock);
            rx = counter(&stats, "rx_packets");
            if rx > 10_000 && counter(&stats, "tx_packets") > 10_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(rx > 10_000, "round {round}: traffic did not resume after reattaching\n{}", proxy.out.text());
        eprintln!("round {round}: proxy restarted, guest reattached and forwarding after {back:?}");
        assert!(g.is_running(), "the guest must survive its proxy's death");
    }
    // The guest's own counters agree that it kept forwarding.
    g.send("stop");
    wait_or_dump(&g, "Forward statistics for port 0", 20);
    let stats = query_stats(&mut proxy);
    let sock_line = line_kv(&stats, &format!("socket={} ", sock.display()));
    assert_eq!(counter(&sock_line, "invalid"), 0, "{sock_line:?}");
    g.send("quit");
    let (_, gout) = g.wait(Duration::from_secs(20));
    let fwd = testpmd_port_stats(&gout, 0);
    assert!(testpmd_counter(&fwd, "TX-packets") > 10_000, "{gout}");
    quit_proxy(proxy);
}

/// With `reconnect=0` a guest whose proxy died stays down: a new proxy sees no guest.
#[test]
fn without_reconnect_the_guest_stays_down() {
    let s = Scratch::new("noreconn");
    let sock = s.path("q0/sock");
    let proxy = start_null_proxy(&s, &sock);
    let g = start_testpmd(
        &s,
        &GuestConfig {
            socket: &sock,
            devargs: "region_size=64M,reconnect=0",
            memory_mb: 32,
            testpmd_args: vec!["--forward-mode=macswap".into(), "--total-num-mbufs=8192".into()],
            name: "guest",
        },
    );
    wait_or_dump(&proxy, "queue started", 30);
    proxy.kill_group();
    let _ = proxy.wait(Duration::from_secs(10));
    wait_or_dump(&g, "proxy connection lost; link down", 10);
    let mut proxy = start_null_proxy(&s, &sock);
    std::thread::sleep(Duration::from_secs(2));
    let stats = query_stats(&mut proxy);
    assert_eq!(counter(&proxy_socket_stats(&stats, &sock), "guests_served"), 0, "{stats}");
    assert!(!g.out.text().contains("reattached"), "{}", g.out.text());
    let _ = g.interrupt(Duration::from_secs(20));
    quit_proxy(proxy);
}

/// Bytes waiting unread in the unix sockets of process `pid` (`ss`'s Recv-Q).
fn unread_in_sockets_of(pid: u32) -> u64 {
    let out = std::process::Command::new("ss").args(["-x", "-H", "-n", "-p"]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let owner = format!("pid={pid},");
    // Netid State Recv-Q Send-Q Local Port Peer Port Process
    text.lines().filter(|l| l.contains(&owner)).filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).sum()
}

/// Whether every thread of process `pid` is stopped (`State: T (stopped)`).
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok()).all(|tid| {
        task_status(pid, tid).get("State").is_some_and(|state| state.starts_with('T'))
    })
}

/// The proxy dies while the guest application starts its port: the plugin's queue
/// start is waiting for its answer (holding the port's state), the loss is noticed on
/// that same thread. The start must fail with an error, not hang the application; the
/// guest then reconnects to the next proxy by itself, and starts its port there.
#[test]
fn a_proxy_lost_during_a_port_start_fails_the_start_and_the_guest_carries_on() {
    let s = Scratch::new("loststart");
    let sock = s.path("q0/sock");
    let proxy = start_null_proxy(&s, &sock);
    let mut g = macswap_guest(&s, &sock, "guest", true);
    wait_or_dump(&g, "Checking link statuses", 60);
    g.send("port stop 0");
    wait_or_dump(&proxy, "queue stopped", 30);
    // The proxy stands still: the queue start sent next waits in its socket.
    proxy.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    while !all_threads_stopped(proxy.pid()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the proxy did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let from = g.out.text().len();
    g.send("port start 0");
    let t0 = Instant::now();
    while unread_in_sockets_of(proxy.pid()) == 0 {
        if t0.elapsed() > Duration::from_secs(10) {
            let ss = std::process::Command::new("ss").args(["-x", "-a", "-n", "-p"]).output().expect("ss");
            panic!(
                "the guest's queue start never reached the proxy's socket (pid {})\n{}\n{}",
                proxy.pid(),
                String::from_utf8_lossy(&ss.stdout),
                g.out.text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.kill_group();
    let (_, _) = proxy.wait(Duration::from_secs(10));
    // The start fails at once (the connection is closed), the application lives on.
    wait_after(&g, from, "proxy connection lost", 10).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    wait_after(&g, from, "Fail to start port 0", 10).unwrap_or_else(|e| panic!("the port start hung: {e}\n{}", g.out.text()));
    let from = g.out.text().len();
    g.send("show port info 0");
    wait_after(&g, from, "Link status: down", 10).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    // A new proxy: the guest reattaches by itself and starts its port there.
    let mut proxy = start_null_proxy(&s, &sock);
    wait_or_dump(&proxy, "reattached its region", 30);
    wait_count(&g, "reattached to the proxy", 1, 10);
    g.send("port start 0");
    wait_or_dump(&proxy, "queue started", 30);
    g.send("start");
    let t0 = Instant::now();
    let mut rx = 0;
    while t0.elapsed() < Duration::from_secs(10) && rx <= 10_000 {
        std::thread::sleep(Duration::from_millis(100));
        rx = counter(&proxy_socket_stats(&query_stats(&mut proxy), &sock), "rx_packets");
    }
    assert!(rx > 10_000, "no traffic after the port was started on the new proxy\n{}", proxy.out.text());
    g.send("stop");
    wait_or_dump(&g, "Forward statistics for port 0", 20);
    g.send("quit");
    let (code, gout) = g.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{gout}");
    quit_proxy(proxy);
}
