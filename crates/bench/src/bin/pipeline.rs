//! `dpdk-pipeline`: the limit of the two-core topology for scripts/bench.sh. One process
//! does what ours does with two: a NIC lcore (on the host CPU) receives from the NIC
//! and hands the packets to a forwarding lcore (on the guest CPU) over a
//! single-producer, single-consumer `rte_ring`; the forwarding lcore swaps their MAC
//! addresses (testpmd's macswap) and hands them back over a second ring; the NIC lcore
//! transmits them. No isolation, no validation, no second address space: what is left
//! is the cross-CPU hand-over each way, which any two-process design pays too.
//!
//!   dpdk-pipeline [EAL options] -- [--burst N] [--mbufs N] [--mbuf-size BYTES]
//!                 [--ring N] [--seconds S]
//!
//! EAL needs three lcores: the main one (prints once a second, then sleeps), the
//! forwarding lcore (the first worker) and the NIC lcore (the second worker), e.g.
//! `--lcores 0@0,1@1,2@0` and `--vdev net_null0,copy=0,size=64`. The defaults are
//! those of the benchmark's guests: bursts of 32, a pool of 8192 mbufs with a cache of
//! 250 per lcore (testpmd's), rings of 1024 packets (the proxy's rings).
//!
//! Every second it prints, in testpmd's words so that bench.sh reads it alike, the
//! forwarding lcore's rates (`Rx-pps:` taken from the first ring, `Tx-pps:` put in the
//! second); at the end the totals (`RX-packets:`, `TX-packets:`, drops, and the NIC
//! lcore's `NIC-RX-packets:`, `NIC-TX-packets:`).
//! Where the NIC lcore's ring to the forwarding lcore is full it leaves packets in the
//! NIC (as the proxy does when a guest's rx ring is full); where the forwarding lcore's
//! ring back is full it drops them (as testpmd does on a full tx queue).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk::{mbuf_ring, MbufBurst, PktPool, Port, RingConsumer, RingProducer, RxQueue, TxQueue};

/// The largest burst (the bursts live in stack arrays of this size).
const MAX_BURST: usize = 512;
/// testpmd's per-lcore mempool cache (its MEMPOOL_CACHE_SIZE).
const POOL_CACHE: u32 = 250;
/// A default mbuf's data room plus headroom (RTE_MBUF_DEFAULT_BUF_SIZE).
const DEFAULT_MBUF_SIZE: u16 = 2048 + 128;
/// The NIC's descriptors per queue (the proxy's).
const NIC_DESC: u16 = 1024;

static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    QUIT.store(true, Ordering::Relaxed);
}

/// A counter with a cache line of its own, written by one lcore, read by the main one.
#[repr(align(64))]
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning lcore writes: a load and a store, no locked add).
    #[inline]
    fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Counters {
    /// Packets the forwarding lcore took from the first ring.
    fwd_rx: Counter,
    /// Packets it put in the second ring.
    fwd_tx: Counter,
    /// Packets it dropped because the second ring was full.
    fwd_drop: Counter,
    /// Packets the NIC lcore received.
    nic_rx: Counter,
    /// Packets the NIC took for transmission.
    nic_tx: Counter,
}

#[derive(Debug)]
struct Args {
    burst: usize,
    mbufs: u32,
    mbuf_size: u16,
    ring: u32,
    seconds: Option<f64>,
}

const USAGE: &str =
    "usage: dpdk-pipeline [EAL options] -- [--burst N] [--mbufs N] [--mbuf-size BYTES] [--ring N] [--seconds S]";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut a = Args { burst: 32, mbufs: 8192, mbuf_size: DEFAULT_MBUF_SIZE, ring: 1024, seconds: None };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--burst" => a.burst = value("--burst")?.parse().map_err(|e| format!("--burst: {e}"))?,
            "--mbufs" => a.mbufs = value("--mbufs")?.parse().map_err(|e| format!("--mbufs: {e}"))?,
            "--mbuf-size" => a.mbuf_size = value("--mbuf-size")?.parse().map_err(|e| format!("--mbuf-size: {e}"))?,
            "--ring" => a.ring = value("--ring")?.parse().map_err(|e| format!("--ring: {e}"))?,
            "--seconds" => a.seconds = Some(value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    if a.burst == 0 || a.burst > MAX_BURST {
        return Err(format!("--burst must be 1..={MAX_BURST}"));
    }
    if (a.ring as usize) < a.burst {
        return Err("--ring must hold at least one burst".into());
    }
    Ok(a)
}

/// The NIC lcore: NIC -> first ring, second ring -> NIC. Receives only while the first
/// ring has room for a whole burst, so that nothing is taken from the NIC to be dropped.
/// The work on packets is in functions of their own (`nic_receive`, `nic_transmit`,
/// `forward_burst`), called only when there are packets: `scripts/profile.sh --side
/// pipeline` counts their instructions per packet apart from empty polls.
#[inline(never)]
fn nic_loop(
    mut rxq: RxQueue,
    mut txq: TxQueue,
    mut to_fwd: RingProducer,
    mut from_fwd: RingConsumer,
    burst: usize,
    counters: &Counters,
) {
    let mut rx = MbufBurst::<MAX_BURST>::new();
    let mut tx = MbufBurst::<MAX_BURST>::new();
    let mut room = to_fwd.free_count();
    while !QUIT.load(Ordering::Relaxed) {
        if room as usize >= burst {
            room = nic_receive(&mut rxq, &mut rx, &mut to_fwd, burst, counters).unwrap_or(room);
        } else {
            room = to_fwd.free_count();
        }
        if from_fwd.dequeue_burst(&mut tx, burst) > 0 {
            nic_transmit(&mut txq, &mut tx, counters);
        }
    }
}

/// NIC -> first ring; the room left in the ring, if anything was received.
#[inline(never)]
fn nic_receive(
    rxq: &mut RxQueue,
    rx: &mut MbufBurst<MAX_BURST>,
    to_fwd: &mut RingProducer,
    burst: usize,
    counters: &Counters,
) -> Option<u32> {
    let n = rxq.rx_burst(rx, burst as u16);
    if n == 0 {
        return None;
    }
    counters.nic_rx.add(n as u64);
    let room = to_fwd.enqueue_burst(rx).1;
    // Cannot happen (room was checked, and only this lcore fills the ring); freed
    // rather than kept should it ever.
    rx.clear();
    Some(room)
}

/// Packets from the second ring -> NIC; what it does not take is freed.
#[inline(never)]
fn nic_transmit(txq: &mut TxQueue, tx: &mut MbufBurst<MAX_BURST>, counters: &Counters) {
    counters.nic_tx.add(txq.tx_burst(tx) as u64);
    tx.clear();
}

/// The forwarding lcore: first ring -> MAC swap -> second ring; what the second ring
/// has no room for is dropped.
#[inline(never)]
fn forward_loop(mut from_nic: RingConsumer, mut to_nic: RingProducer, burst: usize, counters: &Counters) {
    let mut pkts = MbufBurst::<MAX_BURST>::new();
    while !QUIT.load(Ordering::Relaxed) {
        let n = from_nic.dequeue_burst(&mut pkts, burst);
        if n > 0 {
            forward_burst(&mut pkts, &mut to_nic, counters);
        }
    }
}

/// Swaps the MACs of the burst's packets and puts them in the second ring.
#[inline(never)]
fn forward_burst(pkts: &mut MbufBurst<MAX_BURST>, to_nic: &mut RingProducer, counters: &Counters) {
    let n = pkts.len();
    for m in pkts.as_mut_slice() {
        m.swap_ether_addrs();
    }
    let (sent, _) = to_nic.enqueue_burst(pkts);
    counters.fwd_rx.add(n as u64);
    counters.fwd_tx.add(sent as u64);
    if !pkts.is_empty() {
        counters.fwd_drop.add(pkts.len() as u64);
        pkts.clear();
    }
}

fn run(eal: &dpdk::Eal, args: &Args) -> Result<(), String> {
    let workers = eal.worker_lcores();
    let [fwd_lcore, nic_lcore] = workers[..] else {
        return Err(format!(
            "needs exactly two worker lcores besides the main one (forwarding, NIC), has {} (e.g. --lcores 0@0,1@1,2@0)",
            workers.len()
        ));
    };
    let port = Port::all().first().copied().ok_or("no port (add --vdev net_null0,copy=0,size=64)")?;
    let socket = port.socket_id().max(0);
    let pool = PktPool::new("pipeline_pool", args.mbufs, POOL_CACHE, args.mbuf_size, socket)
        .map_err(|e| format!("pool of {} mbufs: {e}", args.mbufs))?;
    // One rx and one tx queue, no offloads.
    let conf = dpdk::sys::rte_eth_conf::default();
    port.configure(1, 1, &conf).map_err(|e| e.to_string())?;
    port.rx_queue_setup_pool(0, NIC_DESC, None, &pool).map_err(|e| e.to_string())?;
    port.tx_queue_setup(0, NIC_DESC).map_err(|e| e.to_string())?;
    port.start().map_err(|e| e.to_string())?;
    let (to_fwd, from_nic) = mbuf_ring("pipeline_to_fwd", args.ring, socket).map_err(|e| e.to_string())?;
    let (to_nic, from_fwd) = mbuf_ring("pipeline_to_nic", args.ring, socket).map_err(|e| e.to_string())?;
    let rxq = port.rx_queue(0).map_err(|e| e.to_string())?;
    let txq = port.tx_queue(0).map_err(|e| e.to_string())?;
    let counters = Arc::new(Counters::default());
    let burst = args.burst;
    let c = counters.clone();
    eal.launch(fwd_lcore, move || forward_loop(from_nic, to_nic, burst, &c)).map_err(|e| e.to_string())?;
    let c = counters.clone();
    if let Err(e) = eal.launch(nic_lcore, move || nic_loop(rxq, txq, to_fwd, from_fwd, burst, &c)) {
        QUIT.store(true, Ordering::Relaxed);
        eal.wait_lcore(fwd_lcore);
        return Err(e.to_string());
    }
    eprintln!(
        "dpdk-pipeline: port {} ({}) -> lcore {nic_lcore} -> ring -> lcore {fwd_lcore} (macswap) -> ring -> lcore {nic_lcore}; burst {burst}, {} mbufs, rings of {}",
        port.0,
        port.name(),
        args.mbufs,
        args.ring
    );
    let start = Instant::now();
    let mut tick = start;
    let (mut last_rx, mut last_tx) = (0, 0);
    while !QUIT.load(Ordering::Relaxed) && args.seconds.is_none_or(|s| start.elapsed().as_secs_f64() < s) {
        // The report's tick (and how soon Ctrl-C is seen), not a wait for the lcores:
        // they run until QUIT and are joined below.
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        let secs = now.duration_since(tick).as_secs_f64();
        if secs >= 1.0 {
            let (rx, tx) = (counters.fwd_rx.get(), counters.fwd_tx.get());
            println!("  Rx-pps: {:12.0}\n  Tx-pps: {:12.0}", (rx - last_rx) as f64 / secs, (tx - last_tx) as f64 / secs);
            (tick, last_rx, last_tx) = (now, rx, tx);
        }
    }
    QUIT.store(true, Ordering::Relaxed);
    let fwd_rc = eal.wait_lcore(fwd_lcore);
    let nic_rc = eal.wait_lcore(nic_lcore);
    println!(
        "  RX-packets: {}\n  TX-packets: {}\n  TX-dropped: {}\n  NIC-RX-packets: {}\n  NIC-TX-packets: {}",
        counters.fwd_rx.get(),
        counters.fwd_tx.get(),
        counters.fwd_drop.get(),
        counters.nic_rx.get(),
        counters.nic_tx.get()
    );
    // Every queue handle went with its lcore's loop: the port can stop and close.
    port.stop().map_err(|e| e.to_string())?;
    port.close().map_err(|e| e.to_string())?;
    if fwd_rc != 0 || nic_rc != 0 {
        return Err("an lcore's loop panicked".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let (eal_args, app_args) = match argv.iter().position(|a| a == "--") {
        Some(i) => (argv[..i].to_vec(), argv[i + 1..].to_vec()),
        None => (argv.clone(), Vec::new()),
    };
    let args = match parse_args(&app_args) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dpdk-pipeline: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (eal, _) = match dpdk::Eal::init(&eal_args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dpdk-pipeline: cannot initialise EAL: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: installs handlers that only store to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let result = run(&eal, &args);
    drop(eal);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpdk-pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_are_the_benchmark_guests() {
        let a = args(&[]).unwrap();
        assert_eq!((a.burst, a.mbufs, a.mbuf_size, a.ring, a.seconds), (32, 8192, 2176, 1024, None));
        let a = args(&["--burst", "64", "--mbuf-size", "9344", "--ring", "2048", "--seconds", "1.5"]).unwrap();
        assert_eq!((a.burst, a.mbuf_size, a.ring, a.seconds), (64, 9344, 2048, Some(1.5)));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(args(&["--burst", "0"]).is_err());
        assert!(args(&["--burst", "513"]).is_err());
        assert!(args(&["--burst", "64", "--ring", "32"]).unwrap_err().contains("one burst"));
        assert!(args(&["--ring"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--what"]).is_err());
        assert_eq!(args(&["--help"]).err().as_deref(), Some(""));
    }
}
