//! A UDP echo responder on a proxy queue, without DPDK.
//!
//! ```text
//! udp_echo <socket> [--seconds S] [--packets N] [--buffers N] [--zero-udp-checksum]
//!          [--wait=poll|sleep|async|hybrid]
//! ```
//!
//! Every IPv4 UDP packet (optionally behind one 802.1Q tag) is answered in place, in its
//! own buffer, and handed back to the proxy (zero copy): Ethernet addresses, IP
//! addresses and UDP ports swapped, TTL set to 64 and the IPv4 header checksum
//! recomputed; the UDP checksum is recomputed too (it stays 0 when the sender sent
//! none), or set to 0 with `--zero-udp-checksum`. Anything else (other protocols, IP
//! fragments, malformed headers, bad IPv4 header checksums) is dropped and counted.
//!
//! How it waits for packets (`--wait`):
//!
//! * `poll` (the default): it polls the rx ring without pause, one CPU at 100%, for the
//!   lowest latency;
//! * `sleep`: it asks the proxy for rx wake-ups and sleeps in `Guest::wait_rx` (one
//!   `poll(2)`) whenever the ring is empty;
//! * `async`: the same wake-ups through `AsyncGuest::recv_burst().await` on a tokio
//!   current-thread runtime, sleeping as soon as the ring is empty
//!   (`SpinPolicy::SLEEP_AT_ONCE`): no spinning thread;
//! * `hybrid`: `AsyncGuest` as it waits by default: it polls the empty ring for a
//!   short, adaptive time before it sleeps (`shm_guest::AdaptiveSpin`).
//!
//! It runs until SIGINT/SIGTERM, `--seconds`, `--packets` answers, or the proxy goes
//! away, then prints its counters, with the CPU time it used (`cpu_ms`, user + system,
//! `getrusage`) against the time it ran (`wall_ms`) and how often it slept
//! (`sleeps`, `wakeups`; with `hybrid`, `spin_caught`: waits that ended while polling).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shm_guest::{AsyncGuest, Buffer, Config, Error, Guest, SpinPolicy};

mod common;
use common::{cpu_time, stop_on_signals, stopped};

/// The 16-bit ones' complement sum of `data` (odd length padded with a zero byte),
/// added to `sum`, not yet folded.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Turns an IPv4 UDP packet into its answer, in place. False (packet untouched) for
/// anything else.
fn answer_udp(p: &mut [u8], zero_udp_checksum: bool) -> bool {
    if p.len() < 14 {
        return false;
    }
    let (mut l3, mut ethertype) = (14, u16::from_be_bytes([p[12], p[13]]));
    if ethertype == 0x8100 {
        if p.len() < 18 {
            return false;
        }
        (l3, ethertype) = (18, u16::from_be_bytes([p[16], p[17]]));
    }
    if ethertype != 0x0800 || p.len() < l3 + 20 {
        return false;
    }
    let ihl = (p[l3] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([p[l3 + 2], p[l3 + 3]]) as usize;
    let fragment = u16::from_be_bytes([p[l3 + 6], p[l3 + 7]]) & 0x3fff != 0;
    if p[l3] >> 4 != 4 || ihl < 20 || total < ihl + 8 || l3 + total > p.len() || fragment || p[l3 + 9] != 17 {
        return false;
    }
    if fold(sum16(&p[l3..l3 + ihl], 0)) != 0xffff {
        return false;
    }
    let l4 = l3 + ihl;
    let udp_len = u16::from_be_bytes([p[l4 + 4], p[l4 + 5]]) as usize;
    if udp_len < 8 || udp_len > total - ihl {
        return false;
    }
    for i in 0..6 {
        p.swap(i, 6 + i);
    }
    for i in 0..4 {
        p.swap(l3 + 12 + i, l3 + 16 + i);
    }
    p[l3 + 8] = 64;
    p[l3 + 10..l3 + 12].fill(0);
    let ip_sum = !fold(sum16(&p[l3..l3 + ihl], 0));
    p[l3 + 10..l3 + 12].copy_from_slice(&ip_sum.to_be_bytes());
    for i in 0..2 {
        p.swap(l4 + i, l4 + 2 + i);
    }
    let had_checksum = p[l4 + 6..l4 + 8] != [0, 0];
    p[l4 + 6..l4 + 8].fill(0);
    if had_checksum && !zero_udp_checksum {
        // Pseudo header: addresses, protocol, UDP length; then the datagram.
        let mut sum = sum16(&p[l3 + 12..l3 + 20], 17 + udp_len as u32);
        sum = sum16(&p[l4..l4 + udp_len], sum);
        let mut c = !fold(sum);
        if c == 0 {
            c = 0xffff; // 0 means "no checksum" in UDP
        }
        p[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    }
    true
}

/// How the responder waits for packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Poll,
    Sleep,
    Async,
    Hybrid,
}

impl std::str::FromStr for Wait {
    type Err = String;
    fn from_str(s: &str) -> Result<Wait, String> {
        match s {
            "poll" => Ok(Wait::Poll),
            "sleep" => Ok(Wait::Sleep),
            "async" => Ok(Wait::Async),
            "hybrid" => Ok(Wait::Hybrid),
            other => Err(format!("--wait: '{other}' is none of poll, sleep, async, hybrid")),
        }
    }
}

impl Wait {
    fn name(self) -> &'static str {
        match self {
            Wait::Poll => "poll",
            Wait::Sleep => "sleep",
            Wait::Async => "async",
            Wait::Hybrid => "hybrid",
        }
    }
}

struct Args {
    socket: String,
    seconds: Option<f64>,
    packets: Option<u64>,
    buffers: u32,
    zero_udp_checksum: bool,
    wait: Wait,
}

const USAGE: &str = "usage: udp_echo <socket> [--seconds S] [--packets N] [--buffers N] [--zero-udp-checksum] \
                     [--wait=poll|sleep|async|hybrid]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut args =
        Args { socket: String::new(), seconds: None, packets: None, buffers: 4096, zero_udp_checksum: false, wait: Wait::Poll };
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        if let Some(mode) = a.strip_prefix("--wait=") {
            args.wait = mode.parse()?;
            continue;
        }
        match a.as_str() {
            "--wait" => args.wait = value("--wait")?.parse()?,
            "--seconds" => args.seconds = Some(value("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?),
            "--packets" => args.packets = Some(value("--packets")?.parse().map_err(|e| format!("--packets: {e}"))?),
            "--buffers" => args.buffers = value("--buffers")?.parse().map_err(|e| format!("--buffers: {e}"))?,
            "--zero-udp-checksum" => args.zero_udp_checksum = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if args.socket.is_empty() => args.socket = s.to_string(),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    if args.socket.is_empty() {
        return Err(USAGE.into());
    }
    Ok(args)
}

/// What the three wait modes share: answering, sending, counting.
struct Echo {
    zero_udp_checksum: bool,
    packets: Option<u64>,
    deadline: Option<Instant>,
    answered: u64,
    ignored: u64,
    rx: Vec<Buffer>,
    tx: Vec<Buffer>,
}

/// Why the loop ended: printed, or a failure (already printed).
type End = Result<String, ()>;

impl Echo {
    /// Why to stop now, if so (a signal, enough answers, the time is up).
    fn should_end(&self, check_clock: bool) -> Option<String> {
        if stopped() {
            return Some("signal".into());
        }
        if self.packets.is_some_and(|n| self.answered >= n) && self.tx.is_empty() {
            return Some("enough packets".into());
        }
        if check_clock && self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some("time is up".into());
        }
        None
    }

    /// The longest a wait may last: until the deadline, and never so long that a
    /// signal which arrived just before the wait goes unnoticed for long.
    fn wait_limit(&self) -> Duration {
        let tick = Duration::from_millis(200);
        self.deadline.map_or(tick, |d| d.saturating_duration_since(Instant::now()).min(tick))
    }

    /// Answers what `rx` holds into `tx`, and hands `tx` to the proxy.
    fn answer_and_send(&mut self, guest: &mut Guest) -> Result<(), End> {
        for mut pkt in self.rx.drain(..) {
            if answer_udp(&mut pkt, self.zero_udp_checksum) {
                self.tx.push(pkt);
            } else {
                self.ignored += 1; // dropping the buffer returns it to the pool
            }
        }
        if !self.tx.is_empty() {
            // What the tx ring has no room for now is sent on a later turn.
            match guest.send_burst(&mut self.tx) {
                Ok(n) => self.answered += n as u64,
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(())
    }

    /// `--wait=poll` and `--wait=sleep`.
    fn run(&mut self, guest: &mut Guest, sleep: bool) -> End {
        let mut polls = 0u32;
        loop {
            polls = polls.wrapping_add(1);
            if let Some(why) = self.should_end(polls.is_multiple_of(1024)) {
                return Ok(why);
            }
            let got = match guest.recv_burst(&mut self.rx, 32) {
                Ok(n) => n,
                Err(e) => return fail(e),
            };
            if let Err(end) = self.answer_and_send(guest) {
                return end;
            }
            // Idle: sleep until the proxy publishes (not while answers wait for room in
            // the tx ring: the proxy empties it without waking us).
            if sleep && got == 0 && self.tx.is_empty() {
                match guest.wait_rx(Some(self.wait_limit())) {
                    Ok(true) => {}
                    Ok(false) => polls = 1023, // timed out or a signal: look at the clock
                    Err(e) => return fail(e),
                }
            }
        }
    }

    /// `--wait=async` and `--wait=hybrid`: the same on a current-thread tokio runtime.
    async fn run_async(&mut self, guest: &mut AsyncGuest) -> End {
        loop {
            if let Some(why) = self.should_end(true) {
                return Ok(why);
            }
            let received = if self.tx.is_empty() {
                // Cancel-safe: a recv that times out has taken nothing.
                match tokio::time::timeout(self.wait_limit(), guest.recv_burst(&mut self.rx, 32)).await {
                    Ok(r) => r,
                    Err(_elapsed) => continue,
                }
            } else {
                // Answers wait for room in the tx ring: no sleeping now.
                guest.guest_mut().recv_burst(&mut self.rx, 32)
            };
            if let Err(e) = received {
                return fail(e);
            }
            if let Err(end) = self.answer_and_send(guest.guest_mut()) {
                return end;
            }
        }
    }
}

/// A receive or send error: the proxy going away ends the loop normally, anything
/// else is printed and fails.
fn fail(e: Error) -> End {
    match e {
        Error::Disconnected(why) => Ok(format!("proxy gone ({why})")),
        e => {
            eprintln!("udp_echo: {e}");
            Err(())
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("udp_echo: {e}");
            return ExitCode::from(2);
        }
    };
    stop_on_signals();
    let config = Config {
        app_name: "udp_echo".into(),
        buffers: args.buffers,
        rx_wakeup: args.wait != Wait::Poll,
        ..Config::default()
    };
    let mut guest = match Guest::connect(&args.socket, &config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("udp_echo: {}: {e}", args.socket);
            return ExitCode::FAILURE;
        }
    };
    let info = guest.info().clone();
    println!(
        "udp_echo: attached to port {} queue {}: {} buffers, region {} MiB{}, waiting by {}",
        info.port_id,
        info.queue_id,
        guest.pool().capacity(),
        info.region_size >> 20,
        if info.hugepages() { " (hugepages)" } else { "" },
        args.wait.name()
    );
    let started = Instant::now();
    let mut echo = Echo {
        zero_udp_checksum: args.zero_udp_checksum,
        packets: args.packets,
        deadline: args.seconds.map(|s| started + Duration::from_secs_f64(s)),
        answered: 0,
        ignored: 0,
        rx: Vec::with_capacity(32),
        tx: Vec::with_capacity(1024),
    };
    let mut spin_caught = 0;
    let end = match args.wait {
        Wait::Poll => echo.run(&mut guest, false),
        Wait::Sleep => echo.run(&mut guest, true),
        Wait::Async | Wait::Hybrid => {
            // One thread: the runtime's reactor sleeps in epoll until the proxy wakes
            // the guest (or the 200 ms tick that looks for signals and the deadline).
            let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("udp_echo: tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let (end, back) = rt.block_on(async {
                let mut ag = match AsyncGuest::new(guest) {
                    Ok(ag) => ag,
                    Err(e) => {
                        eprintln!("udp_echo: {e}");
                        return (Err(()), None);
                    }
                };
                if args.wait == Wait::Async {
                    ag.set_spin_policy(SpinPolicy::SLEEP_AT_ONCE);
                }
                let end = echo.run_async(&mut ag).await;
                spin_caught = ag.spin().caught_spinning();
                (end, Some(ag.into_inner()))
            });
            match back {
                Some(g) => guest = g,
                None => return ExitCode::FAILURE,
            }
            end
        }
    };
    let Ok(end) = end else { return ExitCode::FAILURE };
    let wall = started.elapsed();
    let cpu = cpu_time();
    let s = guest.stats();
    println!(
        "udp_echo: {end}: answered={} ignored={} rx_packets={} rx_invalid={} rx_multiseg_dropped={} \
         tx_packets={} tx_ring_full={} free_ring_invalid={} lost={} wait={} sleeps={} wakeups={} spin_caught={} cpu_ms={} wall_ms={}",
        echo.answered,
        echo.ignored,
        s.rx_packets,
        s.rx_invalid,
        s.rx_multiseg_dropped,
        s.tx_packets,
        s.tx_ring_full,
        s.free_ring_invalid,
        s.lost,
        args.wait.name(),
        s.rx_sleeps,
        s.rx_wakeups,
        spin_caught,
        cpu.as_millis(),
        wall.as_millis()
    );
    drop(std::mem::take(&mut echo.tx));
    if let Err(e) = guest.close() {
        if !end.starts_with("proxy gone") {
            eprintln!("udp_echo: closing: {e}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP packet with correct checksums.
    fn udp_packet(payload: &[u8], vlan: bool, with_udp_checksum: bool) -> Vec<u8> {
        let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            p.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        p.extend_from_slice(&[0x08, 0x00]);
        let l3 = p.len();
        let total = 20 + 8 + payload.len();
        p.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 17, 17, 0, 0]);
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let c = !fold(sum16(&p[l3..l3 + 20], 0));
        p[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        let l4 = p.len();
        let ulen = 8 + payload.len();
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        p.extend_from_slice(payload);
        if with_udp_checksum {
            let sum = sum16(&p[l4..], sum16(&p[l3 + 12..l3 + 20], 17 + ulen as u32));
            let c = !fold(sum);
            p[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    fn udp_checksum_ok(p: &[u8], l3: usize) -> bool {
        let l4 = l3 + 20;
        let ulen = u16::from_be_bytes([p[l4 + 4], p[l4 + 5]]) as u32;
        fold(sum16(&p[l4..l4 + ulen as usize], sum16(&p[l3 + 12..l3 + 20], 17 + ulen))) == 0xffff
    }

    #[test]
    fn answers_udp_with_everything_swapped_and_valid_checksums() {
        for (vlan, l3) in [(false, 14), (true, 18)] {
            let q = udp_packet(b"hello, odd length", vlan, true);
            let mut a = q.clone();
            assert!(answer_udp(&mut a, false));
            assert_eq!(&a[0..6], &q[6..12]);
            assert_eq!(&a[6..12], &q[0..6]);
            assert_eq!(&a[l3 + 12..l3 + 16], &q[l3 + 16..l3 + 20]);
            assert_eq!(&a[l3 + 16..l3 + 20], &q[l3 + 12..l3 + 16]);
            assert_eq!(a[l3 + 8], 64);
            assert_eq!(&a[l3 + 20..l3 + 22], &q[l3 + 22..l3 + 24]);
            assert_eq!(&a[l3 + 22..l3 + 24], &q[l3 + 20..l3 + 22]);
            assert_eq!(fold(sum16(&a[l3..l3 + 20], 0)), 0xffff, "IPv4 header checksum");
            assert!(udp_checksum_ok(&a, l3), "UDP checksum");
            assert_eq!(&a[l3 + 28..], b"hello, odd length");
            // Answering the answer gives the question back, but for the TTL.
            let mut back = a.clone();
            assert!(answer_udp(&mut back, false));
            let mut q64 = q.clone();
            q64[l3 + 8] = 64;
            q64[l3 + 10..l3 + 12].fill(0);
            let c = !fold(sum16(&q64[l3..l3 + 20], 0));
            q64[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(back, q64);
        }
        let mut z = udp_packet(b"x", false, true);
        assert!(answer_udp(&mut z, true));
        assert_eq!(&z[40..42], [0, 0]);
        let mut none = udp_packet(b"x", false, false);
        assert!(answer_udp(&mut none, false));
        assert_eq!(&none[40..42], [0, 0], "no checksum stays no checksum");
    }

    #[test]
    fn leaves_everything_else_alone() {
        let good = udp_packet(b"payload", false, true);
        let mut cases: Vec<Vec<u8>> = vec![vec![], good[..13].to_vec(), good[..33].to_vec()];
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut tcp = good.clone();
        tcp[23] = 6;
        let mut frag = good.clone();
        frag[20] = 0x20; // more fragments
        let mut bad_sum = good.clone();
        bad_sum[24] ^= 1;
        let mut v6 = good.clone();
        v6[14] = 0x65;
        let mut short_total = good.clone();
        short_total[17] = 20;
        cases.extend([arp, tcp, frag, bad_sum, v6, short_total]);
        for (i, c) in cases.into_iter().enumerate() {
            let mut p = c.clone();
            assert!(!answer_udp(&mut p, false), "case {i}");
            assert_eq!(p, c, "case {i} modified");
        }
    }
}
