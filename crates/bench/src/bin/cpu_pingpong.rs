//! `cpu-pingpong`: how long one cache line takes to go from one CPU to another and back.
//!
//!   cpu-pingpong CPU-A CPU-B [MILLISECONDS]
//!
//! Two threads, pinned to the two CPUs, pass a counter back and forth in one cache line
//! for the given time (default 500 ms) and print `PINGPONG rtt_ns=N`, the median round
//! trip of 20 slices. Every packet between two processes on two CPUs (descriptors, ring
//! indices) moves that way, so the proxy's throughput depends on it; on a VM it depends
//! on where the hypervisor placed the two vCPUs (same core, same CCX, another die) and
//! can change while a benchmark runs. scripts/bench.sh records it before every run.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ball, alone in its cache line (128 bytes: adjacent-line prefetch too).
#[repr(align(128))]
struct Line(AtomicU64);

fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; the call reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!("cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize, default: Option<u64>| -> Result<u64, String> {
        match args.get(i) {
            Some(s) => s.parse().map_err(|_| format!("not a number: {s}")),
            None => default.ok_or_else(|| "usage: cpu-pingpong CPU-A CPU-B [MILLISECONDS]".to_string()),
        }
    };
    let run = || -> Result<u64, String> {
        let (a, b, ms) = (parse(0, None)? as usize, parse(1, None)? as usize, parse(2, Some(500))?);
        if a == b {
            return Err("the two CPUs must differ".into());
        }
        let ball = Arc::new(Line(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (ball2, stop2) = (ball.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let ok = pin(b);
            let failed = ok.is_err();
            let _ = tx.send(ok);
            if failed {
                return;
            }
            // Answers every odd value with the next even one.
            let mut expect = 1u64;
            while !stop2.load(Ordering::Relaxed) {
                if ball2.0.load(Ordering::Acquire) == expect {
                    ball2.0.store(expect + 1, Ordering::Release);
                    expect += 2;
                }
                std::hint::spin_loop();
            }
        });
        let answer = rx.recv().map_err(|_| "the other thread died".to_string())?;
        let result = answer.and_then(|_| pin(a)).map(|_| {
            let slice = Duration::from_millis(ms.max(20)) / 20;
            let mut value = 0u64;
            let mut rtts = Vec::with_capacity(20);
            for _ in 0..20 {
                let start = Instant::now();
                let mut trips = 0u64;
                while start.elapsed() < slice {
                    for _ in 0..100 {
                        ball.0.store(value + 1, Ordering::Release);
                        while ball.0.load(Ordering::Acquire) != value + 2 {
                            std::hint::spin_loop();
                        }
                        value += 2;
                    }
                    trips += 100;
                }
                rtts.push(start.elapsed().as_nanos() as u64 / trips.max(1));
            }
            rtts.sort_unstable();
            rtts[rtts.len() / 2]
        });
        stop.store(true, Ordering::Relaxed);
        let _ = other.join();
        result
    };
    match run() {
        Ok(rtt) => {
            println!("PINGPONG rtt_ns={rtt}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cpu-pingpong: {e}");
            ExitCode::FAILURE
        }
    }
}
