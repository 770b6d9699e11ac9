//! Raw FFI bindings to the installed DPDK 22.11, generated at build time by bindgen from
//! the installed headers plus the driver-SDK headers of the same version
//! (`bus_driver.h`, `dev_driver.h`, `ethdev_driver.h`; see `scripts/setup.sh`).
//!
//! DPDK's `static inline` functions (bursts, mbuf and mempool fast paths, ring ops) are
//! reachable under their C names (`rte_eth_rx_burst`, `rte_pktmbuf_free`, ...): bindgen
//! generates a C wrapper for each (`<name>__extern`), this crate compiles them, and the
//! Rust declaration links to the wrapper.
//!
//! Everything here is `unsafe` and unchecked. Safe Rust lives in the `dpdk` crate (for
//! applications) and in each plugin's FFI edge module.

/// What bindgen generated, re-exported at the crate root. Its code follows C's names and
/// bindgen's own patterns (bitfield accessors, layout tests with unsafe blocks and no
/// SAFETY comments), which the workspace's lints would flag in every item: they are
/// allowed for this module only, and the hand-written code below is linted as usual.
mod bindings {
    #![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
    #![allow(clippy::all, clippy::undocumented_unsafe_blocks, improper_ctypes, unnecessary_transmutes)]
    #![allow(unsafe_op_in_unsafe_fn, missing_docs)]

    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
pub use bindings::*;

/// The DPDK version the bindings were generated for (pkg-config `libdpdk` modversion).
pub const DPDK_VERSION: &str = env!("DPDK_SYS_VERSION");

// `dpdk_sys_errno()` / `dpdk_sys_set_errno()` (declared in csrc/wrapper.h) read and set
// the calling thread's `rte_errno`.

/// One row of the C compiler's view of a structure: `"sizeof rte_mbuf"` or `"rte_mbuf.pool"`.
#[repr(C)]
pub struct LayoutEntry {
    pub name: *const core::ffi::c_char,
    pub value: usize,
}

extern "C" {
    static dpdk_sys_layout: [LayoutEntry; 0];
    static dpdk_sys_layout_count: usize;
}

/// The sizes and offsets that the C compiler computed from the same headers (see
/// `csrc/layout_probe.c`), as `(name, value)` pairs.
pub fn c_layout() -> Vec<(String, usize)> {
    // SAFETY: `dpdk_sys_layout` is a constant array of `dpdk_sys_layout_count` entries
    // defined in layout_probe.c, whose names are static NUL-terminated strings.
    unsafe {
        let entries = core::slice::from_raw_parts(dpdk_sys_layout.as_ptr(), dpdk_sys_layout_count);
        entries
            .iter()
            .map(|e| (core::ffi::CStr::from_ptr(e.name).to_string_lossy().into_owned(), e.value))
            .collect()
    }
}
