//! Harness for the end-to-end tests in `tests/tests/`: real processes only (the
//! `dpdk-io-proxy` binary, Debian's unmodified `/usr/bin/dpdk-testpmd`, the kernel's
//! `ping` in a network namespace), started in their own process group, bounded in time
//! and ended by the harness even when a test fails.
//!
//! Plugins are loaded as bare file names through `LD_LIBRARY_PATH`: EAL refuses `-d` with
//! a path under a world-writable directory, and a checkout may sit under one.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const PLUGINS: [&str; 3] = ["librte_bus_shm.so", "librte_mempool_shm.so", "librte_net_shm.so"];
pub const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// The cargo target directory these tests were built into (`target/<profile>`).
pub fn build_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHM_BUILD_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

pub fn proxy_binary() -> PathBuf {
    let path = build_dir().join("dpdk-io-proxy");
    assert!(path.exists(), "{} is not built: run `cargo build --release --workspace` first", path.display());
    path
}

pub fn plugin_dir() -> PathBuf {
    let dir = build_dir();
    for p in PLUGINS {
        assert!(dir.join(p).exists(), "{} is not built: run `cargo build --release --workspace` first", dir.join(p).display());
    }
    dir
}

/// `-d` arguments for the three plugins (bare names, found through LD_LIBRARY_PATH).
pub fn plugin_args() -> Vec<String> {
    PLUGINS.iter().flat_map(|p| ["-d".to_string(), p.to_string()]).collect()
}

/// A fresh private directory for one test's sockets and files. Run as root, it is made
/// under `/run` (root's, 0755), not `/tmp`: the guests' default check refuses a socket
/// directory of another user (the proxy's) in a directory anyone can write, and the
/// tests' proxy gives the scratch directory to its user. `SHM_TEST_TMP` overrides.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("SHM_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| if is_root() { PathBuf::from("/run") } else { std::env::temp_dir() });
        let dir = base.join(format!("shm-e2e-{}-{}-{}", test, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file prefix unique to this scratch, for DPDK's runtime files.
    pub fn prefix(&self, role: &str) -> String {
        format!("{}-{}", self.dir.file_name().unwrap().to_string_lossy(), role)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SHM_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        // DPDK leaves hugepage files and runtime directories behind under each
        // `--file-prefix` (kept so that secondaries such as dpdk-dumpcap can attach).
        // Tests own their prefixes, which all start with this scratch's name, and the
        // processes using them were ended before the scratch is dropped.
        let stem = format!("{}-", self.dir.file_name().unwrap_or_default().to_string_lossy());
        for root in ["/dev/hugepages", "/var/run/dpdk"] {
            let Ok(entries) = fs::read_dir(root) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&stem) {
                    let path = entry.path();
                    let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                }
            }
        }
    }
}

/// Output collected from a child's stdout and stderr, line by line, as it comes.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// How many bytes of output have come so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether no output has come yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The output after the first `from` bytes (see [`len`](Self::len)).
    pub fn text_from(&self, from: usize) -> String {
        let text = self.0.lock().unwrap();
        text.get(from..).unwrap_or_default().to_string()
    }

    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    /// Waits until `pred` holds for the output so far, or fails after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.text()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_contains(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        self.wait_for(&format!("'{needle}'"), timeout, |t| t.contains(needle))
    }
}

/// A child process in its own process group, killed (the whole group) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub out: Output,
    readers: Vec<thread::JoinHandle<()>>,
    echo: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Own process group: ending the test ends everything it started, by pid.
        cmd.process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Output::default();
        let echo = std::env::var_os("SHM_TEST_ECHO").is_some();
        let mut readers = Vec::new();
        for stream in [child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>), child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)]
            .into_iter()
            .flatten()
        {
            let out = out.clone();
            let tag = name.to_string();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[{tag}] {line}");
                    }
                    out.push(&line);
                }
            }));
        }
        let stdin = child.stdin.take();
        Proc { name: name.to_string(), child, stdin, out, readers, echo }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line to the process's standard input.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit; kills its group after `timeout`. Returns the exit
    /// code (None when killed by a signal) and the whole output.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break None,
            }
        };
        let code = match status {
            Some(s) => s.code(),
            None => {
                self.kill_group();
                let _ = self.child.wait();
                None
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if self.echo {
            eprintln!("[{}] exited: {code:?}", self.name);
        }
        (code, self.out.text())
    }

    /// SIGINT, then wait for a clean exit.
    pub fn interrupt(self, timeout: Duration) -> (Option<i32>, String) {
        self.signal(libc::SIGINT);
        self.wait(timeout)
    }

    pub fn kill_group(&self) {
        // SAFETY: kill(2) of the process group we created for this child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `p`'s output contains `needle`; on time-out fails the test with the whole
/// output, which is what a failing end-to-end test needs to be read.
pub fn wait_or_dump(p: &Proc, needle: &str, secs: u64) {
    wait_until_or_dump(p, &format!("'{needle}'"), secs, |t| t.contains(needle));
}

/// Waits until `pred` holds for `p`'s output so far (`what` names it in the failure);
/// on time-out fails the test with the whole output.
pub fn wait_until_or_dump(p: &Proc, what: &str, secs: u64, pred: impl Fn(&str) -> bool) {
    if let Err(e) = p.out.wait_for(what, Duration::from_secs(secs), pred) {
        panic!("{}: {e}\n--- {} output ---\n{}", p.name, p.name, p.out.text());
    }
}

/// CPUs for the two sides: the proxy on the first, the guest on the second (the machines
/// here have two cores; a polling process burns one).
pub fn cpus() -> (usize, usize) {
    let n = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (0, if n > 1 { 1 } else { 0 })
}

/// The IO proxy with a command file.
#[derive(Default)]
pub struct ProxyConfig {
    pub eal: Vec<String>,
    pub commands: Vec<String>,
    pub extra: Vec<String>,
    /// Run the proxy inside this network namespace (its tap devices appear there).
    pub netns: Option<String>,
}

/// Where [`start_proxy`] has the proxy serve its admin socket, in the test's directory.
pub const ADMIN_SOCKET: &str = "ctl/ctl.sock";

pub fn start_proxy(scratch: &Scratch, cfg: &ProxyConfig) -> Proc {
    let cmds = scratch.path("dpdk-io-proxy.cmds");
    fs::write(&cmds, cfg.commands.join("\n") + "\n").unwrap();
    let stays_root = cfg.extra.windows(2).any(|w| w[0] == "--user" && w[1] == "root");
    if is_root() && !stays_root {
        // The proxy becomes PROXY_USER after start-up (its default --user): sockets
        // typed later are made by that user, in the test's directory, as an operator
        // gives the proxy's user the directory for run-time sockets.
        let (uid, gid) = ensure_user(PROXY_USER);
        std::os::unix::fs::chown(&scratch.dir, Some(uid), Some(gid)).unwrap();
        // net_pcap opens its output file again at every port start (a queue switch
        // restarts the port), by then as PROXY_USER: the file must be that user's.
        for arg in &cfg.eal {
            for out in arg.split(',').filter_map(|kv| kv.strip_prefix("tx_pcap=")) {
                fs::write(out, b"").unwrap();
                std::os::unix::fs::chown(out, Some(uid), Some(gid)).unwrap();
            }
        }
    }
    let (cpu, _) = cpus();
    let mut cmd = match &cfg.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(proxy_binary());
            c
        }
        None => Command::new(proxy_binary()),
    };
    // The data path runs on the main lcore; the control thread shares its CPU.
    cmd.args(["--lcores", &format!("0@{cpu}"), "--file-prefix", &scratch.prefix("proxy"), "--no-pci"]);
    cmd.args(&cfg.eal);
    cmd.arg("--");
    cmd.arg("--cmds").arg(&cmds);
    // Each test's proxy has its own admin socket (not the shared default under /run), in
    // a directory the proxy makes as root (the test directory belongs to the proxy's user).
    if !cfg.extra.iter().any(|a| a == "--ctl" || a == "--no-ctl") {
        cmd.arg("--ctl").arg(scratch.path(ADMIN_SOCKET));
    }
    cmd.args(&cfg.extra);
    cmd.current_dir(&scratch.dir);
    Proc::spawn("proxy", cmd)
}

/// The proxy owning one `net_null0` port that serves queue 0 on `sock`, ready.
pub fn start_null_proxy(scratch: &Scratch, sock: &Path) -> Proc {
    let proxy = start_proxy(
        scratch,
        &ProxyConfig {
            eal: vec!["--vdev".into(), "net_null0".into()],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            ..Default::default()
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    proxy
}

/// An unmodified testpmd guest on one socket.
pub struct GuestConfig<'a> {
    pub socket: &'a Path,
    pub devargs: &'a str,
    pub memory_mb: u32,
    pub testpmd_args: Vec<String>,
    pub name: &'a str,
}

pub fn start_testpmd(scratch: &Scratch, g: &GuestConfig<'_>) -> Proc {
    let (_, cpu) = cpus();
    // testpmd prints with stdio: on a pipe its output would come in 4 KiB blocks, and an
    // interactive test waits for what a command printed. stdbuf execs testpmd (same pid).
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", TESTPMD]);
    let dev = if g.devargs.is_empty() {
        format!("sock:{}", g.socket.display())
    } else {
        format!("sock:{},{}", g.socket.display(), g.devargs)
    };
    cmd.args(["--lcores", &format!("0@{cpu},1@{cpu}"), "--no-huge", "-m", &g.memory_mb.to_string(), "--no-pci"]);
    cmd.args(["--file-prefix", &scratch.prefix(g.name)]);
    cmd.args(plugin_args());
    cmd.args(["-a", &dev]);
    cmd.arg("--");
    cmd.args(&g.testpmd_args);
    cmd.env("LD_LIBRARY_PATH", plugin_dir());
    cmd.current_dir(&scratch.dir);
    Proc::spawn(g.name, cmd)
}

/// Numbers from testpmd's "Forward statistics for port N" block at exit.
pub fn testpmd_port_stats(output: &str, port: u16) -> HashMap<String, u64> {
    let mut stats = HashMap::new();
    let header = format!("Forward statistics for port {port}");
    let Some(start) = output.rfind(&header) else { return stats };
    for line in output[start..].lines().skip(1).take(6) {
        let mut words = line.split_whitespace().peekable();
        while let Some(word) = words.next() {
            if let Some(key) = word.strip_suffix(':') {
                if let Some(value) = words.peek().and_then(|v| v.parse::<u64>().ok()) {
                    stats.insert(key.to_string(), value);
                    words.next();
                }
            }
        }
    }
    stats
}

/// A counter from [`testpmd_port_stats`]. Panics when it is missing (no statistics block
/// was printed, or the counter was renamed): a missing counter must fail the test, not
/// read as 0.
pub fn testpmd_counter(stats: &HashMap<String, u64>, key: &str) -> u64 {
    *stats.get(key).unwrap_or_else(|| panic!("no counter {key} in testpmd's forward statistics: {stats:?}"))
}

/// The proxy's `key=value` counter lines: the last line for `socket=<path>`.
pub fn proxy_socket_stats(output: &str, socket: &Path) -> HashMap<String, String> {
    let key = format!("socket={} ", socket.display());
    output
        .lines()
        .rev()
        .find(|l| l.starts_with(&key))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A numeric counter from [`proxy_socket_stats`]. Panics when the line has no such
/// counter (a renamed or removed counter must fail the test, not read as 0), or when no
/// line was found at all (an empty map).
pub fn counter(stats: &HashMap<String, String>, key: &str) -> u64 {
    match stats.get(key) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("counter {key}={v} is not a number: {stats:?}")),
        None => panic!("no counter {key} in the proxy's line: {stats:?}"),
    }
}

/// [`counter`] for waits on output that may not have the socket's line yet: 0 while
/// no line was printed (an empty map), and the strict lookup once one was.
pub fn shown_counter(stats: &HashMap<String, String>, key: &str) -> u64 {
    if stats.is_empty() {
        0
    } else {
        counter(stats, key)
    }
}

/// Runs a short command to completion (setup steps: ip, ping), failing the test on error.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed: {text}");
    text
}

/// The dedicated user the proxy runs as after start-up (the proxy's default `--user`).
pub const PROXY_USER: &str = "dpdk-io-proxy";

/// (uid, gid) of a system user, created if missing.
pub fn ensure_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| Command::new("id").args([flag, name]).output().ok().filter(|o| o.status.success());
    if id("-u").is_none() {
        // Two tests may race to create it: the loser's useradd fails, the lookup below
        // finds the winner's user.
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name])
            .status();
    }
    let num = |flag: &str| {
        let out = id(flag).unwrap_or_else(|| panic!("no user {name} and useradd could not make it"));
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap()
    };
    (num("-u"), num("-g"))
}

/// The fields of /proc/<pid>/status (`Uid`, `CapEff`, `NoNewPrivs`, `Seccomp`, ...), as
/// key -> value with single spaces.
pub fn proc_status(pid: u32) -> HashMap<String, String> {
    status_file(&format!("/proc/{pid}/status"))
}

/// The same for one thread of it.
pub fn task_status(pid: u32, tid: u32) -> HashMap<String, String> {
    status_file(&format!("/proc/{pid}/task/{tid}/status"))
}

fn status_file(path: &str) -> HashMap<String, String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// Whether this process may do what the tap/netns tests need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub mod cgroup;
pub mod cpu;
pub mod hostile;
pub mod packet;
pub mod pcap;

/// Deletes a network namespace when dropped.
pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// A proxy whose NIC is a `net_tap` device inside a network namespace of its own, with
/// one socket on queue 0. The tap has address `addr` on the kernel's side and is up.
pub struct TapProxy {
    pub proxy: Proc,
    pub sock: PathBuf,
    /// The tap interface, inside `ns`.
    pub tap: String,
    pub ns: Netns,
}

/// Starts a [`TapProxy`]; `tag` (a few letters) keeps the namespace and interface
/// names of concurrent tests apart. Needs root.
pub fn start_tap_proxy(s: &Scratch, tag: &str, addr: &str) -> TapProxy {
    start_tap_proxy_on(s, tag, addr, "queue 0")
}

/// [`start_tap_proxy`] with the socket serving `queues` (`queue 0`, `queues 0,1`, ...).
pub fn start_tap_proxy_on(s: &Scratch, tag: &str, addr: &str, queues: &str) -> TapProxy {
    assert!(is_root(), "this test needs root for a network namespace and a tap device (CI runs as root)");
    let ns = Netns(format!("iop-{tag}-{}", std::process::id()));
    run("ip", &["netns", "add", &ns.0]);
    let sock = s.path("q0/sock");
    // Interface names have at most 15 bytes.
    let tap: String = format!("iop{tag}{}", std::process::id() % 100_000).chars().take(15).collect();
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), format!("net_tap0,iface={tap}")],
            commands: vec![format!("socket {} port 0 {queues}", sock.display())],
            extra: vec![],
            netns: Some(ns.0.clone()),
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    run("ip", &["-n", &ns.0, "addr", "add", addr, "dev", &tap]);
    run("ip", &["-n", &ns.0, "link", "set", &tap, "up"]);
    TapProxy { proxy, sock, tap, ns }
}

/// A proxy whose `net_pcap` port replays a capture and records what it sends, serving
/// its queue 0 on `sock`; see [`start_pcap_proxy`].
pub struct PcapProxy {
    pub proxy: Proc,
    pub sock: PathBuf,
    /// Where the port writes what it transmits (`out.pcap` of the scratch directory).
    pub output: PathBuf,
}

/// Writes `packets` to `in.pcap` of `s`, starts a proxy (counters every second) whose
/// `net_pcap` port replays them and writes what it sends to `out.pcap`, and waits until
/// it is ready.
pub fn start_pcap_proxy(s: &Scratch, packets: &[Vec<u8>]) -> PcapProxy {
    start_pcap_proxy_with(s, packets, &[])
}

/// [`start_pcap_proxy`] with more options for the proxy (`--mtu 9000`, ...).
pub fn start_pcap_proxy_with(s: &Scratch, packets: &[Vec<u8>], options: &[&str]) -> PcapProxy {
    let input = s.path("in.pcap");
    let output = s.path("out.pcap");
    pcap::write(&input, packets);
    let sock = s.path("q0/sock");
    let proxy = start_proxy(
        s,
        &ProxyConfig {
            eal: vec!["--vdev".into(), format!("net_pcap0,rx_pcap={},tx_pcap={}", input.display(), output.display())],
            commands: vec![format!("socket {} port 0 queue 0", sock.display())],
            extra: ["--stats-period", "1"].iter().chain(options).map(|o| o.to_string()).collect(),
            netns: None,
        },
    );
    wait_or_dump(&proxy, "IO_PROXY: ready", 30);
    PcapProxy { proxy, sock, output }
}

/// Ends the proxy (`quit`) and fails the test unless it exits with 0 within 20 s;
/// returns its output.
pub fn quit_proxy(mut proxy: Proc) -> String {
    proxy.send("quit");
    let (code, out) = proxy.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}");
    out
}

/// What [`quit_proxy_then_testpmd`] collected.
pub struct Ended {
    /// The proxy's exit code.
    pub proxy_code: Option<i32>,
    /// Everything the proxy printed, its counters last.
    pub proxy_out: String,
    /// Everything the interactive testpmd printed before it was told to quit.
    pub testpmd_out: String,
    /// Both outputs, for failure messages.
    pub report: String,
}

/// Ends a proxy and its interactive testpmd guest: the proxy first, after one more
/// `show stats` (a guest that leaves makes the proxy restart its port, and `net_pcap`
/// then opens its output capture afresh), then testpmd (`quit`).
pub fn quit_proxy_then_testpmd(mut proxy: Proc, mut testpmd: Proc) -> Ended {
    proxy.send("show stats");
    thread::sleep(Duration::from_millis(300));
    proxy.send("quit");
    let (proxy_code, proxy_out) = proxy.wait(Duration::from_secs(20));
    let testpmd_out = testpmd.out.text();
    testpmd.send("quit");
    let _ = testpmd.wait(Duration::from_secs(30));
    let report = format!("--- testpmd ---\n{testpmd_out}\n--- proxy ---\n{proxy_out}");
    Ended { proxy_code, proxy_out, testpmd_out, report }
}

/// The number after `key=` on the last line of `out` that starts with `prefix` (the
/// summary line of an example or a test program).
pub fn summary(out: &str, prefix: &str, key: &str) -> u64 {
    let line = out.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in '{line}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_testpmd_forward_statistics() {
        let out = "\n  ---------------------- Forward statistics for port 0  ----------------------\n  RX-packets: 1234           RX-dropped: 0             RX-total: 1234\n  TX-packets: 1200           TX-dropped: 34            TX-total: 1234\n  ----------------------------------------------------------------------------\n";
        let s = testpmd_port_stats(out, 0);
        assert_eq!(s["RX-packets"], 1234);
        assert_eq!(s["TX-dropped"], 34);
        assert_eq!(s["TX-total"], 1234);
        assert!(testpmd_port_stats(out, 1).is_empty());
    }

    #[test]
    fn scratch_is_unique_and_cleaned() {
        let a = Scratch::new("unit");
        let b = Scratch::new("unit");
        assert_ne!(a.dir, b.dir);
        let dir = a.dir.clone();
        drop(a);
        assert!(!dir.exists());
    }
}
