//! An idle guest: attaches, starts its queue, and then only sleeps. The scale
//! benchmark (`scripts/bench-scale.sh`) attaches dozens of them next to one busy guest.
//!
//! ```text
//! idle <socket> [--buffers N] [--seconds S]
//! ```
//!
//! Prints `idle: attach_us=T port=P queue=Q region_kib=R hugepages=0|1` once the queue
//! is started: T is the time from connecting to the proxy's `QueueStarted` (Hello,
//! Welcome, mapping, the pool laid out and announced, the queue started). Then it
//! sleeps on rx wake-ups (packets that arrive anyway are dropped, counted at the end)
//! until SIGINT/SIGTERM, `--seconds` or the proxy goes away, and says goodbye.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_guest::{Buffer, Config, Error, Guest};

mod common;
use common::{stop_on_signals, stopped};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    let mut seconds: Option<f64> = None;
    // A small pool: an idle guest needs buffers only for what its rx queue keeps posted.
    let mut buffers = 1024u32;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()),
            "--buffers" => buffers = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            s if !s.starts_with('-') && socket.is_none() => socket = Some(s.to_string()),
            s => {
                eprintln!("idle: unexpected argument {s}\nusage: idle <socket> [--buffers N] [--seconds S]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: idle <socket> [--buffers N] [--seconds S]");
        return ExitCode::from(2);
    };
    stop_on_signals();
    // The proxy keeps at most rx_ring descriptors posted: a ring as small as the pool
    // allows leaves the rest of the pool to the guest.
    let rx_ring = (buffers / 2).next_power_of_two().clamp(64, 1024);
    let config = Config { app_name: "idle".into(), buffers, rx_ring, rx_wakeup: true, ..Config::default() };
    let begin = Instant::now();
    let mut guest = match Guest::connect(&socket, &config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("idle: {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let attach = begin.elapsed();
    let info = guest.info().clone();
    println!(
        "idle: attach_us={} port={} queue={} region_kib={} hugepages={}",
        attach.as_micros(),
        info.port_id,
        info.queue_id,
        info.region_size >> 10,
        info.hugepages() as u8
    );
    let deadline = seconds.map(|s| begin + Duration::from_secs_f64(s));
    let mut burst: Vec<Buffer> = Vec::with_capacity(64);
    let mut dropped = 0u64;
    let end = loop {
        if stopped() {
            break "signal".to_string();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "time is up".to_string();
        }
        // No timer: a signal ends the wait (poll(2) is never restarted), and so does the
        // proxy going away; an idle guest wakes for nothing else.
        match guest.wait_rx(deadline.map(|d| d.saturating_duration_since(Instant::now()))) {
            Ok(true) => match guest.recv_burst(&mut burst, 64) {
                Ok(n) => {
                    dropped += n as u64;
                    burst.clear();
                }
                Err(e) => break format!("{e}"),
            },
            Ok(false) => {}
            Err(Error::Disconnected(why)) => {
                println!("idle: proxy gone ({why}): dropped={dropped}");
                return ExitCode::SUCCESS;
            }
            Err(e) => break format!("{e}"),
        }
    };
    println!("idle: {end}: dropped={dropped}");
    if let Err(e) = guest.close() {
        eprintln!("idle: closing: {e}");
    }
    ExitCode::SUCCESS
}
