#![no_main]
libfuzzer_sys::fuzz_target!(|d: &[u8]| ferrymq::store::record::fuzz_decode(d));
