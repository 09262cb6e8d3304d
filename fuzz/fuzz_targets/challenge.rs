#![no_main]
//! The registry's `WWW-Authenticate` challenge parser and its token answer
//! parser, on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        let _ = regcred::verify::parse_challenge(header);
    }
    regcred::verify::fuzz_token_response(data);
});
