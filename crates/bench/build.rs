//! `rte_eth_from_rings` (the ring-pair NIC of the proxy's latency mode) lives in the
//! ring PMD's library, which applications otherwise never link.
fn main() {
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");
}
