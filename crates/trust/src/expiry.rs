//! The `expires` timestamps of TUF metadata: `YYYY-MM-DDTHH:MM:SSZ`, UTC, whole seconds.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

const FORMAT: &[FormatItem<'static>] = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad expiry time {0:?}: expected YYYY-MM-DDTHH:MM:SSZ")]
pub struct BadExpiry(pub String);

/// Parse an expiry into Unix seconds.
pub fn parse(s: &str) -> Result<i64, BadExpiry> {
    PrimitiveDateTime::parse(s, FORMAT)
        .map(|t| t.assume_utc().unix_timestamp())
        .map_err(|_| BadExpiry(s.chars().take(40).collect()))
}

/// Format Unix seconds as an expiry.
pub fn format(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        // Out of range only for absurd times; saturate to the far future the spec's format allows.
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse("2030-01-01T00:00:00Z"), Ok(1_893_456_000));
        assert_eq!(format(1_893_456_000), "2030-01-01T00:00:00Z");
        for bad in ["2030-01-01", "2030-01-01T00:00:00+01:00", "2030-01-01T00:00:00.5Z", "x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
