//! The shared-memory contract between the IO proxy and its guests.
//!
//! This crate is the single definition of everything that crosses the process
//! boundary (see `docs/architecture.md`):
//!
//! * [`client`]: the guest's side, written once for the DPDK plugins and the Rust guest.
//! * [`mem`]: views of shared memory ([`SharedMem`]), owned mappings, the sealed
//!   memfd that backs a region.
//! * [`fault`]: surviving a peer that punches holes in a shared mapping.
//! * [`freelist`]: held marks and parking, a process's half of a pool's free list.
//! * [`handover`]: a queue's ring state handed between its polling thread and the
//!   control path with an acknowledgement (no sleep).
//! * [`layout`]: the region header, its areas and the status block.
//! * [`desc`]: the 16-byte descriptor.
//! * [`spsc`]: the rx/tx descriptor rings (single producer, single consumer).
//! * [`mpmc`]: the per-pool free ring (multi producer, multi consumer).
//! * [`pathwalk`]: the one walk of a socket's path, link by link from `/`, for the
//!   proxy (before it serves) and the guests (before they trust a server).
//! * [`pool`]: pool announcements and the proxy's validated view of a pool.
//! * [`proto`]: the handshake messages and their transport over a
//!   `SOCK_SEQPACKET` unix socket.
//! * [`tx`]: the proxy's validation of a guest's tx descriptors into packets.
//! * [`wake`]: rx wake-ups, so that an idle guest can sleep instead of polling.
//!
//! Every value read from shared memory or from the socket is copied out (atomic
//! loads or volatile copies) and validated before use; malformed input produces
//! a typed error, never a panic.
//!
//! # Versioning
//!
//! The region contract ([`layout::CONTRACT_VERSION`]) and the control protocol
//! ([`proto::PROTOCOL_VERSION`]) each carry a major version that must match
//! exactly. Minor versions of the region contract only add: new header fields
//! after the ones described here (covered by the checksum through the header's
//! `fields_len`), new flag bits that older readers ignore. Protocol messages may
//! grow trailing bytes within a major; older readers ignore them.

// The workspace's lints (root Cargo.toml) apply too; this public API also documents
// every item.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod client;
pub mod desc;
pub mod fault;
pub mod freelist;
pub mod handover;
pub mod layout;
pub mod mem;
pub mod mpmc;
pub mod pathwalk;
pub mod pool;
pub mod prefetch;
pub mod proto;
pub mod spsc;
pub mod tx;
pub mod wake;

mod sync;

pub use desc::{Desc, DescFlags};
pub use layout::{
    Area, AreaKind, HeaderError, LayoutError, RegionFlags, RegionLayout, RingArea, StatusBlock,
    Version, CONTRACT_VERSION,
};
pub use mem::{MemError, SharedMem};
pub use mpmc::{FreeRing, FreeRingError};
pub use pool::{PoolAdd, PoolError, PoolLayout};
pub use proto::{DecodeError, Message, RefuseCode, PROTOCOL_VERSION};
pub use spsc::{DescConsumer, DescProducer, DescRing, RingError, RingSetupError};
