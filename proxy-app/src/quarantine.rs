//! What a guest let go of while the NIC still held some of its buffers.
//!
//! A NIC gives a sent mbuf back late (a physical NIC when it completes the transmit and
//! its driver reclaims the descriptor; `net_ring` when the paired port reads it), and
//! freeing it writes into the mbuf's mempool. So a guest pool (its shadows' mempool and
//! the region mapping they point into) is destroyed only once the NIC has given back
//! every buffer of it: a pool the guest deletes is answered when that happened
//! ([`PendingDelete`]), the pools and region of a guest that leaves are kept here
//! ([`Leftover`]) until it happened or the port is closed. Both are retired first
//! ([`ShadowPool::retire`]): what comes back is never written into a free ring the guest
//! may have reused, and never reaches another guest (each mempool stays distinct while it
//! lives, so a late buffer cannot be mistaken for one of a newer pool).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::shadow::ShadowPool;

/// Departed guests per socket whose buffers a NIC still holds. Each keeps its region
/// (up to `--max-region-size`) and its shadows in the proxy's memory: a guest that comes
/// and goes while the NIC holds its buffers must not grow the proxy without bound, so a
/// new guest on a socket with this many is refused (`Busy`, with the reason) until the
/// NIC gives buffers back.
pub const MAX_LEFTOVERS_PER_SOCKET: usize = 4;

/// How long a pool delete waits for the NIC before it is answered with a refusal (the
/// pool stays retired and quarantined; it is freed once the buffers are back). Shorter
/// than the guests' default request timeout (`timeout_ms`, 5000 ms).
pub const POOL_DELETE_WAIT: Duration = Duration::from_secs(3);

/// The pools (and through them the region) of a guest that left while the NIC held
/// buffers of them.
pub struct Leftover {
    pub socket: PathBuf,
    pub port: u16,
    /// The NIC queues of the socket.
    pub queues: Vec<u16>,
    pub app: String,
    pub pools: Vec<ShadowPool>,
    pub since: Instant,
}

impl Leftover {
    /// Buffers the NIC still holds.
    pub fn in_nic(&self) -> u64 {
        self.pools.iter().map(|p| u64::from(p.in_nic())).sum()
    }
}

/// A pool the guest deleted while the NIC held buffers of it.
pub struct PendingDelete {
    pub pool_id: u32,
    pub pool: ShadowPool,
    /// The request to answer (`PoolAck` once the buffers are back).
    pub request: u32,
    pub since: Instant,
    /// A refusal went out after [`POOL_DELETE_WAIT`]: the pool id is the guest's again,
    /// the pool is freed silently once its buffers are back.
    pub answered: bool,
}

/// Whether a socket with `leftovers` departed guests' pools in quarantine takes a new
/// guest; otherwise the reason of the refusal.
pub fn admits(leftovers: usize, in_nic: u64, port: u16, queues: &str) -> Result<(), String> {
    if leftovers < MAX_LEFTOVERS_PER_SOCKET {
        return Ok(());
    }
    Err(format!(
        "{leftovers} earlier guests of this socket left {in_nic} buffers in port {port} queue {queues} that the NIC has \
         not given back yet; their memory is kept until it does, and at most {MAX_LEFTOVERS_PER_SOCKET} such guests \
         are kept per socket: try again later"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_takes_new_guests_until_its_quarantine_is_full() {
        for n in 0..MAX_LEFTOVERS_PER_SOCKET {
            assert!(admits(n, 10, 0, "0").is_ok());
        }
        let reason = admits(MAX_LEFTOVERS_PER_SOCKET, 37, 1, "2").unwrap_err();
        assert!(reason.contains("37 buffers in port 1 queue 2"), "{reason}");
    }
}
