//! The attacker of the hostile test's "huge pool" case (tests/tests/hostile.rs), as a
//! process of its own: the case is about what the proxy does once that process is gone.
//! It attaches with the largest region (2 GiB of 4 KiB pages: more than a guest's share
//! of hugepages), announces a small valid pool before it allocated the region (refused:
//! the proxy never allocates a guest's memory by touching it), allocates all of it as
//! every guest must (on its own CPU: the test starts it from a thread under the
//! attackers' CPU limit, which it inherits), announces a pool of 2 Mi buffers (refused
//! by the proxy's per-guest quota), checks whether the proxy kept the connection, and
//! exits, leaving the proxy the last holder of the region.
//!
//! Usage: `huge-pool-guest <socket path>`. Prints one line
//! `huge-pool-guest: unallocated=<answer> allocated_ms=A answer=<answer> answered_ms=T peer=<open|closed>`,
//! or `huge-pool-guest: refused: <reason>` when the region itself was refused; exits 1
//! with a message on any other failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e_tests::hostile::{hello, small_pool, Attached, Peer};
use shm_contract::{Message, PoolAdd};

/// The region: the proxy's largest (`--max-region-size`, 2 GiB by default).
const REGION: u64 = 2 << 30;
/// Buffers announced: 4x the default `--max-guest-buffers`.
const COUNT: u32 = 2 << 20;

fn main() {
    let path = PathBuf::from(std::env::args().nth(1).expect("usage: huge-pool-guest <socket path>"));
    let mut g = match Attached::attach_unallocated(&path, &hello(REGION, 256)) {
        Ok(g) => g,
        Err(e) if e.starts_with("refused") => {
            println!("huge-pool-guest: refused: {e}");
            return;
        }
        Err(e) => {
            eprintln!("huge-pool-guest: {e}");
            std::process::exit(1);
        }
    };
    let heap = g.layout.heap();
    let small = small_pool(1, heap.offset);
    let unallocated = g.request(&Message::PoolAdd(small));
    let t = Instant::now();
    if let Err(e) = shm_contract::mem::allocate_region(g.memfd(), g.welcome.region_size) {
        eprintln!("huge-pool-guest: cannot allocate the region: {e}");
        std::process::exit(1);
    }
    let allocated = t.elapsed();
    let ring_bytes = shm_contract::FreeRing::bytes_for(COUNT) as u32;
    let add = PoolAdd {
        pool_id: 0,
        ring_offset: heap.offset,
        ring_entries: COUNT,
        first_mbuf_offset: heap.offset + ring_bytes.next_multiple_of(4096),
        stride: 192,
        count: COUNT,
        mbuf_size: 128,
        data_room: 64,
    };
    let t = Instant::now();
    let answer = g.request(&Message::PoolAdd(add));
    let took = t.elapsed();
    let peer = match g.peer(Duration::from_millis(200)) {
        Peer::Open { .. } => "open",
        Peer::Closed { .. } => "closed",
    };
    println!(
        "huge-pool-guest: unallocated={unallocated:?} allocated_ms={} answer={answer:?} answered_ms={} peer={peer}",
        allocated.as_millis(),
        took.as_millis()
    );
    // Leaving: the connection, the mapping and the memfd go with the process.
}
