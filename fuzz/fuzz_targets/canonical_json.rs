//! Canonical JSON (what TUF signs): any JSON value within the depth bound encodes without
//! failing, and encoding is stable: decoding the output and encoding again gives the same
//! bytes. OLPC canonical JSON (as securesystemslib writes it) escapes only `"` and `\`, so an
//! output holding a raw control character is not JSON to a strict parser: that, and only that,
//! may keep it from decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if ringfence_proto::limits::check_json_depth(data, 64).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(first) = ringfence_trust::canonical::encode(&value) else { return };
    match serde_json::from_slice::<serde_json::Value>(&first) {
        Ok(again) => assert_eq!(ringfence_trust::canonical::encode(&again).ok(), Some(first)),
        Err(_) => assert!(first.iter().any(|b| *b < 0x20), "canonical output that is not JSON: {first:?}"),
    }
});
