#![no_main]
libfuzzer_sys::fuzz_target!(|d: &[u8]| ferrymq::mqtt::codec::fuzz_decode(d));
