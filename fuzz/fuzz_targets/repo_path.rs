//! What an unauthenticated client gives the device listener: a path and a Range header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_proto::{RoleName, TargetPath, repo_path};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = repo_path::metadata_file(s);
    if let Some((_, path)) = repo_path::consistent_target(s) {
        // Whatever is accepted is a valid target path.
        assert!(TargetPath::parse(path.as_str()).is_ok());
    }
    for length in [1, 1000, 1 << 40, u64::MAX] {
        if let Some(r) = repo_path::byte_range(s, length) {
            assert!(r.start < r.end && r.end <= length, "{s:?} of {length}: {r:?}");
        }
    }
    let _ = RoleName::parse(s);
    let _ = TargetPath::parse(s);
});
