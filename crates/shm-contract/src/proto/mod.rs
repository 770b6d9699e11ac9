//! The control protocol: handshake and commands over a `SOCK_SEQPACKET` unix
//! socket, one message per datagram.
//!
//! # Header (16 bytes, little-endian)
//!
//! | offset | size | field |
//! | ------ | ---- | ----- |
//! | 0      | 4    | magic, `u32::from_le_bytes(*b"SHMP")` ([`PROTOCOL_MAGIC`]) |
//! | 4      | 2    | protocol major version ([`PROTOCOL_VERSION`]) |
//! | 6      | 2    | kind ([`MessageKind`]) |
//! | 8      | 4    | body length: the datagram's length minus 16 |
//! | 12     | 4    | request id: chosen by the requester, echoed in the answer |
//!
//! A body must be at least as long as this version defines for its kind;
//! trailing bytes beyond that are ignored (later minor revisions of a major may
//! append fields). A datagram is at most [`MAX_MESSAGE`] bytes.
//!
//! The major version in the header must be ours ([`DecodeError::Version`],
//! answered with `Refuse { VersionMismatch }`), except for `Hello` and `Refuse`:
//! their layouts are frozen across majors, so a guest of any version can always
//! say which versions it speaks and be told why it is refused. Negotiation:
//! the guest's `Hello` carries `[version_min, version_max]`, the proxy picks with
//! [`negotiate`] and answers in that version.
//!
//! Strings are fixed-size fields, UTF-8, padded with NUL bytes; a decoded string
//! has its trailing NULs removed and may contain no other NUL.
//!
//! # Bodies
//!
//! `Hello` (guest, 64 bytes; 56 from guests before `heap_bytes`, which then reads as 0):
//!
//! | offset | size | field |
//! | ------ | ---- | ----- |
//! | 0      | 2    | `version_min` (>= 1) |
//! | 2      | 2    | `version_max` (>= `version_min`) |
//! | 4      | 4    | `flags`: [`HELLO_FLAG_REATTACH`]; unknown bits are ignored |
//! | 8      | 8    | `region_size` (0: sized by the proxy, from `heap_bytes` or its default) |
//! | 16     | 4    | `rx_ring_entries` (0: default; else a power of two in 64..=65536) |
//! | 20     | 4    | `tx_ring_entries` (same) |
//! | 24     | 32   | `app_name` (UTF-8, NUL padded) |
//! | 56     | 8    | `heap_bytes`: the guest's pool plan, heap bytes its pools will take (0: no plan). With `region_size` 0 the proxy makes the region just large enough for the header, the rings and that heap on the pages it picks ([`RegionLayout::size_for_heap`](crate::RegionLayout::size_for_heap)) |
//!
//! `Welcome` (proxy, 48 bytes; 44 from proxies without queue pairs; with the region memfd as `SCM_RIGHTS`, except in answer to a reattaching `Hello`):
//!
//! | offset | size | field |
//! | ------ | ---- | ----- |
//! | 0      | 2    | `version` (the negotiated one) |
//! | 2      | 2    | `port_id` |
//! | 4      | 2    | `queue_id` |
//! | 6      | 2    | `mtu` |
//! | 8      | 4    | `flags` ([`RegionFlags`]: `HUGEPAGES`) |
//! | 12     | 4    | `max_rx_frame` |
//! | 16     | 8    | `region_size` (page multiple, at most [`MAX_REGION_SIZE`]) |
//! | 24     | 8    | `page_size` (power of two, 4 KiB..=1 GiB) |
//! | 32     | 6    | `mac` |
//! | 38     | 1    | `link_up` (0/1) |
//! | 39     | 1    | reserved, 0 |
//! | 40     | 4    | `link_speed_mbps` |
//! | 44     | 2    | `queue_pairs`: queue pairs the socket offers, 1..=[`MAX_QUEUE_PAIRS`] (absent: 1); the region has a ring pair for each |
//! | 46     | 2    | reserved, 0 |
//!
//! `queue_id` is the NIC queue behind queue pair 0.
//!
//! `Refuse` (either side, 204 bytes): `code` `u32` at 0 ([`RefuseCode`]),
//! `reason` at 4, 200 bytes of UTF-8, NUL padded.
//!
//! `PoolAdd` (guest, 28 bytes): `pool_id` 0, `ring_offset` 4, `ring_entries` 8,
//! `first_mbuf_offset` 12, `stride` 16, `count` 20 (all `u32`), `mbuf_size` 24,
//! `data_room` 26 (`u16`). Validated against the region by
//! [`PoolAdd::validate`].
//!
//! `PoolAck`, `PoolDel` (4 bytes): `pool_id` `u32`. `QueueStart` (16 bytes; 4, 8 or 12
//! from guests that know no flags, no depth or no queue pairs): `rx_pool_id` `u32` at 0, `flags` `u32`
//! at 4 ([`QUEUE_FLAG_RX_WAKEUP`]), `rx_depth` `u32` at 8 (the most rx descriptors
//! the proxy keeps outstanding; 0: the rx ring's entries), `queue` `u16` at 12 (the
//! queue pair, below the Welcome's `queue_pairs`; absent: 0), 2 reserved bytes.
//! `QueueStarted` (empty; in answer to a `QueueStart`
//! with [`QUEUE_FLAG_RX_WAKEUP`] it carries the guest's end of the wake-up socket
//! pair the proxy made, as `SCM_RIGHTS`, see [`crate::wake`]). `QueueStop` (4 bytes;
//! empty from guests that know no queue pairs): `queue` `u16` at 0 (absent: 0), 2
//! reserved bytes. `QueueStopped`, `Goodbye`: empty. `LinkStatus` (8 bytes): `up` `u8` (0/1) at 0,
//! 3 reserved bytes, `speed_mbps` `u32` at 4.
//!
//! # Descriptors
//!
//! Three messages carry a descriptor: a `Welcome` that is not the answer to a
//! reattaching `Hello` (the region memfd, proxy to guest), a reattaching `Hello`
//! (the guest's region memfd, guest to proxy) and a `QueueStarted` in answer to a
//! `QueueStart` with [`QUEUE_FLAG_RX_WAKEUP`] (proxy to guest). The proxy's
//! connections refuse descriptors (`SO_PASSRIGHTS` off, Linux 6.16 and later: the
//! sender's `sendmsg` fails with `EPERM` and nothing is queued) except in one step: a
//! reattaching guest whose `Hello` with its memfd was refused so sends it without, the
//! proxy lets that connection pass descriptors and answers `RegionWanted` (empty), and
//! the guest sends the same `Hello` again with the memfd; the proxy then turns passing
//! off again ([`transport::handshake`] does the guest's part). The only descriptor
//! the proxy ever keeps is the reattaching guest's memfd, after checking its kind.
//! A descriptor with any other message is a protocol violation: the proxy refuses
//! the message and closes the connection.
//!
//! # Versions
//!
//! 1: the guest chose the rx wake-up socket and sent it with `QueueStart`.
//! 2: the proxy makes the wake-up pair and hands the guest its end with
//! `QueueStarted`; `QueueStart` carries no descriptor. A proxy of version 2 refuses
//! guests of version 1 only ([`PROTOCOL_VERSION_MIN`]): accepting them would mean
//! signalling on a descriptor the guest chose.
//!
//! Within version 2, queue pairs were added as trailing fields (`Welcome.queue_pairs`,
//! `QueueStart.queue`, `QueueStop.queue`): a guest that does not know them runs
//! queue pair 0, and a proxy that does not know them offers only that one.

use std::fmt;

use crate::layout::{
    RegionFlags, HEADER_SIZE, MAX_DESC_RING_ENTRIES, MAX_PAGE_SIZE, MAX_QUEUE_PAIRS, MAX_REGION_SIZE,
    MIN_DESC_RING_ENTRIES, MIN_PAGE_SIZE,
};
use crate::pool::PoolAdd;

pub mod transport;

/// `"SHMP"` read as a little-endian `u32`.
pub const PROTOCOL_MAGIC: u32 = u32::from_le_bytes(*b"SHMP");
/// The protocol major version this build speaks (and the highest it accepts).
pub const PROTOCOL_VERSION: u16 = 2;
/// The lowest protocol major version this build accepts (see "Versions" above).
///
/// Minor revisions of major 2 (bodies grown at the end, see the header above): the
/// `Hello`'s `heap_bytes` (a guest's pool plan).
pub const PROTOCOL_VERSION_MIN: u16 = 2;
/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Largest datagram, header included.
pub const MAX_MESSAGE: usize = 1024;
/// Largest application name, in bytes.
pub const MAX_APP_NAME: usize = 32;
/// Largest refusal reason, in bytes.
pub const MAX_REASON: usize = 200;

/// `Hello.flags` bit: the guest is reattaching after its proxy went away. Its
/// region memfd (created by an earlier proxy, still mapped by the guest, whose
/// mbuf pools live in it) travels with the `Hello` as `SCM_RIGHTS`, and
/// `region_size` is its exact size. The proxy checks the fd (size, page size,
/// `F_SEAL_SHRINK | F_SEAL_GROW`), lays the region out again from the sizes in
/// the `Hello` (header rewritten, both descriptor rings zeroed: nothing in it is
/// trusted) and answers `Welcome` without a descriptor; the guest checks that
/// the layout is the one it has and announces its pools again with `PoolAdd`.
pub const HELLO_FLAG_REATTACH: u32 = 1;

/// `QueueStart.flags` bit: the guest wants to sleep while its rx ring is empty. The
/// proxy makes a datagram socket pair and answers `QueueStarted` with the guest's end
/// as its one descriptor; it sends a datagram on its own end after publishing rx
/// descriptors when the guest set `rx_wakeup_requested` in the status block
/// (protocol: [`crate::wake`]). The `QueueStart` itself carries no descriptor.
pub const QUEUE_FLAG_RX_WAKEUP: u32 = 1;

/// The kind field of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// [`Message::Hello`]
    Hello = 1,
    /// [`Message::Welcome`]
    Welcome = 2,
    /// [`Message::Refuse`]
    Refuse = 3,
    /// [`Message::PoolAdd`]
    PoolAdd = 4,
    /// [`Message::PoolAck`]
    PoolAck = 5,
    /// [`Message::PoolDel`]
    PoolDel = 6,
    /// [`Message::QueueStart`]
    QueueStart = 7,
    /// [`Message::QueueStarted`]
    QueueStarted = 8,
    /// [`Message::QueueStop`]
    QueueStop = 9,
    /// [`Message::QueueStopped`]
    QueueStopped = 10,
    /// [`Message::LinkStatus`]
    LinkStatus = 11,
    /// [`Message::Goodbye`]
    Goodbye = 12,
    /// [`Message::RegionWanted`]
    RegionWanted = 13,
}

impl MessageKind {
    /// The kind with this wire value.
    pub fn from_u16(v: u16) -> Option<MessageKind> {
        use MessageKind::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Refuse,
            4 => PoolAdd,
            5 => PoolAck,
            6 => PoolDel,
            7 => QueueStart,
            8 => QueueStarted,
            9 => QueueStop,
            10 => QueueStopped,
            11 => LinkStatus,
            12 => Goodbye,
            13 => RegionWanted,
            _ => return None,
        })
    }

    /// Body length this version defines for the kind (the minimum accepted).
    pub const fn body_len(self) -> usize {
        match self {
            MessageKind::Hello => 24 + MAX_APP_NAME + 8,
            MessageKind::Welcome => 48,
            MessageKind::Refuse => 4 + MAX_REASON,
            MessageKind::PoolAdd => 28,
            MessageKind::PoolAck | MessageKind::PoolDel => 4,
            MessageKind::QueueStart => 16,
            MessageKind::QueueStop => 4,
            MessageKind::LinkStatus => 8,
            MessageKind::QueueStarted
            | MessageKind::QueueStopped
            | MessageKind::Goodbye
            | MessageKind::RegionWanted => 0,
        }
    }

    /// The shortest body a peer of this major may send: bodies only grow at the
    /// end, and fields a shorter body lacks read as 0.
    pub const fn min_body_len(self) -> usize {
        match self {
            MessageKind::QueueStart => 4,
            // Before `heap_bytes`.
            MessageKind::Hello => 24 + MAX_APP_NAME,
            MessageKind::Welcome => 44,
            MessageKind::QueueStop => 0,
            other => other.body_len(),
        }
    }

    /// Whether the body layout is frozen across major versions.
    pub const fn is_frozen(self) -> bool {
        matches!(self, MessageKind::Hello | MessageKind::Refuse)
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a peer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseCode {
    /// No protocol version in common.
    VersionMismatch,
    /// The socket already serves a guest.
    Busy,
    /// Requested region or rings too large.
    TooLarge,
    /// Memory could not be reserved.
    NoMemory,
    /// Not permitted.
    NotAllowed,
    /// Malformed or invalid request.
    BadRequest,
    /// Internal error.
    Internal,
    /// A code this build does not know.
    Unknown(u32),
}

impl RefuseCode {
    /// Wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            RefuseCode::VersionMismatch => 1,
            RefuseCode::Busy => 2,
            RefuseCode::TooLarge => 3,
            RefuseCode::NoMemory => 4,
            RefuseCode::NotAllowed => 5,
            RefuseCode::BadRequest => 6,
            RefuseCode::Internal => 7,
            RefuseCode::Unknown(v) => v,
        }
    }

    /// From the wire value (unknown values are kept).
    pub fn from_u32(v: u32) -> RefuseCode {
        match v {
            1 => RefuseCode::VersionMismatch,
            2 => RefuseCode::Busy,
            3 => RefuseCode::TooLarge,
            4 => RefuseCode::NoMemory,
            5 => RefuseCode::NotAllowed,
            6 => RefuseCode::BadRequest,
            7 => RefuseCode::Internal,
            other => RefuseCode::Unknown(other),
        }
    }
}

impl fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseCode::VersionMismatch => f.write_str("version mismatch"),
            RefuseCode::Busy => f.write_str("busy"),
            RefuseCode::TooLarge => f.write_str("too large"),
            RefuseCode::NoMemory => f.write_str("no memory"),
            RefuseCode::NotAllowed => f.write_str("not allowed"),
            RefuseCode::BadRequest => f.write_str("bad request"),
            RefuseCode::Internal => f.write_str("internal error"),
            RefuseCode::Unknown(v) => write!(f, "unknown code {v}"),
        }
    }
}

/// The guest's opening message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol major the guest speaks.
    pub version_min: u16,
    /// Highest protocol major the guest speaks.
    pub version_max: u16,
    /// [`HELLO_FLAG_REATTACH`] or 0.
    pub flags: u32,
    /// Requested region size; 0: the proxy sizes it (from `heap_bytes`, else its
    /// default).
    pub region_size: u64,
    /// Requested rx ring entries, 0 for the default.
    pub rx_ring_entries: u32,
    /// Requested tx ring entries, 0 for the default.
    pub tx_ring_entries: u32,
    /// Application name (at most [`MAX_APP_NAME`] bytes, no NUL).
    pub app_name: String,
    /// The guest's pool plan: the heap bytes its pools will take, 0 if it cannot say
    /// (a DPDK application creates its pools after the handshake).
    pub heap_bytes: u64,
}

/// The proxy's acceptance; the region memfd travels with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The negotiated protocol major.
    pub version: u16,
    /// Region flags ([`RegionFlags::HUGEPAGES`]).
    pub flags: RegionFlags,
    /// Size of the region memfd.
    pub region_size: u64,
    /// Page size of the region.
    pub page_size: u64,
    /// NIC port.
    pub port_id: u16,
    /// NIC queue.
    pub queue_id: u16,
    /// Port MAC address.
    pub mac: [u8; 6],
    /// Port MTU.
    pub mtu: u16,
    /// Largest frame the port receives.
    pub max_rx_frame: u32,
    /// Link state now.
    pub link_up: bool,
    /// Link speed now, Mbit/s.
    pub link_speed_mbps: u32,
    /// Queue pairs the socket offers (1..=[`MAX_QUEUE_PAIRS`]); `queue_id` is pair 0's
    /// NIC queue.
    pub queue_pairs: u16,
}

impl Welcome {
    /// Whether the region is hugepage memory.
    pub fn hugepages(&self) -> bool {
        self.flags.contains(RegionFlags::HUGEPAGES)
    }
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Guest: versions and requests.
    Hello(Hello),
    /// Proxy: accepted (with the memfd).
    Welcome(Welcome),
    /// Either: refused, with a reason.
    Refuse {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable reason (at most [`MAX_REASON`] bytes, no NUL).
        reason: String,
    },
    /// Guest: announce a pool.
    PoolAdd(PoolAdd),
    /// Proxy: pool accepted.
    PoolAck {
        /// The pool.
        pool_id: u32,
    },
    /// Guest: forget a pool.
    PoolDel {
        /// The pool.
        pool_id: u32,
    },
    /// Guest: start the queue, rx buffers from this pool.
    QueueStart {
        /// The pool that feeds NIC rx.
        rx_pool_id: u32,
        /// [`QUEUE_FLAG_RX_WAKEUP`] or 0.
        flags: u32,
        /// At most this many rx descriptors filled at once (the application's rx
        /// queue size, which sizes its pool); 0: the ring's entries.
        rx_depth: u32,
        /// The queue pair (below the Welcome's `queue_pairs`).
        queue: u16,
    },
    /// Proxy: the queue is running.
    QueueStarted,
    /// Guest: stop a queue pair.
    QueueStop {
        /// The queue pair.
        queue: u16,
    },
    /// Proxy: the queue is stopped and every buffer returned.
    QueueStopped,
    /// Proxy: link state changed.
    LinkStatus {
        /// Link up.
        up: bool,
        /// Speed, Mbit/s.
        speed_mbps: u32,
    },
    /// Either: orderly close.
    Goodbye,
    /// Proxy, in answer to a reattaching `Hello` that came without its region memfd
    /// (the proxy's connections refuse descriptors, `SO_PASSRIGHTS` off, until it asks):
    /// send that `Hello` again, with the memfd.
    RegionWanted,
}

impl Message {
    /// The kind of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Welcome(_) => MessageKind::Welcome,
            Message::Refuse { .. } => MessageKind::Refuse,
            Message::PoolAdd(_) => MessageKind::PoolAdd,
            Message::PoolAck { .. } => MessageKind::PoolAck,
            Message::PoolDel { .. } => MessageKind::PoolDel,
            Message::QueueStart { .. } => MessageKind::QueueStart,
            Message::QueueStarted => MessageKind::QueueStarted,
            Message::QueueStop { .. } => MessageKind::QueueStop,
            Message::QueueStopped => MessageKind::QueueStopped,
            Message::LinkStatus { .. } => MessageKind::LinkStatus,
            Message::Goodbye => MessageKind::Goodbye,
            Message::RegionWanted => MessageKind::RegionWanted,
        }
    }

    /// A `Refuse` whose reason always encodes: cut to [`MAX_REASON`] bytes at a
    /// character boundary, NULs replaced by spaces.
    pub fn refuse(code: RefuseCode, reason: &str) -> Message {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Message::Refuse {
            code,
            reason: reason[..end].replace('\0', " "),
        }
    }
}

/// A message that cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A string is longer than its field.
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The field's size.
        max: usize,
    },
    /// A string contains a NUL byte (it would not survive the NUL padding).
    StringHasNul {
        /// Which field.
        field: &'static str,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::StringTooLong { field, len, max } => {
                write!(f, "encode: {field} is {len} bytes, at most {max} fit")
            }
            EncodeError::StringHasNul { field } => write!(f, "encode: {field} contains a NUL byte"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A datagram that is not a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header.
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Longer than [`MAX_MESSAGE`].
    TooLong {
        /// Datagram length.
        len: usize,
    },
    /// Not our magic.
    BadMagic {
        /// What was found.
        magic: u32,
    },
    /// A major version we do not speak (answer with `Refuse { VersionMismatch }`).
    Version {
        /// The peer's major.
        got: u16,
        /// The request id of the message, to answer it.
        request_id: u32,
    },
    /// A kind we do not know.
    UnknownKind {
        /// The kind field.
        kind: u16,
    },
    /// The header's body length is not the datagram's.
    LengthMismatch {
        /// From the header.
        body_len: u32,
        /// In the datagram.
        actual: usize,
    },
    /// The body is shorter than its kind requires.
    BodyTooShort {
        /// The kind.
        kind: MessageKind,
        /// Body length.
        len: usize,
        /// Required.
        min: usize,
    },
    /// A boolean that is neither 0 nor 1.
    BadBool {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u8,
    },
    /// A string that is not NUL-padded UTF-8.
    BadString {
        /// Which field.
        field: &'static str,
    },
    /// A value out of range.
    BadValue {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control message: ")?;
        match *self {
            DecodeError::TooShort { len } => write!(f, "{len} bytes, shorter than the {HEADER_LEN}-byte header"),
            DecodeError::TooLong { len } => write!(f, "{len} bytes, longer than {MAX_MESSAGE}"),
            DecodeError::BadMagic { magic } => write!(f, "bad magic {magic:#010x}"),
            DecodeError::Version { got, .. } => write!(
                f,
                "protocol version {got} not supported (this build speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION})"
            ),
            DecodeError::UnknownKind { kind } => write!(f, "unknown kind {kind}"),
            DecodeError::LengthMismatch { body_len, actual } => {
                write!(f, "header says {body_len} body bytes, datagram has {actual}")
            }
            DecodeError::BodyTooShort { kind, len, min } => {
                write!(f, "{kind} body is {len} bytes, needs {min}")
            }
            DecodeError::BadBool { field, value } => write!(f, "{field} is {value}, not 0 or 1"),
            DecodeError::BadString { field } => write!(f, "{field} is not NUL-padded UTF-8"),
            DecodeError::BadValue { field, value } => write!(f, "{field} = {value} out of range"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Versions with nothing in common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegotiateError {
    /// The guest's lowest.
    pub guest_min: u16,
    /// The guest's highest.
    pub guest_max: u16,
}

impl fmt::Display for NegotiateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no common protocol version: guest speaks {}..={}, proxy speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}",
            self.guest_min, self.guest_max
        )
    }
}

impl std::error::Error for NegotiateError {}

/// The highest protocol major both sides speak.
pub fn negotiate(guest_min: u16, guest_max: u16) -> Result<u16, NegotiateError> {
    let best = guest_max.min(PROTOCOL_VERSION);
    if guest_min <= guest_max && best >= guest_min.max(PROTOCOL_VERSION_MIN) {
        Ok(best)
    } else {
        Err(NegotiateError { guest_min, guest_max })
    }
}

struct Writer<'b> {
    buf: &'b mut [u8; MAX_MESSAGE],
    body: usize,
}

impl Writer<'_> {
    fn put(&mut self, off: usize, bytes: &[u8]) {
        let at = HEADER_LEN + off;
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.put(off, &[v]);
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
    fn string(&mut self, off: usize, field: &'static str, s: &str, max: usize) -> Result<(), EncodeError> {
        if s.len() > max {
            return Err(EncodeError::StringTooLong { field, len: s.len(), max });
        }
        if s.as_bytes().contains(&0) {
            return Err(EncodeError::StringHasNul { field });
        }
        self.put(off, s.as_bytes());
        Ok(())
    }
}

/// Encodes `msg` into `buf`; returns the datagram length.
pub fn encode(msg: &Message, request_id: u32, buf: &mut [u8; MAX_MESSAGE]) -> Result<usize, EncodeError> {
    let kind = msg.kind();
    let body = kind.body_len();
    buf[..HEADER_LEN + body].fill(0);
    let mut w = Writer { buf, body };
    match msg {
        Message::Hello(h) => {
            w.u16(0, h.version_min);
            w.u16(2, h.version_max);
            w.u32(4, h.flags);
            w.u64(8, h.region_size);
            w.u32(16, h.rx_ring_entries);
            w.u32(20, h.tx_ring_entries);
            w.string(24, "app_name", &h.app_name, MAX_APP_NAME)?;
            w.u64(24 + MAX_APP_NAME, h.heap_bytes);
        }
        Message::Welcome(x) => {
            w.u16(0, x.version);
            w.u16(2, x.port_id);
            w.u16(4, x.queue_id);
            w.u16(6, x.mtu);
            w.u32(8, x.flags.bits());
            w.u32(12, x.max_rx_frame);
            w.u64(16, x.region_size);
            w.u64(24, x.page_size);
            w.put(32, &x.mac);
            w.u8(38, x.link_up as u8);
            w.u32(40, x.link_speed_mbps);
            w.u16(44, x.queue_pairs);
        }
        Message::Refuse { code, reason } => {
            w.u32(0, code.to_u32());
            w.string(4, "reason", reason, MAX_REASON)?;
        }
        Message::PoolAdd(p) => {
            w.u32(0, p.pool_id);
            w.u32(4, p.ring_offset);
            w.u32(8, p.ring_entries);
            w.u32(12, p.first_mbuf_offset);
            w.u32(16, p.stride);
            w.u32(20, p.count);
            w.u16(24, p.mbuf_size);
            w.u16(26, p.data_room);
        }
        Message::PoolAck { pool_id } | Message::PoolDel { pool_id } => w.u32(0, *pool_id),
        Message::QueueStart { rx_pool_id, flags, rx_depth, queue } => {
            w.u32(0, *rx_pool_id);
            w.u32(4, *flags);
            w.u32(8, *rx_depth);
            w.u16(12, *queue);
        }
        Message::QueueStop { queue } => w.u16(0, *queue),
        Message::LinkStatus { up, speed_mbps } => {
            w.u8(0, *up as u8);
            w.u32(4, *speed_mbps);
        }
        Message::QueueStarted | Message::QueueStopped | Message::Goodbye | Message::RegionWanted => {}
    }
    let body = w.body;
    buf[0..4].copy_from_slice(&PROTOCOL_MAGIC.to_le_bytes());
    buf[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    buf[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    buf[8..12].copy_from_slice(&(body as u32).to_le_bytes());
    buf[12..16].copy_from_slice(&request_id.to_le_bytes());
    Ok(HEADER_LEN + body)
}

/// Encodes `msg` into a new vector.
pub fn encode_to_vec(msg: &Message, request_id: u32) -> Result<Vec<u8>, EncodeError> {
    let mut buf = [0u8; MAX_MESSAGE];
    let len = encode(msg, request_id, &mut buf)?;
    Ok(buf[..len].to_vec())
}

/// Reads fixed fields of a body whose length has been checked against the
/// kind's minimum, so every offset used below is in bounds.
struct Reader<'b> {
    body: &'b [u8],
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut out = [0u8; N];
        // `get` instead of indexing: a wrong offset would be a decoding error,
        // not a panic (the length check makes it unreachable).
        if let Some(src) = self.body.get(off..off + N) {
            out.copy_from_slice(src);
        }
        out
    }
    fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes(off))
    }
    fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
    fn bool(&self, off: usize, field: &'static str) -> Result<bool, DecodeError> {
        match self.bytes::<1>(off)[0] {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadBool { field, value }),
        }
    }
    fn string(&self, off: usize, len: usize, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.body.get(off..off + len).ok_or(DecodeError::BadString { field })?;
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let text = &raw[..end];
        if text.contains(&0) {
            return Err(DecodeError::BadString { field });
        }
        std::str::from_utf8(text)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadString { field })
    }
}

fn check_ring_request(field: &'static str, entries: u32) -> Result<(), DecodeError> {
    let ok = entries == 0
        || (entries.is_power_of_two() && (MIN_DESC_RING_ENTRIES..=MAX_DESC_RING_ENTRIES).contains(&entries));
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadValue { field, value: entries as u64 })
    }
}

/// Decodes and validates one datagram; returns the message and its request id.
pub fn decode(bytes: &[u8]) -> Result<(Message, u32), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLong { len: bytes.len() });
    }
    let header = Reader { body: &bytes[..HEADER_LEN] };
    let magic = header.u32(0);
    if magic != PROTOCOL_MAGIC {
        return Err(DecodeError::BadMagic { magic });
    }
    let major = header.u16(4);
    let raw_kind = header.u16(6);
    let body_len = header.u32(8);
    let request_id = header.u32(12);
    let kind = MessageKind::from_u16(raw_kind);
    let frozen = kind.is_some_and(MessageKind::is_frozen);
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&major) && !frozen {
        return Err(DecodeError::Version { got: major, request_id });
    }
    let kind = kind.ok_or(DecodeError::UnknownKind { kind: raw_kind })?;
    let body = &bytes[HEADER_LEN..];
    if body_len as usize != body.len() {
        return Err(DecodeError::LengthMismatch {
            body_len,
            actual: body.len(),
        });
    }
    if body.len() < kind.min_body_len() {
        return Err(DecodeError::BodyTooShort {
            kind,
            len: body.len(),
            min: kind.min_body_len(),
        });
    }
    let r = Reader { body };
    let msg = match kind {
        MessageKind::Hello => {
            let hello = Hello {
                version_min: r.u16(0),
                version_max: r.u16(2),
                flags: r.u32(4),
                region_size: r.u64(8),
                rx_ring_entries: r.u32(16),
                tx_ring_entries: r.u32(20),
                app_name: r.string(24, MAX_APP_NAME, "app_name")?,
                heap_bytes: r.u64(24 + MAX_APP_NAME),
            };
            if hello.version_min == 0 {
                return Err(DecodeError::BadValue { field: "version_min", value: 0 });
            }
            if hello.version_max < hello.version_min {
                return Err(DecodeError::BadValue {
                    field: "version_max",
                    value: hello.version_max as u64,
                });
            }
            check_ring_request("rx_ring_entries", hello.rx_ring_entries)?;
            check_ring_request("tx_ring_entries", hello.tx_ring_entries)?;
            Message::Hello(hello)
        }
        MessageKind::Welcome => {
            let welcome = Welcome {
                version: r.u16(0),
                port_id: r.u16(2),
                queue_id: r.u16(4),
                mtu: r.u16(6),
                flags: RegionFlags::from_bits_retain(r.u32(8)),
                max_rx_frame: r.u32(12),
                region_size: r.u64(16),
                page_size: r.u64(24),
                mac: r.bytes(32),
                link_up: r.bool(38, "link_up")?,
                link_speed_mbps: r.u32(40),
                queue_pairs: if body.len() >= 46 { r.u16(44) } else { 1 },
            };
            if !(1..=MAX_QUEUE_PAIRS).contains(&u32::from(welcome.queue_pairs)) {
                return Err(DecodeError::BadValue { field: "queue_pairs", value: welcome.queue_pairs as u64 });
            }
            if welcome.version != major {
                return Err(DecodeError::BadValue { field: "version", value: welcome.version as u64 });
            }
            let page = welcome.page_size;
            if !page.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page) {
                return Err(DecodeError::BadValue { field: "page_size", value: page });
            }
            let size = welcome.region_size;
            if size < HEADER_SIZE as u64 || size > MAX_REGION_SIZE || !size.is_multiple_of(page) {
                return Err(DecodeError::BadValue { field: "region_size", value: size });
            }
            Message::Welcome(welcome)
        }
        MessageKind::Refuse => Message::Refuse {
            code: RefuseCode::from_u32(r.u32(0)),
            reason: r.string(4, MAX_REASON, "reason")?,
        },
        MessageKind::PoolAdd => Message::PoolAdd(PoolAdd {
            pool_id: r.u32(0),
            ring_offset: r.u32(4),
            ring_entries: r.u32(8),
            first_mbuf_offset: r.u32(12),
            stride: r.u32(16),
            count: r.u32(20),
            mbuf_size: r.u16(24),
            data_room: r.u16(26),
        }),
        MessageKind::PoolAck => Message::PoolAck { pool_id: r.u32(0) },
        MessageKind::PoolDel => Message::PoolDel { pool_id: r.u32(0) },
        MessageKind::QueueStart => Message::QueueStart {
            rx_pool_id: r.u32(0),
            flags: if body.len() >= 8 { r.u32(4) } else { 0 },
            rx_depth: if body.len() >= 12 { r.u32(8) } else { 0 },
            queue: if body.len() >= 14 { r.u16(12) } else { 0 },
        },
        MessageKind::QueueStarted => Message::QueueStarted,
        MessageKind::QueueStop => Message::QueueStop { queue: if body.len() >= 2 { r.u16(0) } else { 0 } },
        MessageKind::QueueStopped => Message::QueueStopped,
        MessageKind::LinkStatus => Message::LinkStatus {
            up: r.bool(0, "up")?,
            speed_mbps: r.u32(4),
        },
        MessageKind::Goodbye => Message::Goodbye,
        MessageKind::RegionWanted => Message::RegionWanted,
    };
    Ok((msg, request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version_min: 1,
                version_max: 3,
                flags: 0xa5,
                region_size: 256 << 20,
                rx_ring_entries: 1024,
                tx_ring_entries: 0,
                app_name: "testpmd-é".into(),
                heap_bytes: 0,
            }),
            Message::Hello(Hello {
                version_min: 1,
                version_max: 1,
                flags: 0,
                region_size: 0,
                rx_ring_entries: 0,
                tx_ring_entries: 65536,
                app_name: "x".repeat(MAX_APP_NAME),
                heap_bytes: 3 << 20,
            }),
            Message::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                flags: RegionFlags::HUGEPAGES,
                region_size: 1 << 30,
                page_size: 2 << 20,
                port_id: 3,
                queue_id: 7,
                mac: [0x02, 0, 0, 0xaa, 0xbb, 0xcc],
                mtu: 9000,
                max_rx_frame: 9018,
                link_up: true,
                link_speed_mbps: 100_000,
                queue_pairs: 4,
            }),
            Message::Refuse {
                code: RefuseCode::VersionMismatch,
                reason: "guest speaks 2..=3".into(),
            },
            Message::Refuse { code: RefuseCode::Unknown(999), reason: String::new() },
            Message::Refuse { code: RefuseCode::Internal, reason: "r".repeat(MAX_REASON) },
            Message::PoolAdd(PoolAdd {
                pool_id: 1,
                ring_offset: 0x10_0000,
                ring_entries: 8192,
                first_mbuf_offset: 0x11_0040,
                stride: 2432,
                count: 8191,
                mbuf_size: 128,
                data_room: 2176,
            }),
            Message::PoolAck { pool_id: 1 },
            Message::PoolDel { pool_id: 2 },
            Message::QueueStart { rx_pool_id: 3, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 512, queue: 0 },
            Message::QueueStart { rx_pool_id: 1, flags: 0, rx_depth: 64, queue: 15 },
            Message::QueueStarted,
            Message::QueueStop { queue: 0 },
            Message::QueueStop { queue: 3 },
            Message::QueueStopped,
            Message::LinkStatus { up: false, speed_mbps: 0 },
            Message::LinkStatus { up: true, speed_mbps: 25_000 },
            Message::Goodbye,
            Message::RegionWanted,
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for (i, msg) in samples().into_iter().enumerate() {
            let id = 0x1000 + i as u32;
            let bytes = encode_to_vec(&msg, id).unwrap();
            assert_eq!(bytes.len(), HEADER_LEN + msg.kind().body_len());
            assert_eq!(&bytes[0..4], b"SHMP");
            assert_eq!(decode(&bytes), Ok((msg.clone(), id)), "{msg:?}");
            // Trailing bytes from a later minor revision are ignored.
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0xee; 40]);
            let body_len = (longer.len() - HEADER_LEN) as u32;
            longer[8..12].copy_from_slice(&body_len.to_le_bytes());
            assert_eq!(decode(&longer), Ok((msg.clone(), id)));
            // A body shorter than the shortest a peer may send is refused.
            if msg.kind().min_body_len() > 0 {
                let mut short = bytes[..HEADER_LEN + msg.kind().min_body_len() - 1].to_vec();
                let body_len = (short.len() - HEADER_LEN) as u32;
                short[8..12].copy_from_slice(&body_len.to_le_bytes());
                assert!(matches!(decode(&short), Err(DecodeError::BodyTooShort { .. })));
            }
        }
    }

    /// The first `body` bytes of `full`'s body, as an older peer sends them.
    fn cut(full: &[u8], body: usize) -> Vec<u8> {
        let mut old = full[..HEADER_LEN + body].to_vec();
        old[8..12].copy_from_slice(&(body as u32).to_le_bytes());
        old
    }

    #[test]
    fn a_queue_start_without_flags_reads_as_flags_0() {
        let msg = Message::QueueStart { rx_pool_id: 7, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 64, queue: 5 };
        let full = encode_to_vec(&msg, 9).unwrap();
        assert_eq!(decode(&cut(&full, 4)), Ok((Message::QueueStart { rx_pool_id: 7, flags: 0, rx_depth: 0, queue: 0 }, 9)));
        assert_eq!(
            decode(&cut(&full, 8)),
            Ok((Message::QueueStart { rx_pool_id: 7, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 0, queue: 0 }, 9))
        );
        // A guest that knows no queue pairs starts pair 0.
        assert_eq!(
            decode(&cut(&full, 12)),
            Ok((Message::QueueStart { rx_pool_id: 7, flags: QUEUE_FLAG_RX_WAKEUP, rx_depth: 64, queue: 0 }, 9))
        );
        assert_eq!(&full[HEADER_LEN + 12..], &[5, 0, 0, 0]);
    }

    #[test]
    fn queue_pairs_from_older_peers() {
        // An empty QueueStop stops pair 0.
        let stop = encode_to_vec(&Message::QueueStop { queue: 2 }, 4).unwrap();
        assert_eq!(&stop[HEADER_LEN..], &[2, 0, 0, 0]);
        assert_eq!(decode(&cut(&stop, 0)), Ok((Message::QueueStop { queue: 0 }, 4)));
        // A 44-byte Welcome offers one pair.
        let w = samples().into_iter().find(|m| m.kind() == MessageKind::Welcome).unwrap();
        let full = encode_to_vec(&w, 1).unwrap();
        let Ok((Message::Welcome(old), 1)) = decode(&cut(&full, 44)) else { panic!("44-byte Welcome refused") };
        assert_eq!(old.queue_pairs, 1);
        // Pair counts outside 1..=MAX_QUEUE_PAIRS are refused.
        for bad in [0u16, MAX_QUEUE_PAIRS as u16 + 1] {
            let mut b = full.clone();
            b[HEADER_LEN + 44..HEADER_LEN + 46].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(decode(&b), Err(DecodeError::BadValue { field: "queue_pairs", value: bad as u64 }));
        }
    }

    #[test]
    fn header_layout() {
        let bytes = encode_to_vec(&Message::PoolAck { pool_id: 0x0102_0304 }, 0xdead_beef).unwrap();
        assert_eq!(
            bytes,
            [
                b'S', b'H', b'M', b'P', 2, 0, 5, 0, 4, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 4, 3, 2, 1
            ]
        );
    }

    fn with_header(kind: u16, major: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"SHMP");
        v.extend_from_slice(&major.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&77u32.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn patch(msg: &Message, off: usize, bytes: &[u8]) -> Vec<u8> {
        let mut v = encode_to_vec(msg, 1).unwrap();
        v[HEADER_LEN + off..HEADER_LEN + off + bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn decode_errors_each_reachable() {
        assert_eq!(decode(&[0; 15]), Err(DecodeError::TooShort { len: 15 }));
        assert_eq!(decode(&[0; MAX_MESSAGE + 1]), Err(DecodeError::TooLong { len: MAX_MESSAGE + 1 }));
        assert_eq!(decode(&[0; 16]), Err(DecodeError::BadMagic { magic: 0 }));
        assert_eq!(
            decode(&with_header(5, 3, &[0; 4])),
            Err(DecodeError::Version { got: 3, request_id: 77 })
        );
        assert_eq!(decode(&with_header(5, 0, &[0; 4])), Err(DecodeError::Version { got: 0, request_id: 77 }));
        assert_eq!(decode(&with_header(99, PROTOCOL_VERSION, &[])), Err(DecodeError::UnknownKind { kind: 99 }));
        assert_eq!(decode(&with_header(99, 7, &[])), Err(DecodeError::Version { got: 7, request_id: 77 }));
        let mut v = with_header(5, PROTOCOL_VERSION, &[0; 4]);
        v[8] = 5;
        assert_eq!(decode(&v), Err(DecodeError::LengthMismatch { body_len: 5, actual: 4 }));
        assert_eq!(
            decode(&with_header(5, PROTOCOL_VERSION, &[0; 3])),
            Err(DecodeError::BodyTooShort { kind: MessageKind::PoolAck, len: 3, min: 4 })
        );
        let link = Message::LinkStatus { up: true, speed_mbps: 1 };
        assert_eq!(decode(&patch(&link, 0, &[2])), Err(DecodeError::BadBool { field: "up", value: 2 }));
        let samples = samples();
        let hello = &samples[0];
        let welcome = &samples[2];
        let refuse = &samples[3];
        assert_eq!(
            decode(&patch(welcome, 38, &[9])),
            Err(DecodeError::BadBool { field: "link_up", value: 9 })
        );
        // Strings: invalid UTF-8, a NUL inside.
        assert_eq!(decode(&patch(hello, 24, &[0xff])), Err(DecodeError::BadString { field: "app_name" }));
        assert_eq!(decode(&patch(refuse, 5, &[0])), Err(DecodeError::BadString { field: "reason" }));
        // Ranges.
        assert_eq!(
            decode(&patch(hello, 0, &0u16.to_le_bytes())),
            Err(DecodeError::BadValue { field: "version_min", value: 0 })
        );
        assert_eq!(
            decode(&patch(hello, 2, &0u16.to_le_bytes())),
            Err(DecodeError::BadValue { field: "version_max", value: 0 })
        );
        assert_eq!(
            decode(&patch(hello, 16, &100u32.to_le_bytes())),
            Err(DecodeError::BadValue { field: "rx_ring_entries", value: 100 })
        );
        assert_eq!(
            decode(&patch(hello, 20, &32u32.to_le_bytes())),
            Err(DecodeError::BadValue { field: "tx_ring_entries", value: 32 })
        );
        assert_eq!(
            decode(&patch(welcome, 0, &3u16.to_le_bytes())),
            Err(DecodeError::BadValue { field: "version", value: 3 })
        );
        assert_eq!(
            decode(&patch(welcome, 24, &3000u64.to_le_bytes())),
            Err(DecodeError::BadValue { field: "page_size", value: 3000 })
        );
        assert_eq!(
            decode(&patch(welcome, 16, &(1u64 << 32).to_le_bytes())),
            Err(DecodeError::BadValue { field: "region_size", value: 1 << 32 })
        );
        assert_eq!(
            decode(&patch(welcome, 16, &4096u64.to_le_bytes())),
            Err(DecodeError::BadValue { field: "region_size", value: 4096 })
        );
        for e in [
            DecodeError::TooShort { len: 1 },
            DecodeError::TooLong { len: 1 },
            DecodeError::BadMagic { magic: 1 },
            DecodeError::Version { got: 2, request_id: 0 },
            DecodeError::UnknownKind { kind: 1 },
            DecodeError::LengthMismatch { body_len: 1, actual: 2 },
            DecodeError::BodyTooShort { kind: MessageKind::Hello, len: 1, min: 2 },
            DecodeError::BadBool { field: "f", value: 2 },
            DecodeError::BadString { field: "f" },
            DecodeError::BadValue { field: "f", value: 1 },
        ] {
            assert!(e.to_string().starts_with("control message: "), "{e}");
        }
    }

    #[test]
    fn frozen_messages_decode_from_any_major() {
        // A Hello in a header of another major (3 here, 1 from an old guest) still
        // tells us what the guest speaks ...
        for major in [1, 3] {
            let mut hello = encode_to_vec(&samples()[0], 5).unwrap();
            hello[4] = major;
            let (msg, id) = decode(&hello).unwrap();
            assert_eq!(id, 5);
            let Message::Hello(h) = msg else { panic!("not a hello") };
            assert_eq!(negotiate(h.version_min, h.version_max), Ok(2));
        }
        // ... and a Refuse from a future proxy is readable.
        let mut refuse = encode_to_vec(&samples()[3], 6).unwrap();
        refuse[4] = 9;
        assert!(matches!(decode(&refuse), Ok((Message::Refuse { .. }, 6))));
    }

    #[test]
    fn a_hello_without_a_pool_plan_still_decodes() {
        // A guest built before `heap_bytes` sends 56 bytes of body: the plan reads as 0.
        let mut hello = encode_to_vec(&samples()[1], 7).unwrap();
        let Message::Hello(planned) = decode(&hello).unwrap().0 else { panic!("not a hello") };
        assert_eq!(planned.heap_bytes, 3 << 20);
        hello.truncate(HEADER_LEN + 56);
        hello[8..12].copy_from_slice(&56u32.to_le_bytes());
        let Message::Hello(old) = decode(&hello).unwrap().0 else { panic!("not a hello") };
        assert_eq!(old, Hello { heap_bytes: 0, ..planned });
        // Shorter than that is still too short.
        hello.truncate(HEADER_LEN + 55);
        hello[8..12].copy_from_slice(&55u32.to_le_bytes());
        assert!(matches!(decode(&hello), Err(DecodeError::BodyTooShort { kind: MessageKind::Hello, len: 55, min: 56 })));
    }

    #[test]
    fn encode_errors() {
        let mut buf = [0u8; MAX_MESSAGE];
        let long = Message::Refuse { code: RefuseCode::Busy, reason: "x".repeat(MAX_REASON + 1) };
        assert_eq!(
            encode(&long, 0, &mut buf),
            Err(EncodeError::StringTooLong { field: "reason", len: MAX_REASON + 1, max: MAX_REASON })
        );
        let nul = Message::Hello(Hello {
            version_min: 1,
            version_max: 1,
            flags: 0,
            region_size: 0,
            rx_ring_entries: 0,
            tx_ring_entries: 0,
            app_name: "a\0b".into(),
            heap_bytes: 0,
        });
        assert_eq!(encode(&nul, 0, &mut buf), Err(EncodeError::StringHasNul { field: "app_name" }));
        assert!(EncodeError::StringHasNul { field: "x" }.to_string().contains("NUL"));
        assert!(EncodeError::StringTooLong { field: "x", len: 2, max: 1 }.to_string().contains("at most"));
    }

    #[test]
    fn refuse_helper_always_encodes() {
        let reason = format!("{}é{}", "a".repeat(199), "\0tail");
        let msg = Message::refuse(RefuseCode::TooLarge, &reason);
        let Message::Refuse { reason: r, .. } = &msg else { panic!() };
        assert_eq!(r.len(), 199);
        assert!(encode_to_vec(&msg, 0).is_ok());
        let msg = Message::refuse(RefuseCode::TooLarge, "a\0b");
        assert_eq!(msg, Message::Refuse { code: RefuseCode::TooLarge, reason: "a b".into() });
    }

    #[test]
    fn refuse_codes() {
        for v in 0..20u32 {
            assert_eq!(RefuseCode::from_u32(v).to_u32(), v);
            assert!(!RefuseCode::from_u32(v).to_string().is_empty());
        }
        assert_eq!(RefuseCode::from_u32(1), RefuseCode::VersionMismatch);
        assert_eq!(RefuseCode::from_u32(0), RefuseCode::Unknown(0));
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(2, 2), Ok(2));
        assert_eq!(negotiate(1, 5), Ok(2));
        assert_eq!(negotiate(0, 2), Ok(2));
        // A guest of version 1 chose its own wake-up socket: refused.
        let e = negotiate(1, 1).unwrap_err();
        assert_eq!(e, NegotiateError { guest_min: 1, guest_max: 1 });
        assert_eq!(e.to_string(), "no common protocol version: guest speaks 1..=1, proxy speaks 2..=2");
        assert!(negotiate(3, 4).is_err());
        assert!(negotiate(2, 1).is_err());
        assert!(negotiate(0, 0).is_err());
    }

    #[test]
    fn kinds() {
        for v in 0..20u16 {
            if let Some(k) = MessageKind::from_u16(v) {
                assert_eq!(k as u16, v);
                assert!(!k.to_string().is_empty());
            }
        }
        assert!(MessageKind::from_u16(0).is_none());
        assert!(MessageKind::from_u16(14).is_none());
    }
}
