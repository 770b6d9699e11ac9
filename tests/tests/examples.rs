//! DPDK's own example applications, unmodified, built from Debian's DPDK source package
//! by `scripts/setup.sh` (`.sdk/dpdk-<version>/examples/<app>/build/`), run as guests of
//! the proxy: skeleton (basicfwd), l2fwd, l3fwd and ip_fragmentation. The proxy owns two
//! `net_pcap` ports, each served on one socket; the application gets both sockets as its
//! ports 0 and 1. A known capture enters the proxy's port 0, the application forwards
//! it, and what the proxy's port 1 (or 0) sent is read back from its output capture.
//! Each test checks the application's own port counters (read over its telemetry socket
//! with `dpdk-telemetry.py`, or its printed statistics), the proxy's counters per socket,
//! and the packets on the wire.
//!
//! Run one at a time (`--test-threads=1`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_tests::packet::{ip_cksum_ok, udp4, l4_cksum_ok};
use e2e_tests::*;

/// Where setup.sh unpacked and built DPDK's examples for the installed DPDK.
fn example_binary(app: &str, binary: &str) -> PathBuf {
    let out = Command::new("pkg-config").args(["--modversion", "libdpdk"]).output().expect("pkg-config");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let root = std::env::var_os("DPDK_SDK_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(".sdk"));
    let path = root.join(format!("dpdk-{version}/examples/{app}/build/{binary}"));
    assert!(path.exists(), "{} is not built: run scripts/setup.sh (it builds DPDK's examples)", path.display());
    path
}

/// The proxy with two `net_pcap` ports: port 0 replays `input`, port 1 replays nothing;
/// each writes what it sends to `out<port>.pcap`. Socket `p<port>/sock` serves each.
struct PcapPair {
    proxy: Proc,
    socks: [PathBuf; 2],
    out: [PathBuf; 2],
}

fn start_pcap_pair(s: &Scratch, input: &[Vec<u8>], mtu: Option<u16>) -> PcapPair {
    let ins = [s.path("in0.pcap"), s.path("in1.pcap")];
    pcap::write(&ins[0], input);
    pcap::write(&ins[1], &[]);
    let out = [s.path("out0.pcap"), s.path("out1.pcap")];
    let socks = [s.path("p0/sock"), s.path("p1/sock")];
    let mut eal = Vec::new();
    for p in 0..2 {
        eal.push("--vdev".to_string());
        eal.push(format!("net_pcap{p},rx_pcap={},tx_pcap={}", ins[p].display(), out[p].display()));
    }
    let mut extra = vec!["--stats-period".to_string(), "1".to_string()];
    if let Some(mtu) = mtu {
        extra.extend(["--mtu".to_string(), mtu.to_string()]);
    }
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal,
            commands: (0..2).map(|p| format!("socket {} port {p} queue 0", socks[p].display())).collect(),
            extra,
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    PcapPair { proxy, socks, out }
}

/// An example application as a guest: EAL arguments for the plugins and both sockets,
/// then the application's own arguments.
fn start_example(s: &Scratch, name: &str, binary: &Path, pair: &PcapPair, memory_mb: u32, app_args: &[&str]) -> Proc {
    let (_, cpu) = cpus();
    // The examples print with stdio: line-buffered, so that the test reads lines as they come.
    let mut cmd = Command::new("stdbuf");
    cmd.arg("-oL").arg(binary);
    cmd.args(["--lcores", &format!("0@{cpu}"), "--no-huge", "-m", &memory_mb.to_string(), "--no-pci"]);
    cmd.args(["--file-prefix", &s.prefix(name)]);
    cmd.args(plugin_args());
    for sock in &pair.socks {
        cmd.arg("-a").arg(format!("sock:{},region_size=128M", sock.display()));
    }
    cmd.arg("--");
    cmd.args(app_args);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    cmd.current_dir(&s.dir);
    Proc::spawn(name, cmd)
}

/// `/ethdev/stats,<port>` of a running DPDK process, read over its telemetry socket.
fn app_port_stats(prefix: &str, port: u16) -> (u64, u64) {
    let text = telemetry(prefix, &format!("/ethdev/stats,{port}"));
    (json_number(&text, "ipackets"), json_number(&text, "opackets"))
}

/// One extended statistic of a port of a running DPDK process (`/ethdev/xstats,<port>`).
fn app_port_xstat(prefix: &str, port: u16, name: &str) -> u64 {
    json_number(&telemetry(prefix, &format!("/ethdev/xstats,{port}")), name)
}

/// What `dpdk-telemetry.py` answers to `command` from the process of file prefix `prefix`.
fn telemetry(prefix: &str, command: &str) -> String {
    let out = Command::new("timeout")
        .args(["20", "dpdk-telemetry.py", "-f", prefix])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(format!("{command}\n").as_bytes())?;
            child.wait_with_output()
        })
        .expect("dpdk-telemetry.py");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The number after `"key": ` in a telemetry answer; fails the test when it is missing.
fn json_number(text: &str, key: &str) -> u64 {
    let needle = format!("\"{key}\": ");
    let at = text.find(&needle).unwrap_or_else(|| panic!("no {key} in the telemetry answer:\n{text}")) + needle.len();
    text[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap()
}

/// Waits until the proxy's counter line for `sock` shows `key` >= `least`.
fn wait_proxy_counter(pair: &PcapPair, sock: usize, key: &str, least: u64, app: &Proc) {
    let path = pair.socks[sock].clone();
    if let Err(e) = pair.proxy.out.wait_for(&format!("{key} >= {least}"), Duration::from_secs(30), |t| {
        shown_counter(&proxy_socket_stats(t, &path), key) >= least
    }) {
        panic!("{e}\n--- proxy ---\n{}\n--- {} ---\n{}", pair.proxy.out.text(), app.name, app.out.text());
    }
}

/// Ends the proxy, then the application (SIGINT); returns both outputs. The proxy goes
/// first: net_pcap opens its output capture afresh at every port start, and a guest that
/// leaves makes the proxy restart its port.
fn finish(app: Proc, mut proxy: Proc) -> (Option<i32>, String, Option<i32>, String) {
    proxy.send("show stats");
    std::thread::sleep(Duration::from_millis(300));
    proxy.send("quit");
    let (pcode, pout) = proxy.wait(Duration::from_secs(20));
    let (code, out) = app.interrupt(Duration::from_secs(30));
    (code, out, pcode, pout)
}

/// Fails with the first differing packet rather than every byte of both lists.
fn assert_same_packets(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} packets, expected {}", got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: packet {i} differs:\n got {:02x?}\nwant {:02x?}", got[i], want[i]);
    }
}

/// The numbers of l2fwd's last "Port statistics" block: (sent, received, dropped) per port.
fn l2fwd_stats(out: &str, port: u16) -> (u64, u64, u64) {
    let block = &out[out.rfind("Port statistics").unwrap_or_else(|| panic!("no statistics from l2fwd:\n{out}"))..];
    let start = block.find(&format!("Statistics for port {port} ")).unwrap_or_else(|| panic!("no port {port}:\n{block}"));
    let num = |key: &str| -> u64 {
        let at = block[start..].find(key).unwrap() + start + key.len();
        block[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    (num("Packets sent:"), num("Packets received:"), num("Packets dropped:"))
}

#[test]
fn skeleton_forwards_port_0_to_port_1_unchanged() {
    let s = Scratch::new("skeleton");
    let n = 300u64;
    let packets: Vec<Vec<u8>> = (0..n as u16).map(|i| udp4([198, 51, 100, 7], 18 + (i as usize * 5) % 1400, i, 64)).collect();
    let pair = start_pcap_pair(&s, &packets, None);
    let app = start_example(&s, "skeleton", &example_binary("skeleton", "basicfwd"), &pair, 128, &[]);
    wait_or_dump(&app, "Core 0 forwarding packets", 30);
    wait_proxy_counter(&pair, 1, "tx_packets", n, &app);
    let (rx0, _) = app_port_stats(&s.prefix("skeleton"), 0);
    let (_, tx1) = app_port_stats(&s.prefix("skeleton"), 1);
    // basicfwd's one pool lives in the region of its first device (port 0): port 1 copies
    // each packet into its own region, port 0 receives without a copy.
    let copied1 = app_port_xstat(&s.prefix("skeleton"), 1, "tx_copied_packets");
    let PcapPair { proxy, socks, out } = pair;
    let (code, aout, pcode, pout) = finish(app, proxy);
    let report = format!("--- basicfwd ---\n{aout}\n--- proxy ---\n{pout}");
    assert_eq!(pcode, Some(0), "{report}");
    // basicfwd has no signal handler: SIGINT ends it (no exit code).
    let _ = code;
    assert!(!aout.contains("doesn't match"), "{report}");
    // Its own counters: every packet in on port 0, out on port 1.
    assert_eq!((rx0, tx1), (n, n), "basicfwd's ports: ipackets(0)={rx0} opackets(1)={tx1}\n{report}");
    assert_eq!(copied1, n, "{report}");
    let s0 = proxy_socket_stats(&pout, &socks[0]);
    let s1 = proxy_socket_stats(&pout, &socks[1]);
    assert_eq!(counter(&s0, "rx_packets"), n, "{s0:?}");
    assert_eq!(counter(&s1, "tx_packets"), n, "{s1:?}");
    assert_eq!(counter(&s1, "invalid") + counter(&s0, "invalid"), 0, "{s0:?} {s1:?}");
    assert_same_packets(&pcap::read(&out[1]).unwrap(), &packets, "port 1 sends exactly the input, in order");
    assert!(pcap::read(&out[0]).unwrap().is_empty());
    eprintln!(
        "skeleton: basicfwd ipackets(0)={rx0} opackets(1)={tx1} tx_copied_packets(1)={copied1}; proxy p0 rx_packets={} p1 tx_packets={}",
        counter(&s0, "rx_packets"),
        counter(&s1, "tx_packets")
    );
}

#[test]
fn l2fwd_forwards_with_its_mac_rewrite() {
    let s = Scratch::new("l2fwd");
    let n = 300u64;
    let packets: Vec<Vec<u8>> = (0..n as u16).map(|i| udp4([198, 51, 100, 9], 18 + (i as usize * 3) % 900, i, 64)).collect();
    let pair = start_pcap_pair(&s, &packets, None);
    // -q 2: both ports on the one lcore; -T 1: statistics every second.
    let app = start_example(&s, "l2fwd", &example_binary("l2fwd", "l2fwd"), &pair, 128, &["-p", "0x3", "-q", "2", "-T", "1"]);
    wait_or_dump(&app, "entering main loop on lcore 0", 30);
    wait_proxy_counter(&pair, 1, "tx_packets", n, &app);
    // l2fwd's own statistics come every second: wait for a block that shows them.
    wait_until_or_dump(&app, "l2fwd's statistics", 20, |t| {
        t.contains("Port statistics") && l2fwd_stats(t, 1).0 >= n && l2fwd_stats(t, 0).1 >= n
    });
    let (rx0, _) = app_port_stats(&s.prefix("l2fwd"), 0);
    let (_, tx1) = app_port_stats(&s.prefix("l2fwd"), 1);
    let PcapPair { proxy, socks, out } = pair;
    let (code, aout, pcode, pout) = finish(app, proxy);
    let report = format!("--- l2fwd ---\n{aout}\n--- proxy ---\n{pout}");
    assert_eq!(pcode, Some(0), "{report}");
    assert_eq!(code, Some(0), "{report}");
    let (sent1, _, dropped1) = l2fwd_stats(&aout, 1);
    let (_, received0, _) = l2fwd_stats(&aout, 0);
    assert_eq!((received0, sent1, dropped1), (n, n, 0), "{report}");
    assert_eq!((rx0, tx1), (n, n), "l2fwd's ports over telemetry\n{report}");
    let s0 = proxy_socket_stats(&pout, &socks[0]);
    let s1 = proxy_socket_stats(&pout, &socks[1]);
    assert_eq!(counter(&s0, "rx_packets"), n, "{s0:?}");
    assert_eq!(counter(&s1, "tx_packets"), n, "{s1:?}");
    let got = pcap::read(&out[1]).unwrap();
    assert_eq!(got.len(), packets.len());
    for (sent, back) in packets.iter().zip(&got) {
        // l2fwd's MAC rewrite: destination 02:00:00:00:00:<out port>, source the port's.
        assert_eq!(&back[0..6], &[0x02, 0, 0, 0, 0, 1]);
        assert_eq!(&back[12..], &sent[12..]);
    }
    eprintln!(
        "l2fwd: its statistics port0 received={received0} port1 sent={sent1} dropped={dropped1}; proxy p0 rx_packets={} p1 tx_packets={}",
        counter(&s0, "rx_packets"),
        counter(&s1, "tx_packets")
    );
}

#[test]
fn l3fwd_routes_by_destination_with_rx_checksum_offload() {
    let s = Scratch::new("l3fwd");
    // l3fwd's default LPM routes: 198.18.<p>.0/24 leaves by port <p>. Two of three
    // packets go to port 1, the third back out of port 0.
    let packets: Vec<Vec<u8>> =
        (0..300u16).map(|i| udp4([198, 18, u8::from(i % 3 != 0), 1 + (i % 50) as u8], 18 + (i as usize * 7) % 1000, i, 64)).collect();
    let to1: Vec<&Vec<u8>> = packets.iter().filter(|p| p[32] == 1).collect();
    let to0: Vec<&Vec<u8>> = packets.iter().filter(|p| p[32] == 0).collect();
    let (n, n1, n0) = (packets.len() as u64, to1.len() as u64, to0.len() as u64);
    let pair = start_pcap_pair(&s, &packets, None);
    // l3fwd asks for rx checksum offloads (RTE_ETH_RX_OFFLOAD_CHECKSUM) and relies on them
    // for RFC 1812's checksum check; --parse-ptype: the packet types in software; -P:
    // promiscuous; one lcore (0) serves queue 0 of both ports.
    let app = start_example(
        &s,
        "l3fwd",
        &example_binary("l3fwd", "l3fwd"),
        &pair,
        512,
        &["-p", "0x3", "-P", "--parse-ptype", "--config=(0,0,0),(1,0,0)"],
    );
    wait_or_dump(&app, "entering main loop on lcore 0", 60);
    wait_proxy_counter(&pair, 1, "tx_packets", n1, &app);
    wait_proxy_counter(&pair, 0, "tx_packets", n0, &app);
    let prefix = s.prefix("l3fwd");
    let (rx0, tx0) = app_port_stats(&prefix, 0);
    let (_, tx1) = app_port_stats(&prefix, 1);
    let PcapPair { proxy, socks, out } = pair;
    let (code, aout, pcode, pout) = finish(app, proxy);
    let report = format!("--- l3fwd ---\n{aout}\n--- proxy ---\n{pout}");
    assert_eq!(pcode, Some(0), "{report}");
    assert_eq!(code, Some(0), "{report}");
    assert!(!aout.contains("doesn't match"), "{report}");
    assert_eq!((rx0, tx1, tx0), (n, n1, n0), "l3fwd's ports: ipackets(0), opackets(1), opackets(0)\n{report}");
    let s0 = proxy_socket_stats(&pout, &socks[0]);
    let s1 = proxy_socket_stats(&pout, &socks[1]);
    assert_eq!(counter(&s0, "rx_packets"), n, "{s0:?}");
    assert_eq!(counter(&s1, "tx_packets"), n1, "{s1:?}");
    assert_eq!(counter(&s0, "tx_packets"), n0, "{s0:?}");
    for (port, sent) in [(1usize, &to1), (0, &to0)] {
        let got = pcap::read(&out[port]).unwrap();
        assert_eq!(got.len(), sent.len(), "port {port}");
        for (i, (back, sent)) in got.iter().zip(sent.iter()).enumerate() {
            // Routed: destination MAC 02:00:00:00:00:<port> (l3fwd's default), TTL one
            // less, the header checksum updated, everything else as it came.
            assert_eq!(&back[0..6], &[0x02, 0, 0, 0, 0, port as u8], "port {port} packet {i}");
            assert_eq!(back[22], sent[22] - 1, "TTL, port {port} packet {i}");
            assert!(ip_cksum_ok(back), "IP checksum, port {port} packet {i}: {back:02x?}");
            assert_eq!(&back[12..22], &sent[12..22]);
            assert_eq!(&back[26..], &sent[26..]);
        }
    }
    eprintln!(
        "l3fwd: ipackets(0)={rx0} opackets(1)={tx1} opackets(0)={tx0}; proxy p0 rx_packets={} p1 tx_packets={} p0 tx_packets={}",
        counter(&s0, "rx_packets"),
        counter(&s1, "tx_packets"),
        counter(&s0, "tx_packets")
    );
}

#[test]
fn ip_fragmentation_fragments_what_exceeds_1500_bytes_with_checksums_done_by_the_driver() {
    let s = Scratch::new("ipfrag");
    // ip_fragmentation's routes: 100.20.0.0/16 leaves by port 1. Every other packet has an
    // IP length above its MTU of 1500 (3000 to 5000 bytes) and is cut into fragments.
    let packets: Vec<Vec<u8>> = (0..100u16)
        .map(|i| {
            let payload = if i % 2 == 0 { 3000 + (i as usize * 37) % 2000 } else { 100 + i as usize };
            udp4([100, 20, 0, 5], payload, i, 64)
        })
        .collect();
    let pair = start_pcap_pair(&s, &packets, None);
    // -q 2: both ports on the one lcore. It asks for rx checksum and tx IPv4 checksum
    // offloads, and leaves each fragment's header checksum to the driver.
    let app = start_example(
        &s,
        "ipfrag",
        &example_binary("ip_fragmentation", "ip_fragmentation"),
        &pair,
        512,
        &["-p", "0x3", "-q", "2"],
    );
    wait_or_dump(&app, "entering main loop on lcore 0", 60);
    // Fragments per packet: IP payload cut into pieces of 1480 bytes.
    let pieces = |p: &Vec<u8>| {
        let ip_payload = p.len() - 14 - 20;
        if p.len() - 14 <= 1500 {
            1
        } else {
            ip_payload.div_ceil(1480)
        }
    };
    let expected: usize = packets.iter().map(pieces).sum();
    wait_proxy_counter(&pair, 1, "tx_packets", expected as u64, &app);
    let prefix = s.prefix("ipfrag");
    let (rx0, _) = app_port_stats(&prefix, 0);
    let (_, tx1) = app_port_stats(&prefix, 1);
    let PcapPair { proxy, socks, out } = pair;
    let (code, aout, pcode, pout) = finish(app, proxy);
    let report = format!("--- ip_fragmentation ---\n{aout}\n--- proxy ---\n{pout}");
    assert_eq!(pcode, Some(0), "{report}");
    // ip_fragmentation has no signal handler: SIGINT ends it (no exit code).
    let _ = code;
    assert!(!aout.contains("doesn't match"), "{report}");
    assert_eq!((rx0, tx1), (packets.len() as u64, expected as u64), "ip_fragmentation's ipackets(0), opackets(1)\n{report}");
    // Its indirect-mbuf pool (data room 0) cannot live in the region: private, said once.
    assert_eq!(aout.matches("cannot live in the shared region").count(), 1, "{report}");
    let s0 = proxy_socket_stats(&pout, &socks[0]);
    let s1 = proxy_socket_stats(&pout, &socks[1]);
    assert_eq!(counter(&s0, "rx_packets"), packets.len() as u64, "{s0:?}");
    assert_eq!(counter(&s1, "tx_packets"), expected as u64, "{s1:?}");
    let got = pcap::read(&out[1]).unwrap();
    assert_eq!(got.len(), expected, "{report}");
    // Put each input packet together again from its fragments (they leave in order).
    let mut at = 0;
    for (i, sent) in packets.iter().enumerate() {
        let k = pieces(sent);
        let mut payload = Vec::new();
        for (j, frag) in got[at..at + k].iter().enumerate() {
            assert_eq!(&frag[0..6], &[0x02, 0, 0, 0, 0, 1], "packet {i} fragment {j}: destination MAC");
            assert!(ip_cksum_ok(frag), "packet {i} fragment {j}: IP header checksum {frag:02x?}");
            let total = u16::from_be_bytes([frag[16], frag[17]]) as usize;
            assert!(total <= 1500 && frag.len() == 14 + total, "packet {i} fragment {j}: {total} bytes");
            let flags_offset = u16::from_be_bytes([frag[20], frag[21]]);
            let more = flags_offset & 0x2000 != 0;
            assert_eq!(more, j + 1 < k, "packet {i} fragment {j}: MF");
            assert_eq!((flags_offset & 0x1fff) as usize * 8, payload.len(), "packet {i} fragment {j}: offset");
            payload.extend_from_slice(&frag[34..]);
        }
        assert_eq!(&payload[..], &sent[34..], "packet {i} reassembled");
        if k == 1 {
            assert!(l4_cksum_ok(&got[at]), "packet {i}");
        }
        at += k;
    }
    eprintln!(
        "ip_fragmentation: ipackets(0)={rx0} opackets(1)={tx1} ({} packets in, {expected} out); proxy p0 rx_packets={} p1 tx_packets={} copies={}",
        packets.len(),
        counter(&s0, "rx_packets"),
        counter(&s1, "tx_packets"),
        counter(&s1, "copies")
    );
}
