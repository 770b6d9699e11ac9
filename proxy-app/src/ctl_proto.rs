//! The admin socket's protocol, shared by the proxy (`admin.rs`) and
//! `dpdk-io-proxy-ctl`: a unix stream socket; the client sends one command line (the
//! stdin set) ending in a newline, the proxy answers with the command's output and
//! closes. One command per connection. An answer whose line starts with `error: ` is a
//! failed command.

/// Where the proxy serves the admin socket unless `--ctl` says otherwise.
pub const DEFAULT_CTL_PATH: &str = "/run/dpdk-io-proxy/ctl.sock";

/// The longest command line the proxy reads, newline included; a longer one is refused.
pub const MAX_REQUEST: usize = 4096;

/// The first line of `answer` that reports a failure, if any.
pub fn error_line(answer: &str) -> Option<&str> {
    answer.lines().find(|l| l.starts_with("error: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        assert_eq!(error_line("ok: removed /x\n"), None);
        assert_eq!(error_line("a\nerror: /x is not served\n"), Some("error: /x is not served"));
    }
}
