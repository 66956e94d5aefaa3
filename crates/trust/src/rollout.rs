//! Staged rollouts the approvers sign: a device's place in line is a stable hash of its own key
//! and the update, so nobody (the server included) chooses which devices go first, and a stage
//! admits the devices whose place is below its share once its time has come.

use ringfence_proto::tuf::RolloutStage;
use sha2::{Digest, Sha256};

/// Most stages in one schedule.
pub const MAX_STAGES: usize = 16;

/// A device's place for an update, 0 to 9,999 (hundredths of a percent).
pub fn place(device_key_hex: &str, update_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"ringfence rollout place v1\n")
        .chain_update(device_key_hex.to_ascii_lowercase().as_bytes())
        .chain_update(b"\n")
        .chain_update(update_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    (u64::from_be_bytes(first) % 10_000) as u32
}

/// Check a schedule: 1 to 16 stages, shares from 1 to 100 % that grow, times that grow.
pub fn check(stages: &[RolloutStage]) -> Result<Vec<(u8, i64)>, String> {
    if stages.is_empty() || stages.len() > MAX_STAGES {
        return Err(format!("rollout: 1 to {MAX_STAGES} stages"));
    }
    let mut out: Vec<(u8, i64)> = Vec::new();
    for s in stages {
        let at = crate::expiry::parse(&s.not_before).map_err(|e| format!("rollout: not_before: {e}"))?;
        if s.percent == 0 || s.percent > 100 {
            return Err("rollout: percent from 1 to 100".into());
        }
        if let Some((p, t)) = out.last()
            && (s.percent <= *p || at <= *t)
        {
            return Err("rollout: each stage a larger share, later than the one before".into());
        }
        out.push((s.percent, at));
    }
    Ok(out)
}

/// The share (in percent) a schedule admits at `now`: the largest stage whose time has come,
/// 0 before the first. A schedule that does not check admits nobody.
pub fn share(stages: &[RolloutStage], now: i64) -> u8 {
    let Ok(checked) = check(stages) else { return 0 };
    checked.iter().filter(|(_, at)| *at <= now).map(|(p, _)| *p).max().unwrap_or(0)
}

/// Whether the device at `place` may install at `now`, and if not, from when (the first stage
/// that admits it).
pub fn admits(stages: &[RolloutStage], place: u32, now: i64) -> Result<(), Option<i64>> {
    if place < u32::from(share(stages, now)) * 100 {
        return Ok(());
    }
    let from = check(stages).ok().and_then(|c| c.iter().find(|(p, _)| place < u32::from(*p) * 100).map(|(_, at)| *at));
    Err(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(percent: u8, at: &str) -> RolloutStage {
        RolloutStage { percent, not_before: at.into() }
    }

    #[test]
    fn places_are_stable_spread_and_differ_per_update() {
        let keys: Vec<String> = (0..2000u32).map(|i| format!("{:064x}", i * 7919)).collect();
        let places: Vec<u32> = keys.iter().map(|k| place(k, "kb-1")).collect();
        assert_eq!(places, keys.iter().map(|k| place(k, "kb-1")).collect::<Vec<_>>(), "stable");
        let first_tenth = places.iter().filter(|p| **p < 1000).count();
        assert!((120..=280).contains(&first_tenth), "about 10 % of 2,000: {first_tenth}");
        let other: Vec<u32> = keys.iter().map(|k| place(k, "kb-2")).collect();
        assert!(places.iter().zip(&other).filter(|(a, b)| a == b).count() < 20, "another update, other places");
        assert_eq!(place(&keys[0].to_uppercase(), "kb-1"), places[0], "hex case does not matter");
    }

    #[test]
    fn a_schedule_admits_its_share_from_its_times() {
        let stages =
            [stage(10, "2026-12-01T00:00:00Z"), stage(50, "2026-12-03T00:00:00Z"), stage(100, "2026-12-05T00:00:00Z")];
        let t = |s: &str| crate::expiry::parse(s).unwrap();
        assert_eq!(share(&stages, t("2026-11-30T23:59:59Z")), 0);
        assert_eq!(share(&stages, t("2026-12-01T00:00:00Z")), 10);
        assert_eq!(share(&stages, t("2026-12-04T00:00:00Z")), 50);
        assert_eq!(share(&stages, t("2027-01-01T00:00:00Z")), 100);
        assert_eq!(admits(&stages, 999, t("2026-12-01T00:00:00Z")), Ok(()));
        assert_eq!(admits(&stages, 1000, t("2026-12-01T00:00:00Z")), Err(Some(t("2026-12-03T00:00:00Z"))));
        assert_eq!(admits(&stages, 9999, t("2026-12-04T00:00:00Z")), Err(Some(t("2026-12-05T00:00:00Z"))));
        assert_eq!(admits(&stages, 9999, t("2026-12-05T00:00:00Z")), Ok(()));
    }

    #[test]
    fn bad_schedules_admit_nobody() {
        for bad in [
            vec![],
            vec![stage(0, "2026-12-01T00:00:00Z")],
            vec![stage(101, "2026-12-01T00:00:00Z")],
            vec![stage(50, "2026-12-01T00:00:00Z"), stage(40, "2026-12-02T00:00:00Z")],
            vec![stage(10, "2026-12-02T00:00:00Z"), stage(40, "2026-12-01T00:00:00Z")],
            vec![stage(10, "tomorrow")],
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
            assert_eq!(share(&bad, i64::MAX), 0);
        }
    }
}
