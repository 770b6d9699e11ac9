//! End to end, with real parts only: the proxy owning a DPDK virtual NIC (net_pcap,
//! net_tap in a network namespace, net_null), Debian's unmodified dpdk-testpmd as the
//! guest loading our three plugins, real memfds and unix sockets.
//!
//! Run one at a time (`--test-threads=1`): each pins the proxy and the guest(s) to the
//! machine's two CPUs.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::*;

/// A small deterministic generator for packet sizes and payloads.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn macswapped(p: &[u8]) -> Vec<u8> {
    let mut q = p.to_vec();
    q[0..6].copy_from_slice(&p[6..12]);
    q[6..12].copy_from_slice(&p[0..6]);
    q
}

fn guest(scratch: &Scratch, socket: &Path, name: &str, args: &[&str]) -> Proc {
    start_testpmd(
        scratch,
        &GuestConfig {
            socket,
            devargs: "",
            memory_mb: 32,
            testpmd_args: args.iter().map(|s| s.to_string()).collect(),
            name,
        },
    )
}

fn proxy_stats(proxy: &Proc, socket: &Path) -> std::collections::HashMap<String, String> {
    proxy_socket_stats(&proxy.out.text(), socket)
}

#[test]
fn pcap_macswap_is_byte_for_byte() {
    let s = Scratch::new("pcap");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut sizes: Vec<usize> = vec![60, 61, 64, 127, 128, 1500, 1514, 1518, 2048, 2176, 4096, 8000, 9000];
    sizes.extend((0..300).map(|_| 60 + rng.below(9000 - 60 + 1) as usize));
    let packets: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            p[0..6].copy_from_slice(&[0x02, 0, 0, 0, (i >> 8) as u8, i as u8]);
            p[6..12].copy_from_slice(&[0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
            p[12..14].copy_from_slice(&[0x88, 0xb5]);
            p
        })
        .collect();
    let PcapProxy { mut proxy, sock, output } = start_pcap_proxy(&s, &packets);
    // --no-flush-rx: testpmd otherwise drops whatever arrived before forwarding starts,
    // and the capture is replayed the moment the guest's queue starts.
    let g = guest(
        &s,
        &sock,
        "guest",
        &["--forward-mode=macswap", "--total-num-mbufs=4096", "--no-flush-rx", "--stats-period", "1"],
    );
    wait_or_dump(&proxy, "queue started", 30);
    let n = packets.len() as u64;
    let done = proxy.out.wait_for("every packet forwarded", Duration::from_secs(30), |t| {
        shown_counter(&proxy_socket_stats(t, &sock), "tx_packets") >= n
    });
    let stats = proxy_stats(&proxy, &sock);
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    let (_, gout) = g.interrupt(Duration::from_secs(20));
    done.unwrap_or_else(|e| panic!("{e}\n--- proxy ---\n{out}\n--- guest ---\n{gout}"));
    assert_eq!(code, Some(0), "proxy exit\n{out}");
    assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "rx_dropped"), 0, "{stats:?}");
    let got = pcap::read(&output).unwrap();
    assert_eq!(got.len(), packets.len(), "packets out vs in\n{out}");
    for (i, (sent, back)) in packets.iter().zip(&got).enumerate() {
        assert!(
            *back == macswapped(sent),
            "packet {i} ({} bytes in, {} out) differs from its input with MACs swapped",
            sent.len(),
            back.len()
        );
    }
    assert!(gout.contains("placed in the shared region"), "the guest pool must live in shared memory\n{gout}");
}

/// Data bytes of one of testpmd's default mbufs (`--mbuf-size` 2176, less the headroom):
/// a frame reaches testpmd, and goes back, in one segment per this many bytes.
const TESTPMD_SEGMENT: usize = 2048;

/// Frames of `sizes` enter the proxy's `net_pcap` port, started with `--mtu <mtu>`; an
/// unmodified testpmd (macswap) sends each back as it got it, in as many segments. The
/// port takes frames of at most `limit` bytes (the MTU, the Ethernet header and two
/// VLAN tags; net_pcap has no MTU of its own, so this is the proxy's check alone).
/// Exactly the frames within the limit reach the wire, whole and in order (so traffic
/// after a refused frame still flows); the proxy counts the others as `tx_refused`
/// (none invalid); testpmd received every frame in the segments expected and sent each.
fn frames_beyond_the_limit_are_refused(tag: &str, mtu: u16, limit: usize, sizes: &[usize]) {
    let s = Scratch::new(tag);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ mtu as u64);
    let packets: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            p[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, i as u8]);
            p[6..12].copy_from_slice(&[0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
            p[12..14].copy_from_slice(&[0x88, 0xb5]);
            p
        })
        .collect();
    let fits: Vec<&Vec<u8>> = packets.iter().filter(|p| p.len() <= limit).collect();
    let (good, bad) = (fits.len() as u64, (packets.len() - fits.len()) as u64);
    assert!(good > 0 && bad > 0, "the sizes must have frames on both sides of {limit}");
    let PcapProxy { proxy, sock, output } = start_pcap_proxy_with(&s, &packets, &["--mtu", &mtu.to_string()]);
    let ptext = proxy.out.text();
    assert!(ptext.contains(&format!("MTU {mtu}, ")) && ptext.contains(&format!(" and {limit} bytes a frame")), "{ptext}");
    // --no-flush-rx: the capture is replayed the moment the guest's queue starts, and
    // stays in testpmd's ring until forwarding starts.
    let mut g = guest(&s, &sock, "guest", &["-i", "--forward-mode=macswap", "--total-num-mbufs=4096", "--no-flush-rx"]);
    wait_or_dump(&g, "Checking link statuses", 30);
    wait_or_dump(&proxy, "queue started", 30);
    // The guest is told the frame the MTU makes (header and CRC, no VLAN tag): an MTU
    // above the proxy's is refused at the guest's own port, not dropped by the proxy.
    let from = g.out.text().len();
    g.send("show port info 0");
    let told = format!("Maximum configurable length of RX packet: {}", mtu as usize + 18);
    g.out
        .wait_for(&told, Duration::from_secs(10), |t| t[from..].contains(&told))
        .unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    let from = g.out.text().len();
    g.send(&format!("port config mtu 0 {}", mtu + 1));
    let refused = format!("MTU ({}) > device max MTU ({mtu})", mtu + 1);
    g.out
        .wait_for(&refused, Duration::from_secs(10), |t| t[from..].contains(&refused))
        .unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    // Verbose: testpmd prints each packet it receives, with its length and segments.
    g.send("set verbose 1");
    g.send("start");
    let n = packets.len() as u64;
    let done = proxy.out.wait_for("every frame sent, refused or dropped", Duration::from_secs(30), |t| {
        let stats = proxy_socket_stats(t, &sock);
        ["tx_packets", "tx_refused", "tx_invalid", "tx_dropped"].iter().map(|k| shown_counter(&stats, k)).sum::<u64>() >= n
    });
    g.send("stop");
    let stopped = g.out.wait_contains("Forward statistics for port 0", Duration::from_secs(20));
    let Ended { proxy_code: pcode, proxy_out: pout, testpmd_out: gtext, report } = quit_proxy_then_testpmd(proxy, g);
    done.unwrap_or_else(|e| panic!("{e}\n{report}"));
    stopped.unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert_eq!(pcode, Some(0), "{report}");
    // The guest's view: every frame received in the segments its length makes, and
    // every frame handed to its port (the proxy's refusal is not the guest's error).
    let mut seen: Vec<(usize, usize)> = gtext
        .lines()
        .filter_map(|l| {
            let len = l.split(" - length=").nth(1)?.split_whitespace().next()?.parse().ok()?;
            let segs = l.split(" - nb_segs=").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((len, segs))
        })
        .collect();
    let mut expected: Vec<(usize, usize)> = sizes.iter().map(|&len| (len, len.div_ceil(TESTPMD_SEGMENT))).collect();
    seen.sort_unstable();
    expected.sort_unstable();
    assert_eq!(seen, expected, "testpmd's received frames (length, segments)\n{report}");
    let fwd = testpmd_port_stats(&gtext, 0);
    assert_eq!(testpmd_counter(&fwd, "RX-packets"), n, "{report}");
    assert_eq!(testpmd_counter(&fwd, "TX-packets"), n, "{report}");
    assert_eq!(testpmd_counter(&fwd, "TX-dropped"), 0, "{report}");
    // The proxy's view: the frames within the limit sent, the others refused.
    let stats = proxy_socket_stats(&pout, &sock);
    assert_eq!(counter(&stats, "rx_packets"), n, "{stats:?}");
    assert_eq!(counter(&stats, "tx_packets"), good, "{stats:?}");
    assert_eq!(counter(&stats, "tx_bytes"), fits.iter().map(|p| p.len() as u64).sum::<u64>(), "{stats:?}");
    assert_eq!(counter(&stats, "tx_refused"), bad, "{stats:?}");
    assert_eq!(counter(&stats, "tx_dropped"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "tx_invalid"), 0, "{stats:?}");
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    // The wire: exactly those frames, in order, each whole (its input with MACs swapped).
    let got = pcap::read(&output).unwrap();
    let lengths: Vec<usize> = got.iter().map(|p| p.len()).collect();
    assert_eq!(lengths, fits.iter().map(|p| p.len()).collect::<Vec<_>>(), "frames on the wire\n{report}");
    for (i, (back, sent)) in got.iter().zip(&fits).enumerate() {
        assert!(*back == macswapped(sent), "frame {i} on the wire ({} bytes) is not its input with MACs swapped", back.len());
    }
    eprintln!(
        "{tag}: --mtu {mtu}: {good} frame(s) of at most {limit} bytes on the wire, {bad} refused (tx_refused={}); testpmd rx/tx {}/{}; frames (length, segments) {expected:?}",
        counter(&stats, "tx_refused"),
        testpmd_counter(&fwd, "RX-packets"),
        testpmd_counter(&fwd, "TX-packets")
    );
}

/// `--mtu 1500`: frames of 1522 bytes pass; one byte more is refused, in one segment
/// (1523) or in a chain (2049 = 2048 + 1, 3000, 9000 in five), and the frames after
/// each refused one go out.
#[test]
fn frames_beyond_an_mtu_of_1500_are_refused() {
    let sizes = [1522, 64, 1523, 1000, 1522, 3000, 60, 2049, 1514, 1518, 9000, 1522, 1521, 128];
    frames_beyond_the_limit_are_refused("mtu1500", 1500, 1522, &sizes);
}

/// `--mtu 9000`: jumbo frames of 9000 and 9022 bytes in five segments pass whole; 9023
/// (five segments) and 12000 (six) are refused.
#[test]
fn jumbo_frames_pass_whole_within_an_mtu_of_9000() {
    let sizes = [9000, 64, 9022, 9023, 1500, 9000, 12000, 2049, 9000];
    frames_beyond_the_limit_are_refused("mtu9000", 9000, 9022, &sizes);
}

#[test]
fn tap_ping_is_answered_by_an_icmpecho_guest() {
    assert!(is_root(), "this test needs root for a network namespace and a tap device (CI runs as root)");
    let s = Scratch::new("tap");
    let TapProxy { mut proxy, sock, ns, .. } = start_tap_proxy(&s, "e2e", "10.203.0.1/24");
    let g = guest(&s, &sock, "guest", &["--forward-mode=icmpecho", "--total-num-mbufs=2048", "--stats-period", "1"]);
    wait_or_dump(&proxy, "queue started", 30);
    // The queue switch restarts the tap port; let the kernel see its link again.
    std::thread::sleep(Duration::from_secs(1));
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "ping", "-c", "100", "-i", "0.01", "-W", "2", "10.203.0.2"])
        .output()
        .expect("ping");
    let ping = String::from_utf8_lossy(&out.stdout).into_owned();
    proxy.send("show stats");
    std::thread::sleep(Duration::from_millis(300));
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    let (_, gout) = g.interrupt(Duration::from_secs(20));
    assert!(
        ping.contains("100 packets transmitted, 100 received"),
        "ping:\n{ping}\n--- proxy ---\n{pout}\n--- guest ---\n{gout}"
    );
    assert_eq!(code, Some(0), "{pout}");
    let stats = proxy_socket_stats(&pout, &sock);
    assert!(counter(&stats, "tx_packets") >= 100, "{stats:?}");
    assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");
}

#[test]
fn two_guests_share_a_null_port_and_counters_agree() {
    let s = Scratch::new("null2");
    let socks = [s.path("q0/sock"), s.path("q1/sock")];
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: socks.iter().enumerate().map(|(q, p)| format!("socket {} port 0 queue {q}", p.display())).collect(),
            extra: vec![],
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let mut guests: Vec<Proc> = socks
        .iter()
        .enumerate()
        .map(|(i, p)| guest(&s, p, &format!("guest{i}"), &["-i", "--forward-mode=macswap", "--total-num-mbufs=8192"]))
        .collect();
    for g in &guests {
        // The prompt has no newline; the link check is the last line before it.
        wait_or_dump(g, "Checking link statuses", 30);
    }
    proxy.out.wait_for("two queues started", Duration::from_secs(30), |t| t.matches("queue started").count() >= 2).unwrap();
    for g in guests.iter_mut() {
        g.send("start");
    }
    std::thread::sleep(Duration::from_secs(5));
    for g in guests.iter_mut() {
        g.send("stop");
        g.send("show port xstats 0");
        g.send("port stop 0");
    }
    for g in &guests {
        wait_or_dump(g, "tx_copied_packets", 20);
    }
    proxy.out.wait_for("both queues stopped", Duration::from_secs(20), |t| t.matches("queue stopped").count() >= 2).unwrap();
    // Both guests' ports are stopped: the proxy's counters are final.
    proxy.send("show stats");
    std::thread::sleep(Duration::from_millis(500));
    for (i, mut g) in guests.into_iter().enumerate() {
        g.send("quit");
        let (_, gout) = g.wait(Duration::from_secs(20));
        let stats = proxy_stats(&proxy, &socks[i]);
        // The PMD's own counters (testpmd's forward statistics leave out what it flushed
        // before forwarding started).
        let xstat = |name: &str| -> u64 {
            let key = format!("{name}: ");
            gout.lines()
                .find_map(|l| l.trim().strip_prefix(&key).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("guest {i}: no xstat {name}\n{gout}"))
        };
        let rx = xstat("rx_good_packets");
        let tx = xstat("tx_good_packets");
        assert!(rx > 100_000, "guest {i} received only {rx} packets\n{gout}");
        let proxy_tx = counter(&stats, "tx_packets") + counter(&stats, "tx_dropped") + counter(&stats, "tx_returned");
        assert_eq!(tx, proxy_tx, "guest {i} sent {tx}; proxy took {proxy_tx} ({stats:?})");
        let proxy_rx = counter(&stats, "rx_packets");
        // What the guest had not taken from its rx ring when it stopped: at most a ring
        // (the plugins' default rx_ring, 4096 entries).
        let ring = 4096;
        assert!(rx <= proxy_rx && proxy_rx - rx <= ring, "guest {i} received {rx}, proxy delivered {proxy_rx}");
        assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");
        assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
        assert_eq!(xstat("tx_copied_packets"), 0, "guest {i} copied packets");
        assert_eq!(xstat("rx_invalid_descriptors"), 0, "guest {i} saw invalid descriptors");
    }
    quit_proxy(proxy);
}

#[test]
fn a_killed_guest_is_reclaimed_and_the_next_one_served() {
    let s = Scratch::new("kill");
    let sock = s.path("q0/sock");
    let proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: vec!["--stats-period".into(), "1".into()],
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let first = guest(&s, &sock, "first", &["--forward-mode=macswap", "--total-num-mbufs=8192", "--stats-period", "1"]);
    wait_or_dump(&proxy, "queue started", 30);
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    first.kill_group();
    let (_, _) = first.wait(Duration::from_secs(10));
    wait_or_dump(&proxy, "detached", 10);
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_secs(3), "the proxy took {noticed:?} to notice");
    let second = guest(&s, &sock, "second", &["--forward-mode=macswap", "--total-num-mbufs=8192", "--stats-period", "1"]);
    proxy.out.wait_for("second queue start", Duration::from_secs(30), |t| t.matches("queue started").count() >= 2).unwrap();
    let before = counter(&proxy_stats(&proxy, &sock), "rx_packets");
    std::thread::sleep(Duration::from_secs(3));
    let after = proxy_stats(&proxy, &sock);
    assert_eq!(counter(&after, "guests_served"), 2, "{after:?}");
    assert!(counter(&after, "rx_packets") > before + 10_000, "no traffic to the second guest: {after:?}");
    let (_, gout) = second.interrupt(Duration::from_secs(20));
    let fwd = testpmd_port_stats(&gout, 0);
    assert!(testpmd_counter(&fwd, "TX-packets") > 10_000, "{gout}");
    let out = quit_proxy(proxy);
    assert_eq!(counter(&proxy_socket_stats(&out, &sock), "invalid"), 0);
}

#[test]
fn a_guest_with_a_wrong_socket_path_says_why_and_keeps_its_other_ports() {
    let s = Scratch::new("badpath");
    let missing = s.path("nobody/sock");
    let mut cmd = std::process::Command::new(TESTPMD);
    cmd.args(["--lcores", "0@1,1@1", "--no-huge", "-m", "32", "--no-pci", "--file-prefix", &s.prefix("g")]);
    cmd.args(plugin_args());
    cmd.args(["-a", &format!("sock:{}", missing.display()), "--vdev", "net_null0"]);
    cmd.args(["--", "--stats-period", "1", "--total-num-mbufs=2048"]);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    let g = Proc::spawn("guest", cmd);
    g.out.wait_contains("Rx-pps", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    let (_, out) = g.interrupt(Duration::from_secs(20));
    assert!(out.contains(&format!("sock:{}", missing.display())) && out.contains("no socket at this path"), "{out}");
    assert!(out.contains("Port 0: "), "the null port must still come up\n{out}");
}
