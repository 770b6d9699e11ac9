//! `dpdk-io-proxy`: owns the NIC ports and hands each NIC queue, through a unix socket,
//! to a guest DPDK application that sends and receives without copies (see README.md
//! and docs/architecture.md).
//!
//! Threads: the EAL main lcore runs the data loop (`datapath`); a control thread serves
//! the sockets and stdin (`control`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use proxy_app::control::{self, Control, Options, QUIT_SIGNAL};
use proxy_app::datapath::Plane;
use proxy_app::{access, admin, cmds, ctl_proto, os, reaper, sandbox, shadow, sizing, telemetry};
use proxy_app::{log_info, log_warn};

const DEFAULT_CMDS: &str = "dpdk-io-proxy.cmds";
/// The dedicated user the proxy runs as after start-up unless `--user` says otherwise.
const DEFAULT_USER: &str = "dpdk-io-proxy";

fn usage() -> String {
    format!(
        "\
usage: dpdk-io-proxy [EAL options] -- [options]
       dpdk-io-proxy <lcore>          (RFC style: EAL -l <lcore>, commands from ./{DEFAULT_CMDS})

Owns the NIC ports and serves each configured NIC queue on a unix socket. A guest DPDK
application attaches with:
  dpdk-testpmd --no-huge -m 32 -d librte_bus_shm.so -d librte_mempool_shm.so \\
               -d librte_net_shm.so -a sock:<socket path> -- ...

options:
  --cmds FILE              startup commands (default: ./{DEFAULT_CMDS} if it exists)
  --region-size SIZE       shared region per guest when the guest asks for none
                           (default 512M; K/M/G suffixes)
  --max-region-size SIZE   the largest region a guest may ask for (default 2G)
  --max-guest-buffers N    packet buffers one guest may announce, all its pools
                           together (default 524288); each costs the proxy about 256
                           bytes of its own DPDK memory (a shadow mbuf)
  --no-hugepages           back regions with normal pages even if hugepages are free
  --hugepages-per-guest SIZE
                           the most hugepage memory one guest's region may take
                           (default: an eighth of the system's hugepages); a larger
                           region, or one that would leave less than this free, goes
                           on 4 KiB pages and the attach log says why. A guest that
                           asks for no size and states its pools' size (the Rust
                           guest) gets a region that just fits them
  --socket-mode OCTAL      permissions of the socket files (default 0660; a directory
                           the proxy makes for a socket is the proxy's, with search-only
                           bits for the group/others the socket admits: 0710 for 0660)
  --socket-owner USER      owner of the socket files (never of the directories)
  --socket-group GROUP     their group and that of the directories made for them
                           (e.g. the group of the guests' users). Every directory on a
                           socket's path must belong to root or the proxy's user and be
                           writable by nobody else unless sticky (see docs/proxy.md)
  --allow-uid USER[,..]    only these users may connect (checked with SO_PEERCRED)
  --allow-gid GROUP[,..]   ... or members of these groups (primary or supplementary);
                           without either, the file permissions decide. Refusals are
                           logged with the peer's pid and uid. A socket line can
                           override each of these (see 'socket' below)
  --queues N               configure at least N queues on every port used
  --mtu N                  set this MTU on every port used (e.g. 9000 for jumbo frames)
  --stats-period SECS      print the counters every SECS seconds (0: never)
  --user NAME              the user the proxy becomes once its ports and startup sockets
                           are set up (default {DEFAULT_USER}; it must exist: scripts/setup.sh
                           makes it). Sockets made later belong to it; 'root' keeps root
  --seccomp kill|log|off   system calls outside the proxy's allowlist end it with SIGSYS
                           and a message (kill, the default), are let through and logged
                           by the kernel (log: dmesg, audit type=1326), or are not filtered
  --ctl PATH               serve the admin socket here (default {ctl}; without
                           --ctl a default path that is busy is only a warning):
                           dpdk-io-proxy-ctl [--ctl PATH] <command> sends any command
                           below and prints the answer
  --ctl-owner USER         the user who may use it besides root (owns the file)
  --ctl-group GROUP        its group
  --ctl-mode OCTAL         its permissions (default 0600)
  --no-ctl                 no admin socket
  --version                the version and the DPDK it was built for
  -h, --help               this text

{}

The data path runs on the EAL main lcore; pin it with -l/--lcores. Stop with 'quit' on
stdin, SIGINT or SIGTERM: guests are told goodbye and every port is closed. SIGHUP
reads the --cmds file again and applies the difference (new sockets served, removed
ones closed, unchanged ones untouched); a bad file is refused with its line.",
        cmds::HELP,
        ctl = ctl_proto::DEFAULT_CTL_PATH,
    )
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Debug)]
struct AppArgs {
    opts: Options,
    cmds: Option<String>,
    /// Hidden benchmark mode (scripts/bench.sh): the NIC is a ring pair to a latency probe.
    bench_latency: Option<bench::Spec>,
    /// The user to become after start-up (`--user`).
    user: String,
    seccomp: sandbox::SeccompMode,
    /// The admin socket, and whether its path was given (a default one may be busy).
    ctl: Option<admin::AdminSpec>,
    ctl_explicit: bool,
}

fn parse_app_args(args: &[String]) -> Result<AppArgs, String> {
    let mut opts = Options {
        region_size: 512 << 20,
        max_region_size: 2 << 30,
        max_guest_buffers: 512 << 10,
        try_hugepages: true,
        hugepage_share: 0,
        access: access::Access {
            owner: None,
            group: None,
            mode: 0o660,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
        },
        mtu: None,
        queues: None,
        stats_period: None,
        runs_as: os::effective_uid(),
    };
    let mut cmds = None;
    let mut bench_latency = None;
    let mut user = DEFAULT_USER.to_string();
    let mut seccomp = sandbox::SeccompMode::Kill;
    let mut ctl = Some(admin::AdminSpec { path: ctl_proto::DEFAULT_CTL_PATH.into(), owner: None, group: None, mode: 0o600 });
    let mut ctl_explicit = false;
    let mut no_ctl = false;
    let mut hugepage_share = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--cmds" => cmds = Some(value("--cmds")?),
            "--region-size" => {
                opts.region_size = parse_size(&value(a)?).ok_or("--region-size: expected a size such as 256M")?
            }
            "--max-region-size" => {
                opts.max_region_size = parse_size(&value(a)?).ok_or("--max-region-size: expected a size such as 2G")?
            }
            "--max-guest-buffers" => {
                opts.max_guest_buffers = value(a)?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--max-guest-buffers: expected a positive number of buffers")?
            }
            "--no-hugepages" => opts.try_hugepages = false,
            "--hugepages-per-guest" => {
                hugepage_share = Some(
                    parse_size(&value(a)?).ok_or("--hugepages-per-guest: expected a size such as 128M (0: none)")?,
                )
            }
            "--socket-mode" => {
                let mode = cmds::parse_mode(&value(a)?).map_err(|e| format!("--socket-mode: {e}"))?;
                opts.access.mode = mode;
            }
            "--socket-owner" => opts.access.owner = Some(access::resolve_user(&value(a)?).map_err(|e| format!("--socket-owner: {e}"))?),
            "--socket-group" => opts.access.group = Some(access::resolve_group(&value(a)?).map_err(|e| format!("--socket-group: {e}"))?),
            "--allow-uid" => {
                for u in value(a)?.split(',').filter(|u| !u.is_empty()) {
                    opts.access.allow_uids.push(access::resolve_user(u).map_err(|e| format!("--allow-uid: {e}"))?);
                }
            }
            "--allow-gid" => {
                for g in value(a)?.split(',').filter(|g| !g.is_empty()) {
                    opts.access.allow_gids.push(access::resolve_group(g).map_err(|e| format!("--allow-gid: {e}"))?);
                }
            }
            "--queues" => opts.queues = Some(value(a)?.parse().map_err(|_| "--queues: expected a number")?),
            "--mtu" => opts.mtu = Some(value(a)?.parse().map_err(|_| "--mtu: expected a number")?),
            "--stats-period" => {
                let secs: u64 = value(a)?.parse().map_err(|_| "--stats-period: expected seconds")?;
                opts.stats_period = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--bench-latency" => {
                bench_latency = Some(bench::Spec::parse(&value(a)?).map_err(|e| format!("--bench-latency: {e}"))?)
            }
            "--user" => user = value(a)?,
            "--seccomp" => seccomp = sandbox::SeccompMode::parse(&value(a)?).map_err(|e| format!("--seccomp: {e}"))?,
            "--ctl" => {
                if let Some(c) = ctl.as_mut() {
                    c.path = value(a)?.into();
                }
                ctl_explicit = true;
            }
            "--ctl-owner" => {
                let uid = access::resolve_user(&value(a)?).map_err(|e| format!("--ctl-owner: {e}"))?;
                ctl.iter_mut().for_each(|c| c.owner = Some(uid));
            }
            "--ctl-group" => {
                let gid = access::resolve_group(&value(a)?).map_err(|e| format!("--ctl-group: {e}"))?;
                ctl.iter_mut().for_each(|c| c.group = Some(gid));
            }
            "--ctl-mode" => {
                let mode = cmds::parse_mode(&value(a)?).map_err(|e| format!("--ctl-mode: {e}"))?;
                ctl.iter_mut().for_each(|c| c.mode = mode);
            }
            "--no-ctl" => no_ctl = true,
            other => return Err(format!("unknown option '{other}' (see --help)")),
        }
    }
    // A guest's share of the hugepages, by default of those the system has now.
    opts.hugepage_share = hugepage_share.unwrap_or_else(|| sizing::MemInfo::read().default_hugepage_share());
    if opts.region_size > opts.max_region_size {
        opts.max_region_size = opts.region_size;
    }
    if no_ctl {
        ctl = None;
    }
    Ok(AppArgs { opts, cmds, bench_latency, user, seccomp, ctl, ctl_explicit })
}

fn main() -> ExitCode {
    // Whether stderr goes to the journal is decided now, before the privilege drop and
    // the seccomp filter (it needs a dup and an fstat).
    let _ = proxy_app::journal_level(proxy_app::LOG_INFO);
    // SIGHUP only asks for a reload, from the start: `systemctl reload` while EAL is
    // still starting must not end the service. The control loop applies it once it runs
    // (the file is then read again, which changes nothing if it did not change).
    control::reload_on_sighup();
    let argv: Vec<String> = std::env::args().collect();
    let prog = argv.first().cloned().unwrap_or_else(|| "dpdk-io-proxy".into());
    // RFC style: a single lcore number.
    let rfc_lcore = (argv.len() == 2 && argv[1].parse::<u32>().is_ok()).then(|| argv[1].clone());
    let (eal_args, app_args): (Vec<String>, Vec<String>) = match &rfc_lcore {
        Some(lcore) => (vec![prog.clone(), "-l".into(), lcore.clone()], Vec::new()),
        None => match argv.iter().position(|a| a == "--") {
            Some(i) => (argv[..i].to_vec(), argv[i + 1..].to_vec()),
            None => (argv.clone(), Vec::new()),
        },
    };
    if eal_args.iter().skip(1).chain(&app_args).any(|a| a == "--version") {
        println!("dpdk-io-proxy {} (built for DPDK {})", env!("CARGO_PKG_VERSION"), dpdk::sys::DPDK_VERSION);
        return ExitCode::SUCCESS;
    }
    let wants_help = |a: &String| a == "-h" || a == "--help";
    if eal_args.iter().skip(1).any(wants_help) || app_args.iter().any(wants_help) {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let app = match parse_app_args(&app_args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
            return ExitCode::from(2);
        }
    };
    let cmds_path = app.cmds.clone().or_else(|| std::path::Path::new(DEFAULT_CMDS).exists().then(|| DEFAULT_CMDS.to_string()));
    let startup = match &cmds_path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match cmds::parse_file(&text, path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("{}dpdk-io-proxy: cannot read {path}: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
                return ExitCode::from(2);
            }
        },
        None => {
            if rfc_lcore.is_some() {
                eprintln!("{}dpdk-io-proxy: no ./{DEFAULT_CMDS} here; sockets can be added on stdin (try 'help')", proxy_app::journal_level(proxy_app::LOG_INFO));
            }
            Vec::new()
        }
    };

    if let Err(e) = refuse_iova_pa_option(&eal_args) {
        eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
        return ExitCode::from(2);
    }
    let mut eal_args = eal_args;
    if !eal_args.iter().any(|a| a.starts_with("--iova-mode")) {
        // As root, with hugepages and no IOMMU, EAL would pick physical addresses.
        eal_args.push("--iova-mode=va".into());
    }
    let identity = match identity_for(&app.user, app.opts.access.group) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{}dpdk-io-proxy: --user: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
            return ExitCode::from(2);
        }
    };
    if identity.is_some() && !eal_args.iter().any(|a| ["--in-memory", "--no-shconf", "--legacy-mem"].contains(&a.as_str())) {
        // After the drop EAL still grows its memory (a new guest's shadow mbufs) and
        // registers guest regions (rte_extmem_register): with files, both need root's
        // hugetlbfs and runtime directories; in memory, they need nothing. What is lost,
        // the multi-process channel, the drop costs anyway (see the capture below).
        eal_args.push("--in-memory".into());
    }
    let mut opts = app.opts;
    if let Some(who) = &identity {
        // What the proxy makes belongs to the user it runs as, so that it can still
        // remove (and, for sockets typed later, make) them after the drop.
        opts.access.owner.get_or_insert(who.uid);
        opts.access.group.get_or_insert(who.gid);
        opts.runs_as = who.uid;
    }

    let (eal, _) = match dpdk::Eal::init(&eal_args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{}dpdk-io-proxy: cannot initialise EAL: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
            return ExitCode::FAILURE;
        }
    };
    if !eal.iova_is_va() {
        eprintln!("{}dpdk-io-proxy: EAL chose IOVA as physical addresses; {IOVA_PA_REFUSAL}", proxy_app::journal_level(proxy_app::LOG_ERR));
        return ExitCode::FAILURE;
    }
    // After EAL init, so after the drivers' mempool ops: a mempool names its ops by index
    // in a per-process table, and secondary processes (dpdk-dumpcap) allocate from their
    // pools in this process, so the table must start like theirs.
    if let Err(e) = shadow::register_ops(&eal) {
        eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
        return ExitCode::FAILURE;
    }
    os::set_quit_flag_on_signals(&QUIT_SIGNAL);
    // Benchmark mode (docs/benchmarks.md, "Latency"): the probe is polled by the data loop
    // on this lcore; its ring-pair NIC is made before the commands configure ports.
    let mut probe = match app.bench_latency.clone() {
        Some(spec) => match bench::ring_pair_probe(spec) {
            Ok((nic, probe)) => {
                log_info!("bench: port {} ({}) is a ring pair to the latency probe", nic.0, nic.name());
                Some((nic, probe))
            }
            Err(e) => {
                eprintln!("{}dpdk-io-proxy: --bench-latency: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Whatever peers pass is closed on the reaper thread, never on the control thread.
    let fd_limit = os::raise_fd_limit();
    if let Err(e) = reaper::start() {
        eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
        return ExitCode::FAILURE;
    }
    if fd_limit < 4 * reaper::CAPACITY as u64 {
        log_warn!("only {fd_limit} open descriptors allowed (RLIMIT_NOFILE); peers' descriptors waiting to be closed may exhaust them");
    }
    let plane = Arc::new(Plane::new());
    let source = cmds_path.clone().unwrap_or_default();
    let admin_runs_as = opts.runs_as;
    let mut control = match Control::new(opts, plane.clone(), startup, &source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
            return ExitCode::FAILURE;
        }
    };
    if let Some(file) = &cmds_path {
        control.set_config_file(file.into());
    }
    // The admin socket is made here, before the control thread starts (and while the
    // process still has the privileges to make it under /run).
    if let Some(spec) = &app.ctl {
        match admin::Admin::bind(spec, proxy_app::sockpath::ProxyUser { runs_as: admin_runs_as }) {
            Ok(a) => control.set_admin(a),
            Err(e) if app.ctl_explicit => {
                eprintln!("{}dpdk-io-proxy: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
                control.close_ports();
                return ExitCode::FAILURE;
            }
            Err(e) => log_warn!("no admin socket: {e}"),
        }
    }
    // dpdk-telemetry.py commands and dpdk-dumpcap (see telemetry.rs).
    let telemetry = telemetry::register(&eal);
    let capture = if identity.is_none() {
        telemetry::Capture::init(&eal, plane.clone())
    } else {
        // A secondary process (dpdk-dumpcap) is answered through its socket file in root's
        // private runtime directory (/var/run/dpdk, 0700), which the proxy's user cannot
        // reach: rather than half a capture (callbacks enabled, the answer lost), none.
        telemetry::Capture::off("dpdk-dumpcap cannot attach to a proxy that dropped root (start it with --user root to capture)")
    };
    // Start-up is over: from here on the proxy needs no more than it keeps here
    // (docs/threat-model.md, "Least privilege"). The control thread, started next,
    // inherits the result.
    if let Err(e) = confine(identity.as_ref(), app.seccomp) {
        eprintln!("{}dpdk-io-proxy: cannot drop privileges: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
        control.close_ports();
        return ExitCode::FAILURE;
    }
    let main_lcore = eal.main_lcore();
    let control_thread = std::thread::Builder::new().name("io-proxy-ctl".into()).spawn(move || {
        // "ready" is said from here: the control thread exists, with its name, and reads
        // commands from now on (tests and scripts wait for this line).
        log_info!("ready; data path on lcore {main_lcore}; type 'help' for commands");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| control.run()));
        if result.is_err() {
            eprintln!("{}dpdk-io-proxy: the control thread panicked; stopping", proxy_app::journal_level(proxy_app::LOG_ERR));
        }
        (control, result.is_ok())
    });
    let control_thread = match control_thread {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}dpdk-io-proxy: cannot start the control thread: {e}", proxy_app::journal_level(proxy_app::LOG_ERR));
            return ExitCode::FAILURE;
        }
    };
    // The data loop runs here until the control thread asks it to stop.
    let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match probe.as_mut() {
        // The probe writes its frames into the guest's buffers, as a NIC's DMA would:
        // the proxy hands them over without a copy.
        Some((nic, p)) => plane.run_with(|view| {
            p.poll_filling(view.rx_pool(nic.0, 0));
        }),
        None => plane.run(),
    }));
    if looped.is_err() {
        plane.request_stop();
        eprintln!("{}dpdk-io-proxy: the data loop panicked; stopping", proxy_app::journal_level(proxy_app::LOG_ERR));
    }
    let ok = match control_thread.join() {
        Ok((mut control, ok)) => {
            control.close_ports();
            ok
        }
        Err(_) => false,
    };
    if let Some((_, p)) = probe.take() {
        if !p.done() {
            // Stopped before the window ended: what there is (complete=0).
            println!("{}", p.report());
        }
    }
    // What holds EAL goes first (the ports, pools and regions went with `control`):
    // the last handle cleans EAL up.
    drop(capture);
    drop(telemetry);
    drop(eal);
    if ok && looped.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Why the proxy refuses IOVA as physical addresses (docs/threat-model.md).
const IOVA_PA_REFUSAL: &str = "the proxy refuses it: guest regions are memfd pages the proxy does \
     not pin, so a physical address computed once may belong to someone else by the time the NIC \
     uses it. Use --iova-mode=va (the default the proxy expects; with a physical NIC, vfio-pci with \
     an IOMMU)";

/// An explicit `--iova-mode pa` among the EAL options is refused before EAL starts.
fn refuse_iova_pa_option(eal_args: &[String]) -> Result<(), String> {
    let mut it = eal_args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--iova-mode") {
            Some("") => it.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if value.is_some_and(|v| v.eq_ignore_ascii_case("pa")) {
            return Err(format!("--iova-mode=pa: {IOVA_PA_REFUSAL}"));
        }
    }
    Ok(())
}

/// Whom the proxy becomes after start-up: None to stay who it is (`--user root`, or
/// not started as root: then there is nothing to drop and it says so).
fn identity_for(user: &str, socket_group: Option<u32>) -> Result<Option<sandbox::Identity>, String> {
    if user == "root" || user == "0" {
        log_warn!("--user root: the proxy keeps running as root with every capability");
        return Ok(None);
    }
    let euid = os::effective_uid();
    if euid != 0 {
        log_warn!("not started as root: stays uid {euid}, with no privilege change (--user {user} needs root)");
        return Ok(None);
    }
    let Some((uid, gid)) = sandbox::identity_of(user) else {
        return Err(format!(
            "no user '{user}': create it (scripts/setup.sh does: useradd --system --no-create-home \
             --user-group --shell /usr/sbin/nologin {user}), or name another with --user \
             (--user root keeps root; not recommended)"
        ));
    };
    if uid == 0 {
        return Ok(None);
    }
    let mut groups = vec![gid];
    groups.extend(socket_group.filter(|g| *g != gid));
    Ok(Some(sandbox::Identity { name: user.to_string(), uid, gid, groups }))
}

/// Drops to `who` (if any) with the capabilities the proxy still needs, then puts every
/// thread under the system call allowlist.
fn confine(who: Option<&sandbox::Identity>, seccomp: sandbox::SeccompMode) -> Result<(), String> {
    let ports: Vec<String> = dpdk::Port::all().iter().map(|p| p.name()).collect();
    let keep = sandbox::needed_capabilities(&ports);
    if let Some(who) = who {
        sandbox::drop_privileges(who, &keep)?;
        let kept: Vec<&str> = keep.iter().map(|c| c.name()).collect();
        log_info!(
            "running as user {} (uid {}, gid {}, groups {:?}); capabilities kept: {}",
            who.name,
            who.uid,
            who.gid,
            who.groups,
            if kept.is_empty() { "none".to_string() } else { kept.join(", ") }
        );
    }
    sandbox::install_filter(seccomp)?;
    log_info!("seccomp: {seccomp:?}, {} system calls allowed", sandbox::ALLOWED.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn app_args() {
        let a = parse_app_args(&["--cmds".into(), "f".into(), "--no-hugepages".into(), "--mtu".into(), "9000".into()]).unwrap();
        assert_eq!(a.cmds.as_deref(), Some("f"));
        assert!(!a.opts.try_hugepages);
        assert_eq!(a.opts.mtu, Some(9000));
        assert!(parse_app_args(&["--bogus".into()]).unwrap_err().contains("unknown option"));
        assert!(parse_app_args(&["--cmds".into()]).unwrap_err().contains("needs a value"));
        let a = parse_app_args(&["--socket-mode".into(), "0600".into(), "--allow-uid".into(), "0,12".into(), "--socket-group".into(), "0".into()]).unwrap();
        assert_eq!((a.opts.access.mode, a.opts.access.dir_mode(0), a.opts.access.group), (0o600, 0o700, Some(0)));
        assert_eq!(a.opts.access.allow_uids, vec![0, 12]);
        assert!(parse_app_args(&["--socket-mode".into(), "rw".into()]).unwrap_err().starts_with("--socket-mode: mode must be octal"));
        assert_eq!(parse_app_args(&["--allow-uid".into(), "nobody-here-x".into()]).unwrap_err(), "--allow-uid: no user 'nobody-here-x'");
        let a = parse_app_args(&[]).unwrap();
        assert_eq!((a.user.as_str(), a.seccomp), (DEFAULT_USER, sandbox::SeccompMode::Kill));
        let a = parse_app_args(&["--user".into(), "nobody".into(), "--seccomp".into(), "log".into()]).unwrap();
        assert_eq!((a.user.as_str(), a.seccomp), ("nobody", sandbox::SeccompMode::Log));
        assert!(parse_app_args(&["--seccomp".into(), "x".into()]).unwrap_err().starts_with("--seccomp: 'x'"));
    }

    #[test]
    fn iova_pa_is_refused_in_every_spelling() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(refuse_iova_pa_option(&args(&["p", "--iova-mode=pa"])).unwrap_err().starts_with("--iova-mode=pa: the proxy refuses it"));
        assert!(refuse_iova_pa_option(&args(&["p", "--iova-mode", "PA"])).is_err());
        assert!(refuse_iova_pa_option(&args(&["p", "--iova-mode=va", "-l", "0"])).is_ok());
        assert!(refuse_iova_pa_option(&args(&["p", "--iova-mode"])).is_ok());
    }

    #[test]
    fn a_missing_user_is_refused_with_how_to_make_it() {
        let e = identity_for("no-such-user-here", None).unwrap_err();
        assert!(e.starts_with("no user 'no-such-user-here': create it"), "{e}");
        assert_eq!(identity_for("root", None), Ok(None));
    }
}
