//! Least privilege (docs/threat-model.md, "Least privilege"): after start-up the proxy
//! runs as its dedicated user with no capabilities, no way back (bounding set empty,
//! no_new_privs) and every thread under the seccomp allowlist; guests still attach and
//! forward, and a socket typed after the drop still works. IOVA as physical addresses
//! and a missing user are refused at start. Needs root (CI runs as root).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use e2e_tests::*;

fn guest(scratch: &Scratch, socket: &Path, name: &str) -> Proc {
    start_testpmd(
        scratch,
        &GuestConfig {
            socket,
            devargs: "",
            memory_mb: 32,
            testpmd_args: ["--forward-mode=io", "--total-num-mbufs=2048", "--stats-period", "1"].iter().map(|s| s.to_string()).collect(),
            name,
        },
    )
}

/// The value of `key` in a status map, failing when it is missing.
fn field<'a>(status: &'a HashMap<String, String>, key: &str) -> &'a str {
    status.get(key).unwrap_or_else(|| panic!("no {key} in /proc/<pid>/status: {status:?}"))
}

/// Asserts what a confined thread or process looks like in /proc: every uid and gid the
/// proxy user's, no capability in any set, no_new_privs, a seccomp filter. The bounding
/// set is per thread: EAL's threads, made before the drop, keep theirs (`bounding`
/// false), with nothing permitted, no_new_privs and execve outside the allowlist.
fn assert_confined(what: &str, status: &HashMap<String, String>, uid: u32, gid: u32, bounding: bool) {
    assert_eq!(field(status, "Uid"), format!("{uid} {uid} {uid} {uid}"), "{what}: real, effective, saved, fs uid");
    assert_eq!(field(status, "Gid"), format!("{gid} {gid} {gid} {gid}"), "{what}: gids");
    assert_eq!(field(status, "Groups"), gid.to_string(), "{what}: supplementary groups");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        if set != "CapBnd" || bounding {
            assert_eq!(field(status, set), "0000000000000000", "{what}: {set}");
        }
    }
    assert_eq!(field(status, "NoNewPrivs"), "1", "{what}");
    assert_eq!(field(status, "Seccomp"), "2", "{what}: filter mode");
    assert_eq!(field(status, "Seccomp_filters"), "1", "{what}");
}

#[test]
fn after_start_up_the_proxy_is_its_own_user_under_seccomp_and_still_serves() {
    assert!(is_root(), "this test needs root (CI runs as root)");
    let (uid, gid) = ensure_user(PROXY_USER);
    let s = Scratch::new("privsep");
    let sock = s.path("q0/sock");
    let late = s.path("late/sock");
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into(), "--vdev".into(), "net_null1".into()],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: vec!["--stats-period".into(), "1".into()],
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let out = proxy.out.text();
    assert!(out.contains(&format!("running as user {PROXY_USER} (uid {uid}, gid {gid}")), "{out}");
    assert!(out.contains("capabilities kept: none"), "{out}");
    assert!(out.contains("seccomp: Kill"), "{out}");
    let pid = proxy.pid();
    assert_confined("process", &proc_status(pid), uid, gid, true);
    // Every thread: EAL's (interrupt, telemetry, multi-process), the data loop, the
    // control thread.
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = task.unwrap().file_name().to_string_lossy().parse().unwrap();
        let status = task_status(pid, tid);
        let name = field(&status, "Name").to_string();
        // The data loop (the main thread) and the control thread, made after the drop.
        let ours = tid == pid || name == "io-proxy-ctl";
        assert_confined(&format!("thread {tid} ({name})"), &status, uid, gid, ours);
        names.push(name);
    }
    assert!(names.iter().any(|n| n == "io-proxy-ctl"), "the control thread is among {names:?}");
    assert!(names.iter().any(|n| n.starts_with("eal-intr")), "EAL's interrupt thread is among {names:?}");
    // The startup socket and its directory belong to the proxy's user (made as root
    // before the drop), so that it can remove them when it stops.
    for p in [&sock, &s.path("q0")] {
        let meta = std::fs::symlink_metadata(p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", p.display());
    }

    // A guest attaches and forwards under the confined proxy.
    let g = guest(&s, &sock, "guest");
    wait_or_dump(&proxy, "queue started", 30);
    let moving = proxy.out.wait_for("packets both ways", Duration::from_secs(20), |t| {
        let st = proxy_socket_stats(t, &sock);
        shown_counter(&st, "rx_packets") > 10_000 && shown_counter(&st, "tx_packets") > 10_000
    });

    // A socket typed after the drop: made by the proxy's user in the directory it was
    // given, and a guest attaches to it and forwards too.
    proxy.send(&format!("socket {} port 1 queue 0", late.display()));
    let typed = proxy.out.wait_contains(&format!("ok: serving port 1 queue 0 on {}", late.display()), Duration::from_secs(10));
    let late_meta = std::fs::symlink_metadata(&late).ok().map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
    let g2 = guest(&s, &late, "guest2");
    let late_moving = proxy.out.wait_for("packets both ways on the late socket", Duration::from_secs(30), |t| {
        let st = proxy_socket_stats(t, &late);
        shown_counter(&st, "rx_packets") > 10_000 && shown_counter(&st, "tx_packets") > 10_000
    });
    let still_confined = proc_status(pid);
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    let (_, gout) = g.interrupt(Duration::from_secs(20));
    let (_, g2out) = g2.interrupt(Duration::from_secs(20));
    let dump = format!("--- proxy ---\n{pout}\n--- guest ---\n{gout}\n--- guest2 ---\n{g2out}");
    moving.unwrap_or_else(|e| panic!("{e}\n{dump}"));
    typed.unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_eq!(late_meta, Some((uid, gid, 0o660)), "the late socket's owner, group, mode\n{dump}");
    late_moving.unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert_confined("process after two guests", &still_confined, uid, gid, true);
    assert_eq!(code, Some(0), "the proxy stops cleanly (no SIGSYS)\n{dump}");
    assert!(!pout.contains("seccomp: system call"), "{dump}");
    // It removed what it made, as its own user.
    assert!(!sock.exists() && !late.exists() && !s.path("late").exists(), "sockets left behind\n{dump}");
}

/// Starts a proxy that must refuse to start; returns its exit code and output.
fn refused(tag: &str, eal: &[&str], extra: &[&str]) -> (Option<i32>, String) {
    let s = Scratch::new(tag);
    let sock = s.path("q0/sock");
    let mut e = vec!["--vdev".to_string(), "net_null0".into()];
    e.extend(eal.iter().map(|a| a.to_string()));
    let proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: e,
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: extra.iter().map(|a| a.to_string()).collect(),
            netns: None,
        },
    );
    let (code, out) = proxy.wait(Duration::from_secs(30));
    assert!(!sock.exists(), "a refused proxy leaves no socket\n{out}");
    (code, out)
}

#[test]
fn iova_as_physical_addresses_is_refused() {
    assert!(is_root(), "this test needs root (CI runs as root)");
    let (code, out) = refused("iova-pa", &["--iova-mode=pa"], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("dpdk-io-proxy: --iova-mode=pa: the proxy refuses it: guest regions are memfd pages the proxy does not pin"), "{out}");
    assert!(!out.contains("IO_PROXY: ready"), "{out}");
}

#[test]
fn a_missing_user_is_refused_with_how_to_make_it() {
    assert!(is_root(), "this test needs root (CI runs as root)");
    let (code, out) = refused("nouser", &[], &["--user", "no-such-proxy-user"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("dpdk-io-proxy: --user: no user 'no-such-proxy-user': create it (scripts/setup.sh does"), "{out}");
}
