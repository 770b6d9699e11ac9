//! The async receive API (cargo feature `tokio`): [`AsyncGuest`].

use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::task::Poll;

use shm_contract::wake;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::hybrid::{now_ns, AdaptiveSpin, SpinPolicy};
use crate::{Buffer, Error, Guest};

/// A descriptor that the [`Guest`] next to it in [`AsyncGuest`] owns. `AsyncFd` wants
/// to own what it watches; the guest must keep its descriptors (it reads and writes
/// them itself), so the reactor gets the number only. Sound because `AsyncGuest`
/// drops its `AsyncFd`s (deregistering them) before the `Guest`, and the guest never
/// replaces either descriptor.
struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Withdraws the wake-up request when dropped: the waiting future may be cancelled
/// (`select!`, `timeout`) while armed, and an armed flag costs the proxy a system call
/// per rx burst until the next wait.
struct Armed(&'static AtomicU32);

impl Drop for Armed {
    fn drop(&mut self) {
        wake::disarm(self.0);
    }
}

/// What ended a wait.
enum Woken {
    Rx,
    Control,
}

/// A [`Guest`] whose receive calls sleep in the tokio reactor while the rx ring is
/// empty and wake when the proxy publishes: `recv().await` without a spinning thread.
///
/// The guest must have been connected with [`Config::rx_wakeup`](crate::Config::rx_wakeup).
/// The reactor watches two of its descriptors: the wake-up socket, and the control
/// socket, so that a proxy that says goodbye or dies ends a wait with
/// [`Error::Disconnected`] (link news is read on the way).
///
/// When the ring runs dry, `recv` and `recv_burst` wait the hybrid way: they poll the
/// ring for a short, adaptive time ([`AdaptiveSpin`], at most
/// [`DEFAULT_MAX_SPIN`](crate::DEFAULT_MAX_SPIN) at a time and
/// [`DEFAULT_MAX_SHARE_PERCENT`](crate::DEFAULT_MAX_SHARE_PERCENT) % of the time by
/// default, during which the runtime's thread runs nothing else), then sleep in the
/// reactor.
/// [`set_spin_policy`](Self::set_spin_policy)`(`[`SpinPolicy::SLEEP_AT_ONCE`]`)` makes
/// them sleep at once.
///
/// Everything else (sending, allocating, counters) is on the guest:
/// [`guest_mut`](Self::guest_mut). The waits are cancel-safe: a cancelled `recv` or
/// `recv_burst` has taken no packet, and it withdraws its wake-up request.
///
/// ```no_run
/// # async fn run() -> Result<(), shm_guest::Error> {
/// use shm_guest::{AsyncGuest, Config, Guest};
/// let config = Config { rx_wakeup: true, ..Config::default() };
/// let mut guest = AsyncGuest::new(Guest::connect("/run/dpdk-io-proxy/q0/sock", &config)?)?;
/// loop {
///     let pkt = guest.recv().await?;
///     println!("{} bytes", pkt.len());
/// }
/// # }
/// ```
pub struct AsyncGuest {
    // Declared before `guest`: deregistered before its descriptors close.
    wake: AsyncFd<Watched>,
    control: AsyncFd<Watched>,
    guest: Guest,
    spin: AdaptiveSpin,
}

impl std::fmt::Debug for AsyncGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncGuest").field("guest", &self.guest).finish()
    }
}

impl AsyncGuest {
    /// Registers the guest's wake-up and control sockets with the current tokio
    /// runtime's reactor.
    ///
    /// Errors: [`Error::Config`] when the guest was connected without
    /// [`Config::rx_wakeup`](crate::Config::rx_wakeup) (the guest comes back in
    /// nothing: it is dropped, which says goodbye to the proxy); [`Error::Io`] when the
    /// reactor refuses the descriptors.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or in one built without I/O (`enable_io`), as
    /// tokio's `AsyncFd::new` does.
    pub fn new(guest: Guest) -> Result<AsyncGuest, Error> {
        let listen = guest.wake_listener()?.fd().as_raw_fd();
        let control = guest.control_fd().as_raw_fd();
        // SAFETY: both descriptors are open and owned by `guest`, which never closes or
        // replaces them while it lives; the `AsyncFd`s are dropped before it (field
        // order; `into_inner` drops them first), so each stays the same open file for
        // the whole registration.
        let wake = unsafe { AsyncFd::register_with_interest(Watched(listen), Interest::READABLE) }
            .map_err(|e| Error::Io(e.into()))?;
        // SAFETY: as above.
        let control = unsafe { AsyncFd::register_with_interest(Watched(control), Interest::READABLE) }
            .map_err(|e| Error::Io(e.into()))?;
        Ok(AsyncGuest { wake, control, guest, spin: AdaptiveSpin::default() })
    }

    /// The guest: send, allocate, read counters, stop and start.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// See [`guest`](Self::guest).
    pub fn guest_mut(&mut self) -> &mut Guest {
        &mut self.guest
    }

    /// How long the receive calls may poll before they sleep (the default:
    /// [`SpinPolicy::default`]). Starts the adaptation afresh.
    pub fn set_spin_policy(&mut self, policy: SpinPolicy) {
        self.spin = AdaptiveSpin::new(policy);
    }

    /// The hybrid wait's state: its budget and how its waits ended.
    pub fn spin(&self) -> &AdaptiveSpin {
        &self.spin
    }

    /// The guest back, out of the reactor.
    pub fn into_inner(self) -> Guest {
        let AsyncGuest { wake, control, guest, spin: _ } = self;
        // Deregister before the descriptors can close with the guest.
        drop(wake);
        drop(control);
        guest
    }

    /// Waits until the rx ring has descriptors (returns at once if it has some).
    ///
    /// Errors: [`Error::Disconnected`] when the proxy goes away or says goodbye,
    /// [`Error::NotRunning`] when the queue is stopped and the ring empty,
    /// [`Error::RingCorrupt`], [`Error::Io`] from the reactor.
    pub async fn wait_rx(&mut self) -> Result<(), Error> {
        loop {
            if self.guest.arm_rx_wakeup()? {
                return Ok(());
            }
            let armed = Armed(self.guest.rx_wakeup_flag());
            self.guest.stats.rx_sleeps += 1;
            let (wake, control) = (&self.wake, &self.control);
            let woken = poll_fn(|cx| {
                // Readiness is cleared before the sockets are read (below), so a
                // datagram that arrives in between makes them ready again: at worst
                // one spurious turn, never a missed wake-up.
                match wake.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        return Poll::Ready(Ok(Woken::Rx));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                match control.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        Poll::Ready(Ok(Woken::Control))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            // Drains the socket and withdraws the request (which `armed` would do too).
            self.guest.disarm_rx_wakeup();
            drop(armed);
            match woken {
                Ok(Woken::Rx) => {}
                // Link news is read; a goodbye or a hang-up is an error.
                Ok(Woken::Control) => self.guest.poll_control()?,
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Receives one packet, waiting for one if the ring is empty.
    pub async fn recv(&mut self) -> Result<Buffer, Error> {
        loop {
            if let Some(b) = self.guest.recv()? {
                return Ok(b);
            }
            self.wait_for_more().await?;
        }
    }

    /// Receives up to `max` packets (at most [`MAX_BURST`](crate::MAX_BURST)),
    /// appended to `out`, waiting until there is at least one; returns how many
    /// (0 only for `max == 0`).
    pub async fn recv_burst(&mut self, out: &mut Vec<Buffer>, max: usize) -> Result<usize, Error> {
        if max == 0 {
            return Ok(0);
        }
        loop {
            let n = self.guest.recv_burst(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            self.wait_for_more().await?;
        }
    }

    /// Waits until the ring has descriptors: polls it for the adaptive budget, then
    /// sleeps. When it had some and yet nothing could be received (only invalid ones,
    /// now dropped, or the first half of a packet the proxy is still publishing), gives
    /// the runtime a turn first: never a tight loop that starves the other tasks of a
    /// current-thread runtime.
    async fn wait_for_more(&mut self) -> Result<(), Error> {
        if self.guest.rx_ready()? {
            yield_now().await;
            return Ok(());
        }
        let budget = self.spin.begin(now_ns());
        if self.guest.spin_rx(budget)? {
            self.spin.caught(now_ns());
            return Ok(());
        }
        self.spin.sleeping(now_ns());
        // Cancelled while asleep: the next `begin` settles the sleep.
        self.wait_rx().await?;
        self.spin.woken(now_ns());
        Ok(())
    }
}

/// Pending once, with its waker woken: the task goes to the back of the run queue.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

impl From<AsyncGuest> for Guest {
    fn from(a: AsyncGuest) -> Guest {
        a.into_inner()
    }
}
