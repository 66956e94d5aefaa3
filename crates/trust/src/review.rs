//! What a signer is shown before signing: the complete difference between the published
//! version of a role and the pending one, entry by entry, with nothing summarised away.
//!
//! A document's `signed` object is flattened into named entries: every top-level field (the
//! version, `expires`, `consistent_snapshot`, fields this version does not know), every
//! target, every key, every top-level role of root, every delegated role with all its fields,
//! the order of the delegated roles, and every other field of `delegations`. Each entry's
//! value is its canonical JSON, so nothing inside it can change unseen. Entries that did not
//! change are counted and digested, so two signers can compare what they did not look at.

use std::collections::BTreeMap;

use serde_json::Value;

/// How an entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub entry: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The difference between two versions of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// In entry order.
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// SHA-256 over the canonical JSON of the unchanged entries (`[[name, value], ...]`).
    pub unchanged_digest: String,
}

fn canonical(value: &Value) -> String {
    crate::canonical::encode(value)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// An entry's name: the JSON array of the keys leading to it, e.g.
/// `["delegations","roles","publisher.acme.00"]`. Arrays of strings encode injectively, so a
/// field named like another entry (`"delegations.keys[k]"`) can never stand in for it.
fn name(path: &[&str]) -> String {
    canonical(&Value::Array(path.iter().map(|p| Value::String((*p).to_owned())).collect()))
}

/// The named entries of a `signed` object, each with the canonical JSON of its value.
pub fn entries(signed: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(object) = signed.as_object() else {
        out.insert(name(&[]), canonical(signed));
        return out;
    };
    for (field, value) in object {
        match (field.as_str(), value) {
            ("targets" | "keys" | "roles" | "meta", Value::Object(map)) => {
                for (entry, v) in map {
                    out.insert(name(&[field, entry]), canonical(v));
                }
            }
            ("delegations", Value::Object(delegations)) => {
                for (dfield, dvalue) in delegations {
                    match (dfield.as_str(), dvalue) {
                        ("keys", Value::Object(keys)) => {
                            for (id, key) in keys {
                                out.insert(name(&["delegations", "keys", id]), canonical(key));
                            }
                        }
                        ("roles", Value::Array(roles)) => {
                            let mut names = Vec::new();
                            for role in roles {
                                let role_name = role.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
                                // A name listed twice gets its own entry: ["delegations","roles",name,"2"].
                                let count = names.iter().filter(|n| **n == Value::String(role_name.clone())).count();
                                let nth = (count + 1).to_string();
                                let path: Vec<&str> = if count == 0 {
                                    vec!["delegations", "roles", &role_name]
                                } else {
                                    vec!["delegations", "roles", &role_name, &nth]
                                };
                                out.insert(name(&path), canonical(role));
                                names.push(Value::String(role_name));
                            }
                            out.insert(name(&["delegations", "roles"]), canonical(&Value::Array(names)));
                        }
                        _ => {
                            out.insert(name(&["delegations", dfield]), canonical(dvalue));
                        }
                    }
                }
            }
            _ => {
                out.insert(name(&[field]), canonical(value));
            }
        }
    }
    out
}

/// The difference from `old` (the published `signed` object, if any) to `new`.
pub fn diff(old: Option<&Value>, new: &Value) -> Diff {
    let old = old.map(entries).unwrap_or_default();
    let new = entries(new);
    let mut changes = Vec::new();
    let mut same = Vec::new();
    for (entry, value) in &new {
        match old.get(entry) {
            None => changes.push(Change {
                kind: ChangeKind::Added,
                entry: entry.clone(),
                old: None,
                new: Some(value.clone()),
            }),
            Some(o) if o != value => changes.push(Change {
                kind: ChangeKind::Changed,
                entry: entry.clone(),
                old: Some(o.clone()),
                new: Some(value.clone()),
            }),
            Some(_) => same.push(Value::Array(vec![Value::String(entry.clone()), Value::String(value.clone())])),
        }
    }
    for (entry, value) in &old {
        if !new.contains_key(entry) {
            changes.push(Change {
                kind: ChangeKind::Removed,
                entry: entry.clone(),
                old: Some(value.clone()),
                new: None,
            });
        }
    }
    changes.sort_by(|a, b| a.entry.cmp(&b.entry));
    let unchanged = same.len();
    let unchanged_digest = crate::sha256_hex(canonical(&Value::Array(same)).as_bytes());
    Diff { changes, unchanged, unchanged_digest }
}

/// `text` as it may be put on a terminal: control characters (which could move the cursor,
/// erase or recolour a line, or end it early), the Unicode marks that reorder text on screen,
/// invisible format characters and line separators are written as `\u{…}`, so what a signer
/// reads is what the bytes say.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Format characters (Unicode's Cf: bidi marks and overrides, zero-width characters,
        // the byte-order mark) and the line and paragraph separators.
        let invisible = matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        );
        if c.is_control() || invisible {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

impl Diff {
    /// One line per change, then the unchanged count and digest; every name and value as
    /// [`shown`] makes it safe for a terminal.
    pub fn lines(&self) -> Vec<String> {
        let v = |s: &Option<String>| shown(s.as_deref().unwrap_or_default());
        let mut lines: Vec<String> = self
            .changes
            .iter()
            .map(|c| match c.kind {
                ChangeKind::Added => format!("+ {} = {}", shown(&c.entry), v(&c.new)),
                ChangeKind::Removed => format!("- {} (was {})", shown(&c.entry), v(&c.old)),
                ChangeKind::Changed => format!("~ {} = {} (was {})", shown(&c.entry), v(&c.new), v(&c.old)),
            })
            .collect();
        lines.push(format!("= {} entries unchanged, sha256 {}", self.unchanged, self.unchanged_digest));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_signer_reads_cannot_be_redrawn_by_the_text_it_shows() {
        // A pending version whose new target hides behind terminal codes and a reordering mark.
        let old = json!({"targets": {}});
        let new = json!({"targets": {"acme/a\u{1b}[2K\rb": {"custom": {"note": "x\u{202e}y\u{7f}z\u{9b}"}}}});
        let lines = diff(Some(&old), &new).lines();
        for line in &lines {
            assert!(!line.chars().any(|c| c.is_control() || c == '\u{202e}'), "{line:?}");
        }
        assert!(lines[0].contains("acme/a\\u{1b}[2K\\u{d}b"), "{}", lines[0]);
        assert!(lines[0].contains("x\\u{202e}y\\u{7f}z\\u{9b}"), "{}", lines[0]);
        assert_eq!(shown("plain ascii / é"), "plain ascii / é");
        assert_eq!(shown("a\u{200b}b\u{feff}c\u{2028}d\u{61c}"), "a\\u{200b}b\\u{feff}c\\u{2028}d\\u{61c}");
    }

    fn publisher_v1() -> Value {
        json!({
            "_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": "2027-01-01T00:00:00Z",
            "targets": {},
            "delegations": {
                "keys": {"k1": {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "aa"}}},
                "roles": [
                    {"name": "publisher.acme.0", "keyids": ["k1"], "threshold": 1, "terminating": true, "path_hash_prefixes": ["0"]},
                    {"name": "publisher.acme.1", "keyids": ["k1"], "threshold": 1, "terminating": true, "path_hash_prefixes": ["1"]}
                ]
            }
        })
    }

    #[test]
    fn an_injected_delegation_is_shown_with_every_field_and_its_position() {
        let old = publisher_v1();
        let mut new = old.clone();
        new["version"] = json!(2);
        let injected = json!({"name": "publisher.acme.f6c", "keyids": ["k9"], "threshold": 1,
                              "terminating": false, "path_hash_prefixes": [""]});
        new["delegations"]["roles"].as_array_mut().unwrap().insert(0, injected);
        new["delegations"]["keys"]["k9"] =
            json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "bb"}});
        let lines = diff(Some(&old), &new).lines();
        let text = lines.join("\n");
        assert!(text.contains(r#"+ ["delegations","roles","publisher.acme.f6c"] = {"keyids":["k9"],"name":"publisher.acme.f6c","path_hash_prefixes":[""],"terminating":false,"threshold":1}"#), "{text}");
        assert!(text.contains(r#"+ ["delegations","keys","k9"]"#), "{text}");
        assert!(
            text.contains(
                r#"~ ["delegations","roles"] = ["publisher.acme.f6c","publisher.acme.0","publisher.acme.1"]"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"~ ["version"] = 2 (was 1)"#), "{text}");
        // Unchanged: _type, spec_version, expires, key k1, two bins.
        assert!(text.ends_with(&format!("= 6 entries unchanged, sha256 {}", diff(Some(&old), &new).unchanged_digest)));
    }

    #[test]
    fn root_changes_removed_roles_flags_and_unknown_fields_are_shown() {
        let old = json!({"_type": "root", "version": 1, "consistent_snapshot": true, "expires": "2027-01-01T00:00:00Z",
                         "keys": {"a": {"k": 1}}, "roles": {"root": {"keyids": ["a"], "threshold": 1},
                         "mirror": {"keyids": ["a"], "threshold": 1}}});
        let mut new = old.clone();
        new["roles"].as_object_mut().unwrap().remove("mirror");
        new["consistent_snapshot"] = json!(false);
        new["x-extra"] = json!({"anything": [1, 2]});
        new["keys"]["a"]["k"] = json!(2);
        let text = diff(Some(&old), &new).lines().join("\n");
        assert!(text.contains(r#"- ["roles","mirror"] (was {"keyids":["a"],"threshold":1})"#), "{text}");
        assert!(text.contains(r#"~ ["consistent_snapshot"] = false (was true)"#), "{text}");
        assert!(text.contains(r#"+ ["x-extra"] = {"anything":[1,2]}"#), "{text}");
        assert!(text.contains(r#"~ ["keys","a"] = {"k":2} (was {"k":1})"#), "{text}");
    }

    #[test]
    fn a_field_named_like_another_entry_cannot_hide_a_change() {
        // The key under id k1 is swapped, and a top-level field named like the old entry
        // carries the old key: both are shown, nothing collides.
        let old = publisher_v1();
        let mut new = old.clone();
        new["delegations"]["keys"]["k1"]["keyval"]["public"] = json!("ff");
        new["delegations.keys[k1]"] = old["delegations"]["keys"]["k1"].clone();
        new[r#"["delegations","keys","k1"]"#] = old["delegations"]["keys"]["k1"].clone();
        let d = diff(Some(&old), &new);
        let text = d.lines().join("\n");
        assert!(
            text.contains(r#"~ ["delegations","keys","k1"] = {"keyids"#)
                || text.contains(r#"~ ["delegations","keys","k1"] = {"#),
            "{text}"
        );
        assert!(text.contains(r#""public":"ff""#), "{text}");
        assert_eq!(d.changes.len(), 3, "{text}");
    }

    #[test]
    fn a_first_version_shows_everything_and_an_identical_one_nothing() {
        let new = publisher_v1();
        let first = diff(None, &new);
        assert_eq!(first.unchanged, 0);
        assert!(first.changes.iter().all(|c| c.kind == ChangeKind::Added));
        assert_eq!(first.changes.len(), entries(&new).len());
        let same = diff(Some(&new), &new);
        assert!(same.changes.is_empty());
        assert_eq!(same.unchanged, entries(&new).len());
    }
}
