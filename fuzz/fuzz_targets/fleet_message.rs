#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ids::fuzzing::fleet_message(data));
