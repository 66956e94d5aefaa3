//! Size and depth limits for everything parsed from outside.

/// Deepest JSON nesting accepted anywhere (TUF metadata nests about 6 levels).
pub const MAX_JSON_DEPTH: usize = 32;
/// Largest admin API JSON body.
pub const MAX_ADMIN_BODY: usize = 1024 * 1024;
/// Largest metadata document the server accepts from an administrator (root, targets).
pub const MAX_UPLOADED_METADATA: usize = 4 * 1024 * 1024;
/// Largest root metadata a client downloads.
pub const MAX_ROOT_BYTES: u64 = 512 * 1024;
/// Largest timestamp metadata a client downloads.
pub const MAX_TIMESTAMP_BYTES: u64 = 16 * 1024;
/// Default cap for snapshot and targets metadata when no length is known.
pub const MAX_METADATA_BYTES: u64 = 32 * 1024 * 1024;
/// Longest target path.
pub const MAX_TARGET_PATH: usize = 240;
/// Longest role, group or publisher name.
pub const MAX_NAME: usize = 48;
/// Most root versions a client walks in one refresh.
pub const MAX_ROOT_ROTATIONS: u64 = 256;
/// Most delegated roles visited in one target search.
pub const MAX_DELEGATIONS: usize = 64;
/// Most files in one update.
pub const MAX_FILES_PER_UPDATE: usize = 64;
/// Longest free-text field (title, description) in an update manifest.
pub const MAX_TEXT: usize = 8 * 1024;
/// Most items in a list field (KB, CVE, supersedes, ...) of an update manifest.
pub const MAX_LIST: usize = 256;

/// Error for JSON nested deeper than [`MAX_JSON_DEPTH`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON nested deeper than {max} levels")]
pub struct TooDeep {
    pub max: usize,
}

/// Reject JSON text nested deeper than `max` before any parser sees it.
///
/// Counts brackets outside strings; it does not validate the JSON, the parser does that.
pub fn check_json_depth(bytes: &[u8], max: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(TooDeep { max });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(check_json_depth(br#"{"a":[[["[[[[[[[["]]]}"#, 4).is_ok());
        assert_eq!(check_json_depth(b"[[[[[", 4), Err(TooDeep { max: 4 }));
        assert!(check_json_depth(br#"{"a\"[[[[[":1}"#, 1).is_ok());
    }
}
