//! The control plane's fuzzing harness (feature `fuzzing`; the target is
//! proxy-app/fuzz/fuzz_targets/session.rs). It is the real proxy control thread, not a
//! model: EAL (`--no-huge --no-shconf`, no PCI), one `net_null` port, one served socket,
//! the real [`Control`] with its poll loop, session state machine, region, shadow pools
//! and NIC queue switching; only the data loop is not running (so a publish does not
//! wait for it). A guest whose every step comes from the fuzzer talks to it over the
//! socket: it connects (more than once), sends any message in any order (structured,
//! or raw bytes), passes descriptors with them (its region back, fresh memfds, pipes, its
//! own socket), and writes into its shared region (ring indices, descriptors, free
//! rings, the header) between requests.
//!
//! Every input starts from the same state: a guest attached (connected, its Hello
//! answered, its region mapped on both sides) with no pool and no queue, its region's
//! bytes exactly as the Welcome left them. The input may use that guest, hang it up
//! (then new connections do their own handshakes), or open more connections. At the
//! end of the input the other connections hang up; if the first guest is still
//! attached, it is brought back to the starting state through the proxy's own request
//! handling (its queue stopped, its pools deleted) and its region's bytes are written
//! back, otherwise it hangs up too and the next input attaches a new one. Setting up a
//! guest (a connection, a region memfd, its pages and mappings) cost most of an input
//! when every input did it. After each input what must hold is checked: no pool of
//! the guest's left, no departed guest's pools in the quarantine (`net_null` holds no
//! buffer), exactly the mempools of the process before the first input (no shadow pool
//! leaked), the socket back to Listening when its guest left. Every answer the proxy
//! sent must decode. A failed check panics. The input alone should reproduce it: what
//! one input leaves behind is undone (see [`Harness::end_input`]), but
//! `PROXY_FUZZ_OUTCOMES=check` still finds inputs whose outcome depends on the one
//! before (docs/threat-model.md, "Fuzzing"). What stays up between
//! inputs is what a proxy keeps for its whole life (EAL, the port, the served socket,
//! the control plane) and the attached guest.
//!
//! `PROXY_FUZZ_OUTCOMES=check` runs every input a second time, after another input,
//! and fails when the outcome (every answer the guest got, the socket's counters)
//! differs: the check that inputs are independent. `=print` prints each outcome's
//! digest to stderr.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shm_contract::layout::{RegionLayout, MBUF_HEADER_SIZE};
use shm_contract::mem::{create_region_memfd, Mapping};
use shm_contract::mpmc::FreeRing;
use shm_contract::pool::MAX_POOLS;
use shm_contract::proto::transport::{connect_to_proxy, recv_message_and_fds, send_message, Received, TransportError};
use shm_contract::proto::{Hello, MessageKind, HELLO_FLAG_REATTACH, QUEUE_FLAG_RX_WAKEUP};
use shm_contract::{Desc, DescProducer, Message, PoolAdd, PROTOCOL_VERSION};

use super::listen::StartBudget;
use super::session::State;
use super::{Control, Options};
use crate::access::Access;
use crate::cmds::{Command, SocketAccess};
use crate::datapath::Plane;

/// The proxy's default region size here (a Hello with size 0) and its limit: a few
/// pages, as every page of a region is allocated, zeroed, mapped and freed again in each
/// input that attaches (the kernel's work for a region grows with its pages, and was
/// most of an input at 32 to 64 pages); big enough for the header, rings of up to 1024
/// entries and pools of a few buffers.
const REGION_SIZE: u64 = 32 << 10;
const MAX_REGION_SIZE: u64 = 64 << 10;
/// Buffers per guest (`--max-guest-buffers`).
const MAX_GUEST_BUFFERS: u64 = 1024;
/// Steps of one input (one session), and guest connections open at once.
const MAX_STEPS: usize = 48;
const MAX_CONNS: usize = 3;
/// Descriptors the reaper may still have to close when an input starts (see
/// `Harness::end_session`).
const REAPER_BACKLOG: usize = 64;
/// Ring entries of the first guest.
const FIRST_RING_ENTRIES: u32 = 256;
/// Steps between two reads of the first guest's answers: fewer answers than its
/// socket holds (the proxy would take a full socket for a guest that does not read).
const FIRST_READS_EVERY: u32 = 8;
/// A step that opens a connection, says Goodbye or hangs up is taken one time in this
/// many (its next byte is 1 modulo this: not 0, the fuzzer's favourite filler and what
/// an input that ran out reads), else it does nothing: with one in 16 steps of each
/// kind, half the inputs ended the first guest's session and each opened 2.3
/// connections, which cost the kernel more than all its messages (docs/threat-model.md,
/// "Fuzzing"). They stay reachable, and a guest with no connection still opens one.
const COSTLY_ONE_IN: u8 = 8;

/// How far inputs get (`PROXY_FUZZ_STATS=1` prints these when the process exits):
/// inputs run; inputs in which a guest got a Welcome (a new connection's handshake),
/// a PoolAck, a QueueStarted; inputs that began by attaching the first guest again
/// (the input before had ended its session); connections the inputs opened.
static INPUTS: AtomicU64 = AtomicU64::new(0);
static WELCOMED: AtomicU64 = AtomicU64::new(0);
static POOL_ACKED: AtomicU64 = AtomicU64::new(0);
static QUEUE_STARTED: AtomicU64 = AtomicU64::new(0);
static REATTACHED: AtomicU64 = AtomicU64::new(0);
static CONNECTED: AtomicU64 = AtomicU64::new(0);

extern "C" fn print_stats() {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let inputs = get(&INPUTS).max(1);
    let share = |c: &AtomicU64| format!("{} ({:.1} %)", get(c), get(c) as f64 * 100.0 / inputs as f64);
    eprintln!(
        "proxy-app session fuzzer: {} inputs; a Welcome in {}, a PoolAck in {}, a QueueStarted in {}; the first guest \
         attached again before {}; {:.2} connections opened per input",
        get(&INPUTS),
        share(&WELCOMED),
        share(&POOL_ACKED),
        share(&QUEUE_STARTED),
        share(&REATTACHED),
        get(&CONNECTED) as f64 / inputs as f64
    );
}

/// The proxy under test and what it must come back to after each input.
pub struct Harness {
    ctl: Control,
    /// EAL lives as long as the harness, which the fuzz target keeps until it exits.
    _eal: dpdk::Eal,
    path: PathBuf,
    /// The process's mempools without a guest (the port's parking pool).
    mempools: usize,
    /// What the guest saw in the current input (see [`Outcome`]).
    outcome: Outcome,
    outcomes: OutcomeMode,
    /// The input before the current one (`PROXY_FUZZ_OUTCOMES=check`).
    previous: Vec<u8>,
    /// The attached guest the next input starts with, once made, and its region's
    /// bytes after the Welcome.
    first: Option<(Conn, Vec<u8>)>,
    /// The current input made a connection of its own (its close, or the connection
    /// itself in the listen backlog, may still be ahead of the proxy at its end).
    connected: bool,
}

/// What `PROXY_FUZZ_OUTCOMES` asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OutcomeMode {
    Off,
    Print,
    Check,
}

/// A digest of what one input made the proxy do, as the guest and `show stats` see it:
/// every answer (its kind and fields, a refusal's code; not a refusal's text, which may
/// name a mempool by its serial number) and descriptors received, in order, and what
/// the socket's counters gained. Also the kinds of answer seen (not in the digest), for
/// `PROXY_FUZZ_STATS`.
struct Outcome(std::hash::DefaultHasher, u32);

impl Outcome {
    fn new() -> Outcome {
        // Fixed keys: the same events give the same digest in every process.
        Outcome(std::hash::DefaultHasher::new(), 0)
    }

    fn add(&mut self, what: impl std::hash::Hash) {
        what.hash(&mut self.0);
    }

    fn saw(&mut self, kind: MessageKind) {
        self.1 |= 1 << (kind as u32 % 32);
    }

    fn seen(&self, kind: MessageKind) -> bool {
        self.1 & 1 << (kind as u32 % 32) != 0
    }

    fn digest(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

/// The fuzzer's bytes, read as the guest's choices (0 when they run out).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The guest's side of one connection.
struct Conn {
    sock: OwnedFd,
    /// The region from the Welcome.
    region: Option<Region>,
    next_id: u32,
    /// The guest every input starts with.
    first: bool,
    /// The proxy closed it.
    closed: bool,
}

/// A region the proxy handed over: its memfd, mapped (and its layout read from its
/// header) when the guest first touches it, as mapping it costs a page fault per page.
/// The harness reads and writes the whole region (its snapshot) through the memfd, the
/// same pages as the mapping: one system call instead of a volatile copy of each word.
struct Region {
    memfd: std::fs::File,
    size: usize,
    /// `None` until first touched; then the mapping, or `None` if it failed.
    mapped: Option<Option<(Mapping, RegionLayout)>>,
}

impl Region {
    fn view(&mut self) -> Option<(&Mapping, &RegionLayout)> {
        let (memfd, size) = (&self.memfd, self.size);
        self.mapped
            .get_or_insert_with(|| {
                let map = Mapping::map(memfd.as_fd(), size).ok()?;
                let layout = RegionLayout::read_header(&map.mem()).ok()?;
                Some((map, layout))
            })
            .as_ref()
            .map(|(m, l)| (m, l))
    }
}

/// The conn's region, mapped.
fn region_of(c: &mut Conn) -> Option<(&Mapping, &RegionLayout)> {
    c.region.as_mut().and_then(Region::view)
}

impl Harness {
    /// Starts EAL and the proxy's control plane (once per process).
    pub fn new() -> Harness {
        let prefix = format!("proxy-fuzz-{}", std::process::id());
        let args: Vec<String> = [
            "proxy-fuzz",
            "--no-huge",
            "-m",
            "256",
            "--no-shconf",
            "--no-pci",
            "--no-telemetry",
            "--vdev=net_null0",
            "--iova-mode=va",
            "--log-level=*:error",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--file-prefix={prefix}"),
            // Every thread of the process on one CPU (the threads started after EAL
            // init inherit the main lcore's): an munmap (each session ends with a few)
            // then needs no TLB shootdown of other CPUs, which in a VM costs more than
            // the whole session.
            // SAFETY: sched_getcpu has no arguments and no side effects.
            format!("--lcores=0@{}", unsafe { libc::sched_getcpu() }.max(0)),
        ])
        .collect();
        let (eal, _) = dpdk::Eal::init(&args).expect("EAL init (--no-huge --no-shconf, net_null)");
        crate::shadow::register_ops(&eal).expect("shadow mempool ops");
        crate::reaper::start().expect("reaper thread");
        let dir = std::env::temp_dir().join(prefix);
        let path = dir.join("sock");
        let runs_as = crate::os::effective_uid();
        let opts = Options {
            region_size: REGION_SIZE,
            max_region_size: MAX_REGION_SIZE,
            max_guest_buffers: MAX_GUEST_BUFFERS,
            try_hugepages: false,
            hugepage_share: 0,
            access: Access { owner: None, group: None, mode: 0o600, allow_uids: Vec::new(), allow_gids: Vec::new() },
            mtu: None,
            queues: None,
            stats_period: None,
            runs_as,
        };
        let startup = vec![(1, Command::Socket { path: path.clone(), port: 0, queues: vec![0], access: SocketAccess::default() })];
        let mut ctl = Control::new(opts, Arc::new(Plane::new()), startup, "fuzz").expect("control plane");
        // The fuzzer's stdin is not a command stream.
        ctl.stdin_open = false;
        // Every input is served at once and every round does the housekeeping: the
        // fuzzer drives the requests' handling at its own speed (one uid, thousands of
        // sessions a second), which the per-uid budget would put off (budget.rs has
        // its own tests), and checks what housekeeping decides after each step.
        ctl.budgets = super::budget::UidBudgets::unlimited();
        ctl.housekeeping_period = Duration::ZERO;
        let mempools = crate::control::reports::mempool_count();
        if std::env::var_os("PROXY_FUZZ_STATS").is_some() {
            // SAFETY: registers a function without arguments that only reads atomics;
            // libFuzzer ends with exit(), which runs it.
            unsafe { libc::atexit(print_stats) };
        }
        let outcomes = match std::env::var("PROXY_FUZZ_OUTCOMES").as_deref() {
            Ok("check") => OutcomeMode::Check,
            Ok("print") => OutcomeMode::Print,
            _ => OutcomeMode::Off,
        };
        Harness { ctl, _eal: eal, path, mempools, outcome: Outcome::new(), outcomes, previous: Vec::new(), first: None, connected: false }
    }

    /// Runs one guest's whole session from `data` (the guest may connect more than
    /// once, and hangs up at the end), then checks that the proxy is back where it
    /// started. Returns the digest of what happened ([`Outcome`]).
    pub fn run(&mut self, data: &[u8]) -> u64 {
        let digest = self.session(data);
        match self.outcomes {
            OutcomeMode::Off => {}
            OutcomeMode::Print => eprintln!("proxy-app session fuzzer: outcome {digest:016x}"),
            OutcomeMode::Check => {
                // The same input again, after another one: the same outcome, or an input
                // depends on what ran before it and a crash could not be reproduced
                // from its input alone.
                let previous = std::mem::take(&mut self.previous);
                self.session(&previous);
                let again = self.session(data);
                assert_eq!(again, digest, "the same input had another outcome after another input ran");
                self.previous = data.to_vec();
            }
        }
        digest
    }

    fn session(&mut self, data: &[u8]) -> u64 {
        self.outcome = Outcome::new();
        let before = self.counters();
        let mut input = Input(data);
        let (mut first, snapshot) = match self.first.take() {
            Some(f) => f,
            None => {
                REATTACHED.fetch_add(1, Ordering::Relaxed);
                self.attach_first()
            }
        };
        // The same request ids in every input.
        first.next_id = 1;
        self.connected = false;
        let mut conns = vec![first];
        let mut taken = 0;
        for _ in 0..MAX_STEPS {
            if input.is_empty() {
                break;
            }
            if self.step(&mut input, &mut conns) {
                taken += 1;
                self.ctl.poll_once(0);
                for c in &mut conns {
                    // The first guest's answers are read every few steps and at the end
                    // (`end_input`): nothing they say changes its steps (its region is
                    // known since it attached), and each read ends with one that finds
                    // nothing, a system call. A new connection's are read at once (its
                    // Welcome brings the region its steps use).
                    if !c.first || taken % FIRST_READS_EVERY == 0 {
                        drain_answers(c, &mut self.outcome);
                    }
                }
            }
        }
        self.end_input(conns, snapshot);
        INPUTS.fetch_add(1, Ordering::Relaxed);
        for (kind, count) in [
            (MessageKind::Welcome, &WELCOMED),
            (MessageKind::PoolAck, &POOL_ACKED),
            (MessageKind::QueueStarted, &QUEUE_STARTED),
        ] {
            if self.outcome.seen(kind) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let gained: Vec<u64> = self.counters().iter().zip(before).map(|(now, was)| now - was).collect();
        self.outcome.add(gained);
        self.outcome.digest()
    }

    /// The socket's counters an input can change (`show stats`).
    fn counters(&self) -> [u64; 5] {
        let t = self.ctl.endpoints[0].totals();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        [get(&t.invalid), get(&t.refused), get(&t.bad_requests), get(&t.unwanted_fds), get(&t.tx_returned)]
    }

    /// Connects the guest every input starts with and attaches it (a Hello the harness
    /// chooses); returns it with its region's bytes after the Welcome.
    fn attach_first(&mut self) -> (Conn, Vec<u8>) {
        let sock = connect_to_proxy(&self.path, Some(self.ctl.opts.runs_as)).expect("the first guest connects");
        let mut c = Conn { sock, region: None, next_id: 1, first: true, closed: false };
        let hello = Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            flags: 0,
            region_size: 0,
            rx_ring_entries: FIRST_RING_ENTRIES,
            tx_ring_entries: FIRST_RING_ENTRIES,
            app_name: "fuzz".into(),
            heap_bytes: 0,
        };
        send_message(c.sock.as_fd(), &Message::Hello(hello), 0, &[]).expect("the first guest's Hello");
        let mut seen = Outcome::new();
        for _ in 0..4 {
            self.ctl.poll_once(0);
            drain_answers(&mut c, &mut seen);
            if c.region.is_some() {
                break;
            }
        }
        assert_eq!(self.ctl.endpoints[0].state(), State::Attached, "the first guest was not attached");
        let region = c.region.as_ref().expect("the first guest's region");
        let mut snapshot = vec![0u8; region.size];
        region.memfd.read_exact_at(&mut snapshot, 0).expect("the region's bytes");
        (c, snapshot)
    }

    /// Ends the input: the other connections hang up; the first guest, if the proxy
    /// still serves it, is brought back to the starting state (queue stopped and pools
    /// deleted by its own requests, its region's bytes written back), else it hangs up
    /// too and the proxy must tear its session down. What must hold is checked, and what
    /// a socket keeps across its guests is made fresh, so that the next input starts
    /// where this one did.
    fn end_input(&mut self, conns: Vec<Conn>, snapshot: Vec<u8>) {
        let mut first = None;
        for c in conns {
            if c.first {
                first = Some(c);
            }
        }
        // The others are closed now: the proxy sees it at its next look. It accepts one
        // connection per look: connections made late in the input, and closed at once,
        // may still wait in the listener's backlog, and would be the next input's. An
        // input that made none needs one look (for what the first guest sent last).
        for round in 0..16 {
            self.ctl.poll_once(0);
            if let Some(c) = &mut first {
                drain_answers(c, &mut self.outcome);
            }
            if !self.connected || (round >= 1 && !self.backlog()) {
                break;
            }
        }
        let state = self.ctl.endpoints[0].state();
        let mut first = first.filter(|c| !c.closed && matches!(state, State::Attached | State::Running));
        if let Some(c) = &mut first {
            if !self.reset_first(c, &snapshot) {
                first = None;
            }
        }
        match first {
            Some(c) => {
                assert_eq!(self.ctl.endpoints[0].state(), State::Attached, "the first guest was not reset");
                self.first = Some((c, snapshot));
            }
            None => {
                for _ in 0..16 {
                    self.ctl.poll_once(0);
                    if self.ctl.endpoints[0].state() == State::Listening && !self.backlog() {
                        break;
                    }
                }
                assert!(!self.backlog(), "connections left in the listener's backlog");
                assert_eq!(
                    self.ctl.endpoints[0].state(),
                    State::Listening,
                    "the session did not end when its guest hung up"
                );
            }
        }
        assert!(self.ctl.quarantine.is_empty(), "pools in quarantine although net_null holds no buffer");
        let mempools = crate::control::reports::mempool_count();
        assert_eq!(mempools, self.mempools, "mempools leaked (or freed) by a session: {mempools} now, {} before", self.mempools);
        // Queue starts are limited per socket per second (listen.rs): each input is
        // the life of a fresh socket, or starts would be refused after the first 20.
        self.ctl.endpoints[0].queue_starts = StartBudget::new();
        // The control thread reads a connection that may carry descriptors only while
        // the reaper has room for them: with no more than this many left to close, it
        // has room for all that one input can pass, whenever it runs (the reaper is on
        // this CPU too).
        let caught_up = crate::reaper::wait_for(Duration::from_secs(10), || crate::reaper::pending() <= REAPER_BACKLOG);
        assert!(caught_up, "the reaper did not close the descriptors of the input in 10 s");
    }

    /// Whether a connection waits in the socket's listen backlog.
    fn backlog(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.ctl.endpoints[0].listener.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    /// Stops the first guest's queue and deletes its pools with its own requests, and
    /// writes its region's bytes back; false if the proxy did not come back to the
    /// attached state with nothing in it (the guest then hangs up).
    fn reset_first(&mut self, c: &mut Conn, snapshot: &[u8]) -> bool {
        let Some(guest) = self.ctl.endpoints[0].guest() else { return false };
        let pools: Vec<u32> = guest.pools.iter().map(|(id, _)| *id).collect();
        let queues: Vec<u16> = (0..guest.queues.len()).filter(|&q| guest.queues[q].is_some()).map(|q| q as u16).collect();
        let mut answers = Outcome::new();
        let requests = queues.iter().map(|&queue| Message::QueueStop { queue }).chain(pools.iter().map(|&pool_id| Message::PoolDel { pool_id }));
        for msg in requests {
            if send_message(c.sock.as_fd(), &msg, 0, &[]).is_err() {
                return false;
            }
            self.ctl.poll_once(0);
            drain_answers(c, &mut answers);
        }
        let Some(guest) = self.ctl.endpoints[0].guest() else { return false };
        if c.closed || !guest.pools.is_empty() || !guest.deleting.is_empty() || guest.running() {
            return false;
        }
        let Some(region) = c.region.as_mut() else { return false };
        if region.memfd.write_all_at(snapshot, 0).is_err() {
            return false;
        }
        // A view that failed (its header read while broken) is made again, from the
        // header as it is now, when next touched.
        if matches!(region.mapped, Some(None)) {
            region.mapped = None;
        }
        true
    }

    /// One step of the guest; false if it did nothing (the proxy need not look).
    fn step(&mut self, input: &mut Input<'_>, conns: &mut Vec<Conn>) -> bool {
        let op = input.u8();
        // The steps that cost the kernel most, a new connection and the end of a
        // session (Goodbye, hanging up: the next input then attaches a guest again), are
        // taken only when the step's next byte says so too (see `COSTLY_ONE_IN`).
        if matches!(op % 16, 0 | 10 | 15) && !conns.is_empty() && input.u8() % COSTLY_ONE_IN != 1 {
            return false;
        }
        if op.is_multiple_of(16) || conns.is_empty() {
            if conns.len() < MAX_CONNS {
                // As a guest connects: checking that the server is the proxy (us).
                if let Ok(sock) = connect_to_proxy(&self.path, Some(self.ctl.opts.runs_as)) {
                    self.connected = true;
                    CONNECTED.fetch_add(1, Ordering::Relaxed);
                    conns.push(Conn { sock, region: None, next_id: 1, first: false, closed: false });
                }
            }
            if op.is_multiple_of(16) {
                return true;
            }
        }
        let which = (op as usize >> 4) % conns.len();
        let c = &mut conns[which];
        let id = c.next_id;
        c.next_id = c.next_id.wrapping_add(1);
        let msg = match op % 16 {
            1..=2 => Message::Hello(hello(input)),
            3..=5 => Message::PoolAdd(pool_add(input, c)),
            6 => Message::PoolDel { pool_id: small_or_any(input, MAX_POOLS + 1) },
            7 | 8 => {
                let flags = match input.u8() % 4 {
                    0 => QUEUE_FLAG_RX_WAKEUP,
                    1 => input.u32(),
                    _ => 0,
                };
                Message::QueueStart {
                    rx_pool_id: small_or_any(input, MAX_POOLS + 1),
                    flags,
                    rx_depth: input.u32() % 2048,
                    queue: u16::from(input.u8() % 3),
                }
            }
            9 => Message::QueueStop { queue: u16::from(input.u8() % 3) },
            10 => Message::Goodbye,
            11 => {
                // Raw bytes: a datagram that need not decode.
                let n = input.u8() as usize;
                let raw = input.bytes(n).to_vec();
                return send_raw(c.sock.as_fd(), &raw);
            }
            // Writes into the region only: the proxy sees them at its next look (of the
            // next step or the end of the input).
            12 | 13 => {
                scribble(input, c);
                return false;
            }
            14 => {
                publish_tx(input, c);
                return false;
            }
            _ => {
                // The guest hangs up.
                conns.remove(which);
                return true;
            }
        };
        let fds = descriptors(input, c);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        // Not sent (the connection closed, or descriptors the proxy's end of it refuses
        // and the kernel kept back): nothing for the proxy to look at.
        send_message(c.sock.as_fd(), &msg, id, &borrowed).is_ok()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// Mostly a small value (below `small`), sometimes any.
fn small_or_any(input: &mut Input<'_>, small: u32) -> u32 {
    let b = input.u8();
    if b < 240 {
        u32::from(b) % small
    } else {
        input.u32()
    }
}

fn hello(input: &mut Input<'_>) -> Hello {
    let sel = input.u8();
    let (version_min, version_max) = match sel % 8 {
        0 => (input.u16(), input.u16()),
        1 => (1, 1),
        _ => (PROTOCOL_VERSION, PROTOCOL_VERSION),
    };
    let region_size = match (sel >> 3) % 8 {
        0 => input.u64(),
        1 => REGION_SIZE + 4096,
        2 => MAX_REGION_SIZE,
        3 => MAX_REGION_SIZE + 4096,
        4 => REGION_SIZE,
        _ => 0,
    };
    let entries = |input: &mut Input<'_>| match input.u8() % 6 {
        0 => input.u32(),
        1 => 64,
        2 => 256,
        3 => 1000,
        _ => 0,
    };
    let rx_ring_entries = entries(input);
    let tx_ring_entries = entries(input);
    let flags = match sel >> 6 {
        0 => HELLO_FLAG_REATTACH,
        1 => input.u32(),
        _ => 0,
    };
    let n = input.u8() as usize % 40;
    let app_name = String::from_utf8_lossy(input.bytes(n)).into_owned();
    // The guest's pool plan: none, a heap a small region holds, or any.
    let heap_bytes = match input.u8() % 4 {
        0 => input.u64(),
        1 => 16 << 10,
        _ => 0,
    };
    Hello { version_min, version_max, flags, region_size, rx_ring_entries, tx_ring_entries, app_name, heap_bytes }
}

/// A pool announcement: mostly one a guest would make (in one of four slots of the heap,
/// its free ring filled with its buffers), sometimes any fields at all.
fn pool_add(input: &mut Input<'_>, c: &mut Conn) -> PoolAdd {
    let sel = input.u8();
    let pool_id = small_or_any(input, MAX_POOLS + 1);
    let Some((map, layout)) = Some(c).filter(|_| !sel.is_multiple_of(8)).and_then(region_of) else {
        return PoolAdd {
            pool_id,
            ring_offset: input.u32(),
            ring_entries: input.u32(),
            first_mbuf_offset: input.u32(),
            stride: input.u32(),
            count: input.u32(),
            mbuf_size: input.u16(),
            data_room: input.u16(),
        };
    };
    let heap = layout.heap();
    let slot_bytes = heap.size / 4;
    let slot = u32::from(input.u8() % 4);
    let data_room: u16 = match input.u8() % 3 {
        0 => 64,
        1 => 1024,
        _ => 2048,
    };
    let stride = (MBUF_HEADER_SIZE + u32::from(data_room)).next_multiple_of(64);
    // As many buffers as fit in the slot, mostly (a free ring of up to 256 cells first).
    let fit = (slot_bytes.saturating_sub(FreeRing::bytes_for(256) as u32 + 64) / stride).max(1);
    let count = 1 + u32::from(input.u16()) % (fit + fit / 8);
    let ring_entries = count.next_power_of_two();
    let ring_offset = heap.offset + slot * slot_bytes;
    let first = (ring_offset as u64 + FreeRing::bytes_for(ring_entries)).next_multiple_of(64) as u32;
    let add = PoolAdd {
        pool_id,
        ring_offset,
        ring_entries,
        first_mbuf_offset: first,
        stride,
        count,
        mbuf_size: MBUF_HEADER_SIZE as u16,
        data_room,
    };
    // The guest puts its buffers in the free ring, as a real one would (or not, sel).
    if sel % 8 != 1 {
        if let Ok(layout) = add.validate(layout, &[]) {
            let mem = map.mem();
            if let Ok(ring) = FreeRing::init(&mem, ring_offset, ring_entries) {
                let offsets: Vec<u32> = (0..count).map(|i| layout.buffer_offset(i)).collect();
                let _ = ring.enqueue_bulk(&offsets, 16);
            }
        }
    }
    add
}

/// The guest writes into its shared region: an index, a descriptor, a free-ring cell,
/// the header, anywhere.
fn scribble(input: &mut Input<'_>, c: &mut Conn) {
    let Some((map, layout)) = region_of(c) else { return };
    let mem = map.mem();
    let len = mem.len() as u64;
    let area = match input.u8() % 5 {
        0 => layout.rx_ring().area(),
        1 => layout.tx_ring().area(),
        2 => layout.heap(),
        _ => shm_contract::layout::Area { offset: 0, size: len as u32 },
    };
    let size = u64::from(area.size.max(1));
    let at = u64::from(area.offset) + u64::from(input.u32()) % size;
    let n = (input.u8() % 17) as usize;
    let bytes = input.bytes(n).to_vec();
    for (i, b) in bytes.iter().enumerate() {
        let off = at + i as u64;
        if off < len {
            let _ = mem.write_bytes(off as usize, &[*b]);
        }
    }
}

/// The guest publishes tx descriptors (the proxy reads them when it stops the queue,
/// to give unsent buffers back): buffers of its pools or any offsets.
fn publish_tx(input: &mut Input<'_>, c: &mut Conn) {
    let Some((map, layout)) = region_of(c) else { return };
    let mem = map.mem();
    let Ok(mut tx) = DescProducer::new(&mem, layout.tx_ring()) else { return };
    let n = input.u8() % 8;
    let descs: Vec<Desc> = (0..n)
        .map(|_| Desc {
            offset: match input.u8() % 2 {
                0 => layout.heap().offset + input.u32() % layout.heap().size.max(1),
                _ => input.u32(),
            },
            data_off: input.u16() % 256,
            data_len: input.u16() % 2048,
            flags: shm_contract::DescFlags::from_bits_retain(input.u16()),
            vlan_tci: 0,
            rss_hash: 0,
        })
        .collect();
    let _ = tx.push_burst(&descs);
}

/// Descriptors to pass with a message: mostly none.
fn descriptors(input: &mut Input<'_>, c: &Conn) -> Vec<OwnedFd> {
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    match input.u8() % 12 {
        0 => c.region.as_ref().and_then(|r| dup(r.memfd.as_fd())).into_iter().collect(),
        1 => {
            let size = [REGION_SIZE, 4096][input.u8() as usize % 2];
            create_region_memfd("fuzz", size, false).map(|(fd, _)| vec![fd]).unwrap_or_default()
        }
        2 => pipe().into_iter().flat_map(|(r, w)| [r, w]).collect(),
        3 => dup(c.sock.as_fd()).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Reads what the proxy answered; keeps the region of a Welcome. Every answer decodes.
fn drain_answers(c: &mut Conn, outcome: &mut Outcome) {
    // The proxy closed it: all it sent before was read.
    if c.closed {
        return;
    }
    for _ in 0..64 {
        let Received { message, fds } = recv_message_and_fds(c.sock.as_fd(), Some(Duration::ZERO));
        match &message {
            Ok((Message::Refuse { code, .. }, id)) => outcome.add((*id, *code, fds.len())),
            Ok((m, id)) => outcome.add((*id, format!("{m:?}"), fds.len())),
            Err(_) => {}
        }
        if let Ok((m, _)) = &message {
            outcome.saw(m.kind());
        }
        match message {
            Ok((Message::Welcome(w), _)) => {
                if let (Some(memfd), Ok(size)) = (fds.into_iter().next(), usize::try_from(w.region_size)) {
                    // As every guest does, or the proxy refuses its pools (region.rs).
                    let _ = shm_contract::mem::allocate_region(memfd.as_fd(), w.region_size);
                    c.region = Some(Region { memfd: memfd.into(), size, mapped: None });
                }
            }
            Ok(_) => {}
            Err(TransportError::Timeout) => return,
            Err(TransportError::Closed) => {
                c.closed = true;
                return;
            }
            Err(e @ (TransportError::Decode(_) | TransportError::Truncated | TransportError::TooManyFds { .. })) => {
                panic!("the proxy sent a message that does not decode: {e}")
            }
            Err(_) => return,
        }
    }
}

/// One datagram of any bytes; whether it was sent.
fn send_raw(fd: BorrowedFd<'_>, bytes: &[u8]) -> bool {
    // SAFETY: `bytes` is valid for its length; MSG_NOSIGNAL: a closed peer is an error,
    // not SIGPIPE.
    unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) >= 0 }
}

fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both are fresh descriptors of this process, owned by nobody else.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
