#![no_main]
//! The google provider's response parsers on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    regcred::provider::fuzz::google(data);
});
