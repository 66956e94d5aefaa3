//! OLPC canonical JSON, as TUF and securesystemslib define it: objects with keys sorted,
//! no insignificant whitespace, integers only, and strings escaping only `"` and `\`.
//!
//! Ringfence restricts the names it signs (paths, roles) to ASCII, so sorting by code point
//! equals sorting by bytes and no Unicode normalisation question arises.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("canonical JSON has no floating-point numbers: {0}")]
    Float(String),
}

/// Encode `value` as canonical JSON.
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_value(value, &mut out)?;
    Ok(out)
}

/// Serialize any value to canonical JSON: the bytes `encode` gives for the value's JSON tree,
/// written without building the tree (`canonical_ser`).
pub fn to_canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CanonicalEncodeError> {
    crate::canonical_ser::to_canonical(value)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalEncodeError {
    #[error("cannot serialize: {0}")]
    Serialize(String),
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Written straight into `out` (writing to a Vec cannot fail).
            use std::io::Write;
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            // A map that iterates in byte order already (serde_json's default map does) is
            // written as it is; another is sorted first.
            if map.keys().is_sorted_by(|a, b| a.as_bytes() <= b.as_bytes()) {
                write_entries(map.iter(), out)?;
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                write_entries(entries.into_iter(), out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<(), CanonicalError> {
    for (i, (key, item)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(item, out)?;
    }
    Ok(())
}

/// `s` as a canonical JSON string (only `"` and a backslash escaped).
pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_string_content(s, out);
    out.push(b'"');
}

/// The inside of [`write_string`]'s string, copied in runs between the characters that need
/// escaping.
pub(crate) fn write_string_content(s: &str, out: &mut Vec<u8>) {
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|b| *b == b'"' || *b == b'\\') {
        let (run, tail) = rest.split_at(at);
        out.extend_from_slice(run);
        out.push(b'\\');
        // `tail` starts with the character to escape: it is copied with the next run.
        let (escaped, after) = tail.split_at(1);
        out.extend_from_slice(escaped);
        rest = after;
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn matches_securesystemslib_examples() {
        let v = json!({"b": [1, -2, true, null], "a": "q\"u\\o\nte", "c": {}});
        assert_eq!(
            encode(&v).unwrap(),
            br#"{"a":"q\"u\\o
te","b":[1,-2,true,null],"c":{}}"#
                .to_vec()
        );
        assert!(matches!(encode(&json!({"x": 1.5})), Err(CanonicalError::Float(_))));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[ -~]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Canonical bytes parse back to the same value, and encoding them again is a fixed point.
        #[test]
        fn round_trips_and_is_stable(v in arb_json()) {
            let bytes = encode(&v).unwrap();
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&parsed, &v);
            prop_assert_eq!(encode(&parsed).unwrap(), bytes);
        }

        /// Key order in the input never changes the output.
        #[test]
        fn key_order_is_irrelevant(pairs in prop::collection::vec(("[a-z]{1,6}", any::<i32>()), 0..10)) {
            let forward: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let backward: serde_json::Map<String, Value> = pairs.iter().rev().map(|(k, v)| (k.clone(), json!(v))).collect();
            // Later duplicates win in both maps, so compare the maps' own encodings.
            let f = encode(&Value::Object(forward.clone())).unwrap();
            let sorted: std::collections::BTreeMap<_, _> = forward.into_iter().collect();
            prop_assert_eq!(f, encode(&serde_json::to_value(sorted).unwrap()).unwrap());
            prop_assert!(encode(&Value::Object(backward)).is_ok());
        }
    }
}
