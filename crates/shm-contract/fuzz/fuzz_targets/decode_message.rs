//! Arbitrary datagrams into `decode`: it must never panic, and whatever it
//! accepts must encode again and decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_contract::proto::{decode, encode_to_vec};

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, request_id)) = decode(data) {
        let bytes = encode_to_vec(&msg, request_id).expect("a decoded message must encode");
        assert_eq!(decode(&bytes), Ok((msg, request_id)));
    }
});
