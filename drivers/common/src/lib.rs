//! What the three guest plugins share: the `sock` bus object and its devices, the
//! session with the proxy (control socket, mapped region), device arguments, FFI guards
//! and DPDK logging.
//!
//! Each plugin links this crate statically; the bus plugin owns the one live instance of
//! the shared state (see [`bus`]).

pub mod bus;
pub mod devargs;
pub mod device;
pub mod ffi;
pub mod heap;
pub mod log;
pub mod session;

/// `rte_strerror` text for a positive errno value.
pub fn errno_text(errno: i32) -> String {
    // SAFETY: rte_strerror returns a static or thread-local C string.
    unsafe { ffi::str_from_c(dpdk_sys::rte_strerror(errno)) }
        .map(|s| s.into_owned())
        .unwrap_or_else(|| format!("error {errno}"))
}
