//! DPDK logging from Rust: each plugin registers its own log type (`bus.shm`,
//! `mempool.shm`, `pmd.net.shm`), so `--log-level=pmd.net.shm:debug` works as users expect.

use std::ffi::CString;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI32, Ordering};

use dpdk_sys as sys;

/// A DPDK log type, registered once from a plugin constructor.
pub struct LogType {
    name: &'static str,
    /// Prefix of every line; DPDK drivers print their short name first.
    prefix: &'static str,
    id: AtomicI32,
}

pub const ERR: u32 = sys::RTE_LOG_ERR;
pub const WARNING: u32 = sys::RTE_LOG_WARNING;
pub const NOTICE: u32 = sys::RTE_LOG_NOTICE;
pub const INFO: u32 = sys::RTE_LOG_INFO;
pub const DEBUG: u32 = sys::RTE_LOG_DEBUG;

impl LogType {
    pub const fn new(name: &'static str, prefix: &'static str) -> Self {
        LogType { name, prefix, id: AtomicI32::new(-1) }
    }

    /// Registers the type with DPDK, taking any `--log-level` pattern already given.
    pub fn register(&self, default_level: u32) {
        let Ok(name) = CString::new(self.name) else { return };
        // SAFETY: `name` is a valid C string; DPDK copies it.
        let id = unsafe { sys::rte_log_register_type_and_pick_level(name.as_ptr(), default_level) };
        self.id.store(id, Ordering::Relaxed);
    }

    fn id(&self) -> u32 {
        // Before registration (or if it failed) use the generic user type, so nothing is lost.
        match self.id.load(Ordering::Relaxed) {
            id if id >= 0 => id as u32,
            _ => sys::RTE_LOGTYPE_USER1,
        }
    }

    /// Whether a message at `level` would be printed; lets callers skip formatting.
    pub fn enabled(&self, level: u32) -> bool {
        // SAFETY: plain query of DPDK's log configuration.
        unsafe { sys::rte_log_can_log(self.id(), level) }
    }

    pub fn log(&self, level: u32, args: fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let mut line = String::with_capacity(128);
        let _ = writeln!(line, "{}: {}", self.prefix, args);
        let line = CString::new(line.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: "%s" with one valid C string argument.
        unsafe {
            sys::rte_log(level, self.id(), c"%s".as_ptr(), line.as_ptr());
        }
    }

    pub fn error(&self, args: fmt::Arguments<'_>) {
        self.log(ERR, args)
    }
    pub fn warning(&self, args: fmt::Arguments<'_>) {
        self.log(WARNING, args)
    }
    pub fn notice(&self, args: fmt::Arguments<'_>) {
        self.log(NOTICE, args)
    }
    pub fn info(&self, args: fmt::Arguments<'_>) {
        self.log(INFO, args)
    }
    pub fn debug(&self, args: fmt::Arguments<'_>) {
        self.log(DEBUG, args)
    }
}

/// `log!(LOG, ERR, "port {}: {}", p, e)`
#[macro_export]
macro_rules! log {
    ($log:expr, $level:expr, $($arg:tt)*) => {
        $log.log($level, format_args!($($arg)*))
    };
}
