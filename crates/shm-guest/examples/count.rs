//! Counts the packets of a proxy queue, without DPDK.
//!
//! ```text
//! count <socket> [--seconds S] [--buffers N]
//! ```
//!
//! Receives and drops (each buffer goes straight back to the pool) until SIGINT/SIGTERM,
//! `--seconds`, or the proxy goes away. At the end it stops the queue, so that the proxy
//! delivers nothing more, counts what the rx ring still held, and prints one line:
//! `count: packets=N bytes=B ...`. After a clean stop, `packets` is exactly what the
//! proxy counted as delivered to this guest.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_guest::{Buffer, Config, Error, Guest};

mod common;
use common::{stop_on_signals, stopped};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    let mut seconds: Option<f64> = None;
    let mut buffers = 4096u32;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()),
            "--buffers" => buffers = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            s if !s.starts_with('-') && socket.is_none() => socket = Some(s.to_string()),
            s => {
                eprintln!("count: unexpected argument {s}\nusage: count <socket> [--seconds S] [--buffers N]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: count <socket> [--seconds S] [--buffers N]");
        return ExitCode::from(2);
    };
    stop_on_signals();
    let config = Config { app_name: "count".into(), buffers, ..Config::default() };
    let mut guest = match Guest::connect(&socket, &config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("count: {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let info = guest.info().clone();
    let (rx_ring, tx_ring) = guest.ring_entries();
    println!(
        "count: attached to port {} queue {}, {} buffers, rx ring {rx_ring} / tx ring {tx_ring} entries",
        info.port_id,
        info.queue_id,
        guest.pool().capacity()
    );
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut burst: Vec<Buffer> = Vec::with_capacity(64);
    let mut count = |burst: &mut Vec<Buffer>| {
        for pkt in burst.drain(..) {
            packets += 1;
            bytes += pkt.len() as u64;
        }
    };
    let mut polls = 0u32;
    let mut proxy_gone = false;
    let end: String = loop {
        polls = polls.wrapping_add(1);
        if stopped() {
            break "signal".into();
        }
        if polls.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
            break "time is up".into();
        }
        match guest.recv_burst(&mut burst, 64) {
            Ok(_) => count(&mut burst),
            Err(Error::Disconnected(why)) => {
                proxy_gone = true;
                break format!("proxy gone ({why})");
            }
            Err(e) => {
                eprintln!("count: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut after_stop = 0u64;
    if !proxy_gone {
        // Stop the queue, then take what the proxy delivered before it stopped.
        match guest.stop() {
            Ok(()) => loop {
                match guest.recv_burst(&mut burst, 64) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        after_stop += n as u64;
                        count(&mut burst);
                    }
                }
            },
            Err(e) => eprintln!("count: stopping the queue: {e}"),
        }
    }
    let s = guest.stats();
    println!(
        "count: {end}: packets={packets} bytes={bytes} after_stop={after_stop} rx_invalid={} rx_multiseg_dropped={} \
         free_ring_invalid={} lost={}",
        s.rx_invalid, s.rx_multiseg_dropped, s.free_ring_invalid, s.lost
    );
    if let Err(e) = guest.close() {
        if !proxy_gone {
            eprintln!("count: closing: {e}");
        }
    }
    ExitCode::SUCCESS
}
