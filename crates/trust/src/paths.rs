//! Which delegated role is trusted for which target path.

use ringfence_proto::tuf::DelegatedRole;

/// TUF path pattern match: `*` matches any run of characters except `/`, `?` any one
/// character except `/`; both sides must have the same number of `/`-separated segments.
/// Patterns with `[` classes are never matched (narrower than fnmatch, never wider).
pub fn matches_pattern(pattern: &str, path: &str) -> bool {
    if pattern.contains('[') {
        return false;
    }
    let pattern_segments: Vec<&str> = pattern.split('/').collect();
    let path_segments: Vec<&str> = path.split('/').collect();
    pattern_segments.len() == path_segments.len()
        && pattern_segments.iter().zip(&path_segments).all(|(p, s)| glob(p.as_bytes(), s.as_bytes()))
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative wildcard matching with one backtrack point: linear in practice, never
    // exponential on hostile patterns.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || text.get(t) == Some(&c) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Lower-case hex SHA-256 of the target path, as hashed bins use it.
pub fn path_hash(path: &str) -> String {
    crate::sha256_hex(path.as_bytes())
}

/// Whether `role` is trusted for `path` (by pattern or by hash prefix).
pub fn role_covers(role: &DelegatedRole, path: &str) -> bool {
    match (&role.paths, &role.path_hash_prefixes) {
        (Some(patterns), None) => patterns.iter().any(|p| matches_pattern(p, path)),
        (None, Some(prefixes)) => {
            let hash = path_hash(path);
            prefixes.iter().any(|p| hash.starts_with(p.as_str()))
        }
        // Neither or both: malformed per the specification, trusted for nothing.
        _ => false,
    }
}

/// All hex prefixes of `len` digits, in order: the bins of a hashed-bin delegation.
pub fn bin_prefixes(len: usize) -> Vec<String> {
    let count = 16usize.pow(len as u32);
    (0..count).map(|i| format!("{i:0len$x}")).collect()
}

/// The bin prefix for `path` with `len`-digit prefixes.
pub fn bin_prefix_of(path: &str, len: usize) -> String {
    path_hash(path).chars().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slashes() {
        assert!(matches_pattern("acme/*", "acme/agent.deb"));
        assert!(!matches_pattern("acme/*", "acme/sub/agent.deb"));
        assert!(matches_pattern("approvals/production/*/*", "approvals/production/acme/a.deb"));
        assert!(!matches_pattern("approvals/production/*/*", "approvals/pilot/acme/a.deb"));
        assert!(matches_pattern("a/*.deb", "a/x.deb"));
        assert!(!matches_pattern("a/*.deb", "a/x.rpm"));
        assert!(matches_pattern("a/f?o", "a/foo"));
        assert!(!matches_pattern("a/[f]oo", "a/foo"));
        assert!(matches_pattern("*", "x"));
        assert!(!matches_pattern("*", "x/y"));
    }

    #[test]
    fn bins_partition_paths() {
        let prefixes = bin_prefixes(2);
        assert_eq!(prefixes.len(), 256);
        assert_eq!(prefixes[0], "00");
        assert_eq!(prefixes[255], "ff");
        let p = bin_prefix_of("acme/a.deb", 2);
        assert_eq!(prefixes.iter().filter(|x| **x == p).count(), 1);
    }
}
