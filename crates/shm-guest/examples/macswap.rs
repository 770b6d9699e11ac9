//! Forwards every packet of a proxy queue back with its MAC addresses swapped (what
//! `dpdk-testpmd --forward-mode=macswap` does), without DPDK: the Rust guest's row of
//! the benchmark (`scripts/bench.sh`).
//!
//! ```text
//! macswap <socket> [--wait=poll|async|hybrid|block|hybrid-block] [--seconds S] [--buffers N]
//!         [--max-share PERCENT] [--max-spin MICROSECONDS] [--one-way]
//! ```
//!
//! * `poll`: busy polling on the calling thread (one CPU at 100 %, lowest latency).
//! * `async`: a current-thread tokio runtime; `AsyncGuest::recv_burst().await` sleeps on
//!   the proxy's rx wake-ups as soon as the rx ring is empty
//!   (`SpinPolicy::SLEEP_AT_ONCE`), so CPU use follows the load;
//! * `hybrid`: the same, waiting as `AsyncGuest` does by default: it polls the empty
//!   ring for a short, adaptive time before it sleeps. `--max-share` and `--max-spin`
//!   set its `SpinPolicy` (default `SpinPolicy::default()`).
//! * `block`, `hybrid-block`: as `async` and `hybrid`, on a plain thread without tokio
//!   (`Guest::wait_rx_hybrid`, which sleeps in `poll(2)`): what the runtime adds.
//!
//! Every second it prints `macswap: pps=<forwarded per second> cpu=<percent of one CPU>`,
//! and at the end `macswap: packets=N tx_full_drops=N cpu_ms=N wall_ms=N wait=... spin_caught=N
//! spin_slept=N spun_then_slept=N` (the waits that ended while polling, asleep, and
//! asleep after polling). `--one-way` (under the proxy's latency probe) also prints
//! how long after the probe sent them the packets reached the guest (`one_way
//! after_sleep` for bursts received right after a sleep, `one_way awake` for the
//! others: the wake-up's part of the round trip).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use latency_stages::{frame, tsc};
use shm_guest::{AdaptiveSpin, AsyncGuest, Buffer, Config, Error, Guest, SpinPolicy};

mod common;
use common::{cpu_time, stop_on_signals, stopped};

const BURST: usize = 32;

fn cpu_ms() -> u64 {
    cpu_time().as_millis() as u64
}

/// Counters and the once-a-second report.
struct Meter {
    start: Instant,
    cpu0: u64,
    tick: Instant,
    tick_cpu: u64,
    tick_packets: u64,
    packets: u64,
    dropped: u64,
    deadline: Option<Instant>,
    one_way: Option<OneWay>,
}

impl Meter {
    fn new(seconds: Option<f64>) -> Meter {
        let now = Instant::now();
        let cpu = cpu_ms();
        Meter {
            start: now,
            cpu0: cpu,
            tick: now,
            tick_cpu: cpu,
            tick_packets: 0,
            packets: 0,
            dropped: 0,
            deadline: seconds.map(|s| now + Duration::from_secs_f64(s)),
            one_way: None,
        }
    }

    /// Prints the last second when one has passed; false when it is time to stop.
    fn keep_going(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.tick) >= Duration::from_secs(1) {
            let cpu = cpu_ms();
            let secs = now.duration_since(self.tick).as_secs_f64();
            println!(
                "macswap: pps={:.0} cpu={:.1}",
                (self.packets - self.tick_packets) as f64 / secs,
                (cpu - self.tick_cpu) as f64 / 10.0 / secs
            );
            (self.tick, self.tick_cpu, self.tick_packets) = (now, cpu, self.packets);
        }
        !stopped() && self.deadline.is_none_or(|d| now < d)
    }
}

/// With `--one-way`: how long after the probe stamped them the packets were in the
/// guest's hands, kept apart for bursts received right after a sleep and the others.
struct OneWay {
    start_tsc: u64,
    start: Instant,
    /// TSC ticks from the probe's stamp to the receive: after a sleep, and not.
    after_sleep: Vec<u64>,
    awake: Vec<u64>,
}

impl OneWay {
    fn new() -> OneWay {
        OneWay { start_tsc: tsc(), start: Instant::now(), after_sleep: Vec::with_capacity(1 << 22), awake: Vec::with_capacity(1 << 22) }
    }

    fn record(&mut self, burst: &[Buffer], after_sleep: bool) {
        let now = tsc();
        for b in burst {
            let mut head = [0u8; frame::HEADER];
            if b.len() < frame::HEADER {
                continue;
            }
            head.copy_from_slice(&b[..frame::HEADER]);
            if let Some(stamp) = frame::parse(&head).map(|f| f.tsc) {
                let v = if after_sleep { &mut self.after_sleep } else { &mut self.awake };
                if v.len() < v.capacity() {
                    v.push(now.wrapping_sub(stamp));
                }
            }
        }
    }

    fn report(&mut self) {
        let ns_per_tick = self.start.elapsed().as_nanos() as f64 / tsc().wrapping_sub(self.start_tsc).max(1) as f64;
        for (name, v) in [("after_sleep", &mut self.after_sleep), ("awake", &mut self.awake)] {
            v.sort_unstable();
            let q = |f: f64| v.get(((v.len() as f64 * f) as usize).min(v.len().saturating_sub(1))).map_or(0.0, |t| *t as f64 * ns_per_tick / 1000.0);
            println!(
                "macswap: one_way {name} n={} p10_us={:.2} p50_us={:.2} p90_us={:.2} p99_us={:.2}",
                v.len(),
                q(0.1),
                q(0.5),
                q(0.9),
                q(0.99)
            );
        }
    }
}

/// Swaps the MACs of a burst and sends it; what the tx ring has no room for is dropped
/// (the buffers go back to the pool), as testpmd does without its retry option.
fn swap_and_send(guest: &mut Guest, burst: &mut Vec<Buffer>, meter: &mut Meter, after_sleep: bool) -> Result<(), Error> {
    if let Some(o) = &mut meter.one_way {
        o.record(burst, after_sleep);
    }
    for b in burst.iter_mut() {
        if b.len() >= 12 {
            let (dst, src) = b.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
        }
    }
    let sent = guest.send_burst(burst)?;
    meter.packets += sent as u64;
    meter.dropped += burst.len() as u64;
    burst.clear();
    Ok(())
}

fn run_poll(guest: &mut Guest, meter: &mut Meter) -> Result<(), Error> {
    let mut burst = Vec::with_capacity(BURST);
    let mut polls = 0u32;
    loop {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(4096) && !meter.keep_going() {
            return Ok(());
        }
        if guest.recv_burst(&mut burst, BURST)? > 0 {
            swap_and_send(guest, &mut burst, meter, false)?;
        }
    }
}

fn run_async(guest: Guest, meter: &mut Meter, policy: SpinPolicy) -> Result<(Guest, [u64; 3]), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(Error::Io)?;
    rt.block_on(async {
        let mut ag = AsyncGuest::new(guest)?;
        ag.set_spin_policy(policy);
        let mut burst = Vec::with_capacity(BURST);
        while meter.keep_going() {
            // Wakes at least every 200 ms to print and to notice the deadline.
            let slept = ag.spin().slept();
            match tokio::time::timeout(Duration::from_millis(200), ag.recv_burst(&mut burst, BURST)).await {
                Ok(r) => {
                    r?;
                    let after_sleep = ag.spin().slept() != slept;
                    swap_and_send(ag.guest_mut(), &mut burst, meter, after_sleep)?;
                }
                Err(_elapsed) => {}
            }
        }
        let spin = ag.spin();
        let counts = [spin.caught_spinning(), spin.slept(), spin.spun_then_slept()];
        Ok((ag.into_inner(), counts))
    })
}

/// The blocking waits of a plain thread: `Guest::wait_rx_hybrid` (`poll(2)` on the
/// wake-up listener), without tokio.
fn run_blocking(guest: &mut Guest, meter: &mut Meter, policy: SpinPolicy) -> Result<[u64; 3], Error> {
    let mut spin = AdaptiveSpin::new(policy);
    let mut burst = Vec::with_capacity(BURST);
    let mut slept = 0;
    while meter.keep_going() {
        if guest.recv_burst(&mut burst, BURST)? > 0 {
            let after_sleep = spin.slept() != slept;
            slept = spin.slept();
            swap_and_send(guest, &mut burst, meter, after_sleep)?;
        } else {
            // Wakes at least every 200 ms to print and to notice the deadline.
            guest.wait_rx_hybrid(&mut spin, Some(Duration::from_millis(200)))?;
        }
    }
    Ok([spin.caught_spinning(), spin.slept(), spin.spun_then_slept()])
}

fn main() -> ExitCode {
    let usage = "usage: macswap <socket> [--wait=poll|async|hybrid|block|hybrid-block] [--seconds S] [--buffers N] \
                 [--max-share PERCENT] [--max-spin MICROSECONDS] [--one-way]";
    let mut socket = None;
    let mut seconds = None;
    let mut buffers = 8192u32;
    let mut wait = "poll".to_string();
    let mut policy = SpinPolicy::default();
    let mut bad = false;
    let mut one_way = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--one-way" => one_way = true,
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()),
            "--buffers" => buffers = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--max-share" => match args.next().and_then(|v| v.parse().ok()).filter(|p| *p <= 100) {
                Some(p) => policy.max_share_percent = p,
                None => bad = true,
            },
            "--max-spin" => match args.next().and_then(|v| v.parse().ok()) {
                Some(us) => policy.max_spin = Duration::from_micros(us),
                None => bad = true,
            },
            w if w.starts_with("--wait=") => wait = w["--wait=".len()..].to_string(),
            s if !s.starts_with('-') && socket.is_none() => socket = Some(s.to_string()),
            s => {
                eprintln!("macswap: unexpected argument {s}\n{usage}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(socket), true, false) = (socket, ["poll", "async", "hybrid", "block", "hybrid-block"].contains(&wait.as_str()), bad) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    stop_on_signals();
    let config = Config { app_name: "macswap".into(), buffers, rx_wakeup: wait != "poll", ..Config::default() };
    let mut guest = match Guest::connect(&socket, &config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("macswap: {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("macswap: attached, {} buffers, wait={wait}", guest.pool().capacity());
    let mut meter = Meter::new(seconds);
    meter.one_way = one_way.then(OneWay::new);
    let mut spin = [0; 3];
    let result = match wait.as_str() {
        "async" => run_async(guest, &mut meter, SpinPolicy::SLEEP_AT_ONCE).map(|(_, c)| spin = c),
        "hybrid" => run_async(guest, &mut meter, policy).map(|(_, c)| spin = c),
        "block" => run_blocking(&mut guest, &mut meter, SpinPolicy::SLEEP_AT_ONCE).map(|c| spin = c),
        "hybrid-block" => run_blocking(&mut guest, &mut meter, policy).map(|c| spin = c),
        _ => run_poll(&mut guest, &mut meter),
    };
    let wall_ms = meter.start.elapsed().as_millis();
    println!(
        "macswap: packets={} tx_full_drops={} cpu_ms={} wall_ms={wall_ms} wait={wait} spin_caught={} spin_slept={} spun_then_slept={}",
        meter.packets,
        meter.dropped,
        cpu_ms() - meter.cpu0,
        spin[0],
        spin[1],
        spin[2]
    );
    if let Some(o) = &mut meter.one_way {
        o.report();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("macswap: {e}");
            ExitCode::FAILURE
        }
    }
}
