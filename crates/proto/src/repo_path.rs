//! The paths and headers the device listener accepts: the only input an unauthenticated
//! client gives it. Each parser is bounded and total (it returns `None`, never panics).

use std::ops::Range;

use crate::{RoleName, Sha256Hex, TargetPath};

/// `timestamp.json` or `<version>.<role>.json`.
pub fn metadata_file(file: &str) -> Option<(RoleName, Option<u64>)> {
    if file.len() > 160 {
        return None;
    }
    let stem = file.strip_suffix(".json")?;
    if stem == "timestamp" {
        return Some((RoleName::timestamp(), None));
    }
    let (version, role) = stem.split_once('.')?;
    if version.is_empty()
        || version.len() > 19
        || !version.bytes().all(|b| b.is_ascii_digit())
        || version.starts_with('0')
    {
        return None;
    }
    let role = RoleName::parse(role).ok()?;
    if role.as_str() == RoleName::TIMESTAMP {
        return None;
    }
    Some((role, Some(version.parse().ok()?)))
}

/// Split a consistent-snapshot target file name into the hash and the target path.
///
/// The specification's form is `<dir>/<sha256>.<file>`; tough (0.24) asks for
/// `<sha256>.<dir>/<file>`, hashing the whole path, so that form is served too.
pub fn consistent_target(path: &str) -> Option<(Sha256Hex, TargetPath)> {
    if let Some((dir, file)) = path.rsplit_once('/')
        && let Some((hash, name)) = file.split_once('.')
        && let Ok(hash) = Sha256Hex::parse(hash)
    {
        return Some((hash, TargetPath::parse(&format!("{dir}/{name}")).ok()?));
    }
    let (hash, rest) = path.split_once('.')?;
    Some((Sha256Hex::parse(hash).ok()?, TargetPath::parse(rest).ok()?))
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, as a half-open range within `length`.
/// `None` when the header is malformed or the range unsatisfiable.
pub fn byte_range(value: &str, length: u64) -> Option<Range<u64>> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.len() > 41 || spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let num = |s: &str| s.parse::<u64>().ok();
    let range = match (start.is_empty(), end.is_empty()) {
        (false, false) => num(start)?..num(end)?.saturating_add(1).min(length),
        (false, true) => num(start)?..length,
        (true, false) => length.saturating_sub(num(end)?)..length,
        (true, true) => return None,
    };
    if range.start >= range.end || range.start >= length {
        return None;
    }
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names() {
        assert_eq!(metadata_file("timestamp.json"), Some((RoleName::timestamp(), None)));
        assert_eq!(
            metadata_file("3.publisher.acme.0f.json").map(|(r, v)| (r.to_string(), v)),
            Some(("publisher.acme.0f".into(), Some(3)))
        );
        for bad in ["1.timestamp.json", "01.root.json", "root.json", "1.root", "x.root.json", "1.../etc.json"] {
            assert_eq!(metadata_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn consistent_target_names() {
        let sha = "a".repeat(64);
        let split = |p: &str| consistent_target(p).map(|(h, t)| (h.to_string(), t.to_string()));
        assert_eq!(split(&format!("acme/{sha}.x.bin")), Some((sha.clone(), "acme/x.bin".into())));
        assert_eq!(
            split(&format!("{sha}.approvals/g/acme/x.bin")),
            Some((sha.clone(), "approvals/g/acme/x.bin".into()))
        );
        assert_eq!(split("acme/x.bin"), None);
        assert_eq!(split(&format!("acme/{sha}")), None);
        assert_eq!(split(&format!("acme/{sha}.../x")), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(byte_range("bytes=90-", 100), Some(90..100));
        assert_eq!(byte_range("bytes=-5", 100), Some(95..100));
        assert_eq!(byte_range("bytes=0-999", 100), Some(0..100));
        for bad in ["bytes=100-", "bytes=5-1", "bytes=0-1,3-4", "items=0-1", "bytes=-", "bytes=-0"] {
            assert_eq!(byte_range(bad, 100), None, "{bad}");
        }
    }
}
