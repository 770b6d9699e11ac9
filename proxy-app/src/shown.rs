//! Text a guest chooses (its application name in `Hello`) as the proxy shows it: in its
//! log, in `show stats`/`show sockets` (`key=value` lines that scripts split on spaces
//! and `=`) and in telemetry JSON (DPDK 22.11 does not escape strings it puts there).
//! Every byte outside a small safe set is percent-escaped (`%XX`), so such text can
//! neither forge a log line or a counter, nor break a JSON string, nor carry terminal
//! escape sequences; `%` itself is escaped, so the form is unambiguous.

/// Bytes shown as they are: letters, digits and `-_.:/+@,`.
fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:/+@,".contains(&b)
}

/// `text` with every byte outside the safe set as `%XX` (upper-case hex, UTF-8 bytes).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if is_safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_stay_as_they_are() {
        assert_eq!(escape("dpdk-testpmd"), "dpdk-testpmd");
        assert_eq!(escape("udp_echo"), "udp_echo");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn control_characters_quotes_and_separators_are_escaped() {
        assert_eq!(escape("a b"), "a%20b");
        assert_eq!(escape("x\ninvalid=99"), "x%0Ainvalid%3D99");
        assert_eq!(escape("\"},\"pwn\":1"), "%22%7D,%22pwn%22:1");
        assert_eq!(escape("\x1b[31mred"), "%1B%5B31mred");
        assert_eq!(escape("back\\slash'"), "back%5Cslash%27");
        assert_eq!(escape("100%"), "100%25");
        assert_eq!(escape("testpmd-é"), "testpmd-%C3%A9");
        for b in 0u8..=127 {
            let e = escape(&(b as char).to_string());
            assert!(e.bytes().all(is_safe_or_percent), "{b}: {e}");
            assert!(!e.contains(['"', '\\', ' ', '=', '\n', '\r', '\t']), "{b}: {e}");
        }
    }

    fn is_safe_or_percent(b: u8) -> bool {
        is_safe(b) || b == b'%'
    }
}
