//! Telemetry commands answered by safe Rust closures (`dpdk-telemetry.py` reads them).
//!
//! [`register`] adds a command whose handler gets the command's parameter string and
//! returns a [`TelData`] (a dictionary or an array, built in Rust) or an errno; this
//! module's C callback converts it into DPDK's `rte_tel_data`. Handlers run on EAL's
//! telemetry thread; a panicking handler answers like a failed one (`null`), and the
//! panic never reaches C.
//!
//! DPDK 22.11 cannot unregister a command: dropping the [`Registration`] removes the
//! handler, and the command, still listed, answers `null` until it is registered again.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{sys, Eal, Error};

/// A handler: the parameters (text after the comma of `/cmd,params`, empty if none) in,
/// the answer or an errno out.
type Handler = dyn Fn(&str) -> Result<TelData, i32> + Send + Sync;

/// The live handlers by command name, and the names ever registered with DPDK.
struct Registry {
    handlers: BTreeMap<String, Arc<Handler>>,
    with_dpdk: BTreeSet<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { handlers: BTreeMap::new(), with_dpdk: BTreeSet::new() });

fn registry() -> MutexGuard<'static, Registry> {
    // Every change is one map operation: a poisoned registry is still consistent.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A value of a telemetry dictionary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelValue {
    /// A signed integer (`rte_tel_data_add_dict_int`).
    Int(i32),
    /// An unsigned 64-bit integer (`rte_tel_data_add_dict_u64`).
    U64(u64),
    /// A string (`rte_tel_data_add_dict_string`; DPDK truncates it to
    /// `RTE_TEL_MAX_STRING_LEN - 1` bytes).
    String(String),
}

/// A telemetry dictionary: named values, in order. DPDK keeps the first
/// `RTE_TEL_MAX_DICT_ENTRIES` and truncates names to `RTE_TEL_MAX_STRING_LEN - 1` bytes;
/// NUL bytes are removed from names and strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelDict {
    entries: Vec<(String, TelValue)>,
}

impl TelDict {
    /// An empty dictionary.
    pub fn new() -> TelDict {
        TelDict::default()
    }

    /// Adds a signed integer.
    pub fn int(&mut self, name: &str, value: i32) -> &mut TelDict {
        self.entries.push((name.to_string(), TelValue::Int(value)));
        self
    }

    /// Adds an unsigned 64-bit integer.
    pub fn u64(&mut self, name: &str, value: u64) -> &mut TelDict {
        self.entries.push((name.to_string(), TelValue::U64(value)));
        self
    }

    /// Adds a string.
    pub fn string(&mut self, name: &str, value: &str) -> &mut TelDict {
        self.entries.push((name.to_string(), TelValue::String(value.to_string())));
        self
    }

    /// The entries so far.
    pub fn entries(&self) -> &[(String, TelValue)] {
        &self.entries
    }
}

/// The answer of a telemetry command. Arrays keep their first
/// `RTE_TEL_MAX_ARRAY_ENTRIES` elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelData {
    /// A dictionary (`rte_tel_data_start_dict`).
    Dict(TelDict),
    /// An array of strings (`rte_tel_data_start_array` with `RTE_TEL_STRING_VAL`).
    Strings(Vec<String>),
    /// An array of signed integers (`RTE_TEL_INT_VAL`).
    Ints(Vec<i32>),
    /// An array of unsigned 64-bit integers (`RTE_TEL_U64_VAL`).
    U64s(Vec<u64>),
}

impl From<TelDict> for TelData {
    fn from(d: TelDict) -> TelData {
        TelData::Dict(d)
    }
}

/// A registered telemetry command; dropping it removes its handler (see the module
/// documentation). It holds EAL alive.
#[must_use = "dropping the registration removes the command's handler"]
#[derive(Debug)]
pub struct Registration {
    name: String,
    _eal: Eal,
}

impl Registration {
    /// The command's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let handler = registry().handlers.remove(&self.name);
        // The handler may own anything: it drops after the lock.
        drop(handler);
    }
}

/// Registers the telemetry command `name` (it starts with `/`, then letters, digits,
/// `_` and `/`; shorter than 56 bytes) with `help` (shorter than
/// `RTE_TEL_MAX_STRING_LEN` bytes), answered by `handler`.
///
/// `handler` gets the parameters (empty if none) and returns the answer or an errno
/// (the command then answers `null`, as for a panic). It runs on EAL's telemetry thread.
///
/// Errors: `EEXIST` while a registration of `name` lives; `EINVAL` for a name or help
/// that DPDK refuses; `ENOMEM`.
pub fn register<F>(eal: &Eal, name: &str, help: &str, handler: F) -> Result<Registration, Error>
where
    F: Fn(&str) -> Result<TelData, i32> + Send + Sync + 'static,
{
    const CALL: &str = "rte_telemetry_register_cmd";
    let cname = CString::new(name).map_err(|_| Error::new(CALL, libc::EINVAL))?;
    let chelp = CString::new(help).map_err(|_| Error::new(CALL, libc::EINVAL))?;
    let mut reg = registry();
    if reg.handlers.contains_key(name) {
        return Err(Error::new(CALL, libc::EEXIST));
    }
    if !reg.with_dpdk.contains(name) {
        // Registered with DPDK under the lock: the trampoline finds no handler for the
        // name until it is in the map below, and answers `null` meanwhile.
        // SAFETY: valid C strings, copied by DPDK (the help text is also leaked below,
        // for DPDK versions that keep the pointer); the callback has the telemetry_cb
        // signature and catches panics.
        let rc = unsafe { sys::rte_telemetry_register_cmd(cname.as_ptr(), Some(trampoline), chelp.as_ptr()) };
        if rc != 0 {
            return Err(Error::new(CALL, rc));
        }
        std::mem::forget(chelp);
        reg.with_dpdk.insert(name.to_string());
    }
    reg.handlers.insert(name.to_string(), Arc::new(handler));
    Ok(Registration { name: name.to_string(), _eal: eal.clone() })
}

/// The `telemetry_cb` of every command registered here: finds the handler by the
/// command's name, runs it, writes its answer. No panic leaves it.
unsafe extern "C" fn trampoline(cmd: *const c_char, params: *const c_char, d: *mut sys::rte_tel_data) -> c_int {
    let answered = catch_unwind(AssertUnwindSafe(|| {
        if cmd.is_null() || d.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: telemetry passes the NUL-terminated command name.
        let name = unsafe { CStr::from_ptr(cmd) }.to_string_lossy();
        // SAFETY: telemetry passes a NUL-terminated parameter string, or null.
        let params = if params.is_null() { Default::default() } else { unsafe { CStr::from_ptr(params) }.to_string_lossy() };
        // The lock is not held while the handler runs.
        let Some(handler) = registry().handlers.get(name.as_ref()).cloned() else {
            return -libc::ENOENT;
        };
        match handler(&params) {
            Ok(data) => {
                // SAFETY: `d` is the telemetry library's answer buffer for this call.
                unsafe { write(d, &data) };
                0
            }
            Err(errno) => -(errno.saturating_abs().max(1)),
        }
    }));
    answered.unwrap_or(-libc::EIO)
}

/// `s` as a C string, NUL bytes removed.
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// Writes `data` into DPDK's answer. Errors of the add calls (a full dictionary or
/// array) leave the rest out, as DPDK's own commands do.
///
/// # Safety
/// `d` is a valid `rte_tel_data` that nothing else uses during the call.
unsafe fn write(d: *mut sys::rte_tel_data, data: &TelData) {
    // SAFETY: for every call below, `d` is valid per this function's contract, and the
    // strings are valid C strings that DPDK copies.
    unsafe {
        match data {
            TelData::Dict(dict) => {
                sys::rte_tel_data_start_dict(d);
                for (name, value) in &dict.entries {
                    let name = c_string(name);
                    match value {
                        TelValue::Int(v) => sys::rte_tel_data_add_dict_int(d, name.as_ptr(), *v),
                        TelValue::U64(v) => sys::rte_tel_data_add_dict_u64(d, name.as_ptr(), *v),
                        TelValue::String(v) => sys::rte_tel_data_add_dict_string(d, name.as_ptr(), c_string(v).as_ptr()),
                    };
                }
            }
            TelData::Strings(items) => {
                sys::rte_tel_data_start_array(d, sys::RTE_TEL_STRING_VAL);
                for v in items {
                    sys::rte_tel_data_add_array_string(d, c_string(v).as_ptr());
                }
            }
            TelData::Ints(items) => {
                sys::rte_tel_data_start_array(d, sys::RTE_TEL_INT_VAL);
                for v in items {
                    sys::rte_tel_data_add_array_int(d, *v);
                }
            }
            TelData::U64s(items) => {
                sys::rte_tel_data_start_array(d, sys::RTE_TEL_U64_VAL);
                for v in items {
                    sys::rte_tel_data_add_array_u64(d, *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_keep_their_order() {
        let mut d = TelDict::new();
        d.string("path", "/tmp/s").u64("port", 3).int("up", 1);
        assert_eq!(
            d.entries(),
            &[
                ("path".to_string(), TelValue::String("/tmp/s".into())),
                ("port".to_string(), TelValue::U64(3)),
                ("up".to_string(), TelValue::Int(1)),
            ]
        );
        assert_eq!(TelData::from(d.clone()), TelData::Dict(d));
    }

    #[test]
    fn nul_bytes_are_removed() {
        assert_eq!(c_string("a\0b").as_bytes(), b"ab");
    }

    #[test]
    fn an_unknown_command_answers_enoent_without_touching_the_answer() {
        // A dangling but non-null answer pointer: it must not be used.
        let d = std::ptr::NonNull::<sys::rte_tel_data>::dangling().as_ptr();
        // SAFETY: valid C strings; the trampoline returns before touching `d`.
        let rc = unsafe { trampoline(c"/no/such/cmd".as_ptr(), std::ptr::null(), d) };
        assert_eq!(rc, -libc::ENOENT);
        // SAFETY: a null command is refused before anything is read.
        assert_eq!(unsafe { trampoline(std::ptr::null(), std::ptr::null(), d) }, -libc::EINVAL);
    }

    #[test]
    fn handlers_answer_fail_and_panic_without_unwinding_into_c() {
        let install = |name: &str, h: Arc<Handler>| registry().handlers.insert(name.to_string(), h);
        install("/t/ok", Arc::new(|p: &str| {
            assert_eq!(p, "3");
            let mut d = TelDict::new();
            d.string("a\0b", "x").u64("n", 1).int("i", -1);
            Ok(TelData::Dict(d))
        }));
        install("/t/list", Arc::new(|_: &str| Ok(TelData::Strings(vec!["a".into(), "b".into()]))));
        install("/t/err", Arc::new(|_: &str| Err(libc::ENOENT)));
        install("/t/panic", Arc::new(|_: &str| panic!("a handler panicked")));
        // SAFETY: a fresh answer buffer, freed below.
        let d = unsafe { sys::rte_tel_data_alloc() };
        assert!(!d.is_null());
        // SAFETY: valid C strings and answer buffer.
        let call = |cmd: &CStr, params: &CStr| unsafe { trampoline(cmd.as_ptr(), params.as_ptr(), d) };
        assert_eq!(call(c"/t/ok", c"3"), 0);
        assert_eq!(call(c"/t/list", c""), 0);
        assert_eq!(call(c"/t/err", c""), -libc::ENOENT);
        assert_eq!(call(c"/t/panic", c""), -libc::EIO);
        // SAFETY: allocated above, not used after.
        unsafe { sys::rte_tel_data_free(d) };
        for name in ["/t/ok", "/t/list", "/t/err", "/t/panic"] {
            registry().handlers.remove(name);
        }
    }
}
