//! Access control with real users: an unmodified testpmd run as an unprivileged system
//! user (no root, no hugepages, access to its socket directory only, the plugins in a
//! root-owned 0755 directory) forwards traffic through the proxy; another user is kept
//! out by the file permissions on one socket and by the uid allowlist on another, and
//! the proxy logs the refusal with the peer's pid and uid.
//!
//! Needs root (it creates the users `shmguest` and `shmother` if missing, as
//! `scripts/setup.sh` does).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_tests::*;

const GUEST_USER: &str = "shmguest";
const OTHER_USER: &str = "shmother";

/// The three plugins copied into a root-owned 0755 directory outside any
/// world-writable one (EAL checks that for `-d <path>`), removed on drop.
struct PluginDir(PathBuf);

impl PluginDir {
    fn new() -> PluginDir {
        let dir = PathBuf::from(format!("/run/shm-e2e-plugins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in PLUGINS {
            let dst = dir.join(p);
            std::fs::copy(plugin_dir().join(p), &dst).unwrap();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        PluginDir(dir)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// testpmd as `user`, plugins by full path from `plugins`.
fn guest_as(s: &Scratch, plugins: &Path, sock: &Path, user: (u32, u32), name: &str) -> Proc {
    let (_, cpu) = cpus();
    let mut cmd = Command::new(TESTPMD);
    cmd.args(["--lcores", &format!("0@{cpu},1@{cpu}"), "--no-huge", "-m", "32", "--no-pci"]);
    cmd.args(["--file-prefix", &s.prefix(name)]);
    for p in PLUGINS {
        cmd.arg("-d").arg(plugins.join(p));
    }
    cmd.args(["-a", &format!("sock:{},region_size=64M", sock.display())]);
    cmd.args(["--", "--forward-mode=macswap", "--total-num-mbufs=8192"]);
    cmd.env("LD_LIBRARY_PATH", plugins);
    // EAL's runtime files go to a directory of this user's own.
    let runtime = s.path(&format!("run-{name}"));
    std::fs::create_dir_all(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(user.0), Some(user.1)).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    cmd.env("XDG_RUNTIME_DIR", &runtime);
    cmd.current_dir("/");
    // std drops root's supplementary groups when it changes the uid.
    cmd.uid(user.0).gid(user.1);
    Proc::spawn(name, cmd)
}

fn query_stats(proxy: &mut Proc) -> String {
    let before = proxy.out.text().matches("unclaimed=").count();
    proxy.send("show stats");
    proxy
        .out
        .wait_for("a 'show stats' answer", Duration::from_secs(10), |t| t.matches("unclaimed=").count() > before)
        .unwrap();
    proxy.out.text()
}

#[test]
fn an_unprivileged_guest_forwards_and_other_users_are_refused() {
    assert!(is_root(), "this test creates users and runs processes as them (CI runs as root)");
    let guest = ensure_user(GUEST_USER);
    let other = ensure_user(OTHER_USER);
    let plugins = PluginDir::new();
    let s = Scratch::new("access");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = s.path("guest/sock");
    // World-connectable by its mode, but the proxy's uid allowlist still applies.
    let open = s.path("open/sock");
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![
                format!("socket {} port 0 queue 0", private.display()),
                format!("socket {} port 0 queue 1 mode 0666", open.display()),
            ],
            extra: vec!["--socket-group".into(), GUEST_USER.into(), "--allow-uid".into(), GUEST_USER.into()],
            netns: None,
        },
    );
    proxy.out.wait_contains("IO_PROXY: ready", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));

    // The files as configured: not world-accessible, the guests' group.
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    assert_eq!(meta(&private).mode() & 0o7777, 0o660);
    assert_eq!(meta(&private).gid(), guest.1);
    assert_eq!(meta(private.parent().unwrap()).mode() & 0o7777, 0o770);
    assert_eq!(meta(private.parent().unwrap()).gid(), guest.1);
    assert_eq!(meta(&open).mode() & 0o7777, 0o666);

    // The guest user forwards traffic.
    let g = guest_as(&s, &plugins.0, &private, guest, "guest");
    proxy.out.wait_contains("queue started", Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!("{e}\n--- proxy ---\n{}\n--- guest ---\n{}", proxy.out.text(), g.out.text())
    });
    std::thread::sleep(Duration::from_secs(2));
    let stats = proxy_socket_stats(&query_stats(&mut proxy), &private);
    assert!(counter(&stats, "tx_packets") > 10_000, "the unprivileged guest did not forward: {stats:?}\n{}", g.out.text());
    assert_eq!(counter(&stats, "copies"), 0, "{stats:?}");

    // Another user cannot even reach the private socket (directory and file modes).
    let denied = guest_as(&s, &plugins.0, &private, other, "other1");
    denied.out.wait_contains("Permission denied", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", denied.out.text()));
    let (_, _) = denied.interrupt(Duration::from_secs(10));

    // On the open socket the file mode lets it connect; the allowlist refuses it.
    let refused = guest_as(&s, &plugins.0, &open, other, "other2");
    refused.out.wait_contains("refused us", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", refused.out.text()));
    let pid = refused.pid();
    let (_, rout) = refused.interrupt(Duration::from_secs(10));
    assert!(rout.contains("NotAllowed") && rout.contains(&format!("uid {}", other.0)), "{rout}");
    let log = format!("refused a peer (pid {pid} uid {} gid {})", other.0, other.1);
    proxy.out.wait_contains(&log, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    let open_stats = proxy_socket_stats(&query_stats(&mut proxy), &open);
    assert_eq!(counter(&open_stats, "guests_served"), 0, "{open_stats:?}");
    assert!(counter(&open_stats, "refused") >= 1, "{open_stats:?}");

    // The allowed guest was never disturbed.
    let (_, gout) = g.interrupt(Duration::from_secs(20));
    let fwd = testpmd_port_stats(&gout, 0);
    assert!(fwd.get("TX-packets").copied().unwrap_or(0) > 10_000, "{gout}");
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    assert!(!private.exists() && !open.exists(), "sockets removed on quit");
}
