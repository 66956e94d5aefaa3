//! Ringfence's TUF client reads repositories built the way other implementations build them:
//! python-tuf writes one (tests/interop/conformance_repo.py) with an RSA root key, key ids
//! that are names, the deprecated `keyid_hash_algorithms` field, delegated roles named
//! `/delegatedrole` and `../delegatedrole`, and a target hashed with sha512 only.

use std::path::Path;
use std::process::Command;

use ringfence_trust::client::TrustedSet;
use ringfence_trust::digest::Digests;
use ringfence_trust::workflow::{Cached, Fetched, Refresh, SearchStep, TargetSearch, target_file_name, verify_target};

use crate::common::{interop_script, python};

fn refresh(md: &Path, root: &[u8], now: i64) -> Result<TrustedSet, String> {
    let set = TrustedSet::new(root, now).map_err(|e| e.to_string())?;
    let mut refresh = Refresh::new(set, Cached::default());
    while let Some(need) = refresh.need() {
        let fetched = std::fs::read(md.join(&need.file)).map_or(Fetched::NotFound, Fetched::Bytes);
        refresh.supply(fetched).map_err(|e| format!("{}: {e}", need.file))?;
    }
    refresh.finish().map_err(|e| e.to_string())
}

fn find(md: &Path, set: &mut TrustedSet, path: &str) -> Option<ringfence_proto::tuf::TargetFile> {
    let mut search = TargetSearch::new(path);
    loop {
        match search.next(set).unwrap() {
            SearchStep::Found(t) => return Some(t),
            SearchStep::NotFound => return None,
            SearchStep::Need { need, delegator } => {
                let bytes = std::fs::read(md.join(&need.file)).unwrap_or_else(|_| panic!("{} missing", need.file));
                set.update_delegated_targets(&bytes, &need.role, &delegator).unwrap();
            }
        }
    }
}

#[test]
fn a_repository_written_by_python_tuf_is_read_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python()).arg(interop_script("conformance_repo.py")).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = dir.path().join("metadata");
    let root = std::fs::read(md.join("1.root.json")).unwrap();
    let now = ringfence_server::unix_now();
    let mut set = refresh(&md, &root, now).expect("python-tuf's repository verifies");
    let root_key = &set.root().signed.keys["root key"];
    assert_eq!((root_key.keytype.as_str(), root_key.scheme.as_str()), ("rsa", "rsassa-pss-sha256"));
    assert!(root_key.unrecognized.contains_key("keyid_hash_algorithms"));

    for (path, algorithms) in [("first/file.txt", vec!["sha512"]), ("second/file.txt", vec!["sha256", "sha512"])] {
        let target = find(&md, &mut set, path).unwrap_or_else(|| panic!("{path} not found"));
        assert_eq!(target.hashes.keys().map(String::as_str).collect::<Vec<_>>(), algorithms);
        let name = target_file_name(path, &target, true).unwrap();
        let bytes = std::fs::read(dir.path().join("targets").join(&name)).unwrap();
        assert_eq!(verify_target(&target, bytes.len() as u64, &Digests::of(&bytes)), Ok(()));
        // One byte changed, same length: every listed hash is checked, so it is refused.
        let mut tampered = bytes.clone();
        tampered[0] ^= 1;
        assert!(verify_target(&target, tampered.len() as u64, &Digests::of(&tampered)).is_err(), "{path}");
    }
    assert!(set.targets(&TrustedSet::chain("targets", "/delegatedrole")).is_some());
    assert!(set.targets(&TrustedSet::chain("targets", "../delegatedrole")).is_some());

    // The RSA signature really counts: a root whose signature is damaged is refused.
    let mut value: serde_json::Value = serde_json::from_slice(&root).unwrap();
    let sig = value["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    value["signatures"][0]["sig"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
    assert!(TrustedSet::new(&serde_json::to_vec(&value).unwrap(), now).is_err(), "damaged RSA signature");
    // The same signature listed twice under its key id is refused, not counted once.
    let mut value: serde_json::Value = serde_json::from_slice(&root).unwrap();
    let first = value["signatures"][0].clone();
    value["signatures"].as_array_mut().unwrap().push(first);
    let err = TrustedSet::new(&serde_json::to_vec(&value).unwrap(), now).unwrap_err();
    assert!(err.to_string().contains("signs twice"), "{err}");
}
