//! Hostile and failing peers, end to end: one proxy on a net_null port with four queues,
//! an unmodified testpmd forwarding on one socket (queue 1) the whole time, and a hostile
//! client (`e2e_tests::hostile`) on another socket (queue 0) that breaks every rule of
//! the contract in turn: bad descriptors, bad ring indices, frozen rings, a scribbled
//! region, bad handshakes, connection floods, random bytes, passed descriptors. Queue 2
//! is where new guests attach while descriptor attacks run; queue 3's allowlist refuses
//! this test's uid.
//!
//! For every case the test checks that the proxy keeps running, that it counted what
//! the hostile client did and, where the rule says so, disconnected it; that its
//! warnings are rate-limited, and that the good guest lost nothing and was never
//! penalized (its socket's `tx_dropped`, `rx_dropped`, `invalid`, `penalty_polls` stay 0) and kept forwarding at no
//! less than 0.8 of its rate without the attack (issue 16's goal, `MIN_RATIO`, for
//! every class; `HOSTILE_MIN_RATIO` sets another floor for a run). A table of every
//! case's numbers, the ratio and how it was measured included, is printed (run with
//! `--nocapture` to see it).
//!
//! How the ratio is measured: on this 2-vCPU VM the good guest's own rate moves 2x with
//! where the hypervisor puts the vCPUs, in steps, at any time; one window before a case
//! against one during it measured that as much as the proxy. So the case runs on a
//! thread of its own while the harness measures the good guest in windows of 100 ms
//! (`WINDOW`, from the proxy's counters), alternately with the attack paused and
//! running: every attack loop asks [`attacking`] before each burst and waits there
//! while the harness measures an "off" window (an attack that leaves work in its rings,
//! a tx ring republished full, first waits until the proxy has consumed it). Each "on"
//! window is compared with the mean of the "off" windows on both sides of it, and the
//! median of the 16 ratios (`PAIRS`) is the case's ratio: a drift slower than a window
//! pair cancels, a step or a burst of a neighbour's work spoils one or two pairs, not
//! the median. The hostile guest stays attached in the "off" windows (an idle guest,
//! polled like one): the difference is what the attack itself costs. A case with no
//! attack loop of its own (a few messages or writes, one after the other) is run again
//! and again on fresh connections, each run one burst ([`repeated`], `Expect::repeat`),
//! and paired the same way. Three stay one-shot (the punched region, which stops the
//! proxy, a time not counted; the huge pool, whose attacker process allocates a 2 GiB
//! region and exits, and whose region the proxy then frees in steps, seconds in all; the forged
//! name, whose guest the harness keeps attached): measured over their whole time against
//! the median of four windows before and against that of four after, the better of the
//! two (a step of the VM's rate between them leaves the case at one side's level; a loss
//! the attack caused shows against both). The table's `method` column says which, with
//! the lowest and highest pair ratio.
//!
//! What the ratio means: what the proxy lets one tenant's attack cost another tenant.
//! On a 2-core machine the proxy's data loop and the good guest are pinned one to each
//! CPU and poll without pause, so any CPU time the attacker's own process uses is taken
//! from one of them, whatever the proxy does; a multi-tenant host bounds that with the
//! tenant's CPU limit (a container's cgroup `cpu.max`), and so does this harness:
//! - The data-plane attackers need almost no CPU (republishing a ring full of hostile
//!   chains is one index store): they run at nice 19
//!   ([`lowest_priority_for_this_thread`]) and sleep between bursts (hundreds of
//!   microseconds); what they publish stays in their ring, so the proxy finds hostile
//!   work in every round, and the cases that keep a ring full say how often the writer
//!   found it drained. What the good guest loses is what the data loop spends on the
//!   hostile guest: its per-round bounds (docs/threat-model.md, R3).
//! - The control-plane attackers (`Expect::control_plane`: messages, passed
//!   descriptors, queue flapping, a huge pool; and every repeated case, a loop of
//!   connections and messages too) need CPU of their own for every message
//!   (at nice 19 beside two pollers they would hardly run): their thread runs in a
//!   cgroup limited to `ATTACKER_CPU_QUOTA` per `ATTACKER_CPU_PERIOD` (10% of one CPU,
//!   `e2e_tests::cgroup`; the test fails if it cannot make one). Unlimited, the
//!   attacker alone (against a sink of this test, no proxy) cost the good guest half
//!   its rate on the 2-vCPU VM. Under the limit the attacker costs at most 10% of one of
//!   the two CPUs, and what the good guest loses beyond that is what the proxy spends
//!   for the attacker's uid: its control thread, its descriptor reaper and the port
//!   restarts its queue starts cause, each charged to the uid's budget (R4: 5% of a CPU
//!   on average, a 400 ms burst; what no legitimate guest does, refusals, bad requests,
//!   unwanted descriptors, sessions that never ran a queue, a flapper's restarts, also
//!   to a suspect budget of 2% and a 10 ms burst, so that an attacker that alternates
//!   pays at once). The reference case "the same refused peer on a sink" shows the
//!   attacker's own share (held to no floor).
//!
//! Measured on the shared 2-vCPU VM (other agents' builds and tests running): the full
//! runs and what each class read are in docs/threat-model.md ("The tests"). A
//! deliberately weakened proxy (no budget, no start limit, slow restarts) read 0.05 for
//! queue flapping; the proxy with only the average budget read 0.51-0.80 for the
//! descriptor classes. A ratio measured on a busy machine is noisy (single windows
//! swing 0.1x-5x); `HOSTILE_MIN_RATIO` sets one floor for every class for one run, never
//! to make a noisy run pass.
//!
//! Exact outcomes: each case says what the proxy's counters must show after it (`Want`:
//! the change of a counter of the hostile socket, the good one, the allowlist socket or
//! the global line, exactly or within bounds the case knows), each looked up by name so
//! that a missing counter fails; and each refusal is checked for its code and reason
//! (bad pools and requests, Hellos, reattaches, wake-up channels, port restarts). A case
//! without exact numbers says why (random writes).
//!
//! Issue 16's classes: passed descriptors (item 2), bounded work (3), rings (5), port
//! limits and shown names (6) are cases here. The others need a setup of their own and
//! have their tests elsewhere: socket directories, links and impostors (item 1) in
//! `access.rs`, buffers the NIC still holds (4) in `lifetime.rs`, the proxy's own user,
//! capabilities, seccomp and IOVA mode (6, 7) in `privsep.rs`.
//!
//! Run alone: `cargo test --release -p e2e-tests --test hostile -- --test-threads=1 --nocapture`
//! (`HOSTILE_CASES=a|b`: only the cases whose names contain `a` or `b`).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use e2e_tests::hostile::*;
use e2e_tests::*;
use shm_contract::mpmc::{DEQ_POS_OFFSET, ENQ_POS_OFFSET};
use shm_contract::proto::transport::send_message;
use shm_contract::proto::{encode_to_vec, HELLO_FLAG_REATTACH, QUEUE_FLAG_RX_WAKEUP};
use shm_contract::{Desc, DescFlags, Message, PoolAdd, RefuseCode, RegionFlags};

/// Each case lasts at least this long (the good guest's rate is measured over it).
const CASE_TIME: Duration = Duration::from_secs(2);

/// Issue 16's floor for the good guest's rate under every hostile class: the test
/// fails when a case's ratio (module docs: how it is measured, what it means) is below
/// it. `HOSTILE_MIN_RATIO` overrides it for a run (never to make a noisy one pass: a
/// ratio measured on a busy machine is noise, see docs/threat-model.md).
const MIN_RATIO: f64 = 0.8;

/// The floor every case is held to: [`MIN_RATIO`], or `HOSTILE_MIN_RATIO` for every
/// case of a run.
fn floor() -> f64 {
    std::env::var("HOSTILE_MIN_RATIO").ok().and_then(|v| v.parse().ok()).unwrap_or(MIN_RATIO)
}

/// The CPU time the attacker of a control-plane case may use, per `ATTACKER_CPU_PERIOD`
/// (10% of one CPU), as a multi-tenant host limits a tenant's container (cgroup
/// `cpu.max`): module docs, "What the ratio means".
const ATTACKER_CPU_QUOTA: Duration = Duration::from_millis(1);
const ATTACKER_CPU_PERIOD: Duration = Duration::from_millis(10);

/// The attacker's CPU limit (a cgroup made at the start of the test).
static ATTACKER_CPU: std::sync::OnceLock<e2e_tests::cgroup::CpuLimit> = std::sync::OnceLock::new();

fn attacker_cpu() -> &'static e2e_tests::cgroup::CpuLimit {
    ATTACKER_CPU.get_or_init(|| {
        e2e_tests::cgroup::CpuLimit::create("e2e-hostile-attacker", ATTACKER_CPU_QUOTA, ATTACKER_CPU_PERIOD).unwrap_or_else(|e| {
            panic!(
                "the hostile harness limits its control-plane attackers' CPU with a cgroup (as a host limits a \
                 tenant) and could not make one: {e}; it needs root and the cpu controller (cgroup v1 `cpu`, or v2 \
                 with cpu available to this process's cgroup)"
            )
        })
    })
}

/// The good guest's rate is measured in windows this long, alternately with the attack
/// running and paused ([`attacking`]), ...
const WINDOW: Duration = Duration::from_millis(100);
/// ... this many "on" windows per case, each between two "off" ones.
const PAIRS: usize = 16;
/// After the switch is thrown (and, for an "off" window, once the proxy consumed what
/// the attack had published), before a window starts.
const SETTLE: Duration = Duration::from_millis(5);
/// An attack told to pause waits at most this long for the proxy to consume what it
/// published; an "off" window that had to start without that is a failure. (A full
/// 65536-entry ring of invalid packets takes seconds: the proxy takes 32 of them about
/// once a millisecond from such a guest, `PENALTY_MAX` in proxy-app's datapath.rs.)
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// The harness stops taking window pairs after this long (with at least `MIN_PAIRS`),
/// for the attacks that take long to drain.
const PAIRS_TIME: Duration = Duration::from_secs(12);
const MIN_PAIRS: usize = 4;

/// The hostile client's switch, worked by the harness while the case runs on a thread
/// of its own: the harness measures the good guest's rate in windows, alternately with
/// the attack paused ("off") and running ("on"), and compares each "on" window with the
/// "off" windows on both sides of it (module docs). An attack loop asks [`attacking`]
/// before each of its bursts.
struct Switch {
    state: Mutex<SwitchState>,
    changed: Condvar,
}

#[derive(Clone, Copy)]
struct SwitchState {
    /// The harness measures an "off" window: attack loops wait.
    paused: bool,
    /// The harness has its windows: attack loops end, and the case checks its outcome.
    done: bool,
    /// An attack loop has asked (the case's set-up, attaching included, is behind it).
    started: bool,
    /// An attack loop waits in [`attacking`] now.
    waiting: bool,
    /// Times an attack loop paused before the proxy had consumed what it published
    /// (`DRAIN_LIMIT`).
    undrained: usize,
}

static SWITCH: Switch = Switch {
    state: Mutex::new(SwitchState { paused: true, done: false, started: false, waiting: false, undrained: 0 }),
    changed: Condvar::new(),
};

/// Asked by an attack loop before each burst: waits while the harness measures an
/// "off" window; false once the harness has measured its windows (the loop ends).
fn attacking() -> bool {
    attacking_then(|| true)
}

/// [`attacking`] for an attack whose work stays in its rings after its last burst
/// (a tx ring republished full): told to pause, it first waits (up to `DRAIN_LIMIT`)
/// until `consumed` says the proxy has taken it all, so that an "off" window sees none
/// of the attack's work.
fn attacking_then(mut consumed: impl FnMut() -> bool) -> bool {
    {
        let mut s = SWITCH.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.started {
            s.started = true;
            SWITCH.changed.notify_all();
        }
        if !s.paused || s.done {
            return !s.done;
        }
    }
    let t = Instant::now();
    while !consumed() && t.elapsed() < DRAIN_LIMIT {
        thread::sleep(Duration::from_millis(1));
    }
    let drained = consumed();
    let mut s = SWITCH.state.lock().unwrap_or_else(|e| e.into_inner());
    if !drained {
        s.undrained += 1;
    }
    s.waiting = true;
    SWITCH.changed.notify_all();
    while s.paused && !s.done {
        s = SWITCH.changed.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.waiting = false;
    !s.done
}

impl Switch {
    fn get(&self) -> SwitchState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut SwitchState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_all();
    }

    /// Before a case: paused (the first window is an "off" one), nothing started.
    fn reset(&self) {
        self.set(|s| *s = SwitchState { paused: true, done: false, started: false, waiting: false, undrained: 0 });
    }
}

/// The median of `v` (0 for none).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

type Stats = HashMap<String, String>;

struct Bench {
    _s: Scratch,
    proxy: Proc,
    good: Proc,
    bad_sock: PathBuf,
    good_sock: PathBuf,
    /// Nobody holds it: new guests attach here while descriptor attacks run.
    probe_sock: PathBuf,
    /// Its allowlist admits only uid 65534: every connection of this test is refused.
    allow_sock: PathBuf,
}

impl Bench {
    fn start() -> Bench {
        let s = Scratch::new("hostile");
        let bad_sock = s.path("q0/sock");
        let good_sock = s.path("q1/sock");
        let probe_sock = s.path("q2/sock");
        let allow_sock = s.path("q3/sock");
        let proxy = start_proxy(
            &s,
            &ProxyConfig {
                eal: vec!["--vdev".into(), "net_null0".into()],
                commands: vec![
                    format!("socket {} port 0 queue 0", bad_sock.display()),
                    format!("socket {} port 0 queue 1", good_sock.display()),
                    format!("socket {} port 0 queue 2", probe_sock.display()),
                    format!("socket {} port 0 queue 3 allow-uid 65534", allow_sock.display()),
                ],
                extra: vec![],
                netns: None,
            },
        );
        wait_or_dump(&proxy, "IO_PROXY: ready", 30);
        let mut good = start_testpmd(
            &s,
            &GuestConfig {
                socket: &good_sock,
                devargs: "",
                memory_mb: 32,
                testpmd_args: ["-i", "--forward-mode=macswap", "--total-num-mbufs=8192"].map(String::from).to_vec(),
                name: "good",
            },
        );
        wait_or_dump(&good, "Checking link statuses", 30);
        wait_or_dump(&proxy, "queue started", 30);
        // Retry a full tx ring for up to 200 ms instead of dropping: the port restarts
        // that every hostile queue start/stop causes on net_null (no runtime queue
        // setup) pause the good queue briefly.
        good.send("set fwd macswap retry");
        good.send("set burst tx delay 10 retry 20000");
        good.send("start");
        let mut b = Bench { _s: s, proxy, good, bad_sock, good_sock, probe_sock, allow_sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.good_stats().get("tx_packets").is_none_or(|v| v == "0") {
            assert!(Instant::now() < deadline, "the good guest never forwarded\n{}", b.good.out.text());
            thread::sleep(Duration::from_millis(200));
        }
        b
    }

    /// Fresh counters of both sockets (asks the proxy for them).
    fn stats(&mut self) -> (Stats, Stats) {
        let key = format!("socket={} ", self.good_sock.display());
        let before = self.proxy.out.text().matches(&key).count();
        self.proxy.send("show stats");
        if let Err(e) = self.proxy.out.wait_for("show stats", Duration::from_secs(10), |t| t.matches(&key).count() > before) {
            panic!("{e}: is the proxy alive?\n{}", self.proxy.out.text());
        }
        let text = self.proxy.out.text();
        (proxy_socket_stats(&text, &self.good_sock), proxy_socket_stats(&text, &self.bad_sock))
    }

    /// The last counters of the socket at `path` and the proxy's global line (asks
    /// the proxy for fresh ones).
    fn socket_and_global_stats(&mut self, path: &Path) -> (Stats, Stats) {
        self.stats();
        let text = self.proxy.out.text();
        let global = text
            .lines()
            .rev()
            .find(|l| l.starts_with("unclaimed="))
            .map(|l| l.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .unwrap_or_default();
        (proxy_socket_stats(&text, path), global)
    }

    /// The proxy's global line once the reaper has nothing pending (or `limit` passed).
    fn reaper_idle(&mut self, limit: Duration) -> Stats {
        let deadline = Instant::now() + limit;
        let good = self.good_sock.clone();
        loop {
            let (_, global) = self.socket_and_global_stats(&good);
            if strict(&global, "reaper_pending") == 0 || Instant::now() > deadline {
                return global;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// How long the proxy takes to answer `show stats` in full (its last line).
    fn stats_latency(&mut self) -> Duration {
        let from = self.proxy.out.len();
        let t = Instant::now();
        self.proxy.send("show stats");
        while t.elapsed() < Duration::from_secs(30) {
            if self.proxy.out.text_from(from).lines().any(|l| l.starts_with("unclaimed=")) {
                return t.elapsed();
            }
            thread::sleep(Duration::from_millis(1));
        }
        t.elapsed()
    }

    fn good_stats(&mut self) -> Stats {
        self.stats().0
    }

    /// Spends `d`; with `probe`, asks for `show stats` every 50 ms and attaches a new
    /// guest on the probe socket every 300 ms meanwhile (`Expect::fd_attack`).
    fn pass(&mut self, d: Duration, probe: &mut Option<FdProbe>) {
        let end = Instant::now() + d;
        let Some(p) = probe else {
            thread::sleep(d);
            return;
        };
        let probe_sock = self.probe_sock.clone();
        loop {
            let now = Instant::now();
            if now >= end {
                return;
            }
            if p.last_stats.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
                p.last_stats = Some(Instant::now());
                let took = self.stats_latency();
                p.stats.push(took);
            }
            if p.last_attach.is_none_or(|t| t.elapsed() >= Duration::from_millis(300)) {
                p.last_attach = Some(Instant::now());
                p.attach_once(&probe_sock);
            }
            thread::sleep(end.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
        }
    }

    /// The good guest's packets forwarded through the proxy per second, over a window
    /// of `w` (`probe`: as in [`Bench::pass`]).
    fn window_rate(&mut self, w: Duration, probe: &mut Option<FdProbe>) -> f64 {
        let (a, _) = self.stats();
        let t = Instant::now();
        self.pass(w, probe);
        let (b, _) = self.stats();
        (strict(&b, "tx_packets") - strict(&a, "tx_packets")) as f64 / t.elapsed().as_secs_f64()
    }

    /// While the case runs (`finished` says when it has ended): once its attack loop
    /// asks [`attacking`] for the first time (its set-up done), windows of the good
    /// guest's rate, alternately with the attack paused and running: off, on, off, ...,
    /// off, up to `PAIRS` on windows. Returns (off rates, on rates, off windows the
    /// attack did not pause for), or None when the case ended without an attack loop.
    fn paired_windows(&mut self, finished: &dyn Fn() -> bool, probe: &mut Option<FdProbe>) -> Option<(Vec<f64>, Vec<f64>, usize)> {
        while !SWITCH.get().started {
            if finished() {
                return None;
            }
            self.pass(Duration::from_millis(1), probe);
        }
        let (mut offs, mut ons, mut unpaused) = (Vec::new(), Vec::new(), 0);
        let t0 = Instant::now();
        loop {
            // Off: the attack loop waits in `attacking` (or has ended with the case).
            let t = Instant::now();
            while !SWITCH.get().waiting && !finished() {
                // The attack first waits for the proxy to consume its rings.
                if t.elapsed() > DRAIN_LIMIT + Duration::from_secs(2) {
                    unpaused += 1;
                    break;
                }
                self.pass(Duration::from_millis(1), probe);
            }
            self.pass(SETTLE, probe);
            offs.push(self.window_rate(WINDOW, probe));
            if ons.len() == PAIRS || (ons.len() >= MIN_PAIRS && t0.elapsed() > PAIRS_TIME) || finished() {
                break;
            }
            SWITCH.set(|s| s.paused = false);
            self.pass(SETTLE, probe);
            ons.push(self.window_rate(WINDOW, probe));
            SWITCH.set(|s| s.paused = true);
        }
        SWITCH.set(|s| s.done = true);
        Some((offs, ons, unpaused))
    }

    /// Waits until the proxy shows no guest on the hostile socket.
    fn wait_bad_detached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, bad) = self.stats();
            if bad.get("guest").is_some_and(|g| g == "-") {
                return;
            }
            assert!(Instant::now() < deadline, "the hostile guest was never detached: {bad:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What a case expects of the proxy's counters for the hostile socket, and of the
/// hostile connection.
#[derive(Clone, Copy, Default)]
struct Expect {
    /// `invalid` must grow (bad descriptors / free-ring entries counted).
    invalid: bool,
    /// `refused` must grow (connections refused or cut in the handshake).
    refused: bool,
    /// `bad_requests` must grow.
    bad_requests: bool,
    /// The hostile connection must end up closed by the proxy (Some(true)) or stay
    /// open (Some(false)).
    disconnected: Option<bool>,
    /// Packets the hostile guest sent correctly after misbehaving must go out.
    tx_after: bool,
    /// Attempts on the good guest's socket are part of the case (its `refused` grows).
    touches_good_socket: bool,
    /// A descriptor attack: while it runs, `show stats` must answer within
    /// `MAX_STATS_LATENCY` and a new guest attach within `MAX_ATTACH_TIME` (on the
    /// probe socket), and the reaper must have leaked nothing.
    fd_attack: bool,
    /// `unwanted_fds` must grow (descriptors passed where the protocol has none).
    unwanted_fds: bool,
    /// The attack's cost lands on the control thread: its attacker needs CPU time of
    /// its own for every message, and runs under the tenant's CPU limit
    /// (`ATTACKER_CPU_QUOTA`; module docs).
    control_plane: bool,
    /// A reference, not an attack on the proxy: the same attacker against a sink of
    /// this test, to show what the attack costs the machine by itself. Its ratio is
    /// printed and held to no floor.
    reference: bool,
    /// The case is one attack (a few messages or writes) with no loop of its own: the
    /// harness runs it again and again, each run a burst ([`repeated`]), so that it is
    /// measured in paired windows like the others.
    repeat: bool,
}

/// What a case saw itself.
struct Seen {
    disconnected: Option<bool>,
    note: String,
    /// A case-specific expectation that failed.
    problem: Option<String>,
}

struct Ctx<'a> {
    bad: &'a Path,
    good: &'a Path,
    /// The socket whose allowlist refuses this test's uid.
    allow: &'a Path,
    proxy_pid: u32,
}

type CaseFn = fn(&Ctx<'_>) -> Seen;

fn open_or_closed(p: &Peer) -> Option<bool> {
    Some(p.is_closed())
}

/// Publishes `descs` on a ready hostile guest, then checks that it stays connected and
/// that a correct packet still goes out afterwards. `outcome`: how many tx packets the
/// proxy must find invalid (each counted once in `tx_invalid` and in `invalid`) and how
/// many go out (`tx_packets`, the correct one included); `None`: the case says itself.
/// None is refused by the port or dropped.
fn bad_descs(c: &Ctx<'_>, outcome: Option<(u64, u64)>, make: impl FnOnce(&mut Attached) -> Vec<Desc>) -> Seen {
    let mut g = ready(c);
    let descs = make(&mut g);
    if let Some((invalid, sent)) = outcome {
        expect_exact("tx_invalid", invalid);
        expect_exact("invalid", invalid);
        expect_exact("tx_packets", sent);
    }
    expect_exact("tx_refused", 0);
    expect_exact("tx_dropped", 0);
    let pushed = g.push_tx(&descs, Duration::from_secs(1));
    // Give the proxy time to read them, then send a correct packet.
    thread::sleep(Duration::from_millis(200));
    g.reclaim(64);
    let ok = g.valid_desc(60).expect("an owned buffer");
    let sent_ok = g.push_tx(&[ok], Duration::from_secs(1));
    let peer = g.peer(Duration::from_millis(500));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: format!("{pushed}/{} bad descriptors published, then {sent_ok} good", descs.len()) }
}

/// A hostile guest attached to the hostile socket with a started queue: 512 buffers,
/// 256 of them in its free ring, 256 in hand.
fn ready(c: &Ctx<'_>) -> Attached {
    Attached::ready(c.bad, 512, 256).unwrap_or_else(|e| panic!("hostile attach: {e}"))
}

fn one(offset: u32) -> Desc {
    Desc { offset, data_off: 128, data_len: 60, ..Desc::default() }
}

fn case_out_of_range(c: &Ctx<'_>) -> Seen {
    bad_descs(c, Some((6, 1)), |g| {
        let size = g.layout.region_size() as u32;
        [u32::MAX, u32::MAX - 63, size, size + 64, 0x8000_0000, g.layout.heap().end() as u32].map(one).to_vec()
    })
}

fn case_misaligned(c: &Ctx<'_>) -> Seen {
    // Inside a buffer but not at its start (also inside the one before): no buffer.
    bad_descs(c, Some((6, 1)), |g| {
        let b = *g.owned.last().unwrap();
        [b + 1, b + 8, b + 64, b + 128, b + 2304 - 64, b - 64].map(one).to_vec()
    })
}

fn case_not_owned(c: &Ctx<'_>) -> Seen {
    // The 9 offsets of the header, rings and free ring are invalid; the 256 buffers the
    // guest gave to its free ring are invalid while the proxy holds them, but the NIC
    // (net_null receives without pause) brings most of them back to the guest in its rx
    // ring, and a buffer delivered to the guest is the guest's to send: those go out.
    // So each of the 265 packets is either counted invalid or sent, at least 9 invalid.
    // A buffer sent while it still sat in the free ring is in the free ring twice once
    // the NIC gives it back: when the proxy takes it the second time while it holds it,
    // that is one invalid free-ring entry (`invalid`, not `tx_invalid`), at most one per
    // such buffer; whether the proxy gets there within the case is timing.
    expect_sum(&["tx_invalid", "tx_packets"], 265 + 1);
    expect(Scope::Bad, &["invalid", "tx_packets"], 265 + 1, 265 + 1 + 256);
    expect_at_least("tx_invalid", 9);
    bad_descs(c, None, |g| {
        let p = g.pool.unwrap();
        let (rx, tx) = (g.layout.rx_ring().offset, g.layout.tx_ring().offset);
        // The header, the rings, the free ring, then every buffer the guest gave to its
        // free ring (the proxy holds many of them for NIC rx).
        let mut v: Vec<Desc> = [0, 64, 2048, rx, rx + 256, tx, tx + 256, p.ring_offset(), p.ring_offset() + 256].map(one).to_vec();
        v.extend((0..256).map(|i| one(p.buffer_offset(i))));
        v
    })
}

fn case_duplicates(c: &Ctx<'_>) -> Seen {
    // The first packet of `a` goes out; the two after it name a buffer the proxy
    // holds, the chain names `b` twice: 3 invalid, 2 sent with the correct one.
    bad_descs(c, Some((3, 2)), |g| {
        let a = g.owned.pop().unwrap();
        let b = g.owned.pop().unwrap();
        // The same buffer in consecutive packets, one of them twice in a chain.
        let mut chain = one(b);
        chain.flags = DescFlags::NEXT;
        vec![one(a), one(a), one(a), chain, one(b)]
    })
}

fn case_lengths(c: &Ctx<'_>) -> Seen {
    bad_descs(c, Some((5, 1)), |g| {
        let mut v = Vec::new();
        for (off, len) in [(128u16, 2049u16), (0, 2177), (u16::MAX, u16::MAX), (2176, 1), (4000, 0)] {
            let b = g.owned.pop().unwrap();
            v.push(Desc { offset: b, data_off: off, data_len: len, ..Desc::default() });
        }
        v
    })
}

fn case_segments(c: &Ctx<'_>) -> Seen {
    // 200 descriptors that all say "more follows": three over-long chains (65 each,
    // invalid) and an unfinished one of 5 the proxy keeps waiting for, which the
    // correct descriptor after them ends: a valid packet of 6 segments.
    bad_descs(c, Some((3, 1)), |g| {
        (0..200).map(|_| Desc { flags: DescFlags::NEXT, ..one(g.owned.pop().unwrap()) }).collect()
    })
}

fn case_chain_loop(c: &Ctx<'_>) -> Seen {
    bad_descs(c, Some((1, 1)), |g| {
        let (a, b) = (g.owned.pop().unwrap(), g.owned.pop().unwrap());
        let mut v: Vec<Desc> = (0..20).map(|i| Desc { flags: DescFlags::NEXT, ..one(if i % 2 == 0 { a } else { b }) }).collect();
        v.last_mut().unwrap().flags = DescFlags::empty();
        v
    })
}

fn corrupt_index(c: &Ctx<'_>, f: impl FnOnce(&mut Attached)) -> Seen {
    let mut g = ready(c);
    // Some honest traffic first, so the indices are not at 0.
    let descs: Vec<Desc> = (0..10).filter_map(|_| g.valid_desc(60)).collect();
    let sent = g.push_tx(&descs, Duration::from_secs(1));
    // Cut for a broken ring: one invalid input (the ring index), nothing else; the
    // honest packets went out.
    expect_exact("invalid", 1);
    expect_exact("tx_invalid", 0);
    expect_exact("tx_packets", sent as u64);
    thread::sleep(Duration::from_millis(100));
    f(&mut g);
    let peer = wait_closed(&g.sock, Duration::from_secs(3));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: format!("{peer:?}") }
}

fn case_tx_prod_ahead(c: &Ctx<'_>) -> Seen {
    corrupt_index(c, |g| g.set_tx_prod(g.tx_prod.wrapping_add(1_000_000)))
}

fn case_tx_prod_backwards(c: &Ctx<'_>) -> Seen {
    corrupt_index(c, |g| g.set_tx_prod(g.tx_prod.wrapping_sub(3)))
}

fn case_rx_cons_ahead(c: &Ctx<'_>) -> Seen {
    corrupt_index(c, |g| {
        // Let the proxy fill some of the rx ring first.
        thread::sleep(Duration::from_millis(100));
        g.set_rx_cons(g.rx_cons.wrapping_add(100_000));
    })
}

fn case_frozen(c: &Ctx<'_>) -> Seen {
    let mut g = ready(c);
    // A chain left unfinished, then nothing: the rx ring fills, the free ring empties.
    let d = Desc { flags: DescFlags::NEXT, ..one(g.owned.pop().unwrap()) };
    g.push_tx(&[d], Duration::from_secs(1));
    // Nothing invalid, nothing sent; the proxy delivers into the guest's 256 free-ring
    // buffers (less those it keeps posted to the NIC) and then, without buffers, takes
    // nothing more from the NIC for it: nothing dropped on its socket.
    expect_exact("invalid", 0);
    expect_exact("tx_invalid", 0);
    expect_exact("tx_packets", 0);
    expect(Scope::Bad, &["rx_packets"], 1, 256);
    expect_exact("rx_dropped", 0);
    thread::sleep(CASE_TIME);
    let peer = g.peer(Duration::from_millis(200));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: "rx ring never read, a tx chain never finished".into() }
}

fn case_header(c: &Ctx<'_>) -> Seen {
    let mut g = ready(c);
    let mut rng = Rng(0xfeed);
    // The whole header page (layout, status block) and the ring cache lines' padding.
    g.mem().write_bytes(0, &rng.bytes(4096)).unwrap();
    thread::sleep(Duration::from_millis(100));
    let descs: Vec<Desc> = (0..20).filter_map(|_| g.valid_desc(60)).collect();
    let n = g.push_tx(&descs, Duration::from_secs(1));
    // The proxy keeps its own copy of the layout: every packet goes out.
    expect_exact("tx_packets", n as u64);
    expect_exact("invalid", 0);
    expect_exact("tx_invalid", 0);
    let peer = g.peer(Duration::from_millis(500));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: format!("header scribbled, then {n} good packets") }
}

/// Runs `f` repeatedly on another thread (at the lowest priority: the module docs) for
/// as long as the harness measures, pausing while it measures an "off" window
/// ([`attacking`]); the calling thread waits.
fn for_a_while(mut f: impl FnMut() + Send) {
    for_a_while_on(&mut (), |_| f(), |_| true);
}

/// [`for_a_while`] on `state`, for an attack whose work stays in its rings: before each
/// pause, the proxy consumes what it published (`consumed`, [`attacking_then`]).
fn for_a_while_on<T: Send>(state: &mut T, mut burst: impl FnMut(&mut T) + Send, consumed: impl Fn(&T) -> bool + Send) {
    thread::scope(|s| {
        s.spawn(move || {
            lowest_priority_for_this_thread().expect("setpriority");
            loop {
                let st = &mut *state;
                if !attacking_then(|| consumed(st)) {
                    break;
                }
                burst(state);
            }
        });
    });
}

fn case_free_ring_garbage(c: &Ctx<'_>) -> Seen {
    let mut g = ready(c);
    let mut rng = Rng(0xbad);
    let p = g.pool.unwrap();
    let (mut rounds, mut enqueued) = (0u64, 0u64);
    let g_ref = &mut g;
    for_a_while(|| {
        // Read what the proxy delivered (so it keeps allocating), and feed the free ring
        // garbage instead of buffers: offsets of nothing, of the rings, duplicates.
        g_ref.drain_rx();
        g_ref.owned.clear();
        let junk: Vec<u32> = (0..32)
            .map(|i| match i % 4 {
                0 => rng.next_u64() as u32,
                1 => p.buffer_offset(0) + 8,
                2 => p.ring_offset(),
                _ => p.buffer_offset(rng.below(p.count() as u64) as u32),
            })
            .collect();
        if g_ref.free_ring().enqueue_bulk(&junk, 8).is_ok() {
            enqueued += junk.len() as u64;
        }
        rounds += 1;
        thread::sleep(Duration::from_micros(500));
    });
    // Each garbage entry the proxy took is counted once (a random buffer of the pool
    // may be one the guest really held: not counted); nothing else.
    expect(Scope::Bad, &["invalid"], 1, enqueued);
    expect_exact("tx_invalid", 0);
    expect_exact("tx_packets", 0);
    let peer = g.peer(Duration::from_millis(200));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: format!("{rounds} rounds of 32 garbage free-ring entries") }
}

fn case_free_ring_positions(c: &Ctx<'_>) -> Seen {
    let mut g = ready(c);
    let mut rng = Rng(0x5eed);
    let p = g.pool.unwrap();
    let g_ref = &mut g;
    for_a_while(|| {
        g_ref.drain_rx();
        let mem = g_ref.mem();
        mem.atomic_u32((p.ring_offset() + ENQ_POS_OFFSET) as usize).unwrap().store(rng.next_u64() as u32, Ordering::Relaxed);
        mem.atomic_u32((p.ring_offset() + DEQ_POS_OFFSET) as usize).unwrap().store(rng.next_u64() as u32, Ordering::Relaxed);
        thread::sleep(Duration::from_micros(200));
    });
    // Positions are the guest's to make a mess of: no packet, no tx descriptor.
    expect_exact("tx_invalid", 0);
    expect_exact("tx_packets", 0);
    let peer = g.peer(Duration::from_millis(200));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: "free ring positions rewritten every 200 us".into() }
}

/// No exact counters here: random words land in the rings' indices (the guest is cut,
/// one `invalid`), in descriptors, in the free ring or in packet data, in an order that
/// varies from run to run; the classes above check each of those outcomes on its own.
fn case_random_memory(c: &Ctx<'_>) -> Seen {
    let g = ready(c);
    let mut rng = Rng(0x1234_5678);
    let size = g.layout.region_size();
    let heap_end = g.pool.unwrap().objects().end();
    let mut writes = 0u64;
    let g_ref = &g;
    for_a_while(|| {
        // Random words anywhere below the end of the pool: header, rings, free ring,
        // mbuf headers, packet data.
        let mem = g_ref.mem();
        for _ in 0..64 {
            let at = (rng.below(heap_end.min(size)) & !7) as usize;
            mem.atomic_u64(at).unwrap().store(rng.next_u64(), Ordering::Relaxed);
            writes += 1;
        }
        thread::sleep(Duration::from_micros(200));
    });
    let peer = g.peer(Duration::from_millis(500));
    Seen { problem: None, disconnected: open_or_closed(&peer), note: format!("{writes} random words written") }
}

/// Says `h` and expects a refusal with `code` whose reason contains `reason_part`.
fn refused_hello(path: &Path, h: &shm_contract::proto::Hello, code: RefuseCode, reason_part: &str) -> Result<(), String> {
    let fd = connect(path).map_err(|e| e.to_string())?;
    match handshake(&fd, h) {
        Ok(_) => Err(format!("{h:?} was accepted")),
        Err(e) => {
            let refusal = e.strip_prefix("refused (").and_then(|r| r.split_once("): ")).map(|(c, r)| format!("{c}: {r}"));
            match refusal {
                Some(r) if refusal_is(&r, code, reason_part) => Ok(()),
                _ => Err(format!("{h:?}: expected a refusal '{code}: ...{reason_part}...', got {e}")),
            }
        }
    }
}

fn case_bad_version(c: &Ctx<'_>) -> Seen {
    let mut h = hello(8 << 20, 256);
    h.version_min = 99;
    h.version_max = 120;
    let r = refused_hello(c.bad, &h, RefuseCode::VersionMismatch, "no common protocol version");
    expect_exact("refused", 1);
    Seen { problem: r.clone().err(), disconnected: Some(r.is_ok()), note: format!("{r:?}") }
}

fn case_bad_sizes(c: &Ctx<'_>) -> Seen {
    let mut results = Vec::new();
    for (size, rx, tx, code, why) in [
        (u64::MAX, 256, 256, RefuseCode::TooLarge, "--max-region-size"),
        (1 << 40, 256, 256, RefuseCode::TooLarge, "--max-region-size"),
                // (Rounded up to a whole page: a hugepage where there are some.)
        (4096, 256, 256, RefuseCode::BadRequest, "cannot lay out the region: region size "),
        // Out of the protocol's range: the Hello itself is malformed.
        (8 << 20, 3, 256, RefuseCode::BadRequest, "malformed message: control message: rx_ring_entries = 3 out of range"),
        (8 << 20, 256, 1 << 31, RefuseCode::BadRequest, "malformed message: control message: tx_ring_entries = 2147483648 out of range"),
        (8 << 20, u32::MAX, u32::MAX, RefuseCode::BadRequest, "malformed message: control message: rx_ring_entries = 4294967295 out of range"),
    ] {
        let mut h = hello(size, rx);
        h.tx_ring_entries = tx;
        results.push(refused_hello(c.bad, &h, code, why));
    }
    // Each connection refused once; a malformed message (the three last) also counts
    // as a bad request, before Hello as after it.
    expect_exact("refused", results.len() as u64);
    expect_exact("bad_requests", 3);
    let all = results.iter().all(|r| r.is_ok());
    let wrong: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    Seen {
        problem: (!wrong.is_empty()).then(|| wrong.join("; ")),
        disconnected: Some(all),
        note: format!("{} absurd Hellos refused with their reasons: {all}", results.len()),
    }
}

fn case_mid_handshake(c: &Ctx<'_>) -> Seen {
    // Connects and says nothing: the proxy must give up after its Hello timeout. In the
    // set-up, before the first window: it is 5 s of waiting that costs the proxy one
    // accept and one close (as a loop it left 4 window pairs in 12 s, too few to say
    // anything).
    let fd = connect(c.bad).unwrap();
    let peer = wait_closed(&fd, Duration::from_secs(8));
    drop(fd);
    // Then, again and again: says Hello, gets its region, and vanishes without a word;
    // the next one once the proxy has let the last one go.
    let (mut vanished, mut failed) = (0u64, Vec::new());
    while attacking() {
        match Attached::attach(c.bad, &hello(8 << 20, 256)) {
            Ok(g) => {
                drop(g);
                vanished += 1;
            }
            Err(e) => failed.push(e.to_string()),
        }
        socket_free(c);
    }
    // The silent one is refused (no Hello); the ones that vanished had been welcomed.
    expect_exact("refused", 1);
    expect_exact("bad_requests", 0);
    Seen {
        problem: (vanished == 0 || !failed.is_empty()).then(|| format!("{vanished} attached and vanished; attaches that failed: {failed:?}")),
        disconnected: open_or_closed(&peer),
        note: format!("silent connection: {peer:?}; {vanished} attached and vanished"),
    }
}

fn case_connect_flood(c: &Ctx<'_>) -> Seen {
    let mut n = 0u64;
    let mut errors = 0u64;
    let start = Instant::now();
    for_a_while(|| {
        for path in [c.bad, c.good] {
            match connect(path) {
                Ok(fd) => drop(fd),
                Err(_) => errors += 1,
            }
            n += 1;
        }
        thread::sleep(Duration::from_micros(2000));
    });
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    // Every connection to either socket is refused once: on the hostile socket for
    // closing before its Hello, on the good one for being busy. (The proxy sees the
    // last closes within milliseconds; the harness asks for its counters after this.)
    thread::sleep(Duration::from_millis(200));
    let each = (n - errors) / 2;
    expect_exact("refused", each);
    expect(Scope::Good, &["refused"], each, each);
    Seen { problem: (errors != 0).then(|| format!("{errors} connects failed")), disconnected: None, note: format!("{n} connects ({per_s:.0}/s, {errors} failed)") }
}

fn case_random_bytes(c: &Ctx<'_>) -> Seen {
    let mut rng = Rng(0xdead_beef);
    // Before any Hello: cut off at once.
    let fd = connect(c.bad).unwrap();
    send_raw(&fd, &rng.bytes(100)).unwrap();
    let first = wait_closed(&fd, Duration::from_secs(3));
    drop(fd);
    // After a good handshake: each datagram refused, the guest kept.
    let mut g = ready(c);
    let mut sent = 0u64;
    for i in 0..40 {
        let len = 1 + rng.below(1500) as usize;
        let mut bytes = rng.bytes(len);
        if i % 2 == 0 && bytes.len() >= 16 {
            // A valid header with a garbage body, to get past the magic.
            let hdr = encode_to_vec(&Message::QueueStop { queue: 0 }, 9).unwrap();
            bytes[..8].copy_from_slice(&hdr[..8]);
        }
        if send_raw(&g.sock, &bytes).unwrap_or(false) {
            sent += 1;
        }
        if i % 8 == 7 {
            // Read the refusals as they come, like a guest that listens.
            g.peer(Duration::from_millis(50));
        }
    }
    let peer = g.peer(Duration::from_millis(500));
    let _ = &mut g;
    // The datagram before Hello: refused and, being malformed, a bad request; each one
    // after it (all malformed, for this seed): a bad request.
    expect_exact("refused", 1);
    expect_exact("bad_requests", sent + 1);
    // Cut off before its Hello, kept (each datagram refused) after it.
    let problem = (!first.is_closed() || peer.is_closed()).then(|| "expected: cut before Hello, kept after".to_string());
    Seen {
        disconnected: None,
        note: format!("before Hello: {first:?}; after: {sent} random datagrams, then {peer:?}"),
        problem,
    }
}

fn case_request_flood(c: &Ctx<'_>) -> Seen {
    // Requests as fast as the socket takes them, answers never read, until the proxy
    // cuts the guest; then again with a new guest.
    let msg = encode_to_vec(&Message::PoolDel { pool_id: 3 }, 7).unwrap();
    let (mut sent, mut guests, mut cut, mut stuck) = (0u64, 0u64, 0u64, 0u64);
    socket_free(c);
    while attacking() {
        let g = Attached::attach(c.bad, &hello(8 << 20, 256)).unwrap_or_else(|e| panic!("hostile attach: {e}"));
        guests += 1;
        let t = Instant::now();
        loop {
            match send_raw(&g.sock, &msg) {
                Ok(true) => sent += 1,
                Ok(false) if t.elapsed() < Duration::from_secs(5) => thread::sleep(Duration::from_millis(1)),
                Ok(false) => {
                    stuck += 1;
                    break;
                }
                Err(_) => break,
            }
        }
        if wait_closed(&g.sock, Duration::from_secs(3)).is_closed() {
            cut += 1;
        }
        drop(g);
        socket_free(c);
    }
    // Each request the proxy read is refused (no pool 3) until it cuts the guest that
    // does not read its answers; it cannot have read more than were sent.
    expect(Scope::Bad, &["bad_requests"], guests, sent);
    Seen {
        problem: (stuck > 0).then(|| format!("{stuck} guests' sockets stayed full for 5 s without being cut")),
        disconnected: Some(guests > 0 && cut == guests),
        note: format!("{sent} requests from {guests} guests, no answer read, {cut} cut"),
    }
}

fn case_bad_pools(c: &Ctx<'_>) -> Seen {
    // Every way a pool announcement can be wrong, each refused (BadRequest) with its
    // own reason, then the requests that need state the guest does not have. Each
    // refusal is one bad request; the guest stays.
    let mut g = Attached::attach(c.bad, &hello(8 << 20, 256)).unwrap();
    let heap = g.layout.heap();
    let good = small_pool(1, heap.offset);
    let bad: Vec<(PoolAdd, String)> = vec![
        (PoolAdd { pool_id: 77, ..good }, "pool: id 77 not below 4".into()),
        (PoolAdd { count: 0, ..good }, "pool: no objects".into()),
        (PoolAdd { ring_entries: 500, ..good }, "pool: free ring of 500 cells is not a power of two".into()),
        (PoolAdd { ring_entries: 256, ..good }, "pool: free ring of 256 cells is not a power of two in 512..=".into()),
        (PoolAdd { count: u32::MAX, ring_entries: 1 << 31, ..good }, "(--max-guest-buffers)".into()),
        (PoolAdd { mbuf_size: 64, ..good }, "pool: mbuf size 64 below 128".into()),
        (PoolAdd { data_room: 32, ..good }, "pool: data room 32 below 64".into()),
        (PoolAdd { stride: 64, ..good }, "pool: stride 64 below mbuf size + data room = 2304".into()),
        (PoolAdd { stride: 2304 + 8, ..good }, "pool: stride 2312 not a multiple of 64".into()),
        (PoolAdd { first_mbuf_offset: heap.offset + 8, ..good }, format!("pool: first mbuf at {} not 64-byte aligned", heap.offset + 8)),
        (PoolAdd { ring_offset: heap.offset + 8, ..good }, format!("pool: free ring at {} not 64-byte aligned", heap.offset + 8)),
        (PoolAdd { ring_offset: u32::MAX - 63, ..good }, format!("pool: free ring [{}, +", u32::MAX - 63)),
        (PoolAdd { first_mbuf_offset: 0, ..good }, "pool: objects [0, ".into()),
        (PoolAdd { count: 100_000, ring_entries: 1 << 17, ..good }, format!("pool: objects [{}, ", heap.offset + 8192)),
        (PoolAdd { first_mbuf_offset: heap.offset, ..good }, "pool: free ring overlaps the objects".into()),
    ];
    let mut asks: Vec<(String, Message, String)> =
        bad.iter().map(|(add, reason)| (format!("pool {add:?}"), Message::PoolAdd(*add), reason.clone())).collect();
    // Requests that need what the guest has not got, or that only the proxy sends.
    asks.push(("start without a pool".into(), Message::QueueStart { rx_pool_id: 3, flags: 0, rx_depth: 0, queue: 0 }, "no pool 3 was announced".into()));
    asks.push(("delete of no pool".into(), Message::PoolDel { pool_id: 2 }, "no pool 2".into()));
    asks.push(("a proxy's message".into(), Message::QueueStarted, "from a guest".into()));
    let mut wrong = Vec::new();
    let mut refusals = 0u64;
    let mut refused_as = |g: &mut Attached, wrong: &mut Vec<String>, what: &str, msg: &Message, reason: &str| match g.request(msg) {
        Ok(Message::Refuse { code: RefuseCode::BadRequest, reason: r }) if r.contains(reason) => refusals += 1,
        Ok(Message::Refuse { code, reason: r }) => {
            refusals += 1;
            wrong.push(format!("{what}: refused '{code}: {r}', expected 'bad request: ...{reason}...'"));
        }
        other => wrong.push(format!("{what}: answered {other:?}, expected a refusal '...{reason}...'")),
    };
    for (what, msg, reason) in &asks {
        refused_as(&mut g, &mut wrong, what, msg, reason);
    }
    // A good pool over a region that is not allocated (one page given back): refused,
    // the proxy never allocates a guest's memory by touching it; and once allocated
    // again, accepted. (A hugetlb region is allocated by the proxy: not asked.)
    let unallocated = !g.layout.flags().contains(RegionFlags::HUGEPAGES);
    if unallocated {
        let page = u64::from(good.first_mbuf_offset);
        shm_contract::mem::punch_hole(g.memfd(), page, 4096).expect("punch a page of the heap");
        refused_as(&mut g, &mut wrong, "unallocated region", &Message::PoolAdd(good), "the region is not allocated");
        shm_contract::mem::allocate_region(g.memfd(), g.welcome.region_size).expect("allocate again");
    }
    // A good pool, then one with its id and one on top of it.
    if !matches!(g.request(&Message::PoolAdd(good)), Ok(Message::PoolAck { pool_id: 1 })) {
        wrong.push("the good pool was not accepted".into());
    }
    refused_as(&mut g, &mut wrong, "same id", &Message::PoolAdd(good), "pool id 1 is already in use");
    refused_as(&mut g, &mut wrong, "overlapping pool", &Message::PoolAdd(PoolAdd { pool_id: 2, ..good }), "pool: overlaps pool 1");
    let asked = asks.len() as u64 + 2 + u64::from(unallocated);
    expect_exact("bad_requests", asked);
    expect_exact("refused", 0);
    expect_exact("invalid", 0);
    let peer = g.peer(Duration::from_millis(300));
    Seen {
        problem: (!wrong.is_empty()).then(|| wrong.join("; ")),
        disconnected: open_or_closed(&peer),
        note: format!("{refusals}/{asked} bad pools and requests refused (each with its reason: {})", wrong.is_empty()),
    }
}

fn case_reattach_foreign_fd(c: &Ctx<'_>) -> Seen {
    let mut outcomes = Vec::new();
    // An unsealed memfd of the right size (the guest could shrink it under the proxy),
    // and a pipe.
    // SAFETY: plain syscalls on descriptors owned right away.
    let memfd = unsafe {
        let fd = libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), 8 << 20), 0);
        fd
    };
    let mut p = [0; 2];
    // SAFETY: as above.
    let (r, _w) = unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    };
    let mut wrong = Vec::new();
    let again_without = "asked for its region, the guest sent a Hello without it";
    for (fd, why) in [(Some(&memfd), "cannot adopt the guest's region"), (Some(&r), "cannot adopt the guest's region"), (None, again_without)] {
        // Asked for its region first: the connection refuses descriptors until then.
        let sock = window(c.bad);
        let mut h = hello(8 << 20, 256);
        h.flags = HELLO_FLAG_REATTACH;
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        send_message(sock.as_fd(), &Message::Hello(h), 1, &fds).unwrap();
        let peer = wait_closed(&sock, Duration::from_secs(3));
        if !matches!(&peer, Peer::Closed { refused: Some(r) } if refusal_is(r, RefuseCode::BadRequest, why)) {
            wrong.push(format!("expected a refusal 'bad request: ...{why}...', saw {peer:?}"));
        }
        outcomes.push(peer);
    }
    // Refused in the handshake, each; an fd where one is expected is not unwanted.
    expect_exact("refused", 3);
    expect_exact("unwanted_fds", 0);
    let all = outcomes.iter().all(Peer::is_closed);
    Seen { problem: (!wrong.is_empty()).then(|| wrong.join("; ")), disconnected: Some(all), note: format!("{outcomes:?}") }
}

/// Runs a control-plane case and appends to its note where the CPU went meanwhile
/// (`e2e_tests::cpu`): what each thread of the proxy, of the good guest and of this
/// test (the attacker) ran and waited, each CPU's softirq and steal time, and the
/// proxy's own account. The good guest loses what its CPU and the data loop's give to
/// others: the proxy's control thread and reaper share the data loop's CPU. The
/// attacker runs at nice 0 under the tenant's CPU limit (`ATTACKER_CPU_QUOTA`; how often
/// the limit held it back is in the note): what its own process costs the machine is
/// shown by the sink case.
fn with_cpu_report(c: &Ctx<'_>, run: fn(&Ctx<'_>) -> Seen) -> Seen {
    let guest = e2e_tests::cpu::pid_with_arg(&format!("sock:{}", c.good.display())).unwrap_or(0);
    let procs = [("proxy", c.proxy_pid), ("guest", guest), ("test", std::process::id())];
    let budget0 = budget_counters(c);
    let throttled0 = ATTACKER_CPU.get().map(|l| l.throttled());
    let before = e2e_tests::cpu::CpuSnapshot::take(&procs);
    let mut seen = run(c);
    let cpu = e2e_tests::cpu::CpuSnapshot::take(&procs).report_since(&before);
    let budget1 = budget_counters(c);
    let d: Vec<String> = budget1.iter().zip(&budget0).map(|((k, a), (_, b))| format!("{k} {}", a.saturating_sub(*b))).collect();
    let limited = match (throttled0, ATTACKER_CPU.get().map(|l| (l.throttled(), l.share()))) {
        (Some((n0, t0)), Some(((n1, t1), share))) => {
            format!("attacker limited to {:.0}% of a CPU: held back in {} periods, {} ms", share * 100.0, n1 - n0, (t1 - t0).as_millis())
        }
        _ => "attacker not limited".to_string(),
    };
    seen.note = format!("{}; {cpu}; {limited}; proxy counted: {}", seen.note, d.join(", "));
    seen
}

/// The proxy's own account of its control thread (asked on its admin socket, which
/// no uid's budget is charged for): its CPU time, what it charged to peers' uids, how
/// often a uid went over its budget, and how often a peer was put off for that (all
/// sockets).
fn budget_counters(c: &Ctx<'_>) -> Vec<(&'static str, u64)> {
    let text = admin_answer(c, "show stats");
    ["control_cpu_ms", "budget_charged_ms", "budget_suspect_ms", "budget_over", "deferred"]
        .into_iter()
        .map(|key| (key, stats_value(&text, key)))
        .collect()
}

/// Counter `key` of a `show stats` answer, summed over the lines that carry it; a key on
/// no line, or a value that is no number, fails.
fn stats_value(text: &str, key: &str) -> u64 {
    let key = format!("{key}=");
    let values: Vec<u64> = text
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix(key.as_str()))
        .map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{key}{v}")))
        .collect();
    assert!(!values.is_empty(), "show stats has no {key}: {text}");
    values.iter().sum()
}

/// The proxy's answer to `command` on its admin socket (empty if it gave none).
fn admin_answer(c: &Ctx<'_>, command: &str) -> String {
    use std::io::{Read, Write};
    let admin = c.bad.parent().and_then(Path::parent).expect("the test directory").join(ADMIN_SOCKET);
    let mut text = String::new();
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&admin) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(format!("{command}\n").as_bytes());
        let _ = s.read_to_string(&mut text);
    }
    text
}

/// Runs the one-shot case `run` again and again while the harness measures, each run a
/// burst of the attack ([`attacking`]), each on fresh connections once the proxy has let
/// the last run's go (as between cases). What the runs expect of the counters adds up:
/// the k-th expectation of every run is about the same counters, and the case's is
/// their sum (`min` and `max` added). A run's problem is the case's; the runs must see
/// the same connection outcome.
fn repeated(run: CaseFn, c: &Ctx<'_>) -> Seen {
    let take = || std::mem::take(&mut *EXACT.lock().unwrap_or_else(|e| e.into_inner()));
    let (mut sum, mut first, mut runs, mut problems): (Option<Vec<Want>>, Option<Seen>, u32, Vec<String>) = (None, None, 0, Vec::new());
    socket_free(c);
    while attacking() {
        take();
        let t = Instant::now();
        let seen = run(c);
        let wants = take();
        // Before the next run: the proxy has let this one's connection go. A quick run
        // whose connections the proxy refused and closed itself (a refused handshake)
        // left none and needs no look: hundreds of such runs a second would otherwise
        // make as many admin requests in the "on" windows.
        if seen.disconnected != Some(true) || t.elapsed() > Duration::from_millis(100) {
            socket_free(c);
        }
        match &mut sum {
            None => sum = Some(wants),
            Some(total) if total.len() == wants.len() && total.iter().zip(&wants).all(|(a, b)| a.scope == b.scope && a.keys == b.keys) => {
                for (a, b) in total.iter_mut().zip(&wants) {
                    a.min = a.min.saturating_add(b.min);
                    a.max = a.max.saturating_add(b.max);
                }
            }
            Some(_) => problems.push(format!("run {runs} expected other counters than the first")),
        }
        if let Some(p) = &seen.problem {
            problems.push(format!("run {runs}: {p}"));
        }
        match &first {
            Some(f) if f.disconnected != seen.disconnected => {
                problems.push(format!("run {runs}: disconnected {:?}, the first {:?}", seen.disconnected, f.disconnected))
            }
            Some(_) => {}
            None => first = Some(seen),
        }
        runs += 1;
    }
    *EXACT.lock().unwrap_or_else(|e| e.into_inner()) = sum.unwrap_or_default();
    let first = first.unwrap_or(Seen { disconnected: None, note: String::new(), problem: Some("never ran".into()) });
    problems.extend(first.problem);
    Seen { disconnected: first.disconnected, note: format!("{runs} runs, the first: {}", first.note), problem: (!problems.is_empty()).then(|| problems.join("; ")) }
}

/// Waits (up to 15 s) until the hostile socket has no connection (`show sockets`: one
/// admin request per look, on the control thread's time, charged to nobody; a run of
/// a repeated case that the proxy refused is let go at once, and the next look is not
/// needed).
fn socket_free(c: &Ctx<'_>) {
    let key = format!("{} port ", c.bad.display());
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if admin_answer(c, "show sockets").lines().any(|l| l.starts_with(&key) && l.contains(": no guest;")) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The longest the harness waits for the test's uid to be clear of its budget.
const BUDGET_CLEAR_LIMIT: Duration = Duration::from_secs(30);

fn case_queue_flapping(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, queue_flapping)
}

fn queue_flapping(c: &Ctx<'_>) -> Seen {
    // Stops and starts its queue as fast as the proxy answers. On a device without
    // runtime queue setup (net_null) every switch restarts the port, pausing the good
    // guest's queue too; the proxy must not let one guest do that without bound: each
    // restart costs the flapper's uid the outage it caused the port's other queues
    // (charged to its control-thread budget, which then holds its messages back), and
    // after a burst, starts beyond 10 per second are refused.
    let budget0 = budget_counters(c);
    let mut g = ready(c);
    let flapping0 = budget_counters(c);
    let (mut ok, mut refused, mut other_reason) = (0u32, 0u32, None);
    // Switches of the NIC queue: a start done, or a stop of a started queue (a stop
    // after a refused start has nothing to stop).
    let (mut started, mut switches) = (true, 0u64);
    while attacking() {
        for msg in [Message::QueueStop { queue: 0 }, Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue: 0 }] {
            let start = matches!(msg, Message::QueueStart { .. });
            match g.request(&msg) {
                Ok(Message::Refuse { code: RefuseCode::BadRequest, reason }) if reason.contains("queue starts per second") => refused += 1,
                Ok(Message::Refuse { code, reason }) => {
                    refused += 1;
                    other_reason = Some(format!("{code}: {reason}"));
                }
                Ok(_) => {
                    ok += 1;
                    if start || started {
                        switches += 1;
                    }
                    started = start;
                }
                Err(_) => break,
            }
        }
    }
    let budget1 = budget_counters(c);
    let grew = |from: &[(&str, u64)], key: &str| -> u64 {
        let at = |list: &[(&str, u64)]| list.iter().find(|(k, _)| *k == key).map(|&(_, v)| v).unwrap_or_else(|| panic!("no counter {key}"));
        at(&budget1) - at(from)
    };
    let held_back = grew(&budget0, "budget_over");
    // From its first stop of the running queue on, everything the flapper costs is
    // charged to its suspect budget too (all but that first message's share before it).
    let (charged, suspect) = (grew(&flapping0, "budget_charged_ms"), grew(&flapping0, "budget_suspect_ms"));
    // Each refused start is a bad request, and only those.
    expect_exact("bad_requests", refused as u64);
    // Every switch restarted the port (and the attach's start, and maybe the detach's
    // stop at the end), each charged to the flapper's uid for the good
    // guest's outage.
    expect(Scope::Global, &["port_restarts"], switches + 1, switches + 2);
    expect(Scope::Global, &["restarts_charged_ms"], 1, u64::MAX);
    let problem = match (refused, held_back, other_reason) {
        (0, 0, _) => Some("neither the budget nor the start rate held the flapper back".to_string()),
        (_, _, Some(r)) => Some(format!("a start refused for another reason: {r}")),
        _ if suspect * 10 < charged * 9 => Some(format!("of the {charged} ms the flapper cost, only {suspect} ms went to its suspect budget")),
        _ => None,
    };
    let peer = g.peer(Duration::from_millis(200));
    Seen {
        problem,
        disconnected: open_or_closed(&peer),
        note: format!("{ok} queue stops/starts answered ({switches} port restarts), {refused} refused, the uid over its budget {held_back} times, {suspect} of {charged} ms charged as suspect"),
    }
}

fn case_huge_pool(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, huge_pool)
}

fn huge_pool(c: &Ctx<'_>) -> Seen {
    // The largest region, carved into the smallest buffers: the proxy's shadow memory
    // grows with the buffer count. It must refuse or serve it, and nobody else may
    // notice. The attacker is a process of its own (src/bin/huge-pool-guest.rs), started
    // from this thread, so under the attackers' CPU limit: it allocates its 2 GiB region
    // there (a guest's region is its own to allocate), offers the pool, and exits. Then
    // the proxy holds the last reference to 2 GiB of pages, and frees them a step at a
    // time, charged to the uid (proxy-app/src/control/release.rs): the case waits until
    // it has.
    let released = |c: &Ctx<'_>| global_counter(c, "regions_released_paced");
    let released0 = released(c);
    let charged0 = global_counter(c, "release_charged_ms");
    let t = Instant::now();
    let mut child = match std::process::Command::new(env!("CARGO_BIN_EXE_huge-pool-guest"))
        .arg(c.bad)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Seen { problem: Some(format!("cannot start huge-pool-guest: {e}")), disconnected: None, note: String::new() },
    };
    // 2 GiB zeroed under a tenth of a CPU: about 6 s here.
    let deadline = t + Duration::from_secs(120);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output();
    let exited = t.elapsed();
    let (stdout, stderr) = match &out {
        Ok(o) => (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => (String::new(), e.to_string()),
    };
    let line = stdout.lines().find(|l| l.starts_with("huge-pool-guest: ")).unwrap_or("").to_string();
    if line.starts_with("huge-pool-guest: refused:") {
        return Seen { problem: None, disconnected: Some(true), note: format!("2 GiB region refused: {line}") };
    }
    // A pool in the region before the attacker allocated it is refused (the proxy never
    // allocates a guest's memory by touching it); the huge one by the per-guest quota
    // (--max-guest-buffers, 512 Ki by default) before the proxy spends any memory on it.
    expect_exact("bad_requests", 2);
    let mut problems = Vec::new();
    if !line.contains("unallocated=Ok(Refuse { code: BadRequest, reason: \"pool 1: the region is not allocated") {
        problems.push(format!("expected the pool in the unallocated region refused, got '{line}'"));
    }
    if !(line.contains("answer=Ok(Refuse { code: BadRequest") && line.contains("--max-guest-buffers")) {
        problems.push(format!("expected a refusal naming --max-guest-buffers, got '{line}' (stderr: {})", stderr.trim()));
    }
    // The attacker's process is gone: its region is freed in steps, each charged to its
    // uid, none at once, none left to a process.
    let t_release = Instant::now();
    while released(c) < released0 + 1 && t_release.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(100));
    }
    let release_took = t_release.elapsed();
    if released(c) < released0 + 1 {
        problems.push(format!("the region was not freed in steps within {release_took:?} of the attacker's exit"));
    }
    expect(Scope::Global, &["regions_released_paced"], 1, 1);
    expect(Scope::Global, &["release_freed_mib"], 2048, 2048);
    expect(Scope::Global, &["regions_left_to_guest", "regions_closed_at_once"], 0, 0);
    expect(Scope::Global, &["release_charged_ms"], 1, u64::MAX);
    let peer = line.split_whitespace().find_map(|w| w.strip_prefix("peer=")).unwrap_or("");
    Seen {
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        disconnected: match peer {
            "open" => Some(false),
            "closed" => Some(true),
            _ => None,
        },
        note: format!(
            "{line}; attacker exited after {exited:?}; its region freed in steps {release_took:?} later, {} ms of the \
             control thread charged to its uid",
            global_counter(c, "release_charged_ms").saturating_sub(charged0)
        ),
    }
}

/// A counter of the proxy's global `show stats` line (asked on its admin socket).
fn global_counter(c: &Ctx<'_>, key: &str) -> u64 {
    stats_value(&admin_answer(c, "show stats"), key)
}

fn case_punched_region(c: &Ctx<'_>) -> Seen {
    // The guest gives its region's pages back to the kernel (the memfd's seals allow a
    // punched hole) while no hugepage is free: the proxy's next access to the region
    // would raise SIGBUS. The proxy is held still between the punch and taking the last
    // free hugepages, as a scheduler could hold it, so that it cannot fault the pages
    // back in first.
    let g = ready(c);
    if !g.layout.flags().contains(RegionFlags::HUGEPAGES) {
        return Seen {
            problem: Some("the region is not on hugepages: this case needs free hugepages (scripts/setup.sh reserves them)".into()),
            disconnected: None,
            note: String::new(),
        };
    }
    let pid = c.proxy_pid as libc::pid_t;
    let stopped = Instant::now();
    // SAFETY: signals to the proxy this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let punched = g.punch_whole_region();
    // (On a machine just booted, the hypervisor backs these pages only now: seconds.)
    let hog = HugepageHog::take_all();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let held_stopped = stopped.elapsed();
    *HELD_STOPPED.lock().unwrap_or_else(|e| e.into_inner()) = held_stopped;
    let hog = match (punched, hog) {
        (Ok(()), Ok(h)) => h,
        (p, h) => {
            return Seen { problem: Some(format!("punch {p:?}, hog {:?}", h.err())), disconnected: None, note: String::new() };
        }
    };
    // From here on only the socket: the region is gone for us too.
    let peer = wait_closed(&g.sock, Duration::from_secs(5));
    let held = hog.files();
    drop(hog);
    // One invalid input (the vanished pages), the guest told why and cut.
    expect_exact("invalid", 1);
    expect_exact("tx_invalid", 0);
    let told = matches!(&peer, Peer::Closed { refused: Some(r) } if refusal_is(r, RefuseCode::BadRequest, "pages of the guest's region vanished"));
    Seen {
        problem: (!told).then(|| format!("expected a refusal 'bad request: pages of the guest's region vanished...', saw {peer:?}")),
        disconnected: Some(peer.is_closed()),
        note: format!("all free hugepages held ({held} files) until the proxy cut the guest; the proxy held stopped for {held_stopped:.1?} (not measured)"),
    }
}

fn case_wakeup_abuse(c: &Ctx<'_>) -> Seen {
    // Rx wake-ups asked for with a descriptor of the guest's choosing (a pipe): the
    // protocol passes none with QueueStart, and the guest's connection takes none
    // (SO_PASSRIGHTS off): the kernel refuses the send, nothing reaches the proxy and the
    // connection goes on. Then asked for
    // properly: the proxy hands over its own pair's end, which the guest makes blocking
    // and never reads, while it asks to be woken all the time and keeps its rx ring
    // drained: the proxy's sends must never block or slow its data loop.
    let start = Message::QueueStart { rx_pool_id: 0, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 0, queue: 0 };
    let (r, _w) = pipe();
    let mut g = Attached::attach(c.bad, &hello(8 << 20, 256)).unwrap();
    g.add_pool(512, 256).unwrap();
    let pipe_refused = matches!(g.request_with_fds(&start, &[r.as_fd()]), Err(e) if e.contains("os error 1)"));
    // Nothing reached the proxy; the rest is legal.
    expect_exact("unwanted_fds", 0);
    expect_exact("bad_requests", 0);
    let (answer, mut fds) = g.exchange(&start, &[]).unwrap();
    let started = answer == Message::QueueStarted && fds.len() == 1;
    let Some(end) = fds.pop() else {
        return Seen { problem: Some(format!("QueueStart answered {answer:?} with no descriptor")), disconnected: None, note: String::new() };
    };
    let is_dgram = shm_contract::wake::check_wake_socket(end.as_fd()).is_ok();
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(end.as_raw_fd(), libc::F_SETFL, 0) };
    g.tx_prod = 0;
    g.rx_cons = 0;
    let mut delivered = 0;
    let g_ref = &mut g;
    for_a_while(|| {
        g_ref.set_rx_wakeup_request(1);
        delivered += g_ref.drain_rx();
        // Back into the free ring, so the proxy keeps delivering (and signalling).
        let owned = std::mem::take(&mut g_ref.owned);
        for chunk in owned.chunks(32) {
            let _ = g_ref.free_ring().enqueue_bulk(chunk, 8);
        }
    });
    let mut listener = shm_contract::wake::WakeListener::new().unwrap();
    listener.attach(end).unwrap();
    let queued = listener.drain();
    let peer = g.peer(Duration::from_millis(200));
    let problem = (!(pipe_refused && started && is_dgram && queued > 0)).then(|| {
        format!("pipe refused by the kernel {pipe_refused}, started {started} with a unix datagram end {is_dgram}, {queued} wake-ups queued")
    });
    Seen {
        problem,
        disconnected: open_or_closed(&peer),
        note: format!("a guest's pipe refused by the kernel (EPERM); the proxy's end handed over; {delivered} packets received, {queued} wake-ups left unread"),
    }
}

fn case_tx_ring_garbage_flood(c: &Ctx<'_>) -> Seen {
    // The largest tx ring (65536), republished full of garbage as soon as the proxy
    // releases it: every poll finds a full ring of invalid descriptors. The proxy must
    // spend no more on it per poll than on a burst of real packets.
    let mut g = Attached::ready_with(c.bad, 65536, 512, 256).unwrap_or_else(|e| panic!("hostile attach: {e}"));
    let start = g.tx_prod;
    let mut rounds = 0u64;
    let burst = |g: &mut Attached| {
        let cons = g.tx_cons();
        if cons == g.tx_prod.wrapping_sub(65536) {
            std::thread::sleep(Duration::from_micros(50));
            return;
        }
        // Slots keep whatever they held (zeros: offset 0, the region header).
        g.set_tx_prod(cons.wrapping_add(65536));
        rounds += 1;
    };
    for_a_while_on(&mut g, burst, |g| g.tx_cons() == g.tx_prod);
    // Every descriptor published is a packet of one invalid segment, counted once.
    let consumed = tx_all_consumed(&g);
    let published = g.tx_prod.wrapping_sub(start) as u64;
    expect_exact("tx_invalid", published);
    expect_exact("invalid", published);
    expect_exact("tx_packets", 0);
    let peer = g.peer(Duration::from_millis(200));
    Seen {
        problem: (!consumed).then(|| format!("the proxy stopped consuming: cons {} prod {}", g.tx_cons(), g.tx_prod)),
        disconnected: open_or_closed(&peer),
        note: format!("{rounds} republications of a full 65536-entry ring"),
    }
}

// ---- Passed descriptors (issue 16, item 2). Each case passes descriptors the protocol
// does not expect, or has a refused or busy peer's queued ones released by a close,
// again and again while the harness measures (`attacking`), and `show stats` latency and
// how long a new guest needs to attach on the probe socket (`Expect::fd_attack`). The
// lingering TCP sockets would each block a closing thread for LINGER_SECS.

const LINGER_SECS: i32 = 30;
/// `show stats` must answer this fast while a descriptor attack runs.
const MAX_STATS_LATENCY: Duration = Duration::from_millis(100);
/// A new guest must be attached this fast (connect to Welcome) meanwhile.
const MAX_ATTACH_TIME: Duration = Duration::from_secs(1);

/// A lingering TCP client to pass; its server end is kept (unread) in `keep`.
fn lingering(keep: &mut Vec<std::net::TcpStream>) -> OwnedFd {
    let (client, server) = lingering_tcp(LINGER_SECS).expect("a lingering TCP connection");
    keep.push(server);
    client
}

/// Sends `bytes` with `fds` on `sock` and waits for the proxy to close it; returns
/// whether the message went out and whether the proxy closed the connection (a send
/// that fails because the proxy already closed counts as closed).
fn passed_and_cut(sock: &OwnedFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> (bool, bool) {
    let sent = send_or_disarm(sock, bytes, fds).is_ok();
    (sent, wait_closed(sock, Duration::from_secs(3)).is_closed())
}

/// Whether the kernel refused to pass `fds` on `sock` (`EPERM`: the proxy's connection
/// takes no descriptors, `SO_PASSRIGHTS` off): nothing reached the proxy.
fn kernel_refuses(sock: &OwnedFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
    matches!(send_or_disarm(sock, bytes, fds), Err(e) if e.raw_os_error() == Some(libc::EPERM))
}

/// A connection to `path` that may pass descriptors for one message: a reattaching
/// Hello without its memfd makes the proxy let them through and ask for it
/// (`RegionWanted`). The one way a peer still gets descriptors to the proxy. The
/// connection before must be gone (one per socket; a busy refusal would count).
fn window(path: &Path) -> OwnedFd {
    let sock = connect(path).unwrap();
    let mut reattach = hello(8 << 20, 256);
    reattach.flags = HELLO_FLAG_REATTACH;
    send_message(sock.as_fd(), &Message::Hello(reattach), 1, &[]).unwrap();
    match shm_contract::proto::transport::recv_message(sock.as_fd(), Some(Duration::from_secs(3))) {
        Ok((Message::RegionWanted, _, _)) => sock,
        other => panic!("a reattaching Hello without its memfd: expected RegionWanted, got {other:?}"),
    }
}

/// Ends a connection with Goodbye and waits until the proxy has let it go.
fn leave(sock: &OwnedFd) {
    let _ = send_message(sock.as_fd(), &Message::Goodbye, 0, &[]);
    wait_closed(sock, Duration::from_secs(3));
}

/// The messages a descriptor can come with, before Hello and after (`None`: a
/// garbage datagram). The reattaching Hello is the one place a descriptor is expected:
/// the region memfd, checked before it is kept.
fn message_kinds() -> Vec<(&'static str, bool, Option<Message>)> {
    let mut reattach = hello(8 << 20, 256);
    reattach.flags = HELLO_FLAG_REATTACH;
    let pool = PoolAdd { pool_id: 1, ring_offset: 0, ring_entries: 64, first_mbuf_offset: 0, stride: 2304, count: 63, mbuf_size: 128, data_room: 2176 };
    vec![
        ("garbage", false, None),
        ("Hello", false, Some(Message::Hello(hello(8 << 20, 256)))),
        ("reattaching Hello", false, Some(Message::Hello(reattach))),
        ("PoolAdd", true, Some(Message::PoolAdd(pool))),
        ("PoolDel", true, Some(Message::PoolDel { pool_id: 0 })),
        ("QueueStart", true, Some(Message::QueueStart { rx_pool_id: 0, flags: 0, rx_depth: 0, queue: 0 })),
        ("QueueStart+wake-ups", true, Some(Message::QueueStart { rx_pool_id: 0, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 0, queue: 0 })),
        ("QueueStop", true, Some(Message::QueueStop { queue: 0 })),
        ("Goodbye", true, Some(Message::Goodbye)),
        ("garbage after Hello", true, None),
    ]
}

/// Passes descriptors made by `make` with every kind of message, each on a fresh
/// connection (attached first where the message needs a guest), while the harness
/// measures ([`attacking`]); returns (attempts, stopped, the kinds that were not stopped), and says what the
/// hostile socket's counters must show. Stopped: the kernel refuses the descriptors on
/// every connection (`EPERM`: an attached guest's and a plain one take none), and on a
/// connection the proxy asked for its region (the one window a peer has) the proxy cuts
/// it. Counted: every descriptor that came where none is expected in `unwanted_fds`;
/// each window connection refused once (`refused`; no guest there, so no
/// `bad_requests`); on the global line, every window connection and descriptor that got
/// through closed by the reaper, none leaked.
fn pass_with_every_message(c: &Ctx<'_>, mut make: impl FnMut() -> Vec<OwnedFd>) -> (u32, u32, Vec<&'static str>) {
    let (mut attempts, mut cut, mut kept) = (0, 0, Vec::new());
    let (mut unwanted, mut passed, mut before_guest, mut with_guest) = (0u64, 0u64, 0u64, 0u64);
    while attacking() {
        for (name, attached, msg) in message_kinds() {
            let fds = make();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let reattach = matches!(&msg, Some(Message::Hello(h)) if h.flags & HELLO_FLAG_REATTACH != 0);
            let bytes = msg.map_or_else(|| b"not a message, with descriptors".to_vec(), |m| datagram(&m, 9));
            attempts += 1;
            let (sent, closed) = if attached {
                match Attached::attach(c.bad, &hello(8 << 20, 256)) {
                    Ok(g) => {
                        let refused = kernel_refuses(&g.sock, &bytes, &borrowed);
                        leave(&g.sock);
                        (false, refused)
                    }
                    Err(e) => panic!("hostile attach: {e}"),
                }
            } else {
                let plain = connect(c.bad).unwrap();
                let refused = kernel_refuses(&plain, &bytes, &borrowed);
                leave(&plain);
                if refused {
                    passed_and_cut(&window(c.bad), &bytes, &borrowed)
                } else {
                    (false, false)
                }
            };
            if sent {
                passed += fds.len() as u64;
                // The one place a descriptor is expected: checked, refused, not unwanted.
                if !reattach {
                    unwanted += fds.len() as u64;
                }
                if attached {
                    with_guest += 1;
                } else {
                    before_guest += 1;
                }
            }
            // Ours are closed here: the proxy's copies were the last ones.
            drop(borrowed);
            drop(fds);
            if closed {
                cut += 1;
            } else if !kept.contains(&name) {
                kept.push(name);
            }
        }
    }
    expect_exact("unwanted_fds", unwanted);
    expect_exact("refused", before_guest);
    expect_exact("bad_requests", with_guest);
    // Every window connection and every descriptor that reached the proxy is closed by
    // the reaper (the other connections never held one and are closed on the spot).
    expect(Scope::Global, &["reaper_closed"], passed + before_guest, u64::MAX);
    expect(Scope::Global, &["reaper_leaked"], 0, 0);
    (attempts, cut, kept)
}

fn case_fds_lingering_tcp(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, fds_lingering_tcp)
}

fn fds_lingering_tcp(c: &Ctx<'_>) -> Seen {
    let mut keep = Vec::new();
    let (attempts, cut, kept) = pass_with_every_message(c, || vec![lingering(&mut keep)]);
    // The attack is real here: such a close blocks its caller.
    let (probe, _server) = lingering_tcp(1).expect("a lingering TCP connection");
    let t = Instant::now();
    drop(probe);
    let blocked = t.elapsed();
    let problem = (cut != attempts || blocked < Duration::from_millis(900))
        .then(|| format!("{cut}/{attempts} stopped (kept: {kept:?}); a 1 s lingering close here took {blocked:?}"));
    Seen { problem, disconnected: Some(cut == attempts), note: format!("{attempts} lingering sockets passed with 10 kinds of message, {cut} refused by the kernel and, where asked for, cut; such a close blocks {blocked:.1?} per linger s") }
}

fn case_fds_refused_peer(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, fds_refused_peer)
}

fn fds_refused_peer(c: &Ctx<'_>) -> Seen {
    // A peer the allowlist refuses sends lingering sockets with everything, before
    // and after the proxy accepted it: nothing it sends is ever read.
    let (attempts, told, note) = refused_peer_attack(c.allow);
    // Each connection refused once on the allowlist socket, none of its descriptors
    // taken; nothing of it on the hostile socket.
    expect(Scope::Allow, &["refused"], attempts as u64, attempts as u64);
    expect(Scope::Allow, &["unwanted_fds"], 0, 0);
    expect(Scope::Allow, &["bad_requests"], 0, 0);
    expect_exact("refused", 0);
    expect(Scope::Global, &["reaper_leaked"], 0, 0);
    Seen { problem: (told != attempts).then(|| note.clone()), disconnected: Some(told == attempts), note }
}

fn case_fds_refused_peer_on_a_sink(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, fds_refused_peer_on_a_sink)
}

fn fds_refused_peer_on_a_sink(c: &Ctx<'_>) -> Seen {
    // The attacker of "fds: lingering sockets from a refused peer", against a listener
    // of this test that does the least a refusal takes (accept, send the reason, close),
    // on the CPU of the proxy's control thread and data loop: what the good guest loses
    // here is the machine's share of that attack (the attacker's own CPU time, the
    // kernel's work for its TCP sockets and connections), none of it the proxy's.
    let path = c.bad.parent().and_then(Path::parent).expect("the test directory").join("sink/sock");
    let sink = RefusingSink::start(&path, 0);
    let (attempts, told, note) = refused_peer_attack(&path);
    let accepted = sink.stop();
    Seen {
        problem: (told != attempts || accepted != attempts as u64).then(|| format!("{note}; the sink accepted {accepted}")),
        disconnected: Some(told == attempts),
        note: format!("{note}; on a sink of this test pinned to cpu 0"),
    }
}

/// Connects to `target` again and again while the harness measures ([`attacking`]),
/// sending up to 10 lingering sockets with every kind of message each time, and waits
/// to be told 'not allowed': (connections, told, a note).
fn refused_peer_attack(target: &Path) -> (u32, u32, String) {
    let mut keep = Vec::new();
    let (mut attempts, mut told) = (0u32, 0u32);
    let mut last = None;
    let mut slowest = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    while attacking() {
        attempts += 1;
        let t = Instant::now();
        let sock = connect(target).unwrap();
        let connected = t.elapsed();
        for (_, _, msg) in message_kinds() {
            let fd = lingering(&mut keep);
            let bytes = msg.map_or_else(|| b"garbage".to_vec(), |m| datagram(&m, 3));
            if send_or_disarm(&sock, &bytes, &[fd.as_fd()]).is_err() {
                break;
            }
        }
        let sent = t.elapsed();
        let peer = wait_closed(&sock, Duration::from_secs(3));
        if t.elapsed() > slowest.2 {
            slowest = (connected, sent, t.elapsed());
        }
        if matches!(&peer, Peer::Closed { refused: Some(r) } if r.contains("not allowed")) {
            told += 1;
        }
        last = Some(peer);
    }
    let mut note = format!(
        "{attempts} refused connections, up to 10 lingering sockets each; {told} told 'not allowed'; slowest: connected {:?}, sent {:?}, closed {:?}",
        slowest.0, slowest.1, slowest.2
    );
    if told != attempts {
        note += &format!("; last {last:?}");
    }
    (attempts, told, note)
}

/// A listener of this test that refuses every connection as the proxy refuses a peer
/// its allowlist does not admit (descriptors refused by the kernel, the reason sent,
/// the connection closed), on a thread pinned to `cpu`.
struct RefusingSink {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl RefusingSink {
    fn start(path: &Path, cpu: usize) -> RefusingSink {
        let _ = std::fs::create_dir_all(path.parent().unwrap());
        let _ = std::fs::remove_file(path);
        let listener = seqpacket_listener(path);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            // The proxy's stand-in: not under the attacker's CPU limit, which the
            // attacker's thread that starts this one is under.
            if let Some(limit) = ATTACKER_CPU.get() {
                limit.leave().unwrap_or_else(|e| panic!("the sink left the attacker's CPU limit: {e}"));
            }
            // Where the proxy's control thread runs.
            // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity on
            // this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            let refusal = Message::refuse(RefuseCode::NotAllowed, "the sink: not allowed");
            let mut accepted = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: accept4 on our listener; the descriptor is owned at once.
                let fd = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
                if fd >= 0 {
                    // SAFETY: a fresh descriptor nothing else owns.
                    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
                    let _ = send_message(conn.as_fd(), &refusal, 0, &[]);
                    accepted += 1;
                }
            }
            accepted
        });
        RefusingSink { stop, thread }
    }

    /// Stops it: how many connections it refused.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sink's thread")
    }
}

/// A unix seqpacket listener at `path` whose connections refuse descriptors
/// (`SO_PASSRIGHTS` off where the kernel has it), as the proxy's do.
fn seqpacket_listener(path: &Path) -> OwnedFd {
    // SAFETY: plain socket/bind/listen/setsockopt on a descriptor owned at once; addr is
    // a valid sockaddr_un holding the path.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_encoded_bytes();
        assert!(bytes.len() < addr.sun_path.len());
        for (d, b) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len), 0, "bind {}", path.display());
        assert_eq!(libc::listen(fd.as_raw_fd(), 8), 0);
        let off: libc::c_int = 0;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            shm_contract::proto::transport::SO_PASSRIGHTS,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        fd
    }
}

fn case_fds_other_kinds(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, fds_other_kinds)
}

fn fds_other_kinds(c: &Ctx<'_>) -> Seen {
    // A directory, a pipe, an unsealed memfd and a socket pair end, with every message.
    let mut round = 0u32;
    let (attempts, cut, kept) = pass_with_every_message(c, || {
        round += 1;
        let (r, _w) = pipe();
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        match round % 4 {
            0 => vec![std::fs::File::open("/").unwrap().into()],
            1 => vec![r],
            2 => vec![plain_memfd(8 << 20)],
            _ => vec![a.into()],
        }
    });
    let problem = (cut != attempts).then(|| format!("{cut}/{attempts} stopped (kept: {kept:?})"));
    Seen { problem, disconnected: Some(cut == attempts), note: format!("{attempts} directories, pipes, memfds and sockets passed, {cut} refused by the kernel and, where asked for, cut") }
}

fn case_fds_many_per_message(c: &Ctx<'_>) -> Seen {
    with_cpu_report(c, fds_many_per_message)
}

fn fds_many_per_message(c: &Ctx<'_>) -> Seen {
    // All the kernel lets one message carry (253): one lingering socket, pipes and
    // directories; every one must reach the reaper (none released inside recvmsg).
    let mut keep = Vec::new();
    let (attempts, cut, kept) = pass_with_every_message(c, || {
        let (r, _w) = pipe();
        let dir: OwnedFd = std::fs::File::open("/").unwrap().into();
        let mut v = vec![lingering(&mut keep)];
        for i in 1..shm_contract::proto::transport::SCM_MAX_FD {
            v.push(if i % 2 == 0 { r.try_clone().unwrap() } else { dir.try_clone().unwrap() });
        }
        v
    });
    let problem = (cut != attempts).then(|| format!("{cut}/{attempts} stopped (kept: {kept:?})"));
    Seen { problem, disconnected: Some(cut == attempts), note: format!("{attempts} messages of 253 descriptors, {cut} refused by the kernel and, where asked for, cut") }
}

fn case_fds_unread_at_close(c: &Ctx<'_>) -> Seen {
    // Messages with lingering sockets left unread when the connection closes: a
    // connection the proxy asked for its region (the one kind that may pass descriptors)
    // sends ten back to back (the proxy cuts it at the first, the other nine are
    // released with the connection); and a second connection to the busy good socket
    // tries ten (the kernel refuses them: it takes no descriptors).
    let mut keep = Vec::new();
    let (mut attempts, mut busy_told) = (0u32, 0u32);
    while attacking() {
        attempts += 1;
        let g = window(c.bad);
        for i in 0..10 {
            let fd = lingering(&mut keep);
            let _ = send_or_disarm(&g, &datagram(&Message::PoolDel { pool_id: i }, 10 + i), &[fd.as_fd()]);
        }
        // Gone before the next round's window (one connection per socket).
        wait_closed(&g, Duration::from_secs(3));
        drop(g);
        let busy = connect(c.good).unwrap();
        for i in 0..10 {
            let fd = lingering(&mut keep);
            if send_or_disarm(&busy, &datagram(&Message::Goodbye, i), &[fd.as_fd()]).is_err() {
                break;
            }
        }
        if matches!(wait_closed(&busy, Duration::from_secs(3)), Peer::Closed { refused: Some(r) } if r.contains("busy")) {
            busy_told += 1;
        }
    }
    // The window connection is cut at its first message (one descriptor unwanted, the
    // connection refused: no guest there); the busy socket refuses each connection and
    // gets no descriptor from it.
    expect_exact("unwanted_fds", attempts as u64);
    expect_exact("refused", attempts as u64);
    expect_exact("bad_requests", 0);
    expect(Scope::Good, &["refused"], busy_told as u64, busy_told as u64);
    expect(Scope::Good, &["unwanted_fds"], 0, 0);
    // The reaper closes the window connection of each round and the one descriptor the
    // proxy took; the others are released inside that connection's close. The busy
    // socket's connection never held one: closed on the spot.
    expect(Scope::Global, &["reaper_closed"], 2 * attempts as u64, u64::MAX);
    expect(Scope::Global, &["reaper_leaked"], 0, 0);
    let problem = (busy_told != attempts).then(|| format!("{busy_told}/{attempts} connections to the busy socket were told so"));
    Seen { problem, disconnected: Some(true), note: format!("{attempts} x (10 unread messages with lingering sockets on a connection asked for its region, cut at the first + 10 tried on a busy socket, refused by the kernel)") }
}

/// What the harness saw while a descriptor attack ran.
#[derive(Default)]
struct FdProbe {
    stats: Vec<Duration>,
    attach: Vec<Duration>,
    attach_failures: Vec<String>,
    last_stats: Option<Instant>,
    last_attach: Option<Instant>,
}

impl FdProbe {
    fn max(v: &[Duration]) -> Duration {
        v.iter().copied().max().unwrap_or_default()
    }

    /// One attach of a new guest on the probe socket (connect to Welcome), then goodbye.
    fn attach_once(&mut self, probe: &Path) {
        let t = Instant::now();
        match Attached::attach(probe, &hello(8 << 20, 256)) {
            Ok(g) => {
                self.attach.push(t.elapsed());
                let _ = send_message(g.sock.as_fd(), &Message::Goodbye, 0, &[]);
                wait_closed(&g.sock, Duration::from_secs(2));
            }
            Err(e) => self.attach_failures.push(e),
        }
    }
}

// ---- Bounded work per round and ring indices (issue 16, items 3, 5, 6) ----

/// Which `show stats` line a counter expectation is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The hostile socket (queue 0).
    Bad,
    /// The good guest's socket (queue 1).
    Good,
    /// The socket whose allowlist refuses this test's uid (queue 3).
    Allow,
    /// The proxy's global line (reaper, unclaimed buffers).
    Global,
}

/// What a case expects of a counter: the change of `keys` (summed) over the case lies
/// in `min..=max`. Set by the case while it runs (the numbers are known only to it) and
/// checked by the harness after it; a counter missing from its line fails the case.
#[derive(Clone, Debug)]
struct Want {
    scope: Scope,
    keys: Vec<&'static str>,
    min: u64,
    max: u64,
}

/// A side channel rather than a field of `Seen`: cases return early in many places.
static EXACT: std::sync::Mutex<Vec<Want>> = std::sync::Mutex::new(Vec::new());

fn expect(scope: Scope, keys: &[&'static str], min: u64, max: u64) {
    EXACT.lock().unwrap_or_else(|e| e.into_inner()).push(Want { scope, keys: keys.to_vec(), min, max });
}

/// The hostile socket's `counter` changes by exactly `delta` over the case.
fn expect_exact(counter: &'static str, delta: u64) {
    expect(Scope::Bad, &[counter], delta, delta);
}

/// The hostile socket's `counter` changes by at least `min` over the case.
fn expect_at_least(counter: &'static str, min: u64) {
    expect(Scope::Bad, &[counter], min, u64::MAX);
}

/// The changes of the hostile socket's `counters` add up to exactly `total`.
fn expect_sum(counters: &[&'static str], total: u64) {
    expect(Scope::Bad, counters, total, total);
}

/// Whether the change of a counter (summed over its keys) between two stats lines is
/// what `w` wants; a missing counter is an error.
fn check_want(w: &Want, before: &Stats, after: &Stats) -> Result<(), String> {
    let mut delta = 0u64;
    for key in &w.keys {
        let (a, z) = (counter_named(before, key)?, counter_named(after, key)?);
        delta = delta.wrapping_add(z.wrapping_sub(a));
    }
    let what = format!("{:?} {}", w.scope, w.keys.join("+"));
    match (w.min, w.max) {
        (min, max) if (min..=max).contains(&delta) => Ok(()),
        (min, max) if min == max => Err(format!("{what} changed by {delta}, expected exactly {min}")),
        (min, u64::MAX) => Err(format!("{what} changed by {delta}, expected at least {min}")),
        (min, max) => Err(format!("{what} changed by {delta}, expected {min}..={max}")),
    }
}

/// A refusal (`code: reason`, as `Peer` and the harness format it) is the expected one:
/// its code, and a part of its reason.
fn refusal_is(refusal: &str, code: RefuseCode, reason_part: &str) -> bool {
    refusal.starts_with(&format!("{code}: ")) && refusal.contains(reason_part)
}

/// A counter of a `show stats` line; a missing one ends the test.
fn strict(s: &Stats, k: &str) -> u64 {
    counter_named(s, k).unwrap_or_else(|e| panic!("{e}"))
}

/// A counter of a `show stats` line, or why not.
fn counter_named(stats: &Stats, key: &str) -> Result<u64, String> {
    let v = stats.get(key).ok_or_else(|| format!("no counter {key} in the stats line {stats:?}"))?;
    v.parse().map_err(|_| format!("counter {key}={v} is not a number"))
}

/// The tx ring of the republished-chain cases: 256 chains of 64.
const CHAIN_RING: u32 = 16384;

/// Waits (up to 3 s) until the proxy consumed every descriptor the guest published;
/// returns whether it did.
fn tx_all_consumed(g: &Attached) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while g.tx_cons() != g.tx_prod {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A chain over `bufs`: every descriptor but the last says NEXT.
fn chain_of(bufs: &[u32], len: u16) -> Vec<Desc> {
    let mut v: Vec<Desc> = bufs.iter().map(|&b| Desc { flags: DescFlags::NEXT, data_len: len, ..one(b) }).collect();
    if let Some(last) = v.last_mut() {
        last.flags = DescFlags::empty();
    }
    v
}

/// How the chains of [`republished_chains`] end.
#[derive(Clone, Copy, PartialEq)]
enum ChainTail {
    /// A descriptor that names no buffer: found by the proxy's scan, nothing claimed.
    BadOffset,
    /// The chain's first buffer again: found only when taking, so the proxy claims the
    /// 63 others first and has to give them back.
    Duplicate,
}

/// The attack that cut a good guest to 0.22x (0.09x with `poison`): the whole tx ring
/// is chains of 63 valid segments and one invalid descriptor, republished as soon as
/// the proxy consumed them (the slots keep their chains: republishing is one store of
/// the producer index); with `poison`, the free ring's positions are rewritten with
/// every republication too, so that giving the 63 buffers back would retry. Each chain
/// is exactly one invalid tx packet.
fn republished_chains(c: &Ctx<'_>, tail: ChainTail, poison: bool) -> Seen {
    // Every buffer in the guest's hand: the free ring starts empty.
    let mut g = Attached::ready_with(c.bad, CHAIN_RING, 512, 512).unwrap_or_else(|e| panic!("hostile attach: {e}"));
    let p = g.pool.unwrap();
    for k in 0..CHAIN_RING {
        let (chain, at) = (k / 64, k % 64);
        let first = chain * 63;
        let d = match (at < 63, tail) {
            (true, _) => Desc { flags: DescFlags::NEXT, ..one(p.buffer_offset((first + at) % p.count())) },
            // Inside the region header: no buffer.
            (false, ChainTail::BadOffset) => one(64),
            (false, ChainTail::Duplicate) => one(p.buffer_offset(first % p.count())),
        };
        g.write_tx_slot(k, &d);
    }
    let start = g.tx_cons();
    let (mut wakeups, mut drained) = (0u64, 0u64);
    let mut rng = Rng(0xc4a12);
    let burst = |g: &mut Attached| {
        let cons = g.tx_cons();
        wakeups += 1;
        if cons == g.tx_prod {
            drained += 1;
        }
        // The proxy releases whole packets only: `cons` starts a chain.
        g.set_tx_prod(cons.wrapping_add(CHAIN_RING));
        if poison {
            let mem = g.mem();
            mem.atomic_u32((p.ring_offset() + ENQ_POS_OFFSET) as usize).unwrap().store(rng.next_u64() as u32, Ordering::Relaxed);
            mem.atomic_u32((p.ring_offset() + DEQ_POS_OFFSET) as usize).unwrap().store(rng.next_u64() as u32, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_micros(200));
    };
    for_a_while_on(&mut g, burst, |g| g.tx_cons() == g.tx_prod);
    let consumed = tx_all_consumed(&g);
    let chains = g.tx_prod.wrapping_sub(start) / 64;
    expect_exact("tx_invalid", chains as u64);
    expect_exact("tx_packets", 0);
    expect_exact("tx_refused", 0);
    // The data loop put the guest's queue off after its invalid chains (the penalty).
    expect_at_least("penalty_polls", 1);
    let peer = g.peer(Duration::from_millis(200));
    Seen {
        problem: (!consumed).then(|| format!("the proxy stopped consuming: cons {} prod {}", g.tx_cons(), g.tx_prod)),
        disconnected: open_or_closed(&peer),
        note: format!("{chains} chains of 63+1 taken; writer found the ring drained at {drained} of {wakeups} wake-ups"),
    }
}

fn case_chains_63_plus_1(c: &Ctx<'_>) -> Seen {
    republished_chains(c, ChainTail::BadOffset, false)
}

fn case_chains_63_plus_duplicate(c: &Ctx<'_>) -> Seen {
    republished_chains(c, ChainTail::Duplicate, false)
}

fn case_chains_63_plus_duplicate_poisoned(c: &Ctx<'_>) -> Seen {
    republished_chains(c, ChainTail::Duplicate, true)
}

fn case_partial_chains(c: &Ctx<'_>) -> Seen {
    // Chains published in parts: 40 descriptors, then the last 10 a while later (the
    // bug: 32 or more NEXT descriptors first and the guest's tx was dead); 50 published
    // one at a time; a maximal chain of 64 in two parts. Each must go out once whole.
    let mut g = ready(c);
    let (a, b, m) = (g_owned_split(&mut g, 50), g_owned_split(&mut g, 50), g_owned_split(&mut g, 64));
    let (a, b, m) = (chain_of(&a, 60), chain_of(&b, 60), chain_of(&m, 20));
    let mut problems = Vec::new();
    g.push_tx(&a[..40], Duration::from_secs(1));
    thread::sleep(Duration::from_millis(300));
    if g.tx_cons() != 0 {
        problems.push(format!("a partial chain was consumed: tx_cons {}", g.tx_cons()));
    }
    g.push_tx(&a[40..], Duration::from_secs(1));
    for d in &b {
        g.push_tx(std::slice::from_ref(d), Duration::from_secs(1));
        thread::sleep(Duration::from_millis(5));
    }
    g.push_tx(&m[..33], Duration::from_secs(1));
    thread::sleep(Duration::from_millis(100));
    g.push_tx(&m[33..], Duration::from_secs(1));
    if !tx_all_consumed(&g) {
        problems.push(format!("not all consumed: cons {} prod {}", g.tx_cons(), g.tx_prod));
    }
    expect_exact("tx_packets", 3);
    expect_exact("tx_invalid", 0);
    expect_exact("tx_refused", 0);
    expect_exact("tx_dropped", 0);
    let peer = g.peer(Duration::from_millis(200));
    Seen {
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        disconnected: open_or_closed(&peer),
        note: "chains of 40+10, 50 x 1 and 33+31 descriptors".into(),
    }
}

/// `n` buffers out of the guest's hand.
fn g_owned_split(g: &mut Attached, n: usize) -> Vec<u32> {
    let at = g.owned.len().checked_sub(n).expect("enough buffers in hand");
    g.owned.split_off(at)
}

fn case_tx_limits(c: &Ctx<'_>) -> Seen {
    // Nothing a NIC should be handed: a packet of no bytes (valid by the contract, below
    // the port's limits: refused), a chain with an empty segment (invalid). Counted;
    // the correct one after them goes out.
    let mut g = ready(c);
    let bufs = g_owned_split(&mut g, 5);
    let empty = Desc { data_len: 0, ..one(bufs[0]) };
    let mut hole = chain_of(&bufs[1..4], 60);
    hole[1].data_len = 0;
    let mut descs = vec![empty];
    descs.extend(hole);
    descs.push(one(bufs[4]));
    g.push_tx(&descs, Duration::from_secs(1));
    let consumed = tx_all_consumed(&g);
    expect_exact("tx_refused", 1);
    expect_exact("tx_packets", 1);
    expect_exact("tx_invalid", 1);
    let peer = g.peer(Duration::from_millis(200));
    Seen {
        problem: (!consumed).then(|| "not all consumed".to_string()),
        disconnected: open_or_closed(&peer),
        note: "an empty packet, a chain with an empty segment, a good packet".into(),
    }
}

fn case_rx_cons_backwards(c: &Ctx<'_>) -> Seen {
    // Cut for a broken ring: one invalid input (the ring index), nothing else.
    expect_exact("invalid", 1);
    expect_exact("tx_invalid", 0);
    corrupt_index(c, |g| {
        // Receive for a while, take it all, give the buffers back so that the proxy
        // keeps delivering (and reading our index), then move the index back by 5:
        // still inside the window, but behind what the proxy already read.
        thread::sleep(Duration::from_millis(100));
        g.drain_rx();
        let owned = std::mem::take(&mut g.owned);
        for chunk in owned.chunks(32) {
            let _ = g.free_ring().enqueue_bulk(chunk, 8);
        }
        thread::sleep(Duration::from_millis(50));
        g.set_rx_cons(g.rx_cons.wrapping_sub(5));
    })
}

// ---- end of the bounded-work block ----

/// Guests a case leaves attached until the harness has read the counters (dropped after).
static HELD: std::sync::Mutex<Vec<Attached>> = std::sync::Mutex::new(Vec::new());
/// How the proxy must show the hostile guest's name (`guest=` and its log), if a case
/// says so.
static SHOWN_AS: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
/// How long a case held the proxy stopped itself (SIGSTOP, standing in for a scheduler
/// that holds it at the worst moment): the harness's doing, not the attack's, so the
/// case's rate is taken over the rest of its time.
static HELD_STOPPED: std::sync::Mutex<Duration> = std::sync::Mutex::new(Duration::ZERO);

fn case_app_name(c: &Ctx<'_>) -> Seen {
    // Issue 16 item 6: a guest names itself so as to forge a stats line, a counter and
    // a terminal escape; the proxy shows every byte outside its safe set as %XX.
    let mut h = hello(8 << 20, 256);
    // (At most 32 bytes fit.)
    h.app_name = "x invalid=0\nsocket=/f\u{1b}[2J%".into();
    let g = match Attached::attach(c.bad, &h) {
        Ok(g) => g,
        Err(e) => return Seen { problem: Some(format!("attach: {e}")), disconnected: None, note: String::new() },
    };
    *SHOWN_AS.lock().unwrap_or_else(|e| e.into_inner()) = Some("x%20invalid%3D0%0Asocket%3D/f%1B%5B2J%25".into());
    expect_exact("refused", 0);
    expect_exact("bad_requests", 0);
    let peer = g.peer(Duration::from_millis(200));
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(g);
    Seen { problem: None, disconnected: open_or_closed(&peer), note: "app name with a newline, '=', spaces, ESC and '%'".into() }
}

/// The good guest's rate during a case against its rate without the attack.
struct Measured {
    /// Without the attack: the median of the "off" windows, or the median of the
    /// windows before or after the case (whichever the case's rate is closer to).
    base: f64,
    /// With it: the median of the "on" windows, or over the whole case.
    rate: f64,
    /// What the floor is compared with: the median of the pairs' ratios, or
    /// `rate / base`.
    ratio: f64,
    /// How it was measured: "paired xN lo-hi" (N pairs, their lowest and highest
    /// ratio) or "around B/A" (the medians before and after).
    method: String,
}

struct Case {
    name: &'static str,
    run: CaseFn,
    expect: Expect,
}

impl Case {
    /// A one-shot case (no attack loop of its own) run again and again on fresh
    /// connections while the harness measures: [`repeated`].
    fn repeat(name: &'static str, run: CaseFn, expect: Expect) -> Case {
        Case { name, run, expect: Expect { repeat: true, ..expect } }
    }
}

fn cases() -> Vec<Case> {
    let drop_only = Expect { invalid: true, disconnected: Some(false), tx_after: true, ..Expect::default() };
    let cut = Expect { invalid: true, disconnected: Some(true), ..Expect::default() };
    let handshake = Expect { refused: true, disconnected: Some(true), ..Expect::default() };
    // Attached guests cannot pass descriptors at all (the kernel refuses them): what the
    // proxy counts comes from connections it asked for a region, before any handshake.
    let fds = Expect { refused: true, disconnected: Some(true), fd_attack: true, unwanted_fds: true, control_plane: true, ..Expect::default() };
    vec![
        Case::repeat("out-of-range offsets", case_out_of_range, drop_only),
        Case::repeat("misaligned offsets", case_misaligned, drop_only),
        Case::repeat("offsets not owned (rings, header, free buffers)", case_not_owned, drop_only),
        Case::repeat("duplicate offsets", case_duplicates, drop_only),
        Case::repeat("lengths beyond the buffer", case_lengths, drop_only),
        Case::repeat("absurd segment counts", case_segments, Expect { tx_after: false, ..drop_only }),
        Case::repeat("chain that loops", case_chain_loop, drop_only),
        Case::repeat("tx producer index far ahead", case_tx_prod_ahead, cut),
        Case::repeat("tx producer index backwards", case_tx_prod_backwards, cut),
        Case::repeat("rx consumer index far ahead", case_rx_cons_ahead, cut),
        Case { name: "tx ring flooded with garbage (65536 entries)", run: case_tx_ring_garbage_flood, expect: Expect { invalid: true, disconnected: Some(false), ..Expect::default() } },
        Case::repeat("frozen rings", case_frozen, Expect { disconnected: Some(false), ..Expect::default() }),
        Case::repeat("corrupted region header", case_header, Expect { disconnected: Some(false), tx_after: true, ..Expect::default() }),
        Case { name: "free ring filled with garbage", run: case_free_ring_garbage, expect: Expect { invalid: true, disconnected: Some(false), ..Expect::default() } },
        Case { name: "free ring positions rewritten", run: case_free_ring_positions, expect: Expect { disconnected: Some(false), ..Expect::default() } },
        Case { name: "random words all over the region", run: case_random_memory, expect: Expect::default() },
        Case::repeat("handshake: wrong version", case_bad_version, handshake),
        Case::repeat("handshake: absurd sizes", case_bad_sizes, handshake),
        Case { name: "stops mid-handshake", run: case_mid_handshake, expect: Expect { control_plane: true, ..handshake } },
        Case { name: "hundreds of connects per second", run: case_connect_flood, expect: Expect { refused: true, touches_good_socket: true, ..Expect::default() } },
        Case::repeat("random bytes on the socket", case_random_bytes, Expect { refused: true, bad_requests: true, ..Expect::default() }),
        Case { name: "request flood, answers never read", run: case_request_flood, expect: Expect { bad_requests: true, disconnected: Some(true), ..Expect::default() } },
        Case::repeat("bad pools and requests", case_bad_pools, Expect { bad_requests: true, disconnected: Some(false), ..Expect::default() }),
        Case::repeat("reattach with a foreign fd", case_reattach_foreign_fd, handshake),
        // One-shot, measured around: each run of it stops the proxy (SIGSTOP) while all
        // hugepages are taken.
        Case { name: "hole punched in the region, no hugepage free", run: case_punched_region, expect: cut },
        Case { name: "rx wake-ups abused", run: case_wakeup_abuse, expect: Expect { disconnected: Some(false), ..Expect::default() } },
        Case { name: "queue stop/start flapping", run: case_queue_flapping, expect: Expect { disconnected: Some(false), control_plane: true, ..Expect::default() } },
        // Passed descriptors (issue 16 item 2): see FdProbe.
        Case { name: "fds: lingering TCP socket with every message", run: case_fds_lingering_tcp, expect: fds },
        Case { name: "fds: lingering sockets from a refused peer", run: case_fds_refused_peer, expect: Expect { fd_attack: true, disconnected: Some(true), control_plane: true, ..Expect::default() } },
        Case { name: "fds: the same refused peer on a sink (machine's share)", run: case_fds_refused_peer_on_a_sink, expect: Expect { disconnected: Some(true), reference: true, ..Expect::default() } },
        Case { name: "fds: directory, pipe, memfd, socket", run: case_fds_other_kinds, expect: fds },
        Case { name: "fds: 253 per message", run: case_fds_many_per_message, expect: fds },
        Case { name: "fds: unread when the connection closes", run: case_fds_unread_at_close, expect: Expect { refused: false, touches_good_socket: true, ..fds } },
        // Bounded work per round, ring indices, port limits (issue 16, items 3, 5, 6);
        // exact counter changes in each case (`expect_exact`).
        Case { name: "chains of 63+1 (bad offset) republished", run: case_chains_63_plus_1, expect: Expect { invalid: true, disconnected: Some(false), ..Expect::default() } },
        Case { name: "chains of 63+1 (duplicate) republished", run: case_chains_63_plus_duplicate, expect: Expect { invalid: true, disconnected: Some(false), ..Expect::default() } },
        Case { name: "chains of 63+1 (duplicate), free ring positions poisoned", run: case_chains_63_plus_duplicate_poisoned, expect: Expect { invalid: true, disconnected: Some(false), ..Expect::default() } },
        Case::repeat("tx chains published in parts", case_partial_chains, Expect { disconnected: Some(false), tx_after: true, ..Expect::default() }),
        Case::repeat("packets beyond the port's limits", case_tx_limits, Expect { disconnected: Some(false), tx_after: true, ..Expect::default() }),
        Case::repeat("rx consumer index backwards in the window", case_rx_cons_backwards, cut),
        // Names shown escaped (issue 16, item 6).
        Case { name: "application name that forges a stats line", run: case_app_name, expect: Expect { disconnected: Some(false), ..Expect::default() } },
        // Last, one-shot, measured around: a 2 GiB region that the attacker's process
        // allocates (about 6 s under its CPU limit) and leaves to the proxy, which frees
        // it in steps (about 6.5 s), charged to the test's uid (every attacker's): about
        // 0.3 s, which a later case would start without.
        Case { name: "huge pool (proxy memory)", run: case_huge_pool, expect: Expect { bad_requests: true, disconnected: Some(false), control_plane: true, ..Expect::default() } },
    ]
}

#[test]
fn hostile_guests_do_not_disturb_a_good_one() {
    let mut b = Bench::start();
    let limit = attacker_cpu();
    let only = std::env::var("HOSTILE_CASES").ok();
    let mut failures = Vec::new();
    let mut table = vec![format!(
        "{:<48} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>6} {:>5} {:>9} {:>9} {:>6} {:<24} {:>9} {:>9}  note",
        "case", "invalid", "tx_inv", "refused", "bad_req", "tx_pkts", "unw_fds", "exact", "cut", "warns", "good_off", "good_on", "ratio", "method", "stats_ms", "attach_ms"
    )];
    for case in cases() {
        // HOSTILE_CASES: substrings of case names, separated by '|'.
        if only.as_deref().is_some_and(|f| !f.split('|').any(|f| case.name.contains(f))) {
            continue;
        }
        // The good guest's rate before the case: windows of WINDOW, their median.
        let before: Vec<f64> = (0..4).map(|_| b.window_rate(WINDOW, &mut None)).collect();
        let (g0, h0) = b.stats();
        let allow_sock = b.allow_sock.clone();
        let (a0, global0) = b.socket_and_global_stats(&allow_sock);
        let out0 = b.proxy.out.text().len();
        let t = Instant::now();
        EXACT.lock().unwrap_or_else(|e| e.into_inner()).clear();
        SWITCH.reset();
        let (bad, good) = (b.bad_sock.clone(), b.good_sock.clone());
        let ctx = Ctx { bad: &bad, good: &good, allow: &allow_sock, proxy_pid: b.proxy.pid() };
        let mut fd_probe = case.expect.fd_attack.then(FdProbe::default);
        // The case runs on its own thread; here, the good guest's rate is measured in
        // windows with its attack paused and running (and the descriptor probes run).
        let (seen, paired) = thread::scope(|sc| {
            let attack = sc.spawn(|| {
                // A repeated case is a tenant's loop of messages too: under its CPU limit.
                if case.expect.control_plane || case.expect.reference || case.expect.repeat {
                    limit.enter().unwrap_or_else(|e| panic!("the attacker's CPU limit: {e}"));
                }
                if case.expect.repeat {
                    repeated(case.run, &ctx)
                } else {
                    (case.run)(&ctx)
                }
            });
            let paired = b.paired_windows(&|| attack.is_finished(), &mut fd_probe);
            while !attack.is_finished() {
                b.pass(Duration::from_millis(5), &mut fd_probe);
            }
            match attack.join() {
                Ok(seen) => (seen, paired),
                Err(_) => panic!("the case '{}' panicked\n--- proxy ---\n{}", case.name, tail(&b.proxy.out.text(), 60)),
            }
        });
        if let Some(left) = CASE_TIME.checked_sub(t.elapsed()) {
            b.pass(left, &mut fd_probe);
        }
        let (g1, h1) = b.stats();
        // Less the time the case held the proxy stopped itself (`HELD_STOPPED`).
        let held_stopped = std::mem::take(&mut *HELD_STOPPED.lock().unwrap_or_else(|e| e.into_inner()));
        let elapsed = t.elapsed().saturating_sub(held_stopped).as_secs_f64();
        let rate = (strict(&g1, "tx_packets") - strict(&g0, "tx_packets")) as f64 / elapsed;
        let d = |a: &Stats, z: &Stats, k: &str| strict(z, k).wrapping_sub(strict(a, k));
        let text = b.proxy.out.text();
        let bad_path = b.bad_sock.display().to_string();
        let warn_lines: Vec<&str> = text[out0..].lines().filter(|l| l.contains("warning") && l.contains(&bad_path)).collect();
        let warns = warn_lines.len();
        let mut errs = Vec::new();
        if let Some(shown) = SHOWN_AS.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if h1.get("guest") != Some(&shown) {
                errs.push(format!("the guest's name shown as {:?}, expected {shown:?}", h1.get("guest")));
            }
            if !text[out0..].contains(&format!("guest '{shown}' (pid ")) {
                errs.push(format!("no log line names the guest '{shown}'"));
            }
            if text[out0..].lines().any(|l| l.starts_with("socket=/f\u{1b}") || l.contains("\u{1b}")) {
                errs.push("a forged line or an escape sequence reached the proxy's output".into());
            }
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if !b.proxy.is_running() {
            errs.push("the proxy died".to_string());
        }
        for k in ["tx_dropped", "rx_dropped", "invalid", "bad_requests", "penalty_polls"] {
            if strict(&g1, k) != 0 {
                errs.push(format!("good socket {k}={}", strict(&g1, k)));
            }
        }
        if !case.expect.touches_good_socket && d(&g0, &g1, "refused") != 0 {
            errs.push("good socket refused moved".into());
        }
        if strict(&g1, "guests_served") != 1 || g1.get("guest").is_none_or(|g| g == "-") {
            errs.push(format!("the good guest lost its attachment: {g1:?}"));
        }
        // What the ratio compares (printed in the table's `method` column):
        // - paired: the case has an attack loop. Each "on" window against the mean of the
        //   "off" windows on both sides of it, and the median of those ratios: drifts
        //   slower than a window pair (the vCPUs' placement) cancel, and one window that
        //   a neighbour on the machine slowed does not decide. The case's set-up (the
        //   hostile guest's attach, which restarts net_null's port) and its checks
        //   after the attack are in no window.
        // - around: an attack of a few messages or writes, no loop to pause. The case's
        //   whole time (set-up included, at least CASE_TIME, less any time the case
        //   held the proxy stopped itself) against the median of the
        //   windows before it and against that of the windows after it, the better of
        //   the two (one step of the VM's rate between them cancels; a loss shows on
        //   both sides).
        // (An attack that ended within MIN_PAIRS pairs, a request flood cut at once, is
        // measured as one without a loop.)
        let m = match &paired {
            Some((offs, ons, unpaused)) if ons.len() >= MIN_PAIRS => {
                let pairs: Vec<f64> = ons.iter().enumerate().map(|(i, on)| on / ((offs[i] + offs[i + 1]) / 2.0).max(1.0)).collect();
                if *unpaused > 0 {
                    errs.push(format!("the attack did not pause for {unpaused} off windows"));
                }
                let undrained = SWITCH.get().undrained;
                if undrained > 0 {
                    errs.push(format!("{undrained} off windows began before the proxy had consumed the attack's rings"));
                }
                let lo = pairs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = pairs.iter().copied().fold(0.0, f64::max);
                Measured {
                    base: median(offs),
                    rate: median(ons),
                    ratio: median(&pairs),
                    method: format!("paired x{} {lo:.2}-{hi:.2}", pairs.len()),
                }
            }
            _ => {
                // Against each side on its own, the better of the two: a step of the
                // VM's rate between the windows before and after (2x, at any moment)
                // leaves the case's rate at the level of one of them, while a loss the
                // attack caused shows against both.
                let after: Vec<f64> = (0..4).map(|_| b.window_rate(WINDOW, &mut None)).collect();
                let (b0, a0) = (median(&before).max(1.0), median(&after).max(1.0));
                let base = if rate / b0 >= rate / a0 { b0 } else { a0 };
                Measured { base, rate, ratio: rate / base, method: format!("around {b0:.0}/{a0:.0}") }
            }
        };
        let floor = floor();
        if !case.expect.reference && (m.ratio < floor || m.rate <= 0.0) {
            errs.push(format!("good guest at {:.2}x of its rate ({:.0}/s against {:.0}/s, {}), below {floor}", m.ratio, m.rate, m.base, m.method));
        }
        let e = case.expect;
        if e.invalid && d(&h0, &h1, "invalid") == 0 {
            errs.push("nothing counted as invalid".into());
        }
        if e.refused && d(&h0, &h1, "refused") == 0 {
            errs.push("nothing counted as refused".into());
        }
        if e.bad_requests && d(&h0, &h1, "bad_requests") == 0 {
            errs.push("nothing counted as a bad request".into());
        }
        if let (Some(want), Some(got)) = (e.disconnected, seen.disconnected) {
            if want != got {
                errs.push(format!("disconnected: expected {want}, saw {got}"));
            }
        }
        if let Some(p) = &seen.problem {
            errs.push(p.clone());
        }
        let wants = std::mem::take(&mut *EXACT.lock().unwrap_or_else(|e| e.into_inner()));
        // The reaper closes what peers passed on its own thread: wait (bounded) until
        // it has caught up before its counters are compared.
        let global1 = if wants.iter().any(|w| w.scope == Scope::Global) { b.reaper_idle(Duration::from_secs(10)) } else { Stats::new() };
        let (a1, _) = b.socket_and_global_stats(&allow_sock);
        for w in &wants {
            let (before, after) = match w.scope {
                Scope::Bad => (&h0, &h1),
                Scope::Good => (&g0, &g1),
                Scope::Allow => (&a0, &a1),
                Scope::Global => (&global0, &global1),
            };
            if let Err(e) = check_want(w, before, after) {
                errs.push(e);
            }
        }
        let exact_col = wants.len();
        if e.tx_after && d(&h0, &h1, "tx_packets") == 0 {
            errs.push("the hostile guest's correct packets did not go out".into());
        }
        if e.unwanted_fds && strict(&h1, "unwanted_fds") <= strict(&h0, "unwanted_fds") {
            errs.push("nothing counted in unwanted_fds".into());
        }
        let (stats_col, attach_col) = match &fd_probe {
            Some(p) => {
                let (a1, global) = b.socket_and_global_stats(&allow_sock);
                if strict(&global, "reaper_leaked") != 0 {
                    errs.push(format!("the reaper leaked descriptors: {global:?}"));
                }
                if strict(&a1, "unwanted_fds") != 0 {
                    errs.push("descriptors of a refused peer were received".into());
                }
                if case.name.contains("refused peer") && strict(&a1, "refused") <= strict(&a0, "refused") {
                    errs.push("the allowlist socket counted no refusal".into());
                }
                let (worst_stats, worst_attach) = (FdProbe::max(&p.stats), FdProbe::max(&p.attach));
                if p.stats.len() < 5 || worst_stats >= MAX_STATS_LATENCY {
                    errs.push(format!("show stats: {} answers, slowest {worst_stats:?} (limit {MAX_STATS_LATENCY:?})", p.stats.len()));
                }
                if p.attach.len() < 2 || worst_attach >= MAX_ATTACH_TIME || !p.attach_failures.is_empty() {
                    errs.push(format!(
                        "new guests: {} attached, slowest {worst_attach:?} (limit {MAX_ATTACH_TIME:?}), failures {:?}",
                        p.attach.len(),
                        p.attach_failures
                    ));
                }
                (
                    format!("{:.1}", worst_stats.as_secs_f64() * 1e3),
                    format!("{:.1}", worst_attach.as_secs_f64() * 1e3),
                )
            }
            None => ("-".to_string(), "-".to_string()),
        };
        // Rate limit: at most 5 peer warnings per 10 s per socket, plus the invalid-input
        // line (one per 10 s) and a detach line.
        let allowed = 5 * (1 + t.elapsed().as_secs() as usize / 10) + 4;
        if warns > allowed {
            errs.push(format!("{warns} warning lines (more than {allowed}), the first: {:?}", &warn_lines[..3.min(warns)]));
        }
        table.push(format!(
            "{:<48} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>6} {:>5} {:>9.0} {:>9.0} {:>6.2} {:<24} {:>9} {:>9}  {}",
            case.name,
            d(&h0, &h1, "invalid"),
            d(&h0, &h1, "tx_invalid"),
            d(&h0, &h1, "refused"),
            d(&h0, &h1, "bad_requests"),
            d(&h0, &h1, "tx_packets"),
            d(&h0, &h1, "unwanted_fds"),
            exact_col,
            seen.disconnected.map_or("-".to_string(), |c| c.to_string()),
            warns,
            m.base,
            m.rate,
            m.ratio,
            m.method,
            stats_col,
            attach_col,
            seen.note
        ));
        if !errs.is_empty() {
            failures.push(format!("{}: {}", case.name, errs.join("; ")));
        }
        b.wait_bad_detached_or_idle();
    }
    eprintln!("\n{}\n", table.join("\n"));
    // The good guest: stop, and compare its own counters with the proxy's.
    // (testpmd's output is block-buffered on a pipe: its numbers come at exit.)
    b.good.send("stop");
    thread::sleep(Duration::from_millis(500));
    let (g, _) = b.stats();
    let Bench { _s, mut proxy, mut good, .. } = b;
    good.send("quit");
    let (_, gout) = good.wait(Duration::from_secs(20));
    let fwd = testpmd_port_stats(&gout, 0);
    eprintln!("good guest: testpmd {fwd:?}\nproxy: {g:?}");
    proxy.send("quit");
    let (code, pout) = proxy.wait(Duration::from_secs(20));
    if code != Some(0) {
        failures.push(format!("proxy exit {code:?}"));
    }
    if testpmd_counter(&fwd, "TX-dropped") != 0 {
        failures.push(format!("the good guest dropped packets: {fwd:?}"));
    }
    assert!(failures.is_empty(), "{}\n{}\n--- proxy ---\n{}", failures.join("\n"), table.join("\n"), tail(&pout, 200));
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Bench {
    /// Between cases: whatever the case left connected is gone; wait for the proxy to
    /// have detached it (or never attached it).
    fn wait_bad_detached_or_idle(&mut self) {
        self.wait_bad_detached();
        // A silent connection may still hold the socket until the Hello timeout.
        thread::sleep(Duration::from_millis(200));
        // The next case starts with the test's uid clear of its budget (`socket_free`).
        let deadline = Instant::now() + BUDGET_CLEAR_LIMIT;
        let good = self.good_sock.clone();
        while Instant::now() < deadline && strict(&self.socket_and_global_stats(&good).1, "budget_uids_held") != 0 {
            thread::sleep(Duration::from_millis(50));
        }
    }
}
