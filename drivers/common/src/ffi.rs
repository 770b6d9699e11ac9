//! The edge between C callers and Rust: panics never unwind into C, C strings are
//! borrowed carefully, and the one-time constructors that register a plugin.

use std::any::Any;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::log::LogType;

/// Runs `body` for a C caller. A panic is caught, logged as an internal error naming
/// `entry`, and turned into `on_panic` (an error code, a null pointer, zero packets).
#[inline]
pub fn guard<R>(log: &LogType, entry: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            log.error(format_args!("{entry}: internal error ({}); the call failed", panic_text(&*payload)));
            on_panic
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic"
    }
}

/// Borrows a C string, or `None` for a null pointer. Invalid UTF-8 is replaced.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string that outlives the returned value.
pub unsafe fn str_from_c<'a>(ptr: *const c_char) -> Option<std::borrow::Cow<'a, str>> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-null and NUL-terminated per the caller's contract.
        Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy())
    }
}

/// Makes `$init` run when the plugin is loaded, before `main` or from inside the
/// application's `dlopen`, exactly like DPDK's `RTE_INIT` constructors. The body must
/// only register things (bus, driver, ops, log types): a plugin installed in DPDK's
/// driver directory is loaded into every DPDK application on the machine.
#[macro_export]
macro_rules! plugin_constructor {
    ($name:ident, $init:path) => {
        // Unit-test binaries of a plugin must not register anything with DPDK.
        #[cfg(not(test))]
        #[used]
        #[link_section = ".init_array"]
        static $name: extern "C" fn() = {
            extern "C" fn constructor() {
                // A constructor runs outside any Rust frame that could catch a panic.
                let _ = ::std::panic::catch_unwind($init);
            }
            constructor
        };
    };
}
