//! Fuzz target: the PROXY protocol header (v1 text, v2 binary) that an L4
//! load balancer puts before each connection (`proxy_protocol::parse`).
//! Every input gives a header, "more bytes needed" or an error; a header
//! never claims more bytes than it was given, and the same bytes followed
//! by anything parse to the same header.

#![no_main]

use gateway::proxy_protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some(header)) => {
            assert!(header.len > 0 && header.len <= data.len());
            assert_eq!(parse(&data[..header.len]), Ok(Some(header)));
        }
        Ok(None) => {
            // A prefix of an incomplete header is incomplete too (or empty).
            if let Some(shorter) = data.len().checked_sub(1) {
                assert!(matches!(parse(&data[..shorter]), Ok(None)));
            }
        }
        Err(_) => {}
    }
});
