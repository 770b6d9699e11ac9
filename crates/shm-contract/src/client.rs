//! The guest's side of the contract, written once for both kinds of guest: the DPDK
//! plugins (`drivers/common`'s session, `net_shm`, `mempool_shm`) and the Rust guest
//! (`shm-guest`). Each is a thin layer over what is here:
//!
//! * [`attach`]: connect (the server checked with `SO_PEERCRED` first), handshake,
//!   and the [`Welcome`], which both kinds of guest keep as it is;
//! * [`map_region`]: the region memfd checked (sealed, its size), mapped, allocated (the
//!   guest's memory, on the guest's CPU), its header
//!   validated against the `Welcome` (page size too); [`check_reattached`] for a region
//!   handed back to a new proxy;
//! * [`transact`] and [`read_unsolicited`]: the request/answer exchange, with the
//!   messages the proxy sends on its own ([`Unsolicited`]) handled on the way;
//! * [`PoolFootprint`]: where a pool's free ring and objects go in the heap;
//! * the walk over one received packet's descriptor chain is the contract's
//!   [`DescChain`](crate::desc::DescChain), the one the proxy's tx validation walks with.
//!
//! Nothing here knows DPDK; the layers above bring their logging, their threads and
//! their data structures.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::layout::RegionLayout;
use crate::mem::{allocate_region, check_region_fd, Mapping, SharedMem};
use crate::mpmc::FreeRing;
use crate::proto::transport::{
    connect_to_proxy, handshake, recv_message, send_message, ConnectError, HandshakeError, TransportError,
};
use crate::proto::{Hello, Message, RefuseCode, Welcome};

/// Why talking to the proxy failed.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached.
    Connect(io::Error),
    /// Something serves the socket as a user we do not trust: nothing was sent to it.
    UntrustedServer(ConnectError),
    /// The proxy refused a request (or the connection).
    Refused {
        /// Its code.
        code: RefuseCode,
        /// Its reason.
        reason: String,
    },
    /// The control socket failed.
    Transport(TransportError),
    /// The proxy answered something unexpected.
    Protocol(String),
    /// The region the proxy sent is unusable.
    Region(String),
    /// The proxy closed the connection.
    Closed,
    /// The connection ended for the reason given (a goodbye, a `Refuse` on its own).
    Ended(String),
    /// The proxy did not answer in time.
    Timeout,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) if e.kind() == io::ErrorKind::NotFound => {
                write!(f, "cannot connect: no socket at this path (is dpdk-io-proxy running and serving it?)")
            }
            ClientError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                write!(f, "cannot connect: connection refused (the socket exists but no proxy listens on it)")
            }
            ClientError::Connect(e) => write!(f, "cannot connect: {e}"),
            ClientError::UntrustedServer(e) => write!(f, "{e}"),
            ClientError::Refused { code, reason } => write!(f, "the proxy refused us ({code:?}): {reason}"),
            ClientError::Transport(e) => write!(f, "control channel: {e}"),
            ClientError::Protocol(what) => write!(f, "protocol error: {what}"),
            ClientError::Region(what) => write!(f, "shared region unusable: {what}"),
            ClientError::Closed => write!(f, "the proxy closed the connection"),
            ClientError::Ended(why) => write!(f, "{why}"),
            ClientError::Timeout => write!(f, "the proxy did not answer in time"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Io(e) => ClientError::Connect(e),
            untrusted => ClientError::UntrustedServer(untrusted),
        }
    }
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Refused { code, reason } => ClientError::Refused { code, reason },
            HandshakeError::Transport(t) => t.into(),
            HandshakeError::Unexpected(kind) => ClientError::Protocol(format!("expected Welcome, got {kind}")),
        }
    }
}

impl From<TransportError> for ClientError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Closed => ClientError::Closed,
            TransportError::Timeout => ClientError::Timeout,
            other => ClientError::Transport(other),
        }
    }
}

/// A connection that has been welcomed: the socket, the `Welcome` and the descriptors
/// that came with it (the region memfd on a first attach).
pub struct Attached {
    /// The control socket.
    pub socket: OwnedFd,
    /// The proxy's answer: what it says about the NIC queue and the region (both kinds
    /// of guest keep it as it is).
    pub welcome: Welcome,
    /// Descriptors that came with the `Welcome`.
    pub fds: Vec<OwnedFd>,
}

/// Connects to the proxy's socket at `path` (its server verified with `SO_PEERCRED`
/// before a word is sent: see `connect_to_proxy`) and handshakes with `hello`, handing
/// over `fds` (a region being given back).
pub fn attach(
    path: &Path,
    proxy_uid: Option<u32>,
    hello: &Hello,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<Attached, ClientError> {
    let socket = connect_to_proxy(path, proxy_uid)?;
    let (welcome, fds) = handshake(socket.as_fd(), hello, fds, timeout)?;
    Ok(Attached { socket, welcome, fds })
}

/// A region, mapped and its header validated.
pub struct MappedRegion {
    /// The mapping of the whole memfd.
    pub mapping: Mapping,
    /// The memfd (kept by a guest that may hand the region to a new proxy).
    pub memfd: OwnedFd,
    /// The header's layout.
    pub layout: RegionLayout,
}

/// Maps the region that came with `welcome` (exactly one descriptor): the memfd must be
/// sealed against shrinking and as large as announced (a truncated file would make our
/// accesses fault), the header valid and its page size the `Welcome`'s.
///
/// The region's memory is the guest's to allocate: the proxy sends it with only its
/// header and rings allocated, and refuses pools over pages that are not. So every page
/// is allocated here, once it is mapped ([`allocate_region`]): zeroed on this process's
/// CPU and charged to its memory cgroup (a container's memory limit counts its region).
/// If the memory is not there, this fails with an error that says so.
pub fn map_region(welcome: &Welcome, mut fds: Vec<OwnedFd>) -> Result<MappedRegion, ClientError> {
    if fds.len() != 1 {
        return Err(ClientError::Protocol(format!("Welcome carried {} file descriptors, expected 1", fds.len())));
    }
    let memfd = fds.remove(0);
    check_region_fd(memfd.as_fd(), welcome.region_size).map_err(|e| ClientError::Region(e.to_string()))?;
    let len = usize::try_from(welcome.region_size).map_err(|_| ClientError::Region("too large for this machine".into()))?;
    let mapping = Mapping::map(memfd.as_fd(), len).map_err(|e| ClientError::Region(format!("mmap: {e}")))?;
    allocate_region(memfd.as_fd(), welcome.region_size).map_err(|e| {
        ClientError::Region(format!(
            "cannot allocate the {} MiB region ({e}): this process's memory limit (its container's) or the \
             machine's shared memory does not hold it; ask for a smaller region or raise the limit",
            welcome.region_size >> 20
        ))
    })?;
    let layout = read_layout(&mapping.mem(), welcome)?;
    Ok(MappedRegion { mapping, memfd, layout })
}

/// The region header's layout, checked against the `Welcome`'s page size.
fn read_layout(mem: &SharedMem<'_>, welcome: &Welcome) -> Result<RegionLayout, ClientError> {
    let layout = RegionLayout::read_header(mem).map_err(|e| ClientError::Region(e.to_string()))?;
    if layout.page_size() != welcome.page_size {
        return Err(ClientError::Region(format!(
            "the header says {}-byte pages, the Welcome {}",
            layout.page_size(),
            welcome.page_size
        )));
    }
    Ok(layout)
}

/// After handing our region to a new proxy: it must have taken it whole and written a
/// header that describes the layout our queues and pools already use.
pub fn check_reattached(mem: &SharedMem<'_>, welcome: &Welcome, layout: &RegionLayout) -> Result<(), ClientError> {
    if welcome.region_size != mem.len() as u64 {
        return Err(ClientError::Region(format!(
            "the proxy took our region as {} bytes, it is {}",
            welcome.region_size,
            mem.len()
        )));
    }
    if read_layout(mem, welcome)? != *layout {
        return Err(ClientError::Region("the proxy laid the region out differently than before".into()));
    }
    Ok(())
}

/// A message the proxy sends on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsolicited {
    /// The port's link changed.
    Link {
        /// Up or down.
        up: bool,
        /// Speed, Mbit/s.
        speed_mbps: u32,
    },
    /// The proxy ends the connection.
    Goodbye,
    /// The proxy ends the connection, and why.
    Refused {
        /// Its code.
        code: RefuseCode,
        /// Its reason.
        reason: String,
    },
}

impl Unsolicited {
    /// `msg` as a message the proxy sends on its own, if it is one (a `Refuse` is one
    /// unless it answers the request `waiting_for`).
    fn of(msg: &Message, id: u32, waiting_for: Option<u32>) -> Option<Unsolicited> {
        match msg {
            Message::LinkStatus { up, speed_mbps } => Some(Unsolicited::Link { up: *up, speed_mbps: *speed_mbps }),
            Message::Goodbye => Some(Unsolicited::Goodbye),
            Message::Refuse { code, reason } if waiting_for != Some(id) => {
                Some(Unsolicited::Refused { code: *code, reason: reason.clone() })
            }
            _ => None,
        }
    }

    /// Whether it ends the connection.
    pub fn ends_connection(&self) -> bool {
        !matches!(self, Unsolicited::Link { .. })
    }
}

/// Request ids of one connection: 1 is the `Hello`, requests count from 2 and wrap
/// back to 2 (0 marks messages the proxy sends on its own).
#[derive(Debug)]
pub struct RequestIds(u32);

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds(FIRST_REQUEST_ID)
    }
}

/// The first request id after the `Hello`.
pub const FIRST_REQUEST_ID: u32 = 2;

impl RequestIds {
    /// The next id to use.
    pub fn next_id(&mut self) -> u32 {
        let id = self.0;
        self.0 = self.0.wrapping_add(1).max(FIRST_REQUEST_ID);
        id
    }
}

/// What [`transact`] does with messages that are not the answer.
pub trait Listener {
    /// A message the proxy sent on its own. An error ends the exchange (the caller's
    /// verdict on a goodbye).
    fn unsolicited(&mut self, msg: Unsolicited) -> Result<(), ClientError>;
    /// Anything else that is not the answer: a stale answer to an earlier request that
    /// timed out, or a message a later protocol minor added. Ignored by default.
    fn ignored(&mut self, _msg: &Message, _id: u32) {}
}

/// Sends `request` with id `id` and waits up to `timeout` for its answer, handing
/// whatever else arrives meanwhile to `listener`. A `Refuse` answer is
/// [`ClientError::Refused`]. Returns the answer and the descriptors that came with it
/// (the caller checks them).
pub fn transact(
    socket: BorrowedFd<'_>,
    request: &Message,
    id: u32,
    timeout: Duration,
    listener: &mut impl Listener,
) -> Result<(Message, Vec<OwnedFd>), ClientError> {
    send_message(socket, request, id, &[])?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        let (reply, reply_id, fds) = recv_message(socket, Some(left))?;
        if let Some(news) = Unsolicited::of(&reply, reply_id, Some(id)) {
            listener.unsolicited(news)?;
            continue;
        }
        if reply_id != id {
            listener.ignored(&reply, reply_id);
            continue;
        }
        return match reply {
            Message::Refuse { code, reason } => Err(ClientError::Refused { code, reason }),
            other => Ok((other, fds)),
        };
    }
}

/// Reads everything the proxy sent on its own, without blocking, handing it to
/// `listener`. Descriptors nobody asked for are closed. Errors when the connection is
/// gone (or the listener says so).
pub fn read_unsolicited(socket: BorrowedFd<'_>, listener: &mut impl Listener) -> Result<(), ClientError> {
    loop {
        match recv_message(socket, Some(Duration::ZERO)) {
            Ok((msg, id, _fds)) => match Unsolicited::of(&msg, id, None) {
                Some(news) => listener.unsolicited(news)?,
                None => listener.ignored(&msg, id),
            },
            Err(TransportError::Timeout) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Where a pool of `count` objects of `stride` bytes goes in a heap allocation: its
/// free ring first (an entry for every object), then from the next cache line the
/// objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolFootprint {
    /// Entries of the free ring (a power of two).
    pub ring_entries: u32,
    /// Where the first object starts, from the start of the allocation.
    pub objects_start: u64,
    /// Bytes the whole pool takes.
    pub bytes: u64,
}

impl PoolFootprint {
    /// The footprint of `count` objects of `stride` bytes.
    pub fn new(count: u32, stride: u32) -> Result<PoolFootprint, String> {
        let ring_entries = count.max(1).checked_next_power_of_two().ok_or("too many objects")?;
        let objects_start = FreeRing::bytes_for(ring_entries).next_multiple_of(64);
        Ok(PoolFootprint { ring_entries, objects_start, bytes: objects_start + count as u64 * stride as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_skip_the_hello_and_unsolicited_ids() {
        let mut ids = RequestIds::default();
        assert_eq!((ids.next_id(), ids.next_id()), (2, 3));
        let mut ids = RequestIds(u32::MAX);
        assert_eq!((ids.next_id(), ids.next_id()), (u32::MAX, 2));
    }

    #[test]
    fn a_pool_footprint_has_a_ring_entry_per_object_and_aligned_objects() {
        let f = PoolFootprint::new(1000, 2304).unwrap();
        assert_eq!(f.ring_entries, 1024);
        assert_eq!(f.objects_start % 64, 0);
        assert!(f.objects_start >= FreeRing::bytes_for(1024));
        assert_eq!(f.bytes, f.objects_start + 1000 * 2304);
        assert_eq!(PoolFootprint::new(0, 64).unwrap().ring_entries, 1);
        assert!(PoolFootprint::new(u32::MAX, 64).is_err());
    }

    #[test]
    fn a_refuse_is_unsolicited_unless_it_answers_the_request() {
        let refuse = Message::Refuse { code: RefuseCode::Internal, reason: "x".into() };
        assert_eq!(Unsolicited::of(&refuse, 5, Some(5)), None);
        assert!(Unsolicited::of(&refuse, 0, Some(5)).unwrap().ends_connection());
        assert!(Unsolicited::of(&refuse, 0, None).unwrap().ends_connection());
        assert_eq!(Unsolicited::of(&Message::Goodbye, 0, None), Some(Unsolicited::Goodbye));
        let link = Unsolicited::of(&Message::LinkStatus { up: true, speed_mbps: 10 }, 0, Some(3)).unwrap();
        assert!(!link.ends_connection());
        assert_eq!(Unsolicited::of(&Message::QueueStopped, 3, Some(3)), None);
    }
}
