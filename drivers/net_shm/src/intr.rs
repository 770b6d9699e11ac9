//! Rx interrupts (`rte_eth_dev_rx_intr_enable`, `rte_eth_dev_rx_intr_ctl_q`): the
//! application sleeps in `rte_epoll_wait` while the rx ring is empty and the proxy
//! wakes it (protocol: `shm_contract::wake`).
//!
//! The port owns one wake-up listener per rx queue its socket offers, for its whole
//! life: each listener's descriptor (an epoll descriptor) is that queue's event fd in
//! the ethdev's interrupt handle (vector k is queue k), so an application's epoll
//! registrations survive a port restart, a reconfiguration and a reattachment to a new
//! proxy. Behind listener k sits the wake-up end the proxy handed over with the latest
//! `QueueStarted` of pair k (checked to be a unix datagram socket), replaced at every
//! queue start. The handle has type `EXT`: EAL does not read the fds on an event; we
//! drain them ourselves when the application arms the queue again.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use dpdk_sys as sys;
use shm_contract::wake::WakeListener;
use shm_driver_common::bus::lock;

/// The interrupt handle of one port and the wake-up listeners behind its rx events.
pub struct RxInterrupt {
    // INVARIANT: a live handle from rte_intr_instance_alloc, freed only in Drop, whose
    // event fd k is `listeners[k]`'s descriptor (which never changes).
    handle: *mut sys::rte_intr_handle,
    listeners: Vec<Mutex<WakeListener>>,
}

// SAFETY: the handle is DPDK's heap object, used under the port's lock or by ethdev
// calls the application serialises; the listeners are behind mutexes.
unsafe impl Send for RxInterrupt {}
// SAFETY: as above.
unsafe impl Sync for RxInterrupt {}

impl RxInterrupt {
    /// A handle with `queues` rx vectors (queue k: vector k), each on a fresh wake-up
    /// listener.
    pub fn new(queues: u16) -> Result<RxInterrupt, String> {
        let queues = queues.clamp(1, sys::RTE_MAX_RXTX_INTR_VEC_ID as u16);
        let listeners = (0..queues)
            .map(|_| WakeListener::new().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("wake-up listener: {e}"))?;
        // SAFETY: a plain allocation; checked for null.
        let handle = unsafe { sys::rte_intr_instance_alloc(sys::RTE_INTR_INSTANCE_F_PRIVATE) };
        if handle.is_null() {
            return Err("rte_intr_instance_alloc failed".into());
        }
        let intr = RxInterrupt { handle, listeners };
        let first = lock(&intr.listeners[0]).fd().as_raw_fd();
        // SAFETY: `handle` is live; each setter only stores into it (indices below the
        // counts set first; the vector list is allocated with one entry per queue).
        let failed = unsafe {
            sys::rte_intr_type_set(handle, sys::RTE_INTR_HANDLE_EXT) != 0
                || sys::rte_intr_fd_set(handle, first) != 0
                || sys::rte_intr_nb_efd_set(handle, queues as i32) != 0
                || sys::rte_intr_max_intr_set(handle, queues as i32 + 1) != 0
                || sys::rte_intr_vec_list_alloc(handle, c"net_shm_intr_vec".as_ptr(), queues as i32) != 0
                || intr.listeners.iter().enumerate().any(|(k, l)| {
                    sys::rte_intr_efds_index_set(handle, k as i32, lock(l).fd().as_raw_fd()) != 0
                        || sys::rte_intr_vec_list_index_set(handle, k as i32, sys::RTE_INTR_VEC_RXTX_OFFSET as i32 + k as i32) != 0
                })
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

    /// Puts the wake-up end that came with a pair's `QueueStarted` behind rx queue
    /// `queue`'s event fd (it must be a unix datagram socket; anything else is refused and
    /// closed).
    /// With `also`, it is added to what the fd watches (a pair folded into the queue).
    pub fn attach(&self, queue: u16, end: OwnedFd, also: bool) -> Result<(), String> {
        let listener = self.listeners.get(queue as usize).ok_or_else(|| format!("no rx interrupt vector for queue {queue}"))?;
        if also {
            lock(listener).attach_also(end)
        } else {
            lock(listener).attach(end)
        }
    }

    /// Reads the wake-ups that already woke (or would wake) the application on `queue`;
    /// `None`: the port has no vector for it.
    pub fn drain(&self, queue: u16) -> Option<usize> {
        self.listeners.get(queue as usize).map(|l| lock(l).drain())
    }

    /// Makes `queue`'s event fd readable now (its ring had packets when the application
    /// armed it).
    pub fn wake_self(&self, queue: u16) -> bool {
        self.listeners.get(queue as usize).is_some_and(|l| lock(l).wake_self())
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
