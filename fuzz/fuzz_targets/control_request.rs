//! What a client writes to the control socket: one line, any bytes.
#![no_main]

use egret::control::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = parse_request(line);
});
