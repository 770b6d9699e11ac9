//! Checksum offloads of `net_shm` as an unmodified application sees them: testpmd's
//! checksum engine (`--forward-mode=csum`) with rx checksum offload enabled and its tx
//! checksums set to "hw". A known capture with good and bad checksums enters the
//! proxy's `net_pcap` port; testpmd counts the bad ones from the rx flags the driver set
//! (and prints each packet's flags), and what goes out must carry right checksums that
//! testpmd left to the device (it writes only the pseudo-header sum for "hw").
//!
//! Run one at a time (`--test-threads=1`).

use std::path::Path;
use std::time::Duration;

use e2e_tests::packet::{ip_cksum_ok, l4_cksum_ok, tcp4, udp4};
use e2e_tests::*;

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// An interactive testpmd on `sock` (`args` after `-i`), its port stopped once it came
/// up: offloads are configured on a stopped port, and starting it again starts the
/// proxy's queue, which replays the capture into the ring (kept there by --no-flush-rx).
fn stopped_testpmd(s: &Scratch, sock: &Path, args: &[&str]) -> Proc {
    let testpmd_args = ["-i"].iter().chain(args).chain(&["--no-flush-rx", "--total-num-mbufs=4096"]).map(|a| a.to_string()).collect();
    let mut g = start_testpmd(s, &GuestConfig { socket: sock, devargs: "region_size=64M", memory_mb: 64, testpmd_args, name: "guest" });
    wait_or_dump(&g, "Checking link statuses", 30);
    g.send("port stop 0");
    wait_or_dump(&g, "Stopping ports", 20);
    g
}

/// Starts the port of [`stopped_testpmd`] again, verbose (testpmd prints each packet it
/// receives, with its flags), and forwarding; then waits until the proxy has sent `n`
/// packets (or says why it did not).
fn forward_replay(g: &mut Proc, proxy: &Proc, sock: &Path, n: u64) -> Result<(), String> {
    g.send("set verbose 1");
    g.send("port start 0");
    wait_until_or_dump(proxy, "second queue start", 20, |t| count(t, "queue started") >= 2);
    g.send("start");
    proxy.out.wait_for("every packet forwarded", Duration::from_secs(30), |t| {
        shown_counter(&proxy_socket_stats(t, sock), "tx_packets") >= n
    })
}

#[test]
fn testpmd_csum_engine_sees_rx_checksum_flags_and_gets_tx_checksums_done() {
    let s = Scratch::new("csum");
    // 40 good UDP, 20 good TCP, 10 UDP with a broken IP header checksum, 10 with a broken
    // UDP checksum, 10 TCP with a broken TCP checksum.
    let mut packets = Vec::new();
    for i in 0..40u16 {
        packets.push(udp4([198, 51, 100, 1], 20 + i as usize * 11, i, 64));
    }
    for i in 0..20u16 {
        packets.push(tcp4([198, 51, 100, 2], 10 + i as usize * 13, 100 + i));
    }
    for i in 0..10u16 {
        let mut p = udp4([198, 51, 100, 3], 50 + i as usize, 200 + i, 64);
        p[24] ^= 0x5a;
        packets.push(p);
    }
    for i in 0..10u16 {
        let mut p = udp4([198, 51, 100, 4], 60 + i as usize, 300 + i, 64);
        p[40] ^= 0x01;
        packets.push(p);
    }
    for i in 0..10u16 {
        let mut p = tcp4([198, 51, 100, 5], 70 + i as usize, 400 + i);
        p[50] ^= 0x80;
        packets.push(p);
    }
    let n = packets.len() as u64;
    let PcapProxy { proxy, sock, output } = start_pcap_proxy(&s, &packets);
    // tx checksums are configured on a stopped port.
    let mut g = stopped_testpmd(&s, &sock, &["--forward-mode=csum", "--enable-rx-cksum"]);
    for proto in ["ip", "udp", "tcp"] {
        g.send(&format!("csum set {proto} hw 0"));
    }
    wait_until_or_dump(&g, "csum set", 20, |t| count(t, "checksum offload is hw") >= 3);
    let done = forward_replay(&mut g, &proxy, &sock, n);
    g.send("stop");
    wait_or_dump(&g, "Bad-ipcsum", 20);
    let Ended { proxy_code: pcode, proxy_out: pout, testpmd_out: gtext, report } = quit_proxy_then_testpmd(proxy, g);
    done.unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert_eq!(pcode, Some(0), "{report}");
    assert!(!gtext.contains("doesn't match"), "{report}");
    for proto in ["IP", "UDP", "TCP"] {
        assert!(gtext.contains(&format!("{proto} checksum offload is hw")), "{proto}\n{report}");
    }
    // testpmd's counts from the rx flags: 10 bad IP headers, 20 bad L4 checksums.
    let stats_line = gtext.lines().rev().find(|l| l.contains("Bad-ipcsum:")).unwrap();
    let num = |key: &str| -> u64 {
        let at = stats_line.find(key).unwrap() + key.len();
        stats_line[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!((num("Bad-ipcsum:"), num("Bad-l4csum:")), (10, 20), "{stats_line}\n{report}");
    // The flags testpmd printed per received packet (verbose: its "ol_flags:" line; the
    // csum engine prints them once more on its "rx:" line): every packet had its IP
    // checksum judged, and the good ones were reported good.
    let flagged = |flag: &str| gtext.lines().filter(|l| l.contains("ol_flags:") && l.contains(flag)).count();
    let rx_good_ip = flagged("RTE_MBUF_F_RX_IP_CKSUM_GOOD");
    let rx_bad_ip = flagged("RTE_MBUF_F_RX_IP_CKSUM_BAD");
    let rx_good_l4 = flagged("RTE_MBUF_F_RX_L4_CKSUM_GOOD");
    let rx_bad_l4 = flagged("RTE_MBUF_F_RX_L4_CKSUM_BAD");
    assert_eq!((rx_good_ip, rx_bad_ip, rx_good_l4, rx_bad_l4), (80, 10, 70, 20), "{report}");
    // On the wire: testpmd asked the device for every checksum, and each is right.
    let got = pcap::read(&output).unwrap();
    assert_eq!(got.len(), packets.len(), "{report}");
    for (i, (back, sent)) in got.iter().zip(&packets).enumerate() {
        assert!(ip_cksum_ok(back), "packet {i}: IP checksum {back:02x?}");
        assert!(l4_cksum_ok(back), "packet {i}: L4 checksum {back:02x?}");
        // Apart from the MAC addresses and checksum fields, the packet is as it was sent.
        assert_eq!(back.len(), sent.len(), "packet {i}");
        let l4_cksum_at = if sent[23] == 6 { 50 } else { 40 };
        for at in 12..sent.len() {
            if !(24..26).contains(&at) && !(l4_cksum_at..l4_cksum_at + 2).contains(&at) {
                assert_eq!(back[at], sent[at], "packet {i} byte {at}");
            }
        }
    }
    let stats = proxy_socket_stats(&pout, &sock);
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
    eprintln!(
        "csum: testpmd Bad-ipcsum={} Bad-l4csum={}; rx flags IP good/bad {rx_good_ip}/{rx_bad_ip}, L4 good/bad {rx_good_l4}/{rx_bad_l4}; {} packets out with right checksums; proxy tx_packets={}",
        num("Bad-ipcsum:"),
        num("Bad-l4csum:"),
        got.len(),
        counter(&stats, "tx_packets")
    );
}

#[test]
fn testpmd_sees_vlan_tags_stripped_and_gets_its_tag_inserted() {
    let s = Scratch::new("vlan");
    // 20 frames tagged with VLAN 5, 20 untagged.
    let mut packets = Vec::new();
    for i in 0..40u16 {
        let p = udp4([198, 51, 100, 9], 30 + i as usize, i, 64);
        if i % 2 == 0 {
            let mut tagged = p[..12].to_vec();
            tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            tagged.extend_from_slice(&p[12..]);
            packets.push(tagged);
        } else {
            packets.push(p);
        }
    }
    let n = packets.len() as u64;
    let PcapProxy { proxy, sock, output } = start_pcap_proxy(&s, &packets);
    // tx_vlan needs a stopped port.
    let mut g = stopped_testpmd(&s, &sock, &["--forward-mode=macswap", "--enable-hw-vlan-strip"]);
    g.send("tx_vlan set 0 7");
    let done = forward_replay(&mut g, &proxy, &sock, n);
    g.send("stop");
    wait_or_dump(&g, "Forward statistics for port 0", 20);
    let Ended { proxy_code: pcode, testpmd_out: gtext, report, .. } = quit_proxy_then_testpmd(proxy, g);
    done.unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert_eq!(pcode, Some(0), "{report}");
    // What testpmd saw: the 20 tagged frames arrived stripped, their tag in vlan_tci.
    let stripped = gtext.lines().filter(|l| l.contains("ol_flags:") && l.contains("RTE_MBUF_F_RX_VLAN_STRIPPED")).count();
    assert_eq!(stripped, 20, "{report}");
    assert_eq!(count(&gtext, " - VLAN tci=0x5"), 20, "{report}");
    // On the wire: every frame carries testpmd's tag 7, inserted by the device, and is
    // otherwise the input with its MACs swapped and its own tag (if any) gone.
    let got = pcap::read(&output).unwrap();
    assert_eq!(got.len(), packets.len(), "{report}");
    for (i, (back, sent)) in got.iter().zip(&packets).enumerate() {
        let untagged: Vec<u8> = if sent[12..14] == [0x81, 0x00] { [&sent[..12], &sent[16..]].concat() } else { sent.clone() };
        assert_eq!(&back[12..16], &[0x81, 0x00, 0x00, 0x07], "packet {i}: {back:02x?}");
        assert_eq!(&back[0..6], &untagged[6..12], "packet {i}: MACs swapped");
        assert_eq!(&back[6..12], &untagged[0..6], "packet {i}: MACs swapped");
        assert_eq!(&back[16..], &untagged[12..], "packet {i}");
    }
    eprintln!("vlan: testpmd saw {stripped} frames with RTE_MBUF_F_RX_VLAN_STRIPPED and tci 0x5; {} frames out, all tagged 7", got.len());
}
