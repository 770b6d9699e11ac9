//! Where the machine's CPU time went while a test ran: the time each thread of a
//! process ran and waited on a run queue (`/proc/<pid>/task/<tid>/schedstat`, in ns),
//! and each CPU's softirq and steal time (`/proc/stat`). The hostile harness uses it
//! to split what a case cost the good guest into what the proxy's threads spent (its
//! control thread, its reaper) and what the attacker and the machine spent on their
//! own (the attacker's threads, softirq work its sockets cause, the hypervisor's steal).

use std::collections::BTreeMap;
use std::time::Instant;

/// Run and wait time of one thread, in ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadTime {
    pub ran_ns: u64,
    pub waited_ns: u64,
}

/// The times of a process's threads, summed by thread name (`comm`).
pub fn threads_by_name(pid: u32) -> BTreeMap<String, ThreadTime> {
    let mut out: BTreeMap<String, ThreadTime> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(sched)) = (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("schedstat")))
        else {
            continue;
        };
        let Some(t) = parse_schedstat(&sched) else { continue };
        let e = out.entry(comm.trim().to_string()).or_default();
        e.ran_ns += t.ran_ns;
        e.waited_ns += t.waited_ns;
    }
    out
}

/// `/proc/.../schedstat`: "<ns on cpu> <ns waiting on a run queue> <timeslices>".
fn parse_schedstat(text: &str) -> Option<ThreadTime> {
    let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some(ThreadTime { ran_ns: f.next()??, waited_ns: f.next()?? })
}

/// Per CPU: (softirq, steal) in ms, from `/proc/stat`.
pub fn softirq_and_steal_ms() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_proc_stat(&text, clock_ticks_per_sec())
}

fn parse_proc_stat(text: &str, ticks: u64) -> Vec<(u64, u64)> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            Some((*v.get(6)? * 1000 / ticks, *v.get(7)? * 1000 / ticks))
        })
        .collect()
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The pid of the process whose command line contains `needle` (the first found).
pub fn pid_with_arg(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                return Some(pid);
            }
        }
    }
    None
}

/// A snapshot of the processes a case involves.
pub struct CpuSnapshot {
    at: Instant,
    procs: Vec<(&'static str, BTreeMap<String, ThreadTime>)>,
    cpus: Vec<(u64, u64)>,
}

/// What changed between two snapshots, for a table's note.
impl CpuSnapshot {
    /// `procs`: a label and a pid each (the label names the process in the report).
    pub fn take(procs: &[(&'static str, u32)]) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            procs: procs.iter().map(|&(label, pid)| (label, threads_by_name(pid))).collect(),
            cpus: softirq_and_steal_ms(),
        }
    }

    /// Per process and thread name: ms run (and ms waited, where more than 5 ms), then per
    /// CPU: softirq and steal ms; threads that ran less than 5 ms are left out.
    pub fn report_since(&self, before: &CpuSnapshot) -> String {
        let ms = |ns: u64| ns / 1_000_000;
        let mut parts = vec![format!("cpu over {} ms:", self.at.duration_since(before.at).as_millis())];
        for ((label, now), (_, then)) in self.procs.iter().zip(&before.procs) {
            let mut threads = Vec::new();
            for (name, t) in now {
                let t0 = then.get(name).copied().unwrap_or_default();
                let (ran, waited) = (ms(t.ran_ns.saturating_sub(t0.ran_ns)), ms(t.waited_ns.saturating_sub(t0.waited_ns)));
                if ran >= 5 || waited >= 5 {
                    threads.push(format!("{name} ran {ran} waited {waited}"));
                }
            }
            parts.push(format!("{label}[{}]", threads.join(", ")));
        }
        let cpus: Vec<String> = self
            .cpus
            .iter()
            .zip(&before.cpus)
            .enumerate()
            .map(|(i, ((s1, t1), (s0, t0)))| format!("cpu{i} softirq {} steal {}", s1.saturating_sub(*s0), t1.saturating_sub(*t0)))
            .collect();
        parts.push(cpus.join(", "));
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_and_proc_stat_are_parsed() {
        assert_eq!(parse_schedstat("135112 970160 2\n"), Some(ThreadTime { ran_ns: 135112, waited_ns: 970160 }));
        assert_eq!(parse_schedstat("12\n"), None);
        let stat = "cpu  1 2 3 4 5 6 70 80 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 1 2 3 4 5 6 30 40 0 0\nintr 5\n";
        assert_eq!(parse_proc_stat(stat, 100), vec![(70, 80), (300, 400)]);
    }

    #[test]
    fn this_process_is_seen() {
        let me = threads_by_name(std::process::id());
        assert!(!me.is_empty());
        assert!(pid_with_arg("").is_some());
    }
}
