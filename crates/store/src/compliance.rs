//! Compliance, kept up to date as reports arrive: per approval path, how many devices' newest
//! report falls in each [`Bucket`]; accepted devices per group; the CVEs each update fixes.
//! Reports read these aggregates and never scan the fleet.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::sql::{SqlStore, from_bigint, to_bigint};
use crate::{Result, StoreError};

/// Where a device's newest report on an approval path counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    Installed,
    /// On its way: downloading, downloaded, installing, waiting for a reboot.
    Needed,
    /// Failed, rolled back, or refused by the device.
    Failed,
    NotApplicable,
    /// Removed, as an uninstall approval asked.
    Uninstalled,
}

impl Bucket {
    pub const ALL: [Bucket; 5] =
        [Bucket::Installed, Bucket::Needed, Bucket::Failed, Bucket::NotApplicable, Bucket::Uninstalled];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Installed => "installed",
            Bucket::Needed => "needed",
            Bucket::Failed => "failed",
            Bucket::NotApplicable => "not_applicable",
            Bucket::Uninstalled => "uninstalled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// The bucket of a report state (the migration's backfill says the same in SQL).
    pub fn of_state(state: &str) -> Bucket {
        match state {
            "installed" => Bucket::Installed,
            "not_applicable" => Bucket::NotApplicable,
            "uninstalled" => Bucket::Uninstalled,
            "failed" | "rolled_back" | "refused" => Bucket::Failed,
            _ => Bucket::Needed,
        }
    }
}

/// How many devices' newest report on `target` is in each bucket (absent buckets are 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetCounts {
    pub target: String,
    /// The update the approved file belongs to, if it is in the catalog.
    pub update_id: Option<String>,
    pub counts: BTreeMap<Bucket, u64>,
}

/// A device's newest report on one approval path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTargetState {
    pub device_id: String,
    pub hostname: String,
    pub target: String,
    pub state: String,
    pub at: i64,
}

/// A device as the stale-device report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenDevice {
    pub id: String,
    pub hostname: String,
    pub groups: Vec<String>,
    pub last_checkin: Option<i64>,
}

#[async_trait::async_trait]
pub trait ComplianceStore: Send + Sync + 'static {
    /// Counts per approval path for every path starting with `prefix` (say
    /// `approvals/production/`), ordered by path.
    async fn compliance_by_prefix(&self, prefix: &str) -> Result<Vec<TargetCounts>>;
    /// Accepted devices enrolled in each of `groups`.
    async fn group_devices(&self, groups: &[String]) -> Result<BTreeMap<String, u64>>;
    /// The updates whose manifests list `cve` (compared upper-case).
    async fn updates_fixing(&self, cve: &str) -> Result<Vec<String>>;
    /// Accepted devices whose newest report on any of the approval paths `targets` is in a
    /// bucket other than installed, not applicable or uninstalled: still exposed. Ordered by
    /// device id, after `after`, at most `limit` devices, each with all its rows.
    async fn devices_not_done(&self, targets: &[String], after: &str, limit: u64) -> Result<Vec<DeviceTargetState>>;
    /// Accepted devices whose last check-in is before `before` (or that never checked in),
    /// ordered by id, after `after`, at most `limit`.
    async fn devices_not_seen_since(&self, before: i64, after: &str, limit: u64) -> Result<Vec<SeenDevice>>;
}

/// Add `delta` to each group's accepted-device count, in the caller's transaction.
pub(crate) async fn adjust_group_devices(conn: &mut sqlx::AnyConnection, groups: &[String], delta: i64) -> Result<()> {
    // In one order everywhere, so two transactions never wait for each other's rows.
    let mut groups: Vec<&String> = groups.iter().collect();
    groups.sort();
    groups.dedup();
    for group in groups {
        sqlx::query(
            "INSERT INTO group_devices (group_name, devices) VALUES ($1, $2) \
             ON CONFLICT (group_name) DO UPDATE SET devices = group_devices.devices + excluded.devices",
        )
        .bind(group)
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Apply the net change of one batch of reports to the counts, in the caller's transaction.
pub(crate) async fn apply_compliance_deltas(
    conn: &mut sqlx::AnyConnection,
    deltas: &BTreeMap<(String, Bucket), i64>,
) -> Result<()> {
    for ((target, bucket), delta) in deltas {
        if *delta == 0 {
            continue;
        }
        sqlx::query(
            "INSERT INTO compliance_counts (target, bucket, devices) VALUES ($1, $2, $3) \
             ON CONFLICT (target, bucket) DO UPDATE SET devices = compliance_counts.devices + excluded.devices",
        )
        .bind(target)
        .bind(bucket.as_str())
        .bind(delta)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The first string after every string starting with `prefix` (for a range scan).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    end.push(char::MAX);
    end
}

#[async_trait::async_trait]
impl ComplianceStore for SqlStore {
    async fn compliance_by_prefix(&self, prefix: &str) -> Result<Vec<TargetCounts>> {
        let rows = sqlx::query(
            "SELECT c.target AS target, c.bucket AS bucket, c.devices AS devices, f.update_id AS update_id \
             FROM compliance_counts c \
             LEFT JOIN update_files f ON f.target_path = substr(c.target, length($1) + 1) \
             WHERE c.target >= $1 AND c.target < $2 ORDER BY c.target",
        )
        .bind(prefix)
        .bind(prefix_end(prefix))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<TargetCounts> = Vec::new();
        for row in rows {
            let target: String = row.try_get("target")?;
            let bucket: String = row.try_get("bucket")?;
            let bucket = Bucket::parse(&bucket).ok_or_else(|| StoreError::Refused(format!("bucket {bucket:?}")))?;
            let devices = from_bigint(row.try_get::<i64, _>("devices")?.max(0), "devices")?;
            if out.last().is_none_or(|last| last.target != target) {
                out.push(TargetCounts { target, update_id: row.try_get("update_id")?, counts: BTreeMap::new() });
            }
            if let Some(last) = out.last_mut() {
                last.counts.insert(bucket, devices);
            }
        }
        Ok(out)
    }

    async fn group_devices(&self, groups: &[String]) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for group in groups {
            let row = sqlx::query("SELECT devices FROM group_devices WHERE group_name = $1")
                .bind(group)
                .fetch_optional(&self.pool)
                .await?;
            let n = match row {
                Some(row) => from_bigint(row.try_get::<i64, _>("devices")?.max(0), "devices")?,
                None => 0,
            };
            out.insert(group.clone(), n);
        }
        Ok(out)
    }

    async fn updates_fixing(&self, cve: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT update_id FROM update_cves WHERE cve = $1 ORDER BY update_id")
            .bind(cve.to_ascii_uppercase())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("update_id")?)).collect()
    }

    async fn devices_not_done(&self, targets: &[String], after: &str, limit: u64) -> Result<Vec<DeviceTargetState>> {
        let mut out = Vec::new();
        for target in targets {
            let rows = sqlx::query(
                "SELECT s.device_id AS device_id, d.hostname AS hostname, s.target AS target, s.state AS state, \
                 s.at AS at FROM device_update_states s JOIN devices d ON d.id = s.device_id \
                 WHERE s.target = $1 AND s.state NOT IN ('installed', 'not_applicable', 'uninstalled') \
                 AND s.device_id > $2 AND d.state = 'accepted' ORDER BY s.device_id LIMIT $3",
            )
            .bind(target)
            .bind(after)
            .bind(to_bigint(limit, "limit")?)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                out.push(DeviceTargetState {
                    device_id: row.try_get("device_id")?,
                    hostname: row.try_get("hostname")?,
                    target: row.try_get("target")?,
                    state: row.try_get("state")?,
                    at: row.try_get("at")?,
                });
            }
        }
        out.sort_by(|a, b| (&a.device_id, &a.target).cmp(&(&b.device_id, &b.target)));
        // A page is `limit` devices with every one of their rows (each target's query returned
        // its first `limit` devices, so these are complete), never a device cut in two.
        let mut devices = 0u64;
        let mut last: Option<String> = None;
        out.retain(|row| {
            if last.as_deref() != Some(row.device_id.as_str()) {
                devices += 1;
                last = Some(row.device_id.clone());
            }
            devices <= limit
        });
        Ok(out)
    }

    async fn devices_not_seen_since(&self, before: i64, after: &str, limit: u64) -> Result<Vec<SeenDevice>> {
        let rows = sqlx::query(
            "SELECT id, hostname, groups, last_checkin FROM devices WHERE state = 'accepted' \
             AND (last_checkin IS NULL OR last_checkin < $1) AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(before)
        .bind(after)
        .bind(to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SeenDevice {
                    id: row.try_get("id")?,
                    hostname: row.try_get("hostname")?,
                    groups: crate::sql::split_names(&row.try_get::<String, _>("groups")?),
                    last_checkin: row.try_get("last_checkin")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{DeviceRecord, DeviceState, DeviceStore, ReportLimits, ReportRecord};

    const STATES: [&str; 8] =
        ["downloading", "installing", "installed", "failed", "rolled_back", "not_applicable", "uninstalled", "refused"];

    fn device(i: usize) -> DeviceRecord {
        crate::devices::test_device(i, &["pilot", if i.is_multiple_of(2) { "g0" } else { "g1" }])
    }

    /// One event of a fleet's life.
    #[derive(Debug, Clone)]
    enum Event {
        /// Device, then (target, state) per report in one batch.
        Reports(usize, Vec<(usize, usize)>),
        /// Device leaves or re-enters `accepted`.
        State(usize, bool),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0usize..4, prop::collection::vec((0usize..3, 0usize..STATES.len()), 1..6))
                .prop_map(|(d, reports)| Event::Reports(d, reports)),
            1 => (0usize..4, any::<bool>()).prop_map(|(d, accepted)| Event::State(d, accepted)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// After any sequence of report batches and device state changes, the maintained
        /// counts equal a recount of the devices' newest reports, and the group counts a
        /// recount of the accepted devices.
        #[test]
        fn maintained_counts_equal_a_recount(events in prop::collection::vec(event(), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (_dir, store) = crate::sql::test_store().await;
                for i in 0..4 {
                    store.insert_device(&device(i)).await.unwrap();
                }
                let limits = ReportLimits { history: 1000, max_targets: 100, max_batch_bytes: 64 << 20, forward: false };
                let mut next_id = 0;
                let mut accepted = [true; 4];
                for e in &events {
                    match e {
                        Event::Reports(d, reports) => {
                            let records: Vec<ReportRecord> = reports
                                .iter()
                                .map(|(t, s)| {
                                    next_id += 1;
                                    ReportRecord {
                                        id: format!("r{next_id}"),
                                        target: format!("approvals/pilot/acme/f{t}"),
                                        state: STATES[*s].into(),
                                        reason: None,
                                        exit_code: None,
                                        at: next_id,
                                    }
                                })
                                .collect();
                            store.insert_reports(&format!("d{d}"), &records, &crate::devices::test_batch(), 1, limits).await.unwrap();
                        }
                        Event::State(d, to_accepted) => {
                            let state = if *to_accepted { DeviceState::Accepted } else { DeviceState::Revoked };
                            store.set_device_state(&format!("d{d}"), state).await.unwrap();
                            accepted[*d] = *to_accepted;
                        }
                    }
                }
                // The recount, from each accepted device's newest reports.
                let mut expected: BTreeMap<(String, Bucket), u64> = BTreeMap::new();
                for i in (0..4).filter(|i| accepted[*i]) {
                    for r in store.device_update_states(&format!("d{i}")).await.unwrap() {
                        *expected.entry((r.target, Bucket::of_state(&r.state))).or_insert(0) += 1;
                    }
                }
                let mut maintained = BTreeMap::new();
                for t in store.compliance_by_prefix("approvals/pilot/").await.unwrap() {
                    for (bucket, n) in t.counts {
                        if n > 0 {
                            maintained.insert((t.target.clone(), bucket), n);
                        }
                    }
                }
                assert_eq!(maintained, expected);
                let groups = store.group_devices(&["pilot".into(), "g0".into(), "g1".into()]).await.unwrap();
                let count = |f: &dyn Fn(usize) -> bool| (0..4).filter(|i| accepted[*i] && f(*i)).count() as u64;
                assert_eq!(groups["pilot"], count(&|_| true));
                assert_eq!(groups["g0"], count(&|i| i % 2 == 0));
                assert_eq!(groups["g1"], count(&|i| i % 2 == 1));
            });
        }
    }
}

#[cfg(test)]
mod concurrency {
    use super::*;
    use crate::{DeviceStore, ReportLimits, ReportRecord};

    /// Two writers at once, for different devices: every batch lands (none fails busy) and
    /// every device counts once per file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_of_different_devices_all_count() {
        let (_dir, store) = crate::sql::test_store().await;
        for i in 0..200 {
            let d = crate::devices::test_device(i, &["pilot"]);
            store.insert_device(&d).await.unwrap();
        }
        let mut tasks = Vec::new();
        for part in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in (part..200).step_by(2) {
                    let reports: Vec<ReportRecord> = (0..64)
                        .map(|k| ReportRecord {
                            id: format!("r{k}"),
                            target: format!("approvals/pilot/acme/f{}", k % 16),
                            state: "installed".into(),
                            reason: None,
                            exit_code: None,
                            at: 0,
                        })
                        .collect();
                    store
                        .insert_reports(
                            &format!("d{i}"),
                            &reports,
                            &crate::devices::test_batch(),
                            0,
                            ReportLimits { history: 1000, max_targets: 100, max_batch_bytes: 64 << 20, forward: false },
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let counts = store.compliance_by_prefix("approvals/pilot/").await.unwrap();
        assert_eq!(counts.len(), 16);
        assert!(counts.iter().all(|t| t.counts == BTreeMap::from([(Bucket::Installed, 200)])), "{counts:?}");
    }
}

#[cfg(test)]
mod cve_pages {
    use super::*;
    use crate::{DeviceStore, ReportLimits, ReportRecord};

    /// A page holds whole devices: a device exposed on two files is never cut at a page edge.
    #[tokio::test]
    async fn pages_hold_whole_devices() {
        let (_dir, store) = crate::sql::test_store().await;
        let targets = ["approvals/pilot/acme/a", "approvals/pilot/acme/b"];
        for i in 0..5 {
            let d = crate::devices::test_device(i, &["pilot"]);
            store.insert_device(&d).await.unwrap();
            let reports: Vec<ReportRecord> = targets
                .iter()
                .enumerate()
                .map(|(k, t)| ReportRecord {
                    id: format!("r{k}"),
                    target: (*t).into(),
                    state: "failed".into(),
                    reason: None,
                    exit_code: None,
                    at: 1,
                })
                .collect();
            let limits = ReportLimits { history: 100, max_targets: 10, max_batch_bytes: 1 << 20, forward: false };
            store.insert_reports(&d.id, &reports, &crate::devices::test_batch(), 1, limits).await.unwrap();
        }
        let targets: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
        let mut after = String::new();
        let mut seen = Vec::new();
        loop {
            let page = store.devices_not_done(&targets, &after, 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            let mut ids: Vec<String> = page.iter().map(|r| r.device_id.clone()).collect();
            ids.dedup();
            assert!(ids.len() <= 2 && page.len() == ids.len() * 2, "{page:?}");
            after = ids.last().unwrap().clone();
            seen.extend(ids);
        }
        assert_eq!(seen, ["d0", "d1", "d2", "d3", "d4"]);
    }
}
