//! End to end with the DPDK-free Rust guest (`crates/shm-guest`): its examples
//! `udp_echo`, `count` and `idle`, started as processes against the real proxy.
//!
//! The examples are built by `cargo build --release --workspace --all-targets` (what
//! `scripts/test.sh` runs) or `cargo build --release -p shm-guest --examples`.
//! Run one at a time (`--test-threads=1`): the proxy and the guest each poll a CPU.
//! The rx wake-up tests (`udp_echo --wait=sleep|async|hybrid` behind net_tap in a network
//! namespace) need root, as the tap test of `e2e.rs` does.

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
        shown_counter(&proxy_socket_stats(t, &sock), "tx_packets") >= n
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
    // The defaults: as many buffers as rx ring entries (4096), so the rx ring can take
    // every buffer and the free ring runs almost empty. That once made the proxy count
    // hundreds of thousands of invalid free-ring entries per run (a guest caught between
    // claiming a free-ring cell and filling it; DPDK's lcore cache refill keeping
    // buffers given back); `invalid` below must stay 0.
    assert!(gout.contains("4096 buffers, rx ring 4096 / tx ring 4096 entries"), "{gout}");
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
    quit_proxy(proxy);
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
    quit_proxy(proxy);
}

/// Runs `f` on a thread that has entered network namespace `ns` (`setns` moves only
/// the calling thread; this process's other threads stay where they are).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a descriptor we hold open, for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// What the paced sender saw.
#[derive(Debug)]
struct Paced {
    sent: u64,
    answered: u64,
    wrong: Vec<String>,
    /// Round trips of the answers, sorted.
    rtt: Vec<Duration>,
}

impl Paced {
    fn rtt_at(&self, per_mille: usize) -> Duration {
        self.rtt.get((self.rtt.len() * per_mille / 1000).min(self.rtt.len().saturating_sub(1))).copied().unwrap_or_default()
    }
}

/// Sends `count` UDP datagrams of varying sizes from `from` to `to`, one every
/// `interval` (a steady, low rate), and collects the echoes; each must come back from
/// `to` with its payload intact. Waits up to 10 s for stragglers at the end.
fn paced_udp(from: &str, to: &str, count: u64, interval: Duration) -> Paced {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    // Waits with ppoll, not SO_RCVTIMEO: socket timeouts count in jiffies (4 ms at
    // HZ=250), which would bunch the sends two by two instead of pacing them.
    sock.set_nonblocking(true).unwrap();
    let to: std::net::SocketAddr = to.parse().unwrap();
    let payload = |seq: u64| -> Vec<u8> {
        let len = 16 + (seq as usize * 37) % 1000;
        let mut p: Vec<u8> = (0..len).map(|i| (i as u64 ^ seq.wrapping_mul(0x9e37)) as u8).collect();
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p
    };
    let mut sent_at = vec![None::<Instant>; count as usize];
    let mut out = Paced { sent: 0, answered: 0, wrong: Vec::new(), rtt: Vec::new() };
    let mut buf = [0u8; 2048];
    let mut receive_until = |deadline: Instant, out: &mut Paced, sent_at: &mut [Option<Instant>]| loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || out.answered == count {
            return;
        }
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ts = libc::timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
            // SAFETY: ppoll on one pollfd and a timespec that live across the call.
            unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            continue;
        };
        let seq = u64::from_le_bytes(buf[..8.min(n)].try_into().unwrap_or([0xff; 8]));
        if peer != to || seq >= count || buf[..n] != payload(seq)[..] {
            out.wrong.push(format!("{n} bytes from {peer}, seq {seq}"));
        } else if let Some(t) = sent_at[seq as usize].take() {
            out.answered += 1;
            out.rtt.push(t.elapsed());
        }
    };
    let start = Instant::now();
    for seq in 0..count {
        sent_at[seq as usize] = Some(Instant::now());
        sock.send_to(&payload(seq), to).unwrap_or_else(|e| panic!("send to {to}: {e}"));
        out.sent += 1;
        receive_until(start + interval * (seq as u32 + 1), &mut out, &mut sent_at);
    }
    receive_until(Instant::now() + Duration::from_secs(10), &mut out, &mut sent_at);
    out.rtt.sort();
    out
}

/// udp_echo with rx wake-ups (`--wait=sleep`, `--wait=async` or `--wait=hybrid`) behind a virtual NIC
/// (net_tap in a network namespace), at a low steady rate: every datagram is answered,
/// the proxy woke the guest, and the guest used a small fraction of a CPU where a
/// polling one uses all of it.
fn sleeping_udp_echo(mode: &str) {
    assert!(is_root(), "this test needs root for a network namespace and a tap device (CI runs as root)");
    let s = Scratch::new(&format!("rs-wake-{mode}"));
    let TapProxy { mut proxy, sock, tap, ns } = start_tap_proxy(&s, &format!("w{}", &mode[..1]), "10.203.0.1/24");
    let wait = format!("--wait={mode}");
    let guest = rust_guest(&s, "udp_echo", &[sock.to_str().unwrap(), &wait, "--seconds", "120"]);
    wait_or_dump(&proxy, "queue started", 30);
    wait_or_dump(&guest, "attached to port 0 queue 0", 10);
    // The queue start restarts the tap port (link down and up, which flushes the
    // neighbour table): let the kernel see its link again, then tell it where the
    // guest's address is (udp_echo answers UDP only, no ARP).
    std::thread::sleep(Duration::from_secs(1));
    run("ip", &["-n", &ns.0, "neigh", "replace", "10.203.0.2", "lladdr", "02:00:00:00:00:02", "dev", &tap, "nud", "permanent"]);
    // 5 s at 200 datagrams per second.
    let (count, interval) = (1000u64, Duration::from_millis(5));
    let sent_at = Instant::now();
    let paced = in_netns(&ns.0, || paced_udp("10.203.0.1:0", "10.203.0.2:7", count, interval));
    let send_time = sent_at.elapsed();
    let stats = fresh_stats(&mut proxy, &sock);
    let (gcode, gout) = guest.interrupt(Duration::from_secs(20));
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    let rtt = format!("round trip p50 {:?} p99 {:?} max {:?}", paced.rtt_at(500), paced.rtt_at(990), paced.rtt_at(1000));
    let context = format!(
        "sent {} answered {} wrong {:?}; {rtt}\n--- proxy ---\n{pout}\n--- guest ---\n{gout}",
        paced.sent, paced.answered, paced.wrong
    );
    assert_eq!(gcode, Some(0), "guest exit\n{context}");
    assert_eq!(code, Some(0), "proxy exit\n{context}");
    assert!(paced.wrong.is_empty(), "wrong answers: {:?}\n{context}", paced.wrong);
    assert_eq!(paced.answered, count, "every datagram answered\n{context}");
    let wakeups = counter(&stats, "rx_wakeups");
    let (cpu_ms, wall_ms) = (summary(&gout, "udp_echo:", "cpu_ms"), summary(&gout, "udp_echo:", "wall_ms"));
    let (sleeps, guest_wakeups) = (summary(&gout, "udp_echo:", "sleeps"), summary(&gout, "udp_echo:", "wakeups"));
    let answered = summary(&gout, "udp_echo:", "answered");
    println!(
        "--wait={mode}: {count} datagrams in {send_time:?}, all answered, {rtt}; proxy rx_packets={} \
         rx_wakeups={wakeups}; guest answered={answered} sleeps={sleeps} wakeups={guest_wakeups} cpu_ms={cpu_ms} \
         wall_ms={wall_ms} ({:.1}% of a CPU)",
        counter(&stats, "rx_packets"),
        cpu_ms as f64 * 100.0 / wall_ms.max(1) as f64
    );
    assert!(answered >= count, "{gout}");
    for key in ["rx_invalid", "rx_multiseg_dropped", "free_ring_invalid", "lost"] {
        assert_eq!(summary(&gout, "udp_echo:", key), 0, "{key}: {gout}");
    }
    for key in ["invalid", "copies"] {
        assert_eq!(counter(&stats, key), 0, "{key}: {stats:?}");
    }
    assert!(wakeups > 0, "the proxy never woke the guest: {stats:?}");
    assert!(sleeps > 0 && guest_wakeups > 0, "{gout}");
    // Counts, not timings, but for this: a polling guest burns all of its CPU.
    assert!(cpu_ms * 5 < wall_ms, "the guest used {cpu_ms} ms of CPU in {wall_ms} ms (20% allowed)\n{gout}");
}

#[test]
fn rust_udp_echo_sleeps_in_tokio_between_packets() {
    sleeping_udp_echo("async");
}

#[test]
fn rust_udp_echo_sleeps_in_wait_rx_between_packets() {
    sleeping_udp_echo("sleep");
}

/// Hybrid waiting (AsyncGuest's default): datagrams 5 ms apart are far longer apart
/// than it may poll, so it answers every one and sleeps between them.
#[test]
fn rust_udp_echo_hybrid_answers_and_sleeps_between_packets() {
    sleeping_udp_echo("hybrid");
}

/// `key=` of the line an `idle` guest prints once its queue is started.
fn attached(guest: &Proc, key: &str) -> u64 {
    wait_or_dump(guest, "idle: attach_us=", 30);
    let out = guest.out.text();
    let line = out.lines().find(|l| l.starts_with("idle: attach_us=")).unwrap();
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in '{line}'"))
}

/// Free hugepage memory (not promised to a mapping yet), in bytes.
fn hugepages_free() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/meminfo"))
    };
    (field("HugePages_Free") - field("HugePages_Rsvd")) * field("Hugepagesize") * 1024
}

#[test]
fn rust_guests_get_regions_that_fit_their_pools_and_a_fair_share_of_hugepages() {
    let s = Scratch::new("rs-sizing");
    let socks: Vec<PathBuf> = (0..3).map(|q| s.path(&format!("q{q}/sock"))).collect();
    let proxy = start_proxy(
        &s,
        &ProxyConfig {
            // no-rx: the guests' queues receive nothing; what is measured is the region.
            eal: vec!["--vdev".into(), "net_null0,no-rx=1".into()],
            commands: socks.iter().enumerate().map(|(q, p)| format!("socket {} port 0 queue {q}", p.display())).collect(),
            extra: vec!["--hugepages-per-guest".into(), "16M".into()],
            ..Default::default()
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let sock = |q: usize| socks[q].to_str().unwrap().to_string();

    // 512 buffers (about 1.2 MiB of heap) and no size asked: a region that fits them on
    // 4 KiB pages (the proxy's default was 512 MiB), not 8 MiB of hugepages.
    let small = rust_guest(&s, "idle", &[&sock(0), "--buffers", "512"]);
    let kib = attached(&small, "region_kib");
    assert!((1100..1600).contains(&kib), "region of {kib} KiB for 512 buffers\n{}", small.out.text());
    assert_eq!(attached(&small, "hugepages"), 0);
    wait_or_dump(&proxy, "(not hugepages: hugepages would take 8 MiB for", 10);

    // 4096 buffers (about 9.3 MiB): 16 MiB of hugepages, within the share of 16 MiB, if
    // a share more is free; else 4 KiB pages and the log says so.
    let free = hugepages_free();
    let mid = rust_guest(&s, "idle", &[&sock(1), "--buffers", "4096"]);
    let kib = attached(&mid, "region_kib");
    if free >= 32 << 20 {
        assert_eq!((kib, attached(&mid, "hugepages")), (16 << 10, 1), "{}", proxy.out.text());
    } else {
        assert!((9400..10400).contains(&kib), "{kib} KiB\n{}", mid.out.text());
        wait_or_dump(&proxy, "one guest's share (16 MiB) stays free)", 10);
    }

    // 8192 buffers (about 18.5 MiB): more than a guest's share of hugepages.
    let big = rust_guest(&s, "idle", &[&sock(2), "--buffers", "8192"]);
    let kib = attached(&big, "region_kib");
    assert!((18_500..20_480).contains(&kib), "region of {kib} KiB for 8192 buffers\n{}", big.out.text());
    assert_eq!(attached(&big, "hugepages"), 0);
    wait_or_dump(&proxy, "would be more than a guest's share of them (16 MiB, --hugepages-per-guest))", 10);

    for guest in [small, mid, big] {
        let (code, out) = guest.interrupt(Duration::from_secs(10));
        assert_eq!(code, Some(0), "{out}");
    }
    wait_until_or_dump(&proxy, "three goodbyes", 10, |t| t.matches("the guest said goodbye").count() == 3);
    quit_proxy(proxy);
}
