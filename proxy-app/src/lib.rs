//! The IO proxy's parts. The binary (`main.rs`, `dpdk-io-proxy`) starts them: EAL, the
//! data loop on the main lcore (`datapath`), the control thread (`control`). They are a
//! library so that the fuzz target of the control plane (proxy-app/fuzz, with the
//! `fuzzing` feature) can drive the same request handling.

pub mod access;
pub mod admin;
pub mod cmds;
pub mod control;
// Shared with dpdk-io-proxy-ctl, which alone reads answers (error_line).
#[allow(dead_code)]
pub mod ctl_proto;
pub mod datapath;
pub mod nic;
pub mod os;
pub mod quarantine;
pub mod reaper;
pub mod region;
pub mod sandbox;
pub mod shadow;
pub mod shown;
pub mod sizing;
pub mod sockpath;
pub mod telemetry;

/// Logs a line to stderr, prefixed `IO_PROXY: `.
#[cfg(not(feature = "fuzzing"))]
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { eprintln!("IO_PROXY: {}", format_args!($($arg)*)) };
}

/// Logs a warning to stderr, prefixed `IO_PROXY: warning: `.
#[cfg(not(feature = "fuzzing"))]
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { eprintln!("IO_PROXY: warning: {}", format_args!($($arg)*)) };
}

// The fuzz target runs millions of sessions: their log lines would cost more than the
// sessions. The arguments are still type-checked (and not evaluated).
#[cfg(feature = "fuzzing")]
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { if false { eprintln!("IO_PROXY: {}", format_args!($($arg)*)) } };
}

#[cfg(feature = "fuzzing")]
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { if false { eprintln!("IO_PROXY: warning: {}", format_args!($($arg)*)) } };
}
