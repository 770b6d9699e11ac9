//! The proxy's real request handling, driven by a fuzzed guest: messages (with
//! descriptors) in any order, shared-memory writes between them, against the live
//! session state of a running control plane (EAL with net_null, no NIC). See
//! proxy-app/src/control/fuzzing.rs for what each input does and what is checked.
#![no_main]

use std::ffi::c_char;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use proxy_app::control::fuzzing::Harness;

/// One proxy for the whole run, as in production: sessions come and go on it.
static PROXY: Mutex<Option<Harness>> = Mutex::new(None);

/// The sanitizer's defaults for this binary: no leak checking. A session lives across
/// inputs, so what one input allocates (a guest, its pools) is freed by a later one,
/// and libFuzzer would run a full leak scan after nearly every input (100x slower).
/// What a session must give back is checked by the harness itself, by name: the
/// mempools, the quarantine, the socket's state.
#[no_mangle]
pub extern "C" fn __asan_default_options() -> *const c_char {
    c"detect_leaks=0".as_ptr()
}

fuzz_target!(|data: &[u8]| {
    let mut proxy = PROXY.lock().unwrap_or_else(|e| e.into_inner());
    proxy.get_or_insert_with(Harness::new).run(data);
});
