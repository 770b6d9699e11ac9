//! What the three guest plugins share as code: the `sock` bus's `#[repr(C)]`, versioned
//! interface and the wrappers that call it, device arguments, FFI guards and DPDK
//! logging.
//!
//! Each plugin links this crate statically. Only code crosses from here into every
//! plugin, never state: the bus plugin owns the devices, sessions and regions (its own
//! modules), and the other plugins reach them only through [`bus::BusInterface`].

pub mod bus;
pub mod devargs;
pub mod ffi;
pub mod log;

/// `rte_strerror` text for a positive errno value.
pub fn errno_text(errno: i32) -> String {
    // SAFETY: rte_strerror returns a static or thread-local C string.
    unsafe { ffi::str_from_c(dpdk_sys::rte_strerror(errno)) }
        .map(|s| s.into_owned())
        .unwrap_or_else(|| format!("error {errno}"))
}
