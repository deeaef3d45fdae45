#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mobilemoe_fuzz_harness::tokenizer(data));
