//! Device arguments of a `sock:` device: `-a sock:/run/io/sock,region_size=64M,rx_ring=1024`.
//! Parsed here, in safe Rust, so that every malformed value gets its own clear message.

use std::fmt;
use std::time::Duration;

/// Keys users may give, with their meaning; printed in the error for an unknown key.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    ("region_size", "size of the shared region to ask the proxy for (K/M/G suffixes; default: the proxy's default)"),
    ("rx_ring", "rx descriptor ring entries, a power of two in 64..=65536 (default 4096)"),
    ("tx_ring", "tx descriptor ring entries, a power of two in 64..=65536 (default 4096)"),
    ("reconnect", "1 (default) reconnects by itself when the proxy comes back; 0 stays down"),
    ("timeout_ms", "how long to wait for each answer of the proxy, in ms (default 5000)"),
    (
        "proxy_uid",
        "the user (uid or name) the proxy runs as; a server of the socket that runs as anyone else gets nothing \
         (default: root or the owner of the socket's directory)",
    ),
];

/// The keys in the form DPDK's `RTE_PMD_REGISTER_PARAM_STRING` uses, for the driver's
/// PMD info (what `dpdk-pmdinfo.py` prints).
pub const PARAM_STRING: &str =
    "region_size=<size> rx_ring=<int> tx_ring=<int> reconnect=0|1 timeout_ms=<int> proxy_uid=<uid|user>";

/// The rings' entries when the devargs name none: the contract's default, the same the
/// proxy gives a Rust guest that asks for none.
pub use shm_contract::layout::DEFAULT_RING_ENTRIES;
use shm_contract::layout::{MAX_DESC_RING_ENTRIES, MIN_DESC_RING_ENTRIES};
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevArgs {
    /// 0 lets the proxy choose.
    pub region_size: u64,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub reconnect: bool,
    pub timeout: Duration,
    /// The uid the proxy must run as (checked with `SO_PEERCRED` before anything is
    /// sent); None: root or the owner of the socket's directory.
    pub proxy_uid: Option<u32>,
}

impl Default for DevArgs {
    fn default() -> Self {
        DevArgs {
            region_size: 0,
            rx_ring: DEFAULT_RING_ENTRIES,
            tx_ring: DEFAULT_RING_ENTRIES,
            reconnect: true,
            timeout: DEFAULT_TIMEOUT,
            proxy_uid: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevArgsError {
    UnknownKey(String),
    MissingValue(String),
    Duplicate(String),
    BadValue { key: String, value: String, why: &'static str },
}

impl fmt::Display for DevArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevArgsError::UnknownKey(key) => {
                let known: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
                write!(f, "unknown device argument '{key}' (known: {})", known.join(", "))
            }
            DevArgsError::MissingValue(key) => write!(f, "device argument '{key}' needs a value ('{key}=...')"),
            DevArgsError::Duplicate(key) => write!(f, "device argument '{key}' is given twice"),
            DevArgsError::BadValue { key, value, why } => write!(f, "device argument {key}='{value}': {why}"),
        }
    }
}

impl std::error::Error for DevArgsError {}

impl DevArgs {
    /// Parses the part after the device name (after the first comma); empty is fine.
    pub fn parse(text: &str) -> Result<DevArgs, DevArgsError> {
        let mut args = DevArgs::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => return Err(DevArgsError::MissingValue(item.to_string())),
            };
            if !KNOWN_KEYS.iter().any(|(k, _)| *k == key) {
                return Err(DevArgsError::UnknownKey(key.to_string()));
            }
            if seen.contains(&key) {
                return Err(DevArgsError::Duplicate(key.to_string()));
            }
            seen.push(key);
            let bad = |why| DevArgsError::BadValue { key: key.to_string(), value: value.to_string(), why };
            match key {
                "region_size" => args.region_size = parse_size(value).ok_or_else(|| bad("expected a size such as 64M or 1G"))?,
                "rx_ring" => args.rx_ring = parse_ring(value).ok_or_else(|| bad("expected a power of two in 64..=65536"))?,
                "tx_ring" => args.tx_ring = parse_ring(value).ok_or_else(|| bad("expected a power of two in 64..=65536"))?,
                "reconnect" => {
                    args.reconnect = match value {
                        "1" | "yes" | "true" | "on" => true,
                        "0" | "no" | "false" | "off" => false,
                        _ => return Err(bad("expected 0 or 1")),
                    }
                }
                "timeout_ms" => {
                    let ms: u64 = value.parse().ok().filter(|ms| (1..=600_000).contains(ms)).ok_or_else(|| bad("expected milliseconds in 1..=600000"))?;
                    args.timeout = Duration::from_millis(ms);
                }
                "proxy_uid" => {
                    args.proxy_uid = Some(
                        shm_contract::proto::transport::parse_uid(value).ok_or_else(|| bad("expected a uid or a user name"))?,
                    )
                }
                _ => unreachable!("every known key is handled"),
            }
        }
        Ok(args)
    }
}

/// `4096`, `64K`, `64M`, `1G` (binary multiples; an optional trailing `B` or `iB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = lower[..digits_end].parse().ok()?;
    let shift = match lower[digits_end..].trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    number.checked_mul(1u64 << shift).filter(|&n| n > 0)
}

/// A ring size the contract allows (the texts above name its limits; a test keeps them
/// equal).
fn parse_ring(text: &str) -> Option<u32> {
    let n: u32 = text.parse().ok()?;
    (n.is_power_of_two() && (MIN_DESC_RING_ENTRIES..=MAX_DESC_RING_ENTRIES).contains(&n)).then_some(n)
}

/// Splits `"/run/io/sock,rx_ring=512"` into the device name and its arguments.
pub fn split_name(full: &str) -> (&str, &str) {
    match full.split_once(',') {
        Some((name, args)) => (name, args),
        None => (full, ""),
    }
}

/// A socket path is claimed by the `sock` bus when it looks like a path, so that the bus
/// never steals names of other buses (EAL asks every bus about every device name).
pub fn looks_like_socket_path(name: &str) -> bool {
    name.starts_with('/') || name.starts_with("./") || name.starts_with("../")
}

/// EAL keeps device names in 64-byte arrays: longer names must be refused, not cut.
pub const MAX_NAME_LEN: usize = 63;

#[cfg(test)]
mod tests {
    #[test]
    fn ring_limits_are_the_contracts_and_the_texts_say_so() {
        let limits = format!("{MIN_DESC_RING_ENTRIES}..={MAX_DESC_RING_ENTRIES}");
        for key in ["rx_ring", "tx_ring"] {
            let help = KNOWN_KEYS.iter().find(|(k, _)| *k == key).unwrap().1;
            assert!(help.contains(&limits), "{help}");
        }
        assert_eq!(parse_ring(&MIN_DESC_RING_ENTRIES.to_string()), Some(MIN_DESC_RING_ENTRIES));
        assert_eq!(parse_ring(&MAX_DESC_RING_ENTRIES.to_string()), Some(MAX_DESC_RING_ENTRIES));
        assert_eq!(parse_ring(&(MIN_DESC_RING_ENTRIES / 2).to_string()), None);
        assert_eq!(parse_ring(&(MAX_DESC_RING_ENTRIES * 2).to_string()), None);
    }

    use super::*;

    #[test]
    fn param_string_lists_every_key() {
        let listed: Vec<&str> = PARAM_STRING.split(' ').map(|kv| kv.split('=').next().unwrap()).collect();
        let known: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(listed, known);
        assert!(!PARAM_STRING.contains('"') && !PARAM_STRING.contains('\\'), "embedded in JSON unescaped");
    }

    #[test]
    fn the_ring_keys_state_the_contracts_default() {
        for key in ["rx_ring", "tx_ring"] {
            let (_, text) = KNOWN_KEYS.iter().find(|(k, _)| *k == key).unwrap();
            assert!(text.contains(&format!("(default {DEFAULT_RING_ENTRIES})")), "{key}: {text}");
        }
        assert_eq!(DevArgs::default().rx_ring, DEFAULT_RING_ENTRIES);
    }

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(DevArgs::parse("").unwrap(), DevArgs::default());
        assert_eq!(DevArgs::parse(" , ").unwrap(), DevArgs::default());
    }

    #[test]
    fn every_key_parses() {
        let a = DevArgs::parse("region_size=64M,rx_ring=512,tx_ring=2048,reconnect=0,timeout_ms=100,proxy_uid=1234").unwrap();
        assert_eq!(a.region_size, 64 << 20);
        assert_eq!((a.rx_ring, a.tx_ring), (512, 2048));
        assert!(!a.reconnect);
        assert_eq!(a.timeout, Duration::from_millis(100));
        assert_eq!(a.proxy_uid, Some(1234));
        assert_eq!(DevArgs::parse("proxy_uid=root").unwrap().proxy_uid, Some(0));
        assert_eq!(DevArgs::default().proxy_uid, None);
    }

    #[test]
    fn malformed_arguments_have_clear_errors() {
        let err = DevArgs::parse("ring=5").unwrap_err();
        assert!(err.to_string().contains("unknown device argument 'ring'"), "{err}");
        assert!(err.to_string().contains("rx_ring"), "lists the known keys: {err}");
        assert_eq!(DevArgs::parse("rx_ring").unwrap_err(), DevArgsError::MissingValue("rx_ring".into()));
        assert!(matches!(DevArgs::parse("rx_ring=100"), Err(DevArgsError::BadValue { .. })));
        assert!(matches!(DevArgs::parse("rx_ring=32"), Err(DevArgsError::BadValue { .. })));
        assert!(matches!(DevArgs::parse("region_size=lots"), Err(DevArgsError::BadValue { .. })));
        assert!(matches!(DevArgs::parse("reconnect=maybe"), Err(DevArgsError::BadValue { .. })));
        assert!(matches!(DevArgs::parse("timeout_ms=0"), Err(DevArgsError::BadValue { .. })));
        let err = DevArgs::parse("proxy_uid=no-such-user-here").unwrap_err();
        assert_eq!(err.to_string(), "device argument proxy_uid='no-such-user-here': expected a uid or a user name");
        assert_eq!(DevArgs::parse("rx_ring=64,rx_ring=64").unwrap_err(), DevArgsError::Duplicate("rx_ring".into()));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12T"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn names() {
        assert_eq!(split_name("/a/b,rx_ring=64"), ("/a/b", "rx_ring=64"));
        assert_eq!(split_name("/a/b"), ("/a/b", ""));
        assert!(looks_like_socket_path("/tmp/s"));
        assert!(looks_like_socket_path("./s"));
        assert!(!looks_like_socket_path("0000:00:01.0"));
        assert!(!looks_like_socket_path("net_null0"));
    }
}
