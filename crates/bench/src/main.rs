//! `dpdk-latency-probe`: the latency probe of scripts/bench.sh as a process of its own,
//! for peers other than the proxy (a memif server port whose client is a macswap
//! guest). Polls on the EAL main lcore until done, prints one `LATENCY ...` line.
//!
//!   dpdk-latency-probe [EAL options] -- SPEC [--port N] [--forward]
//!
//! SPEC: `RATE[,size=BYTES][,warmup=S][,seconds=S][,grace=S]` (see bench::Spec).
//!
//! `--forward`: the probe does not own port N; it sits behind a NIC, as the proxy's
//! `--bench-latency` probe does (two ring ports, [`bench::ring_pair_probe`]), and the
//! loop forwards between that NIC and port N (io forwarding, as a host testpmd or a
//! switch serving a memif peer would), then polls the probe: per round the same work as
//! the proxy's data loop with its probe (NIC rx to the peer, the peer's rx to NIC tx,
//! the probe), so the two set-ups differ in the peer alone.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use bench::{Probe, Spec};
use dpdk::{MbufBurst, PktPool, Port, RxQueue, TxQueue};

static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    QUIT.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let (eal_args, app_args) = match argv.iter().position(|a| a == "--") {
        Some(i) => (argv[..i].to_vec(), argv[i + 1..].to_vec()),
        None => (argv.clone(), Vec::new()),
    };
    let mut spec = None;
    let mut port = 0u16;
    let mut forward = false;
    let mut it = app_args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => match it.next().and_then(|v| v.parse().ok()) {
                Some(p) => port = p,
                None => return usage("--port needs a port number"),
            },
            "--forward" => forward = true,
            "-h" | "--help" => return usage(""),
            text if spec.is_none() => match Spec::parse(text) {
                Ok(s) => spec = Some(s),
                Err(e) => return usage(&e),
            },
            other => return usage(&format!("unexpected argument '{other}'")),
        }
    }
    let Some(spec) = spec else { return usage("a SPEC is required") };
    let (eal, _) = match dpdk::Eal::init(&eal_args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dpdk-latency-probe: cannot initialise EAL: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: installs handlers that only store to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let p = dpdk::Port(port);
    if !p.is_valid() {
        eprintln!("dpdk-latency-probe: port {port} does not exist (add --vdev)");
        return ExitCode::FAILURE;
    }
    if forward {
        return forward_to(p, spec, eal);
    }
    let mut probe = match Probe::new(p, spec) {
        Ok(probe) => probe,
        Err(e) => {
            eprintln!("dpdk-latency-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("dpdk-latency-probe: port {port} ({}) started; sending", p.name());
    // A polling loop like the data loop it stands in for: no pause between rounds.
    loop {
        if QUIT.load(Ordering::Relaxed) || !probe.poll() {
            break;
        }
    }
    finish(probe, eal)
}

/// The probe's report if it stopped early, then the exit status.
fn finish(probe: Probe, eal: dpdk::Eal) -> ExitCode {
    let complete = probe.done();
    if !complete {
        // Stopped early: what there is, marked complete=0.
        println!("{}", probe.report());
    }
    drop(probe);
    drop(eal);
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Mbufs of each forwarding port's pool (the peer's rx copies into them), as a host
/// testpmd's.
const FORWARD_MBUFS: u32 = 8191;
const FORWARD_DESC: u16 = 1024;
const FORWARD_BURST: usize = bench::probe::BURST;

/// One queue each way on `port`, receiving into a pool of its own.
fn start_forwarding(port: Port) -> Result<(RxQueue, TxQueue, PktPool), String> {
    let err = |e: dpdk::Error| format!("port {} ({}): {e}", port.0, port.name());
    port.configure(1, 1, &dpdk::sys::rte_eth_conf::default()).map_err(err)?;
    let (rx_desc, tx_desc) = port.adjust_desc(FORWARD_DESC, FORWARD_DESC).map_err(err)?;
    let pool = PktPool::new(
        &format!("fwd{}", port.0),
        FORWARD_MBUFS,
        256,
        dpdk::sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
        port.socket_id(),
    )
    .map_err(err)?;
    port.rx_queue_setup_pool(0, rx_desc, None, &pool).map_err(err)?;
    port.tx_queue_setup(0, tx_desc).map_err(err)?;
    port.start().map_err(err)?;
    let _ = port.promiscuous_enable();
    Ok((port.rx_queue(0).map_err(err)?, port.tx_queue(0).map_err(err)?, pool))
}

/// Receives one burst from `rx` and sends it on `tx`; what `tx` does not take is freed.
#[inline]
fn forward_burst(rx: &mut RxQueue, tx: &mut TxQueue, burst: &mut MbufBurst<FORWARD_BURST>) {
    if rx.rx_burst(burst, FORWARD_BURST as u16) > 0 {
        tx.tx_burst(burst);
        burst.clear();
    }
}

/// `--forward`: the probe behind a ring NIC, the loop forwarding between that NIC and
/// `peer`.
fn forward_to(peer: Port, spec: Spec, eal: dpdk::Eal) -> ExitCode {
    let started = bench::ring_pair_probe(spec).and_then(|(nic, probe)| {
        let peer_side = start_forwarding(peer)?;
        let nic_side = start_forwarding(nic)?;
        Ok((nic, probe, peer_side, nic_side))
    });
    let (nic, mut probe, (mut peer_rx, mut peer_tx, peer_pool), (mut nic_rx, mut nic_tx, nic_pool)) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dpdk-latency-probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // "started; sending": what scripts/bench.sh waits for.
    eprintln!("dpdk-latency-probe: port {} ({}) behind {}: started; sending", peer.0, peer.name(), nic.name());
    let mut burst = MbufBurst::<FORWARD_BURST>::new();
    // The proxy's order: NIC rx to the peer, the peer's packets to NIC tx, the probe.
    while !QUIT.load(Ordering::Relaxed) {
        forward_burst(&mut nic_rx, &mut peer_tx, &mut burst);
        forward_burst(&mut peer_rx, &mut nic_tx, &mut burst);
        if !probe.poll() {
            break;
        }
    }
    drop((peer_rx, peer_tx, nic_rx, nic_tx));
    for port in [peer, nic] {
        let _ = port.stop();
        let _ = port.close();
    }
    drop((peer_pool, nic_pool));
    finish(probe, eal)
}

fn usage(error: &str) -> ExitCode {
    let text = "usage: dpdk-latency-probe [EAL options] -- RATE[,size=BYTES][,warmup=S][,seconds=S][,grace=S] [--port N] [--forward]";
    if error.is_empty() {
        println!("{text}");
        ExitCode::SUCCESS
    } else {
        eprintln!("dpdk-latency-probe: {error}\n{text}");
        ExitCode::from(2)
    }
}
