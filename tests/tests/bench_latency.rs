//! The proxy's benchmark mode (`--bench-latency`, used by scripts/bench.sh): its NIC is a
//! ring pair to a latency probe polled by the data loop. An unmodified macswap testpmd
//! guest turns every probe frame around; the probe's report must account for every
//! frame of its window and give round-trip times.
//!
//! Run one at a time (`--test-threads=1`).

use std::collections::HashMap;
use std::time::Duration;

use e2e_tests::*;

fn report_fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(fields: &HashMap<String, String>, key: &str, line: &str) -> f64 {
    fields
        .get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no number {key} in '{line}'"))
}

#[test]
fn bench_latency_probe_through_a_macswap_guest() {
    let s = Scratch::new("bench-latency");
    let sock = s.path("q0/sock");
    let proxy = start_proxy(
        &s,
        &ProxyConfig {
            // No --vdev: port 0 is the probe's ring-pair NIC.
            eal: vec![],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: vec![
                "--stats-period".into(),
                "0".into(),
                "--bench-latency".into(),
                "20k,size=64,warmup=0.5,seconds=1,grace=0.5".into(),
            ],
            netns: None,
        },
    );
    if let Err(e) = proxy.out.wait_contains("IO_PROXY: ready", Duration::from_secs(30)) {
        panic!("{e}\n--- proxy ---\n{}", proxy.out.text());
    }
    assert!(proxy.out.text().contains("is a ring pair to the latency probe"), "{}", proxy.out.text());
    let guest = start_testpmd(
        &s,
        &GuestConfig {
            socket: &sock,
            devargs: "region_size=32M",
            memory_mb: 32,
            testpmd_args: ["--forward-mode=macswap", "--total-num-mbufs=4096", "--stats-period", "1"]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            name: "guest",
        },
    );
    let done = proxy.out.wait_contains("LATENCY ", Duration::from_secs(40));
    let (_, gout) = guest.interrupt(Duration::from_secs(20));
    let (code, out) = proxy.interrupt(Duration::from_secs(20));
    done.unwrap_or_else(|e| panic!("{e}\n--- proxy ---\n{out}\n--- guest ---\n{gout}"));
    assert_eq!(code, Some(0), "proxy exit\n{out}");
    let line = out.lines().find(|l| l.starts_with("LATENCY ")).expect("LATENCY line");
    let f = report_fields(line);
    assert_eq!(f.get("complete").map(String::as_str), Some("1"), "{line}");
    let sent = number(&f, "sent", line);
    let received = number(&f, "received", line);
    // 20 000 frames a second for one second; the 2-CPU machines here are shared, so
    // allow for a probe that was held up a while, but not for one that sent nothing.
    assert!((2_000.0..=20_500.0).contains(&sent), "{line}");
    // A macswap guest with room in every ring turns every frame around.
    assert!(received >= sent * 0.99, "{line}");
    let (min, p50, p99, max) =
        (number(&f, "min_ns", line), number(&f, "p50_ns", line), number(&f, "p99_ns", line), number(&f, "max_ns", line));
    assert!(min > 0.0 && min <= p50 && p50 <= p99 && p99 <= max, "{line}");
    // While the guest is served, the probe writes its frames into the guest's buffers,
    // as a NIC's DMA would, and the proxy hands them over without a copy: only frames
    // sent before the guest came (in the probe's own buffers, still in the ring NIC
    // then) are copied, none of the window's.
    let stats = proxy_socket_stats(&out, &sock);
    let (copies, delivered) = (counter(&stats, "copies"), counter(&stats, "rx_packets"));
    assert!(delivered >= received as u64, "{stats:?}\n{line}");
    assert!(copies <= delivered - received as u64, "{stats:?}\n{line}");
    assert_eq!(counter(&stats, "invalid"), 0, "{stats:?}");
}
