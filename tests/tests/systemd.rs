//! The proxy as the service `meson install` installs, run by a real systemd: the unit,
//! its sysusers.d and tmpfiles.d entries installed into a staging directory, checked
//! with `systemd-analyze verify`, `systemd-sysusers` and `systemd-tmpfiles`, then loaded
//! by a systemd manager of its own and driven with `systemctl start`, `reload` (sockets
//! added and removed while a guest forwards, a bad file refused), `journalctl` and
//! `systemctl stop`.
//!
//! The test machines run no systemd as PID 1, and the host must not be touched: the
//! manager is `/usr/lib/systemd/systemd` as PID 1 of new PID, mount, cgroup and UTS
//! namespaces (`unshare`), with a private `/run` and journal directory, a cgroup2
//! hierarchy rooted in a cgroup of its own, the staged `/usr/local` mounted over the
//! real one (the unit names `/usr/local/bin/dpdk-io-proxy` and reads
//! `/usr/local/etc/...`), the staged tmpfiles.d directory over the real one, `/proc/sys`
//! read-only, `/dev/console` and `/dev/kmsg` replaced by a file and `/dev/null`, and only
//! the units of this test (a target, journald and its socket; `SYSTEMD_UNIT_PATH`) plus
//! the installed unit's directory; no generators. Guests and `systemctl` run inside
//! through `nsenter`. Ending the manager (SIGKILL to the namespace's PID 1) ends every
//! process in it and drops its mounts; the cgroups are removed after.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_tests::*;

const UNIT: &str = "dpdk-io-proxy.service";
/// Where the unit has the proxy's sockets (the tmpfiles.d entry makes it, for its user).
const SOCKET_DIR: &str = "/run/dpdk-io-proxy/sockets";
/// The unit's configuration file and environment file, with the default prefix.
const CMDS: &str = "usr/local/etc/dpdk-io-proxy/dpdk-io-proxy.cmds";
const ENV_FILE: &str = "usr/local/etc/default/dpdk-io-proxy";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `cargo --target-dir` and `--profile` of the build these tests run from.
fn cargo_target_and_profile() -> (PathBuf, &'static str) {
    let dir = build_dir();
    let profile = if dir.file_name().is_some_and(|n| n == "debug") { "dev" } else { "release" };
    (dir.parent().expect("target dir").to_path_buf(), profile)
}

/// Runs a command to completion: exit code and stdout + stderr.
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn run_ok(cmd: &mut Command) -> String {
    let (code, text) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed:\n{text}");
    text
}

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// The quoted strings of a JSON object of strings (`meson introspect --installed`), as
/// (key, value) pairs.
fn json_string_pairs(json: &str) -> Vec<(String, String)> {
    assert!(!json.contains('\\'), "an escaped character in {json}");
    let strings: Vec<&str> = json.split('"').skip(1).step_by(2).collect();
    strings.chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].to_string(), kv[1].to_string())).collect()
}

/// A directory under the cargo target directory (not under /run, which the manager's
/// namespace replaces, nor /tmp), removed on drop.
struct Work(PathBuf);

impl Work {
    fn new() -> Work {
        let (target, _) = cargo_target_and_profile();
        let dir = target.join(format!("systemd-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Work(dir)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if std::env::var_os("SHM_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The cgroup2 mount point and this process's cgroup in it.
fn cgroup2_home() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup2 hierarchy mounted (systemd needs one)");
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("no cgroup2 entry in /proc/self/cgroup");
    mount.join(path.trim_start_matches('/'))
}

/// Removes a cgroup and the ones below it (deepest first; each must be empty of processes).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// A systemd manager as PID 1 of its own namespaces (see the module comment).
struct Manager {
    /// `unshare`, whose child is the manager.
    unshare: Proc,
    /// The manager's pid on the host.
    pid: u32,
    cgroup: PathBuf,
    console: PathBuf,
}

/// The mounts made inside the new mount namespace before the manager starts.
const NAMESPACE_SETUP: &str = r#"set -e
mount --bind "$STAGE/usr/local" /usr/local
mount --bind "$TMPFILES_STAGED" "$TMPFILES_DIR"
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=0755 tmpfs /var/log/journal; fi
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --bind "$CONSOLE" /dev/console
mount --bind /dev/null /dev/kmsg
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
exec /usr/lib/systemd/systemd --system --unit=dpdk-e2e.target --log-target=console --show-status=0
"#;

impl Manager {
    /// `unit_dir` and `tmpfiles_dir`: where the staged unit is and where the staged
    /// tmpfiles.d entry goes (mounted over the real directory).
    fn start(work: &Path, stage: &Path, unit_dir: &Path, tmpfiles_dir: &Path) -> Manager {
        let units = work.join("units");
        let empty = work.join("no-generators");
        fs::create_dir_all(&units).unwrap();
        fs::create_dir_all(&empty).unwrap();
        // What the installed unit needs around it: its default dependencies (empty
        // targets here) and journald, whose stream socket takes its stderr.
        let files = [
            ("dpdk-e2e.target", "[Unit]\nDescription=end-to-end test\nRequires=systemd-journald.service\nAfter=systemd-journald.service\n"),
            ("sysinit.target", "[Unit]\nDefaultDependencies=no\n"),
            ("basic.target", "[Unit]\nDefaultDependencies=no\n"),
            ("sockets.target", "[Unit]\nDefaultDependencies=no\n"),
            ("shutdown.target", "[Unit]\nDefaultDependencies=no\n"),
            (
                "systemd-journald.socket",
                "[Unit]\nDefaultDependencies=no\n[Socket]\nListenDatagram=/run/systemd/journal/socket\n\
                 ListenStream=/run/systemd/journal/stdout\nPassCredentials=yes\nPassSecurity=yes\n\
                 SocketMode=0666\nService=systemd-journald.service\n",
            ),
            (
                "systemd-journald.service",
                "[Unit]\nDefaultDependencies=no\nRequires=systemd-journald.socket\nAfter=systemd-journald.socket\n\
                 [Service]\nType=notify\nExecStart=/lib/systemd/systemd-journald\nSockets=systemd-journald.socket\n\
                 RuntimeDirectory=systemd/journal\nRuntimeDirectoryPreserve=yes\nStandardOutput=null\n",
            ),
        ];
        for (name, text) in files {
            fs::write(units.join(name), text).unwrap();
        }
        let console = work.join("console.log");
        fs::write(&console, b"").unwrap();

        let parent = cgroup2_home();
        // Cgroups a killed run of this test left (their test process is gone).
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("dpdk-io-proxy-e2e-") {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = remove_cgroup_tree(&entry.path());
                }
            }
        }
        let cgroup = parent.join(format!("dpdk-io-proxy-e2e-{}", std::process::id()));
        let _ = remove_cgroup_tree(&cgroup);
        fs::create_dir(&cgroup).unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
        let mut cmd = Command::new("sh");
        // The wrapper moves itself into the new cgroup, so that the cgroup namespace
        // unshare makes is rooted there. Should the test process die without its Drop,
        // its end kills unshare (setpriv --pdeathsig) and unshare's the manager
        // (--kill-child), so no manager outlives it.
        cmd.arg("-c")
            .arg(r#"echo $$ > "$CGROUP/cgroup.procs" && exec setpriv --pdeathsig KILL unshare --kill-child=KILL --pid --mount --cgroup --uts --fork --mount-proc --propagation private sh -c "$SETUP""#)
            .env("CGROUP", &cgroup)
            .env("SETUP", NAMESPACE_SETUP)
            .env("STAGE", stage)
            .env("TMPFILES_DIR", tmpfiles_dir)
            .env("TMPFILES_STAGED", stage.join(tmpfiles_dir.strip_prefix("/").unwrap()))
            .env("CONSOLE", &console)
            .env("container", "dpdk-io-proxy-e2e")
            .env("SYSTEMD_UNIT_PATH", format!("{}:{}", units.display(), unit_dir.display()))
            .env("SYSTEMD_GENERATOR_PATH", &empty)
            .env("SYSTEMD_ENVIRONMENT_GENERATOR_PATH", &empty);
        let unshare = Proc::spawn("unshare", cmd);
        let mut manager = Manager { pid: 0, unshare, cgroup, console };
        let deadline = Instant::now() + Duration::from_secs(20);
        let children = format!("/proc/{0}/task/{0}/children", manager.unshare.pid());
        while manager.pid == 0 {
            assert!(Instant::now() < deadline, "no manager started:\n{}", manager.unshare.out.text());
            let child = fs::read_to_string(&children).ok().and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            if let Some(pid) = child {
                if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "systemd") {
                    manager.pid = pid;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // systemctl reaches the manager through /run/systemd/private, which exists once the
        // manager runs (before, systemctl says "offline"); then it waits for the start-up.
        let private = format!("/proc/{}/root/run/systemd/private", manager.pid);
        loop {
            let (code, out) = if Path::new(&private).exists() {
                manager.systemctl(&["is-system-running", "--wait"])
            } else {
                (-1, "no /run/systemd/private yet".to_string())
            };
            if code == 0 && out.trim() == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "the manager is not running: {out}\n{}", manager.diagnostics());
            std::thread::sleep(Duration::from_millis(50));
        }
        manager
    }

    /// A command run inside the manager's mount and PID namespaces, for at most 60 s.
    fn inside(&self, program: &str) -> Command {
        self.inside_for(60, program)
    }

    fn inside_for(&self, seconds: u32, program: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args([&seconds.to_string(), "nsenter", "-t", &self.pid.to_string(), "-m", "-p", "--", program]);
        cmd
    }

    fn systemctl(&self, args: &[&str]) -> (i32, String) {
        run(self.inside("systemctl").args(args))
    }

    /// The proxy's journal, as text (`-o cat`), optionally only lines at `priority` or
    /// more urgent.
    fn journal(&self, priority: Option<&str>) -> String {
        let mut cmd = self.inside("journalctl");
        cmd.args(["-u", UNIT, "-o", "cat", "--no-pager"]);
        if let Some(p) = priority {
            cmd.args(["-p", p]);
        }
        run_ok(&mut cmd)
    }

    /// Waits until the proxy's journal satisfies `pred`.
    fn wait_journal(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.journal(None);
            if pred(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "journal: no {what}:\n{text}\n{}", self.diagnostics());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dpdk-io-proxy-ctl <args>` as installed, with its default admin socket.
    fn ctl(&self, args: &[&str]) -> String {
        run_ok(self.inside("/usr/local/bin/dpdk-io-proxy-ctl").args(args))
    }

    /// Counters of one socket from `show stats`.
    fn stats(&self, socket: &Path) -> std::collections::HashMap<String, String> {
        proxy_socket_stats(&self.ctl(&["show", "stats"]), socket)
    }

    fn diagnostics(&self) -> String {
        let (_, status) = self.systemctl(&["status", "--no-pager", "-l", UNIT]);
        format!(
            "--- systemctl status ---\n{status}\n--- manager console ---\n{}\n--- unshare ---\n{}",
            fs::read_to_string(&self.console).unwrap_or_default(),
            self.unshare.out.text()
        )
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if self.pid != 0 {
            // PID 1 of the namespace: its end kills everything else in it.
            // SAFETY: kill(2) of the manager this test started (by pid).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.unshare.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The cgroups empty as the processes are reaped.
        while remove_cgroup_tree(&self.cgroup).is_err() && self.cgroup.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.cgroup.exists() {
            eprintln!("warning: cgroup {} is left", self.cgroup.display());
        }
    }
}

/// testpmd forwarding with macswap on `socket`, inside the manager's namespaces.
fn testpmd_inside(m: &Manager, s: &Scratch, socket: &Path, name: &str) -> Proc {
    let (_, cpu) = cpus();
    let mut cmd = m.inside_for(300, "stdbuf");
    cmd.args(["-oL", TESTPMD]);
    cmd.args(["--lcores", &format!("0@{cpu},1@{cpu}"), "--no-huge", "-m", "32", "--no-pci"]);
    cmd.args(["--file-prefix", &s.prefix(name)]);
    cmd.args(plugin_args());
    cmd.args(["-a", &format!("sock:{},region_size=64M", socket.display())]);
    cmd.args(["--", "-i", "--forward-mode=macswap", "--total-num-mbufs=4096"]);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    Proc::spawn(name, cmd)
}

#[test]
fn the_installed_unit_runs_under_systemd_reloads_the_difference_and_logs_to_the_journal() {
    assert!(is_root(), "this test runs a systemd manager in namespaces of its own: it needs root");
    for program in ["meson", "ninja", "unshare", "nsenter", "setpriv", "systemd-analyze", "systemd-sysusers", "systemd-tmpfiles"] {
        assert!(have(program), "{program} is needed (scripts/setup.sh installs it)");
    }
    assert!(Path::new("/usr/lib/systemd/systemd").exists(), "/usr/lib/systemd/systemd is needed (package systemd)");
    let t0 = Instant::now();
    let work = Work::new();
    let build = work.0.join("build");
    let stage = work.0.join("stage");
    let (target, profile) = cargo_target_and_profile();

    // meson setup + install into a staging directory.
    run_ok(
        Command::new("meson")
            .arg("setup")
            .arg(&build)
            .arg(workspace_root())
            .arg(format!("-Dcargo_target_dir={}", target.display()))
            .arg(format!("-Dcargo_profile={profile}")),
    );
    run_ok(Command::new("meson").arg("install").arg("-C").arg(&build).arg("--destdir").arg(&stage));
    eprintln!("meson setup + install: {:?}", t0.elapsed());

    // The files are where meson says it installs them.
    let installed = json_string_pairs(&run_ok(Command::new("meson").args(["introspect", "--installed"]).arg(&build)));
    let installed_to = |suffix: &str| {
        let dest = installed
            .iter()
            .map(|(_, to)| to)
            .find(|to| to.ends_with(suffix))
            .unwrap_or_else(|| panic!("meson installs no {suffix}: {installed:?}"));
        let staged = stage.join(dest.trim_start_matches('/'));
        assert!(staged.is_file(), "{} is not installed", staged.display());
        (PathBuf::from(dest), staged)
    };
    let (unit_path, staged_unit) = installed_to(&format!("/{UNIT}"));
    let (_, staged_sysusers) = installed_to("/sysusers.d/dpdk-io-proxy.conf");
    let (tmpfiles_path, staged_tmpfiles) = installed_to("/tmpfiles.d/dpdk-io-proxy.conf");
    let (proxy_path, _) = installed_to("/bin/dpdk-io-proxy");
    installed_to("/bin/dpdk-io-proxy-ctl");
    assert_eq!(proxy_path, Path::new("/usr/local/bin/dpdk-io-proxy"), "the namespace mounts the staged /usr/local");
    let unit_text = fs::read_to_string(&staged_unit).unwrap();
    assert!(unit_text.contains("\nExecStart=/usr/local/bin/dpdk-io-proxy $DPDK_IO_PROXY_EAL -- --cmds /usr/local/etc/dpdk-io-proxy/dpdk-io-proxy.cmds "), "{unit_text}");
    assert!(unit_text.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"), "{unit_text}");

    // The sysusers.d entry makes the proxy's user, the tmpfiles.d entry its directories
    // (applied to an empty root: nothing on the host changes).
    let sysroot = work.0.join("sysroot");
    fs::create_dir_all(sysroot.join("etc")).unwrap();
    run_ok(Command::new("systemd-sysusers").arg(format!("--root={}", sysroot.display())).arg(&staged_sysusers));
    let passwd = fs::read_to_string(sysroot.join("etc/passwd")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("dpdk-io-proxy:")).unwrap_or_else(|| panic!("no user made: {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let uid: u32 = fields[2].parse().unwrap();
    run_ok(Command::new("systemd-tmpfiles").arg("--create").arg(format!("--root={}", sysroot.display())).arg(&staged_tmpfiles));
    for (dir, owner) in [("run/dpdk-io-proxy", 0), ("run/dpdk-io-proxy/sockets", uid)] {
        let meta = fs::symlink_metadata(sysroot.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(meta.is_dir(), "{dir}");
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (owner, 0o755), "{dir}");
    }

    // systemd-analyze verify accepts the unit with the programs it names present (the
    // staged /usr/local mounted in a mount namespace of its own, with a private /run:
    // verify's manager touches /run/systemd/systemd-units-load)...
    let verify = |with_stage: bool| {
        let mount = if with_stage { r#"mount --bind "$STAGE/usr/local" /usr/local && "# } else { "" };
        run(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(r#"mount -t tmpfs -o mode=0755 tmpfs /run && {mount}exec systemd-analyze verify "$UNIT_FILE""#))
            .env("STAGE", &stage)
            .env("UNIT_FILE", &staged_unit))
    };
    let (code, out) = verify(true);
    assert_eq!((code, out.trim()), (0, ""), "systemd-analyze verify {}", staged_unit.display());
    // ...and does check them: without the staged programs it refuses the unit.
    if !proxy_path.exists() {
        let (code, out) = verify(false);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("/usr/local/bin/dpdk-io-proxy"), "{out}");
    }

    // The configuration: port 0 (net_null0, three queues), sockets a and b.
    ensure_user(PROXY_USER);
    let s = Scratch::new("systemd");
    let (cpu, _) = cpus();
    let cmds = stage.join(CMDS);
    fs::create_dir_all(cmds.parent().unwrap()).unwrap();
    fs::create_dir_all(stage.join(ENV_FILE).parent().unwrap()).unwrap();
    fs::write(
        stage.join(ENV_FILE),
        format!(
            "DPDK_IO_PROXY_EAL=\"--lcores 0@{cpu} --no-pci --file-prefix {} --vdev net_null0,size=60\"\nDPDK_IO_PROXY_OPTS=\"--queues 3\"\n",
            s.prefix("proxy")
        ),
    )
    .unwrap();
    let sock = |name: &str| PathBuf::from(format!("{SOCKET_DIR}/{name}.sock"));
    let (a, b, c, d) = (sock("a"), sock("b"), sock("c"), sock("d"));
    let line = |p: &Path, q: u16| format!("socket {} port 0 queue {q}", p.display());
    fs::write(&cmds, format!("{}\n{}\n", line(&a, 0), line(&b, 1))).unwrap();

    let unit_dir = stage.join(unit_path.parent().unwrap().to_str().unwrap().trim_start_matches('/'));
    let m = Manager::start(&work.0, &stage, &unit_dir, tmpfiles_path.parent().unwrap());
    eprintln!("manager running: {:?}", t0.elapsed());
    let (_, unit_file) = m.systemctl(&["show", "-p", "FragmentPath", UNIT]);
    assert_eq!(unit_file.trim(), format!("FragmentPath={}", staged_unit.display()), "the manager loaded the installed unit");
    let (code, out) = m.systemctl(&["start", UNIT]);
    assert_eq!(code, 0, "systemctl start: {out}\n{}", m.diagnostics());
    m.wait_journal("'ready'", |t| t.contains("IO_PROXY: ready"));
    let (_, active) = m.systemctl(&["is-active", UNIT]);
    assert_eq!(active.trim(), "active", "{}", m.diagnostics());
    // The tmpfiles.d entry, applied by ExecStartPre, made the sockets' directory for the
    // proxy's user.
    let root = PathBuf::from(format!("/proc/{}/root", m.pid));
    let (proxy_uid, _) = ensure_user(PROXY_USER);
    let sockets_dir = fs::metadata(root.join(SOCKET_DIR.trim_start_matches('/'))).unwrap();
    assert_eq!((sockets_dir.uid(), sockets_dir.permissions().mode() & 0o7777), (proxy_uid, 0o755));
    let served = || {
        let out = m.ctl(&["show", "sockets"]);
        [&a, &b, &c, &d].map(|p| out.contains(&format!("{} port 0", p.display())))
    };
    assert_eq!(served(), [true, true, false, false]);

    // A testpmd forwarding on a, an idle Rust guest on b.
    let mut g = testpmd_inside(&m, &s, &a, "guest");
    wait_or_dump(&g, "Checking link statuses", 30);
    g.send("start");
    let mut idle_cmd = m.inside_for(300, build_dir().join("examples/idle").to_str().unwrap());
    idle_cmd.arg(&b);
    let idle = Proc::spawn("idle", idle_cmd);
    wait_or_dump(&idle, "idle: attach_us=", 30);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = m.stats(&a);
    while counter(&before, "tx_packets") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        before = m.stats(&a);
    }
    assert!(counter(&before, "tx_packets") > 0, "the guest forwards before the reload: {before:?}");

    // systemctl reload after an edit: keep a, drop b, add c.
    fs::write(&cmds, format!("# edited\n{}\n{}\n", line(&a, 0), line(&c, 2))).unwrap();
    let (code, out) = m.systemctl(&["reload", UNIT]);
    assert_eq!(code, 0, "systemctl reload: {out}");
    let journal = m.wait_journal("'reloaded'", |t| t.contains("IO_PROXY: reloaded"));
    assert!(journal.contains("IO_PROXY: reloaded /usr/local/etc/dpdk-io-proxy/dpdk-io-proxy.cmds: 1 socket(s) added, 1 removed, 1 unchanged"), "{journal}");
    assert_eq!(served(), [true, false, true, false], "{journal}");
    assert!(root.join(c.strip_prefix("/").unwrap()).exists() && !root.join(b.strip_prefix("/").unwrap()).exists());
    // The guest of b was told goodbye and ended.
    let (code, idle_out) = idle.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{idle_out}");
    assert!(idle_out.contains("idle: proxy gone (") && idle_out.contains("goodbye"), "{idle_out}");
    // The guest of a was not touched and kept forwarding.
    let after = m.stats(&a);
    assert_eq!(counter(&after, "guests_served"), 1, "{after:?}");
    assert!(after.get("guest").is_some_and(|g| g != "-"), "still attached: {after:?}");
    std::thread::sleep(Duration::from_millis(500));
    let later = m.stats(&a);
    let tx = |st: &std::collections::HashMap<String, String>| counter(st, "tx_packets");
    assert!(tx(&before) < tx(&after) && tx(&after) < tx(&later), "forwarding went on: {} {} {}", tx(&before), tx(&after), tx(&later));
    assert!(g.is_running());
    eprintln!("reload: a's tx_packets {} before, {} after, {} 0.5 s later", tx(&before), tx(&after), tx(&later));

    // A bad file is refused as a whole, with its line; the running configuration stays.
    fs::write(&cmds, format!("{}\n{}\nsokcet {} port 0 queue 1\n", line(&a, 0), line(&d, 1), b.display())).unwrap();
    let (code, out) = m.systemctl(&["reload", UNIT]);
    assert_eq!(code, 0, "systemctl reload: {out}");
    let journal = m.wait_journal("'reload refused'", |t| t.contains("reload refused"));
    assert!(
        journal.contains("IO_PROXY: warning: reload refused, the running configuration stays: /usr/local/etc/dpdk-io-proxy/dpdk-io-proxy.cmds:3: unknown command 'sokcet'"),
        "{journal}"
    );
    assert_eq!(served(), [true, false, true, false], "{journal}");
    assert!(!root.join(d.strip_prefix("/").unwrap()).exists());
    let last = m.stats(&a);
    assert_eq!(counter(&last, "guests_served"), 1, "{last:?}");
    assert!(tx(&last) > tx(&later), "{last:?}");

    // The journal keeps the proxy's levels: warnings at priority warning, the rest at info.
    let warnings = m.journal(Some("warning"));
    assert!(warnings.contains("IO_PROXY: warning: reload refused"), "{warnings}");
    assert!(!warnings.contains("IO_PROXY: ready") && !warnings.contains("IO_PROXY: reloaded"), "info lines at warning priority:\n{warnings}");
    let info = m.journal(Some("info"));
    assert!(info.contains("IO_PROXY: ready") && info.contains("IO_PROXY: serving port 0 queue 2 on"), "{info}");
    assert!(!info.contains("<4>") && !info.contains("<6>"), "journald kept the level prefixes as text:\n{info}");

    g.send("stop");
    g.send("quit");
    let (gcode, gout) = g.wait(Duration::from_secs(20));
    assert_eq!(gcode, Some(0), "{gout}");
    assert!(testpmd_counter(&testpmd_port_stats(&gout, 0), "TX-packets") > 0, "{gout}");

    // systemctl stop: the proxy ends cleanly and removes its sockets.
    let (code, out) = m.systemctl(&["stop", UNIT]);
    assert_eq!(code, 0, "systemctl stop: {out}");
    let (_, show) = m.systemctl(&["show", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus", UNIT]);
    for expected in ["ActiveState=inactive", "Result=success", "ExecMainStatus=0"] {
        assert!(show.lines().any(|l| l == expected), "{expected}:\n{show}\n{}", m.journal(None));
    }
    assert!(!root.join(a.strip_prefix("/").unwrap()).exists() && !root.join(c.strip_prefix("/").unwrap()).exists());
    eprintln!("systemd test: {:?}", t0.elapsed());
}
