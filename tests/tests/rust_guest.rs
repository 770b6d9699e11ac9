//! End to end with the DPDK-free Rust guest (`crates/shm-guest`): its examples
//! `udp_echo` and `count`, started as processes against the real proxy.
//!
//! The examples are built by `cargo build --release --workspace --all-targets` (what
//! `scripts/test.sh` runs) or `cargo build --release -p shm-guest --examples`.
//! Run one at a time (`--test-threads=1`): the proxy and the guest each poll a CPU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::*;

fn example(name: &str) -> PathBuf {
    let path = build_dir().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release -p shm-guest --examples` (or --workspace --all-targets)",
        path.display()
    );
    path
}

/// A Rust guest example on the second CPU.
fn rust_guest(scratch: &Scratch, name: &str, args: &[&str]) -> Proc {
    let (_, cpu) = cpus();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string()]).arg(example(name)).args(args);
    cmd.current_dir(&scratch.dir);
    Proc::spawn(name, cmd)
}

/// Asks the proxy for its counters and returns the `socket=` line printed after asking.
fn fresh_stats(proxy: &mut Proc, sock: &Path) -> std::collections::HashMap<String, String> {
    // The `mempools=` line ends each `show stats` answer (after the socket lines).
    let before = proxy.out.text().matches("mempools=").count();
    proxy.send("show stats");
    proxy
        .out
        .wait_for("a stats answer", Duration::from_secs(10), |t| t.matches("mempools=").count() > before)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    proxy_socket_stats(&proxy.out.text(), sock)
}

/// `mempools=N` from the last `show stats`.
fn mempools(out: &str) -> u64 {
    out.lines()
        .rev()
        .find_map(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix("mempools=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mempools= line\n{out}"))
}

/// `key=value` of the example's last summary line.
fn summary(out: &str, prefix: &str, key: &str) -> u64 {
    let line = out.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in '{line}'"))
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += (c[0] as u32) << 8 | c.get(1).copied().unwrap_or(0) as u32;
    }
    sum
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut s = sum16(data, initial);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet/IPv4/UDP frame of `len` bytes with correct checksums.
fn udp_frame(i: usize, len: usize, rng: &mut u64) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0..6].copy_from_slice(&[0x02, 0, 0, 0, (i >> 8) as u8, i as u8]);
    p[6..12].copy_from_slice(&[0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    p[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = len - 14;
    p[14..34].copy_from_slice(&[
        0x45, 0, (ip_len >> 8) as u8, ip_len as u8, (i >> 8) as u8, i as u8, 0x40, 0, 7 + (i % 50) as u8, 17, 0, 0, 10, 1, (i >> 8) as u8,
        i as u8, 10, 2, 0, 1,
    ]);
    let c = checksum(&p[14..34], 0);
    p[24..26].copy_from_slice(&c.to_be_bytes());
    let udp_len = ip_len - 20;
    p[34..42].copy_from_slice(&[0x9c, (i % 256) as u8, 0x1f, 0x90, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    for b in &mut p[42..] {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *b = *rng as u8;
    }
    // Every third datagram without a UDP checksum (0: none), as IPv4 allows.
    if !i.is_multiple_of(3) {
        let c = checksum(&p[34..], sum16(&p[26..34], 17 + udp_len as u32));
        p[40..42].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    }
    p
}

/// What a UDP echo responder must send back, computed here from the RFCs rather than
/// with the example's code.
fn expected_answer(q: &[u8]) -> Vec<u8> {
    let mut a = q.to_vec();
    a[0..6].copy_from_slice(&q[6..12]);
    a[6..12].copy_from_slice(&q[0..6]);
    a[26..30].copy_from_slice(&q[30..34]);
    a[30..34].copy_from_slice(&q[26..30]);
    a[22] = 64;
    a[24..26].fill(0);
    let c = checksum(&a[14..34], 0);
    a[24..26].copy_from_slice(&c.to_be_bytes());
    a[34..36].copy_from_slice(&q[36..38]);
    a[36..38].copy_from_slice(&q[34..36]);
    // Swapping addresses and ports leaves the UDP checksum's sum unchanged.
    a
}

fn checksums_hold(p: &[u8]) -> bool {
    let ip_ok = checksum(&p[14..34], 0) == 0;
    let udp_len = u16::from_be_bytes([p[38], p[39]]) as u32;
    let udp_ok = p[40..42] == [0, 0] || checksum(&p[34..34 + udp_len as usize], sum16(&p[26..34], 17 + udp_len)) == 0;
    ip_ok && udp_ok
}

#[test]
fn rust_udp_echo_answers_every_udp_packet_of_a_pcap_byte_for_byte() {
    let s = Scratch::new("rs-echo");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let sizes = [60usize, 61, 64, 100, 127, 128, 512, 1000, 1499, 1500, 1514];
    let mut udp: Vec<Vec<u8>> = Vec::new();
    for i in 0..300 {
        let len = if i < sizes.len() { sizes[i] } else { 60 + (rng % 1455) as usize };
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        udp.push(udp_frame(i, len, &mut rng));
    }
    // Interleaved non-UDP frames, which the responder must drop: ARP-like, TCP, an IP
    // fragment.
    let mut input = Vec::new();
    let mut others = 0;
    for (i, p) in udp.iter().enumerate() {
        input.push(p.clone());
        if i % 25 == 0 {
            let mut other = p.clone();
            match (i / 25) % 3 {
                0 => other[12..14].copy_from_slice(&[0x08, 0x06]),
                1 => other[23] = 6,
                _ => other[20] = 0x20,
            }
            input.push(other);
            others += 1;
        }
    }
    for p in &udp {
        assert!(checksums_hold(p), "the test's own frames must be right");
    }
    let inpcap = s.path("in.pcap");
    let outpcap = s.path("out.pcap");
    pcap::write(&inpcap, &input);
    let sock = s.path("q0/sock");
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), format!("net_pcap0,rx_pcap={},tx_pcap={}", inpcap.display(), outpcap.display())],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: vec!["--stats-period".into(), "1".into()],
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let guest = rust_guest(&s, "udp_echo", &[sock.to_str().unwrap()]);
    wait_or_dump(&proxy, "queue started", 30);
    let n = udp.len() as u64;
    let done = proxy.out.wait_for("every answer sent", Duration::from_secs(30), |t| {
        counter(&proxy_socket_stats(t, &sock), "tx_packets") >= n
    });
    let stats = fresh_stats(&mut proxy, &sock);
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    // The proxy's goodbye ends the guest by itself.
    let (gcode, gout) = guest.wait(Duration::from_secs(20));
    done.unwrap_or_else(|e| panic!("{e}\n--- proxy ---\n{out}\n--- guest ---\n{gout}"));
    assert_eq!(code, Some(0), "proxy exit\n{out}");
    assert_eq!(gcode, Some(0), "guest exit\n{gout}");
    assert!(gout.contains("proxy gone"), "{gout}");
    assert_eq!(counter(&stats, "rx_packets"), input.len() as u64, "{stats:?}");
    assert_eq!(counter(&stats, "tx_packets"), n, "{stats:?}");
    for key in ["invalid", "copies", "rx_dropped", "tx_dropped"] {
        assert_eq!(counter(&stats, key), 0, "{key}: {stats:?}");
    }
    assert_eq!(summary(&gout, "udp_echo:", "answered"), n, "{gout}");
    assert_eq!(summary(&gout, "udp_echo:", "ignored"), others, "{gout}");
    for key in ["rx_invalid", "rx_multiseg_dropped", "free_ring_invalid", "lost"] {
        assert_eq!(summary(&gout, "udp_echo:", key), 0, "{key}: {gout}");
    }
    let got = pcap::read(&outpcap).unwrap();
    assert_eq!(got.len(), udp.len(), "answers out vs UDP packets in\n{out}");
    for (i, (q, a)) in udp.iter().zip(&got).enumerate() {
        assert!(checksums_hold(a), "answer {i}: bad checksum");
        assert!(*a == expected_answer(q), "answer {i} ({} bytes in, {} out) is not the expected echo", q.len(), a.len());
    }
}

#[test]
fn rust_counter_counts_exactly_what_the_proxy_delivered() {
    let s = Scratch::new("rs-count");
    let sock = s.path("q0/sock");
    let mut proxy = start_null_proxy(&s, &sock);
    let started = Instant::now();
    let guest = rust_guest(&s, "count", &[sock.to_str().unwrap(), "--seconds", "3"]);
    let (gcode, gout) = guest.wait(Duration::from_secs(30));
    assert_eq!(gcode, Some(0), "{gout}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    wait_or_dump(&proxy, "detached", 10);
    let stats = fresh_stats(&mut proxy, &sock);
    let counted = summary(&gout, "count:", "packets");
    assert!(counted > 100_000, "only {counted} packets in 3 s\n{gout}");
    // The guest stopped the queue before its last count: nothing was in flight.
    assert_eq!(counted, counter(&stats, "rx_packets"), "guest counted {counted}, proxy delivered: {stats:?}\n{gout}");
    assert_eq!(summary(&gout, "count:", "bytes"), counter(&stats, "rx_bytes"), "{gout}");
    for key in ["rx_invalid", "rx_multiseg_dropped", "free_ring_invalid", "lost"] {
        assert_eq!(summary(&gout, "count:", key), 0, "{key}: {gout}");
    }
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    assert!(proxy.out.text().contains("detached: the guest said goodbye"), "{}", proxy.out.text());
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_killed_rust_guest_is_reclaimed_and_the_socket_serves_again() {
    let s = Scratch::new("rs-kill");
    let sock = s.path("q0/sock");
    let mut proxy = start_null_proxy(&s, &sock);
    fresh_stats(&mut proxy, &sock);
    let baseline = mempools(&proxy.out.text());
    let first = rust_guest(&s, "udp_echo", &[sock.to_str().unwrap()]);
    wait_or_dump(&proxy, "queue started", 30);
    wait_or_dump(&first, "attached to port 0 queue 0", 10);
    std::thread::sleep(Duration::from_secs(1));
    let during = fresh_stats(&mut proxy, &sock);
    assert_eq!(during.get("guest").map(String::as_str), Some("udp_echo"), "{during:?}");
    assert_eq!(counter(&during, "pools"), 1, "{during:?}");
    assert!(mempools(&proxy.out.text()) > baseline, "a guest pool has a shadow mempool");
    let killed = Instant::now();
    first.kill_group();
    let _ = first.wait(Duration::from_secs(10));
    wait_or_dump(&proxy, "detached", 10);
    assert!(killed.elapsed() < Duration::from_secs(3), "the proxy took {:?} to notice", killed.elapsed());
    let after = fresh_stats(&mut proxy, &sock);
    assert_eq!(after.get("guest").map(String::as_str), Some("-"), "{after:?}");
    assert_eq!(counter(&after, "pools"), 0, "{after:?}");
    assert_eq!(mempools(&proxy.out.text()), baseline, "the guest's shadow pool is freed");
    // The socket serves the next guest, which gets traffic.
    let second = rust_guest(&s, "count", &[sock.to_str().unwrap(), "--seconds", "2"]);
    let (gcode, gout) = second.wait(Duration::from_secs(30));
    assert_eq!(gcode, Some(0), "{gout}");
    assert!(summary(&gout, "count:", "packets") > 10_000, "{gout}");
    wait_or_dump(&proxy, "the guest said goodbye", 10);
    let last = fresh_stats(&mut proxy, &sock);
    assert_eq!(counter(&last, "guests_served"), 2, "{last:?}");
    assert_eq!(counter(&last, "invalid"), 0, "{last:?}");
    assert_eq!(mempools(&proxy.out.text()), baseline);
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
}
