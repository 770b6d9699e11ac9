//! `dpdk-latency-probe`: the latency probe of scripts/bench.sh as a process of its own,
//! for peers other than the proxy (a memif server port whose client is a macswap
//! guest). Polls on the EAL main lcore until done, prints one `LATENCY ...` line.
//!
//!   dpdk-latency-probe [EAL options] -- SPEC [--port N]
//!
//! SPEC: `RATE[,size=BYTES][,warmup=S][,seconds=S][,grace=S]` (see bench::Spec).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use bench::{Probe, Spec};

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
    let mut it = app_args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => match it.next().and_then(|v| v.parse().ok()) {
                Some(p) => port = p,
                None => return usage("--port needs a port number"),
            },
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

fn usage(error: &str) -> ExitCode {
    let text = "usage: dpdk-latency-probe [EAL options] -- RATE[,size=BYTES][,warmup=S][,seconds=S][,grace=S] [--port N]";
    if error.is_empty() {
        println!("{text}");
        ExitCode::SUCCESS
    } else {
        eprintln!("dpdk-latency-probe: {error}\n{text}");
        ExitCode::from(2)
    }
}
