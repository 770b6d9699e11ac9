//! Rx interrupts (`rte_eth_dev_rx_intr_enable`, `rte_eth_dev_rx_intr_ctl_q`): the
//! application sleeps in `rte_epoll_wait` while the rx ring is empty and the proxy
//! wakes it (protocol: `shm_contract::wake`).
//!
//! The port owns a wake-up listener for its whole life: its descriptor (an epoll
//! descriptor) is the queue's event fd in the ethdev's interrupt handle, so an
//! application's epoll registration survives a port restart and a reattachment to a new
//! proxy. Behind it sits the wake-up end the proxy handed over with the latest
//! `QueueStarted` (checked to be a unix datagram socket), replaced at every queue start.
//! The handle has type `EXT`: EAL does not read the fd on an event; we drain it
//! ourselves when the application arms the queue again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use dpdk_sys as sys;
use shm_contract::wake::WakeListener;
use shm_driver_common::bus::lock;

/// The interrupt handle of one port and the wake-up listener behind its rx event.
pub struct RxInterrupt {
    // INVARIANT: a live handle from rte_intr_instance_alloc, freed only in Drop, whose
    // event fd 0 is `listener`'s descriptor (which never changes).
    handle: *mut sys::rte_intr_handle,
    listener: Mutex<WakeListener>,
}

// SAFETY: the handle is DPDK's heap object, used under the port's lock or by ethdev
// calls the application serialises; the listener is behind a mutex.
unsafe impl Send for RxInterrupt {}
// SAFETY: as above.
unsafe impl Sync for RxInterrupt {}

impl RxInterrupt {
    /// A handle with one rx vector (queue 0) on a fresh wake-up listener.
    pub fn new() -> Result<RxInterrupt, String> {
        let listener = WakeListener::new().map_err(|e| format!("wake-up listener: {e}"))?;
        let listen = listener.fd().as_raw_fd();
        // SAFETY: a plain allocation; checked for null.
        let handle = unsafe { sys::rte_intr_instance_alloc(sys::RTE_INTR_INSTANCE_F_PRIVATE) };
        if handle.is_null() {
            return Err("rte_intr_instance_alloc failed".into());
        }
        let intr = RxInterrupt { handle, listener: Mutex::new(listener) };
        // SAFETY: `handle` is live; each setter only stores into it.
        let failed = unsafe {
            sys::rte_intr_type_set(handle, sys::RTE_INTR_HANDLE_EXT) != 0
                || sys::rte_intr_fd_set(handle, listen) != 0
                || sys::rte_intr_efds_index_set(handle, 0, listen) != 0
                || sys::rte_intr_nb_efd_set(handle, 1) != 0
                || sys::rte_intr_max_intr_set(handle, 2) != 0
                || sys::rte_intr_vec_list_alloc(handle, c"net_shm_intr_vec".as_ptr(), 1) != 0
                || sys::rte_intr_vec_list_index_set(handle, 0, sys::RTE_INTR_VEC_RXTX_OFFSET as i32) != 0
        };
        if failed {
            return Err("cannot set up the rx interrupt handle".into());
        }
        Ok(intr)
    }

    /// What goes into `rte_eth_dev::intr_handle`.
    pub fn handle(&self) -> *mut sys::rte_intr_handle {
        self.handle
    }

    /// Puts the wake-up end that came with `QueueStarted` behind the event fd (it must
    /// be a unix datagram socket; anything else is refused and closed).
    pub fn attach(&self, end: OwnedFd) -> Result<(), String> {
        lock(&self.listener).attach(end)
    }

    /// Reads the wake-ups that already woke (or would wake) the application.
    pub fn drain(&self) -> usize {
        lock(&self.listener).drain()
    }

    /// Makes the event fd readable now (the ring had packets when the application armed it).
    pub fn wake_self(&self) -> bool {
        lock(&self.listener).wake_self()
    }
}

impl Drop for RxInterrupt {
    fn drop(&mut self) {
        // SAFETY: the handle is live (INVARIANT) and no longer published in the ethdev
        // (the port clears `intr_handle` before dropping us).
        unsafe {
            sys::rte_intr_vec_list_free(self.handle);
            sys::rte_intr_instance_free(self.handle);
        }
    }
}
