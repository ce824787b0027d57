#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nuwa::fuzzing::config(data));
