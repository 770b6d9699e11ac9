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

/// Departed guests of one user per socket whose buffers a NIC still holds. Each keeps its
/// region (up to `--max-region-size`) and its shadows in the proxy's memory: a guest that
/// comes and goes while the NIC holds its buffers must not grow the proxy without bound,
/// so that user's next guest on the socket is refused (`Busy`, with the reason) until the
/// NIC gives buffers back. The one who filled the quarantine pays: other users are still
/// taken (up to [`MAX_LEFTOVERS_PER_SOCKET`]).
pub const MAX_LEFTOVERS_PER_UID: usize = 4;

/// Departed guests per socket, all users together, whose buffers a NIC still holds: the
/// memory bound of one socket's quarantine. Reaching it takes
/// `MAX_LEFTOVERS_PER_SOCKET / MAX_LEFTOVERS_PER_UID` users who each left that many.
pub const MAX_LEFTOVERS_PER_SOCKET: usize = 16;

/// How long a pool delete waits for the NIC before it is answered with a refusal (the
/// pool stays retired and quarantined; it is freed once the buffers are back). Shorter
/// than the guests' default request timeout (`timeout_ms`, 5000 ms).
pub const POOL_DELETE_WAIT: Duration = Duration::from_secs(3);

/// The pools (and through them the region) of a guest that left while the NIC held
/// buffers of them.
pub struct Leftover {
    pub socket: PathBuf,
    /// The uid of the guest that left them (`SO_PEERCRED`).
    pub owner: u32,
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

/// Whether a socket whose quarantine holds `leftovers` takes a new guest of uid `uid`;
/// otherwise the reason of the refusal.
pub fn admits<'a>(leftovers: impl IntoIterator<Item = &'a Leftover>, uid: u32, port: u16, queues: &str) -> Result<(), String> {
    let (mut all, mut mine, mut in_nic, mut mine_in_nic) = (0usize, 0usize, 0u64, 0u64);
    for l in leftovers {
        let held = l.in_nic();
        all += 1;
        in_nic += held;
        if l.owner == uid {
            mine += 1;
            mine_in_nic += held;
        }
    }
    if mine >= MAX_LEFTOVERS_PER_UID {
        return Err(format!(
            "{mine} earlier guests of uid {uid} on this socket left {mine_in_nic} buffers in port {port} queue {queues} \
             that the NIC has not given back yet; their memory is kept until it does, and at most \
             {MAX_LEFTOVERS_PER_UID} such guests are kept per user and socket: try again later"
        ));
    }
    if all >= MAX_LEFTOVERS_PER_SOCKET {
        return Err(format!(
            "{all} earlier guests of this socket left {in_nic} buffers in port {port} queue {queues} that the NIC has \
             not given back yet; their memory is kept until it does, and at most {MAX_LEFTOVERS_PER_SOCKET} such guests \
             are kept per socket: try again later"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftover(owner: u32) -> Leftover {
        Leftover { socket: "/s".into(), owner, port: 1, queues: vec![2], app: "a".into(), pools: Vec::new(), since: Instant::now() }
    }

    /// The red-team review's R5: one user leaving again and again with buffers in the
    /// NIC locks out only that user; others are taken until the socket's bound, which
    /// takes several users to reach.
    #[test]
    fn a_full_quarantine_refuses_the_user_who_filled_it_not_the_others() {
        const ATTACKER: u32 = 1000;
        const OTHER: u32 = 1001;
        let mut q: Vec<Leftover> = Vec::new();
        for _ in 0..MAX_LEFTOVERS_PER_UID {
            assert!(admits(&q, ATTACKER, 1, "2").is_ok());
            q.push(leftover(ATTACKER));
        }
        let reason = admits(&q, ATTACKER, 1, "2").unwrap_err();
        assert!(reason.contains(&format!("{MAX_LEFTOVERS_PER_UID} earlier guests of uid {ATTACKER}")), "{reason}");
        assert!(reason.contains("buffers in port 1 queue 2"), "{reason}");
        // Anyone else is still welcome.
        assert!(admits(&q, OTHER, 1, "2").is_ok());
        // The socket's bound: reached only with that many users each at their own.
        let mut uid = OTHER;
        while q.len() < MAX_LEFTOVERS_PER_SOCKET {
            if q.iter().filter(|l| l.owner == uid).count() == MAX_LEFTOVERS_PER_UID {
                uid += 1;
            }
            assert!(admits(&q, uid, 1, "2").is_ok());
            q.push(leftover(uid));
        }
        assert!(uid - ATTACKER + 1 >= (MAX_LEFTOVERS_PER_SOCKET / MAX_LEFTOVERS_PER_UID) as u32);
        let reason = admits(&q, 4242, 1, "2").unwrap_err();
        assert!(reason.contains(&format!("{MAX_LEFTOVERS_PER_SOCKET} earlier guests of this socket")), "{reason}");
    }
}
