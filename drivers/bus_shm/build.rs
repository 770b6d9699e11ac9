fn main() {
    // Loadable as a DPDK plugin: a soname like DPDK's own drivers, and $ORIGIN so that the
    // plugins of one build find each other wherever they are installed.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librte_bus_shm.so");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
}
