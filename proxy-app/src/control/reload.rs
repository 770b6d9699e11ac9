//! `SIGHUP` (`systemctl reload`): the configuration file (`--cmds`) is read again and
//! only the difference is applied. Sockets whose line is unchanged (path, port, queues,
//! access) are not touched, so their guests keep forwarding; sockets no longer named
//! say goodbye to their guest and go; new ones are served. A file that does not parse
//! or names something impossible is refused as a whole, with its line, and the running
//! configuration stays.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Control;
use crate::access::Access;
use crate::cmds::{self, Command, SocketAccess};
use crate::{log_info, log_warn};
use dpdk::Port;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Set by SIGHUP; the control loop reloads when it sees it.
pub static RELOAD_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_reload_signal(_sig: c_int) {
    // Async-signal-safe: one atomic store.
    RELOAD_SIGNAL.store(true, Ordering::Relaxed);
}

/// Makes SIGHUP request a reload (instead of ending the process).
pub fn reload_on_sighup() {
    // SAFETY: installs a handler that only stores to a static atomic.
    unsafe { libc::signal(libc::SIGHUP, on_reload_signal as *const () as libc::sighandler_t) };
}

/// One `socket` line of the file.
struct Wanted {
    line: usize,
    path: PathBuf,
    port: u16,
    queues: Vec<u16>,
    overrides: SocketAccess,
    access: Access,
}

impl Control {
    /// Re-reads `file` and applies the difference; logs what changed or why nothing did.
    pub(super) fn reload(&mut self, file: &Path) {
        match self.try_reload(file) {
            Ok((added, removed, kept)) => {
                log_info!("reloaded {}: {added} socket(s) added, {removed} removed, {kept} unchanged", file.display())
            }
            Err(e) => log_warn!("reload refused, the running configuration stays: {e}"),
        }
    }

    fn try_reload(&mut self, file: &Path) -> Result<(usize, usize, usize), String> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let mut wanted = Vec::new();
        for (line, cmd) in cmds::parse_file(&text, &name)? {
            let at = |e: String| format!("{name}:{line}: {e}");
            match cmd {
                Command::Socket { path, port, queues, access: overrides } => {
                    let access = self.opts.access.with(&overrides).map_err(at)?;
                    wanted.push(Wanted { line, path, port, queues, overrides, access });
                }
                Command::Quit => return Err(at("'quit' has no place in a configuration file".into())),
                // Show and help lines change nothing.
                _ => {}
            }
        }
        // Ports: a known port has the queues it was started with; a new one gets what
        // the file names for it.
        let mut new_ports: BTreeMap<u16, u16> = BTreeMap::new();
        for w in &wanted {
            let at = |e: String| format!("{name}:{}: {e}", w.line);
            let highest = w.queues.iter().copied().max().unwrap_or(0);
            match self.ports.get(&w.port) {
                Some(nic) if highest >= nic.queues => {
                    return Err(at(format!(
                        "port {} was configured with {} queue(s) at startup; queue {} needs a restart",
                        w.port, nic.queues, highest
                    )))
                }
                Some(_) => {}
                None if !Port(w.port).is_valid() => return Err(at(format!("port {} does not exist", w.port))),
                None => {
                    let q = new_ports.entry(w.port).or_insert(0);
                    *q = (*q).max(highest.saturating_add(1));
                }
            }
        }
        let unchanged = |ep: &super::Endpoint| {
            wanted.iter().any(|w| w.path == ep.path && w.port == ep.port && w.queues == ep.queues && w.access == ep.access)
        };
        let gone: Vec<usize> = (0..self.endpoints.len()).filter(|&i| !unchanged(&self.endpoints[i])).collect();
        let kept = self.endpoints.len() - gone.len();
        let fresh: Vec<&Wanted> = wanted.iter().filter(|w| !self.endpoints.iter().any(|ep| ep.path == w.path && unchanged(ep))).collect();
        // Sockets that reuse a path or queue of a socket that goes must wait for it;
        // the others are made first, so that a failure among them changes nothing.
        let (early, late): (Vec<&Wanted>, Vec<&Wanted>) = fresh.iter().partition(|w| {
            !gone.iter().any(|&i| {
                let ep = &self.endpoints[i];
                ep.path == w.path || (ep.port == w.port && ep.queues.iter().any(|q| w.queues.contains(q)))
            })
        });
        for (&port, &queues) in &new_ports {
            self.setup_port(port, queues).map_err(|e| format!("{name}: port {port}: {e}"))?;
        }
        let mut made = Vec::new();
        for w in &early {
            if let Err(e) = self.add_socket(&w.path, w.port, &w.queues, &w.overrides) {
                for path in made {
                    if let Some(i) = self.endpoints.iter().position(|ep| ep.path == path) {
                        let ep = self.endpoints.remove(i);
                        ep.file.remove();
                    }
                }
                return Err(format!("{name}:{}: {e}", w.line));
            }
            made.push(w.path.clone());
        }
        for &i in gone.iter().rev() {
            self.disconnect(i, "the socket was removed (reload)", true);
            let ep = self.endpoints.remove(i);
            log_info!("no longer serving {} (reload)", ep.path.display());
            ep.file.remove();
        }
        let mut failed = None;
        for w in &late {
            if let Err(e) = self.add_socket(&w.path, w.port, &w.queues, &w.overrides) {
                // Only a filesystem failure gets here (everything else was checked).
                log_warn!("reload: {name}:{}: {e}", w.line);
                failed.get_or_insert(w.line);
            }
        }
        self.publish();
        match failed {
            None => Ok((fresh.len(), gone.len(), kept)),
            Some(line) => Err(format!("{name}:{line}: applied in part (see above)")),
        }
    }
}
