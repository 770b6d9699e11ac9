//! Access control with real users: an unmodified testpmd run as an unprivileged system
//! user (no root, no hugepages, access to its socket directory only, the plugins in a
//! root-owned 0755 directory) forwards traffic through the proxy; another user is kept
//! out by the file permissions on one socket and by the uid allowlist on another, and
//! the proxy logs the refusal with the peer's pid and uid.
//!
//! Needs root (it creates the users `shmguest` and `shmother` if missing, as
//! `scripts/setup.sh` does).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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

    // The files as configured: not world-accessible, the guests' group. The directories
    // the proxy made are its own, with search-only bits: no guest can write them.
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    assert_eq!(meta(&private).mode() & 0o7777, 0o660);
    assert_eq!(meta(&private).gid(), guest.1);
    assert_eq!(meta(private.parent().unwrap()).mode() & 0o7777, 0o710);
    // The user the proxy runs as after start-up owns it (it removes the socket on quit).
    let proxy_user = ensure_user(PROXY_USER);
    assert_eq!(meta(private.parent().unwrap()).uid(), proxy_user.0);
    assert_eq!(meta(private.parent().unwrap()).gid(), guest.1);
    assert_eq!(meta(&open).mode() & 0o7777, 0o666);
    assert_eq!(meta(open.parent().unwrap()).mode() & 0o7777, 0o711);
    assert_eq!(meta(open.parent().unwrap()).uid(), proxy_user.0);

    // A member of the socket's group cannot delete or replace the socket, nor put
    // anything next to it.
    for (what, args) in [
        ("delete the socket", vec!["rm".to_string(), "-f".into(), private.display().to_string()]),
        ("rename the socket", vec!["mv".into(), private.display().to_string(), private.with_file_name("moved").display().to_string()]),
        ("make a file beside it", vec!["touch".into(), private.with_file_name("planted").display().to_string()]),
        ("link over it", vec!["ln".into(), "-sf".into(), "/etc/passwd".into(), private.display().to_string()]),
    ] {
        let out = Command::new(&args[0]).args(&args[1..]).uid(guest.0).gid(guest.1).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Permission denied"), "the guest could {what}: {err}");
    }
    assert!(std::fs::symlink_metadata(&private).unwrap().file_type().is_socket(), "still the proxy's socket");

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
    assert!(testpmd_counter(&fwd, "TX-packets") > 10_000, "{gout}");
    quit_proxy(proxy);
    assert!(!private.exists() && !open.exists(), "sockets removed on quit");
}

/// Text the proxy printed after `from` (its output so far was `from` bytes long).
fn answer_after(proxy: &Proc, from: usize, what: &str) -> String {
    proxy
        .out
        .wait_for(what, Duration::from_secs(10), |t| t[from..].contains("ok: ") || t[from..].contains("error: "))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    proxy.out.text()[from..].to_string()
}

#[test]
fn the_proxy_refuses_socket_paths_that_another_user_could_change() {
    assert!(is_root(), "this test creates users and gives them files");
    let guest = ensure_user(GUEST_USER);
    let s = Scratch::new("sockdirs");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mkdir = |name: &str, mode: u32, owner: u32| {
        let d = s.path(name);
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    };
    let world = mkdir("world", 0o777, 0);
    let group_w = mkdir("groupw", 0o770, 0);
    let sticky = mkdir("sticky", 0o1777, 0);
    let theirs = mkdir("theirs", 0o755, guest.0);
    let target = mkdir("target", 0o755, 0);
    let link = s.path("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(guest.0), Some(guest.1)).unwrap();
    // A root file and a link to it where the socket should be.
    let victim = s.path("victim");
    std::fs::write(&victim, "root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let trap = mkdir("trap", 0o755, 0).join("sock");
    std::os::unix::fs::symlink(&victim, &trap).unwrap();

    let good = s.path("good/sock");
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![format!("socket {} port 0 queue 0", good.display())],
            // The proxy's user keeps the guests' group, so that sockets typed later can
            // have it.
            extra: vec!["--queues".into(), "4".into(), "--socket-group".into(), GUEST_USER.into()],
            netns: None,
        },
    );
    proxy.out.wait_contains("IO_PROXY: ready", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    let mut ask = |line: String| -> String {
        let from = proxy.out.text().len();
        proxy.send(&line);
        answer_after(&proxy, from, &line)
    };
    let cases = [
        (world.join("sock"), "", format!("error: {} is writable by its group or others (mode 0777) and not sticky", world.display())),
        (group_w.join("sock"), "", format!("error: {} is writable by its group or others (mode 0770) and not sticky", group_w.display())),
        (world.join("sub/sock"), "", format!("error: {} is writable by its group or others (mode 0777)", world.display())),
        (
            sticky.join("sock"),
            " owner shmguest",
            format!("error: {} is writable by others (sticky, mode 1777): a socket there must stay the proxy's, not belong to uid {}", sticky.display(), guest.0),
        ),
        (theirs.join("sock"), "", format!("error: {} belongs to uid {}", theirs.display(), guest.0)),
        (link.join("sock"), "", format!("error: {} is a symbolic link that belongs to uid {}", link.display(), guest.0)),
        (trap.clone(), " group shmguest mode 0666", format!("error: {} exists and is not a socket", trap.display())),
    ];
    for (i, (path, opts, expected)) in cases.iter().enumerate() {
        let answer = ask(format!("socket {} port 0 queue {}{opts}", path.display(), 1 + i % 3));
        assert!(answer.contains(expected.as_str()), "for {}: got {answer:?}, wanted {expected:?}", path.display());
    }
    // Nothing was made or changed where it was refused.
    assert!(!world.join("sock").exists() && !world.join("sub").exists() && !group_w.join("sock").exists());
    assert!(!sticky.join("sock").exists() && !theirs.join("sock").exists() && !target.join("sock").exists());
    let v = std::fs::metadata(&victim).unwrap();
    assert_eq!((v.mode() & 0o7777, v.uid(), v.gid()), (0o600, 0, 0), "the link's target was not touched");
    // A sticky directory is fine when the socket stays the proxy's.
    let answer = ask(format!("socket {} port 0 queue 1 group shmguest mode 0660", sticky.join("sock").display()));
    assert!(answer.contains("ok: serving port 0 queue 1"), "{answer}");
    let m = std::fs::metadata(sticky.join("sock")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (ensure_user(PROXY_USER).0, guest.1, 0o660));
    // ... and the guests' group cannot delete it there (sticky: only its owner can).
    let out = Command::new("rm").args(["-f"]).arg(sticky.join("sock")).uid(guest.0).gid(guest.1).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sticky.join("sock").exists());
    quit_proxy(proxy);
    assert!(!sticky.join("sock").exists() && !good.exists() && !s.path("good").exists(), "removed on quit");
}

/// The impostor of `src/bin/impostor.rs`, run as `user`, on `sock`.
fn impostor(sock: &Path, user: (u32, u32)) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_impostor"));
    cmd.arg(sock).uid(user.0).gid(user.1);
    let p = Proc::spawn("impostor", cmd);
    p.out.wait_contains("impostor: listening", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}\n{}", p.out.text()));
    p
}

/// The guests' message when they refuse a server that runs as `uid`.
fn refusal(uid: u32) -> String {
    format!("refusing the server of this socket: server uid {uid} (pid ")
}

/// The takeover of the issue: a user who can write the socket's directory (here: root's,
/// group-writable for the guests and sticky, so that the path itself passes the guests'
/// check) binds their own socket at the path. An unmodified testpmd and the Rust guest
/// refuse it by its uid before sending anything; the impostor records every byte and
/// descriptor it got: none. (A group-writable directory that is not sticky, as an older
/// proxy made it, is refused before connecting: the guests' unit tests and
/// `a_squatted_socket_directory_is_refused_before_connecting` show that path check.)
#[test]
fn an_impostor_at_the_socket_path_gets_nothing_from_testpmd_or_the_rust_guest() {
    assert!(is_root(), "this test runs the impostor as another user");
    let guest = ensure_user(GUEST_USER);
    let s = Scratch::new("impostor");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = s.path("takeover");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(guest.1)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1770)).unwrap();
    let sock = dir.join("sock");
    let imp = impostor(&sock, guest);

    let pmd = |devargs: &str, name: &str| {
        start_testpmd(&s, &GuestConfig { socket: &sock, devargs, memory_mb: 32, testpmd_args: vec!["--total-num-mbufs=4096".into()], name })
    };
    let g = pmd("", "victim");
    g.out.wait_contains(&refusal(guest.0), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    let (_, gout) = g.interrupt(Duration::from_secs(10));
    assert!(gout.contains("expected uid 0 (root, or the owner of the socket's directory)"), "{gout}");
    imp.out.wait_contains("impostor: connection 1: ", Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}\n{}", imp.out.text()));

    let mut cmd = Command::new(build_dir().join("examples").join("count"));
    cmd.arg(&sock).args(["--seconds", "1"]);
    let rust = Proc::spawn("rust-guest", cmd);
    let (code, rout) = rust.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{rout}");
    assert!(rout.contains(&refusal(guest.0)) && rout.contains("nothing was sent to it"), "{rout}");
    imp.out.wait_contains("impostor: connection 2: ", Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}\n{}", imp.out.text()));

    // The check is what stopped them: told to trust that uid, testpmd does send its Hello.
    let trusting = pmd(&format!("proxy_uid={},timeout_ms=500,reconnect=0", guest.0), "trusting");
    imp.out.wait_contains("impostor: connection 3: ", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", imp.out.text()));
    let _ = trusting.interrupt(Duration::from_secs(10));
    let (_, iout) = imp.interrupt(Duration::from_secs(5));
    let lines: Vec<&str> = iout.lines().filter(|l| l.starts_with("impostor: connection")).collect();
    assert_eq!(lines.len(), 3, "{iout}");
    assert_eq!(lines[0], "impostor: connection 1: 0 bytes, 0 fds, closed by the guest", "{iout}");
    assert_eq!(lines[1], "impostor: connection 2: 0 bytes, 0 fds, closed by the guest", "{iout}");
    assert!(!lines[2].starts_with("impostor: connection 3: 0 bytes"), "the trusting guest sent its Hello: {iout}");
}

/// The squat of the red-team review (R10): while the socket's directory does not exist, a
/// user makes it in a world-writable sticky directory (as `/tmp`) and serves an impostor
/// there. Its owner is the impostor, so "root or the owner of the socket's directory"
/// would accept it: testpmd and the Rust guest, with their default, refuse the path with
/// its reason before connecting. Told `proxy_uid=` that user, testpmd does connect (the
/// path check is what stopped it).
#[test]
fn a_squatted_socket_directory_is_refused_before_connecting() {
    assert!(is_root(), "this test runs the impostor as another user");
    let guest = ensure_user(GUEST_USER);
    let s = Scratch::new("squat");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = s.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The attacker's mkdir (as that user, so that the kernel lets them: sticky 1777).
    let squatted = open.join("socket_0_0");
    let out = Command::new("mkdir").arg(&squatted).uid(guest.0).gid(guest.1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&squatted).unwrap().uid(), guest.0);
    let sock = squatted.join("sock");
    let imp = impostor(&sock, guest);
    let reason = format!(
        "refusing the socket {}: {} belongs to uid {} and is in {}, which others can write (mode 1777): anyone could \
         have made it",
        sock.display(),
        squatted.display(),
        guest.0,
        open.display()
    );

    let pmd = |devargs: &str, name: &str| {
        start_testpmd(&s, &GuestConfig { socket: &sock, devargs, memory_mb: 32, testpmd_args: vec!["--total-num-mbufs=4096".into()], name })
    };
    let g = pmd("", "victim");
    g.out.wait_contains(&reason, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    let _ = g.interrupt(Duration::from_secs(10));

    let mut cmd = Command::new(build_dir().join("examples").join("count"));
    cmd.arg(&sock).args(["--seconds", "1"]);
    let rust = Proc::spawn("rust-guest", cmd);
    let (code, rout) = rust.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{rout}");
    assert!(rout.contains(&reason) && rout.contains("nothing was sent to it"), "{rout}");

    // Told to trust that uid, testpmd connects and sends its Hello: the impostor's first
    // connection is this one (the two refusals never connected).
    let trusting = pmd(&format!("proxy_uid={},timeout_ms=500,reconnect=0", guest.0), "trusting");
    imp.out.wait_contains("impostor: connection 1: ", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", imp.out.text()));
    let _ = trusting.interrupt(Duration::from_secs(10));
    let (_, iout) = imp.interrupt(Duration::from_secs(5));
    let lines: Vec<&str> = iout.lines().filter(|l| l.starts_with("impostor: connection")).collect();
    assert_eq!(lines.len(), 1, "{iout}");
    assert!(!lines[0].starts_with("impostor: connection 1: 0 bytes"), "the trusting guest sent its Hello: {iout}");
}

/// The reconnect path: testpmd attached to the real proxy, the proxy killed, the socket
/// directory made writable for the guests' group (as an older proxy made it) and an
/// impostor bound there. testpmd's reconnect attempts refuse that path before connecting
/// (the first one says why) and never hand over their region; once the
/// administrator closes the directory and the real proxy serves the socket again, testpmd
/// reattaches.
#[test]
fn a_reconnecting_testpmd_never_hands_its_region_to_an_impostor() {
    assert!(is_root(), "this test runs the impostor as another user");
    let guest = ensure_user(GUEST_USER);
    let s = Scratch::new("reimpostor");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = s.path("q0/sock");
    let cfg = ProxyConfig {
        eal: vec!["--vdev".into(), "net_null0".into()],
        commands: vec![format!("socket {} port 0 queue 0", sock.display())],
        extra: vec!["--socket-group".into(), GUEST_USER.into()],
        netns: None,
    };
    let proxy = start_proxy(&s, &cfg);
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    let g = start_testpmd(
        &s,
        &GuestConfig {
            socket: &sock,
            devargs: "region_size=64M",
            memory_mb: 32,
            testpmd_args: vec!["--forward-mode=macswap".into(), "--total-num-mbufs=4096".into()],
            name: "guest",
        },
    );
    wait_or_dump(&proxy, "queue started", 60);
    proxy.kill_group();
    let _ = proxy.wait(Duration::from_secs(10));
    wait_or_dump(&g, "proxy connection lost", 10);
    let dir = sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let imp = impostor(&sock, guest);
    let reason = format!(
        "refusing the socket {}: {} is writable by its group or others (mode 0770) and not sticky",
        sock.display(),
        dir.display()
    );
    // The reconnect loop says a refusal once (and keeps retrying every second).
    g.out.wait_contains(&reason, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", g.out.text()));
    // Let it try a few more times before looking at what the impostor got.
    std::thread::sleep(Duration::from_secs(3));
    let (_, iout) = imp.interrupt(Duration::from_secs(5));
    assert!(!iout.contains("impostor: connection"), "a refused guest connected to the impostor: {iout}");
    // The administrator closes the directory again; the real proxy comes back.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).unwrap();
    let proxy = start_proxy(&s, &cfg);
    wait_or_dump(&proxy, "reattached its region", 30);
    wait_or_dump(&g, "reattached to the proxy", 30);
    quit_proxy(proxy);
    let _ = g.interrupt(Duration::from_secs(20));
}

/// A second peer on a socket that a guest holds is refused as busy; who holds it (the
/// guest's name and pid) is told to a peer of the same user only, never to another user
/// (whose process, perhaps in a container, has no business knowing the proxy's pids).
/// The proxy's log names both.
#[test]
fn a_busy_socket_names_its_guest_only_to_the_same_user() {
    assert!(is_root(), "this test creates users and runs processes as them (CI runs as root)");
    let guest = ensure_user(GUEST_USER);
    let other = ensure_user(OTHER_USER);
    let plugins = PluginDir::new();
    let s = Scratch::new("access-busy");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = s.path("shared/sock");
    let mut proxy = start_proxy(
        &s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![format!("socket {} port 0 queue 0 mode 0666", sock.display())],
            extra: vec!["--allow-uid".into(), format!("{GUEST_USER},{OTHER_USER}")],
            netns: None,
        },
    );
    proxy.out.wait_contains("IO_PROXY: ready", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));
    let holder = guest_as(&s, &plugins.0, &sock, guest, "holder");
    proxy.out.wait_contains("queue started", Duration::from_secs(60)).unwrap_or_else(|e| {
        panic!("{e}\n--- proxy ---\n{}\n--- guest ---\n{}", proxy.out.text(), holder.out.text())
    });
    let holder_pid = holder.pid();

    // Another user: told that the socket is busy, not by whom.
    let stranger = guest_as(&s, &plugins.0, &sock, other, "stranger");
    stranger.out.wait_contains("refused us", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", stranger.out.text()));
    let stranger_pid = stranger.pid();
    let (_, sout) = stranger.interrupt(Duration::from_secs(10));
    assert!(sout.contains("Busy") && sout.contains("another user's guest holds it"), "{sout}");
    assert!(!sout.contains(&format!("pid {holder_pid}")) && !sout.contains("dpdk-testpmd"), "the holder named to another user: {sout}");
    let log = format!("refused a second guest (pid {stranger_pid} uid {}): busy, pid {holder_pid} holds it", other.0);
    proxy.out.wait_contains(&log, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.out.text()));

    // The same user: told which of its processes holds the socket.
    let sibling = guest_as(&s, &plugins.0, &sock, guest, "sibling");
    sibling.out.wait_contains("refused us", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", sibling.out.text()));
    let (_, bout) = sibling.interrupt(Duration::from_secs(10));
    assert!(bout.contains("Busy") && bout.contains(&format!("(pid {holder_pid}) of the same user holds it")), "{bout}");

    let stats = proxy_socket_stats(&query_stats(&mut proxy), &sock);
    assert_eq!(counter(&stats, "guests_served"), 1, "{stats:?}");
    assert_eq!(counter(&stats, "refused"), 2, "{stats:?}");
    let (_, hout) = holder.interrupt(Duration::from_secs(20));
    assert!(testpmd_counter(&testpmd_port_stats(&hout, 0), "TX-packets") > 0, "the holder was disturbed: {hout}");
    quit_proxy(proxy);
}
