//! Packet capture by `dpdk-dumpcap`/`dpdk-pdump` ([`Pdump`]).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{sys, Eal, Error};

/// Set while a [`Pdump`] lives: pdump's state is per process.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Packet capture by secondary processes (`dpdk-dumpcap`, `dpdk-pdump`) that attach to
/// this one, enabled by `rte_pdump_init` while this value lives; dropping it calls
/// `rte_pdump_uninit`. Needs EAL's multi-process channel (not with `--in-memory` or
/// `--no-shconf`). It holds EAL alive.
#[derive(Debug)]
pub struct Pdump {
    _eal: Eal,
}

impl Pdump {
    /// Enables packet capture. At most one `Pdump` exists at a time: a second is refused
    /// with `EALREADY`.
    pub fn init(eal: &Eal) -> Result<Pdump, Error> {
        if ACTIVE.swap(true, Ordering::AcqRel) {
            return Err(Error::new("rte_pdump_init", libc::EALREADY));
        }
        // SAFETY: EAL is initialised (held by `eal`); registers pdump's multi-process
        // action, undone on drop.
        if unsafe { sys::rte_pdump_init() } != 0 {
            let e = Error::from_rte_errno("rte_pdump_init");
            ACTIVE.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(Pdump { _eal: eal.clone() })
    }
}

impl Drop for Pdump {
    fn drop(&mut self) {
        // SAFETY: undoes the `rte_pdump_init` of `init`, while EAL is still alive.
        unsafe { sys::rte_pdump_uninit() };
        ACTIVE.store(false, Ordering::Release);
    }
}
