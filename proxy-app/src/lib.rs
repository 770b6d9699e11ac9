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
#[cfg(feature = "stage-stamps")]
mod stages;
pub mod telemetry;

/// Logs a line to stderr, prefixed `IO_PROXY: ` (and `<6>` for journald, see
/// [`journal_level`]).
#[cfg(not(feature = "fuzzing"))]
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { eprintln!("{}IO_PROXY: {}", $crate::journal_level($crate::LOG_INFO), format_args!($($arg)*)) };
}

/// Logs a warning to stderr, prefixed `IO_PROXY: warning: ` (and `<4>` for journald).
#[cfg(not(feature = "fuzzing"))]
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { eprintln!("{}IO_PROXY: warning: {}", $crate::journal_level($crate::LOG_WARNING), format_args!($($arg)*)) };
}

/// Syslog priorities of the log lines (journald's `PRIORITY`).
pub const LOG_ERR: u8 = 3;
pub const LOG_WARNING: u8 = 4;
pub const LOG_INFO: u8 = 6;

/// The `<N>` prefix that tells journald a line's priority, when stderr is a stream to
/// the journal (systemd then sets `JOURNAL_STREAM` to its device and inode, which is
/// how a program tells the journal from a terminal or a pipe that a redirected service
/// stderr would also be); otherwise nothing, so a terminal or a test sees plain lines.
/// Decided once, at the first call (`main` makes it before the privilege drop and the
/// seccomp filter).
pub fn journal_level(priority: u8) -> &'static str {
    static TO_JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*TO_JOURNAL.get_or_init(stderr_is_journal) {
        return "";
    }
    const PREFIXES: [&str; 8] = ["<0>", "<1>", "<2>", "<3>", "<4>", "<5>", "<6>", "<7>"];
    PREFIXES[usize::from(priority.min(7))]
}

fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // fstat of a duplicate of fd 2: what stderr is now, not what it was at exec.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(fd).metadata().is_ok_and(|m| m.dev() == dev && m.ino() == ino)
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

#[cfg(test)]
mod journal_tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stderr_is_the_journal_only_when_journal_stream_names_it() {
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let meta = std::fs::File::from(fd).metadata().unwrap();
        // The test's only use of JOURNAL_STREAM (no other test reads it).
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        assert!(super::stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino() + 1));
        assert!(!super::stderr_is_journal());
        std::env::set_var("JOURNAL_STREAM", "garbage");
        assert!(!super::stderr_is_journal());
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!super::stderr_is_journal());
    }
}
