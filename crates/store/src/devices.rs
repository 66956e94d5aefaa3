//! Devices: enrollment, sessions, check-ins and status reports.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::compliance::Bucket;

use crate::sql::{conflict_or, count_from_row, from_bigint, join_names, refused, split_names, to_bigint};
use crate::{AuditRecord, Result, SqlStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    Pending,
    Accepted,
    Rejected,
    Revoked,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Accepted => "accepted",
            DeviceState::Rejected => "rejected",
            DeviceState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [DeviceState::Pending, DeviceState::Accepted, DeviceState::Rejected, DeviceState::Revoked]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    /// Lower-case hex of the ed25519 public key.
    pub public_key: String,
    pub state: DeviceState,
    pub groups: Vec<String>,
    pub hostname: String,
    /// Validated inventory JSON.
    pub inventory: String,
    pub enrolled_at: i64,
    pub last_checkin: Option<i64>,
    pub timestamp_version: Option<u64>,
}

/// A device's signed report batch a replica has not forwarded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnforwardedBatch {
    pub device_id: String,
    pub seq: u64,
    pub batch: SignedBatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub groups: Vec<String>,
    pub expires_at: i64,
    pub max_uses: u64,
    pub uses: u64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub id: String,
    pub target: String,
    pub state: String,
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportsAccepted {
    pub accepted: u64,
    pub duplicates: u64,
}

/// A device's check-in, as [`DeviceStore::record_checkins`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckinRecord {
    pub device_id: String,
    pub at: i64,
    pub timestamp_version: u64,
    /// Validated inventory JSON.
    pub inventory: String,
}

/// What the store keeps of one device's reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Reports kept per device, oldest deleted first (at least 1). The newest report of each
    /// target is kept apart, whatever this says.
    pub history: u64,
    /// Distinct targets a device may report on.
    pub max_targets: u64,
    /// Bytes of signed batches kept per device (they go with their last retained report).
    pub max_batch_bytes: u64,
    /// On a replica: the batch waits to be forwarded upstream, and is kept until it was, even
    /// past its last retained report. Elsewhere it counts as forwarded at once.
    pub forward: bool,
}

/// Bounds on pending (token-less) enrollments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    pub max_pending: u64,
    pub max_per_source: u64,
}

/// Why a pending enrollment was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRefusal {
    TooManyPending,
    TooManyFromSource,
}

/// One page of a device listing: devices after `after` (by id), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevicePage {
    pub after: Option<String>,
    pub limit: u64,
    pub state: Option<DeviceState>,
    /// Only devices enrolled from this source (`replica NAME`: through that replica).
    pub source: Option<String>,
}

/// A report batch exactly as the device signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBatch {
    pub message: Vec<u8>,
    /// Hex ed25519 signature by the device key over `message`.
    pub signature: String,
}

/// A batch for store tests, whose signatures nobody checks here (the server does).
#[cfg(test)]
pub(crate) fn test_batch() -> SignedBatch {
    SignedBatch { message: b"test".to_vec(), signature: "00".repeat(64) }
}

/// Accepted device `d<i>` of `groups`, for store tests.
#[cfg(test)]
pub(crate) fn test_device(i: usize, groups: &[&str]) -> DeviceRecord {
    DeviceRecord {
        id: format!("d{i}"),
        public_key: format!("{i:064x}"),
        state: DeviceState::Accepted,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        hostname: format!("h{i}"),
        inventory: "{}".into(),
        enrolled_at: 0,
        last_checkin: None,
        timestamp_version: None,
    }
}

/// What the server keeps about devices. Implemented next to [`crate::Store`] by the same
/// backends.
#[async_trait::async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    /// `Conflict` if a device with this key exists.
    async fn insert_device(&self, device: &DeviceRecord) -> Result<()>;
    /// Store many devices, queue the log entries that record them and append the audit record,
    /// in one transaction: `Conflict` (and nothing written) if any key or id exists.
    async fn insert_devices(
        &self,
        devices: &[DeviceRecord],
        log_entries: &[Vec<u8>],
        audit: &AuditRecord,
    ) -> Result<()>;
    async fn device(&self, id: &str) -> Result<Option<DeviceRecord>>;
    async fn device_by_key(&self, public_key: &str) -> Result<Option<DeviceRecord>>;
    /// One page of devices, ordered by id.
    async fn list_devices(&self, page: &DevicePage) -> Result<Vec<DeviceRecord>>;
    /// Store a pending device from `source` unless the pending bounds are reached (checked
    /// and inserted in one transaction).
    async fn insert_pending_device(
        &self,
        device: &DeviceRecord,
        source: &str,
        limits: PendingLimits,
    ) -> Result<Result<(), PendingRefusal>>;
    /// Spend one use of the token and store the device, in one transaction: `false` (and
    /// nothing changed) if the token is unknown, expired or used up.
    /// Spend one use of the token and add the device (with `source` recorded, when given).
    async fn enroll_with_token(
        &self,
        secret_sha256: &str,
        now: i64,
        device: &DeviceRecord,
        source: Option<&str>,
    ) -> Result<bool>;
    /// Where a device enrolled from, when that was recorded (pending devices, and devices a
    /// replica enrolled: `replica NAME`).
    async fn device_source(&self, id: &str) -> Result<Option<String>>;
    async fn count_devices(&self) -> Result<u64>;
    /// Whether any device is accepted (cheap: stops at the first).
    async fn has_accepted_devices(&self) -> Result<bool>;
    /// Set the state; leaving `accepted` ends every session of the device at once.
    async fn set_device_state(&self, id: &str, state: DeviceState) -> Result<()>;
    /// Complete a pre-authorised or pending record when the device enrolls with its key.
    async fn complete_enrollment(&self, id: &str, hostname: &str, inventory: &str, at: i64) -> Result<()>;
    /// Write many devices' check-ins in one transaction.
    async fn record_checkins(&self, checkins: &[CheckinRecord]) -> Result<()>;

    async fn insert_enrollment_token(&self, token: &EnrollmentTokenRecord) -> Result<()>;
    async fn enrollment_token(&self, secret_sha256: &str) -> Result<Option<EnrollmentTokenRecord>>;
    /// Store a challenge; a device keeps at most `max_live` live ones, the oldest go first (so
    /// whoever asks for challenges in a device's name cannot lock it out, only race it).
    async fn insert_challenge(&self, nonce: &str, device_id: &str, expires_at: i64, max_live: u64) -> Result<()>;
    /// Delete expired sessions and challenges, and pending devices that enrolled before
    /// `pending_before`; returns how many rows.
    async fn sweep_expired(&self, now: i64, pending_before: i64) -> Result<u64>;
    /// Consume a challenge: true once for a live challenge of that device, false after.
    async fn take_challenge(&self, nonce: &str, device_id: &str, now: i64) -> Result<bool>;
    async fn insert_session(&self, secret_sha256: &str, device_id: &str, expires_at: i64) -> Result<()>;
    /// The accepted device a live session belongs to.
    async fn session_device(&self, secret_sha256: &str, now: i64) -> Result<Option<DeviceRecord>>;
    /// [`DeviceStore::session_device`] with the session's expiry.
    async fn session_device_until(&self, secret_sha256: &str, now: i64) -> Result<Option<(DeviceRecord, i64)>>;

    /// Store reports; ids already stored for the device count as duplicates, not errors.
    /// Keeps the newest report per target, and at most `limits.history` reports; a batch that
    /// would pass `limits.max_targets` is refused whole.
    async fn insert_reports(
        &self,
        device_id: &str,
        reports: &[ReportRecord],
        batch: &SignedBatch,
        received_at: i64,
        limits: ReportLimits,
    ) -> Result<ReportsAccepted>;
    /// The device's newest report on `target`, with the signed batch it came in.
    async fn report_evidence(&self, device_id: &str, target: &str) -> Result<Option<(ReportRecord, SignedBatch)>>;
    /// On an upstream: the groups replica `replica` may approve for (by relay).
    async fn replica_groups(&self, replica: &str) -> Result<Vec<String>>;
    /// Replace them.
    async fn set_replica_groups(&self, replica: &str, groups: &[String]) -> Result<()>;
    /// On a replica: the oldest signed batches not forwarded upstream yet, at most `limit`.
    async fn unforwarded_batches(&self, limit: u64) -> Result<Vec<UnforwardedBatch>>;
    /// Mark batches as forwarded (they are not sent again).
    async fn mark_forwarded(&self, batches: &[(String, u64)], at: i64) -> Result<()>;
    /// The device's retained reports in the order they arrived.
    async fn device_reports(&self, device_id: &str) -> Result<Vec<ReportRecord>>;
    /// The newest report of each target the device reported on, by target.
    async fn device_update_states(&self, device_id: &str) -> Result<Vec<ReportRecord>>;
}

const DEVICE_COLUMNS: &str =
    "id, public_key, state, groups, hostname, inventory, enrolled_at, last_checkin, timestamp_version";

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    let state: String = row.try_get("state")?;
    let timestamp_version: Option<i64> = row.try_get("timestamp_version")?;
    Ok(DeviceRecord {
        id: row.try_get("id")?,
        public_key: row.try_get("public_key")?,
        state: DeviceState::parse(&state).ok_or_else(|| refused(format!("unknown device state {state:?}")))?,
        groups: split_names(&row.try_get::<String, _>("groups")?),
        hostname: row.try_get("hostname")?,
        inventory: row.try_get("inventory")?,
        enrolled_at: row.try_get("enrolled_at")?,
        last_checkin: row.try_get("last_checkin")?,
        timestamp_version: timestamp_version.map(|v| from_bigint(v, "timestamp_version")).transpose()?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id: row.try_get("id")?,
        secret_sha256: row.try_get("secret_sha256")?,
        groups: split_names(&row.try_get::<String, _>("groups")?),
        expires_at: row.try_get("expires_at")?,
        max_uses: from_bigint(row.try_get("max_uses")?, "max_uses")?,
        uses: from_bigint(row.try_get("uses")?, "uses")?,
        created_at: row.try_get("created_at")?,
    })
}

impl SqlStore {
    async fn one_device(&self, column: &str, value: &str) -> Result<Option<DeviceRecord>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE {column} = $1");
        sqlx::query(&sql).bind(value).fetch_optional(&self.pool).await?.map(|r| device_from_row(&r)).transpose()
    }
}

async fn insert_device_row(conn: &mut sqlx::AnyConnection, d: &DeviceRecord, source: Option<&str>) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (id, public_key, state, groups, hostname, inventory, enrolled_at, last_checkin, \
         timestamp_version, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&d.id)
    .bind(&d.public_key)
    .bind(d.state.as_str())
    .bind(join_names("group", &d.groups)?)
    .bind(&d.hostname)
    .bind(&d.inventory)
    .bind(d.enrolled_at)
    .bind(d.last_checkin)
    .bind(d.timestamp_version.map(|v| to_bigint(v, "timestamp_version")).transpose()?)
    .bind(source)
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_or(e, || "a device with this key or id exists".into()))?;
    if d.state == DeviceState::Accepted {
        crate::compliance::adjust_group_devices(conn, &d.groups, 1).await?;
    }
    Ok(())
}

fn report_from_row(row: &AnyRow, id_column: &str) -> Result<ReportRecord> {
    Ok(ReportRecord {
        id: row.try_get(id_column)?,
        target: row.try_get("target")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
        exit_code: row.try_get("exit_code")?,
        at: row.try_get("at")?,
    })
}

#[async_trait::async_trait]
impl DeviceStore for SqlStore {
    async fn insert_device(&self, d: &DeviceRecord) -> Result<()> {
        // The device and its groups' counts together.
        let mut tx = self.begin_write().await?;
        insert_device_row(&mut tx, d, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_devices(
        &self,
        devices: &[DeviceRecord],
        log_entries: &[Vec<u8>],
        audit: &AuditRecord,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for d in devices {
            insert_device_row(&mut tx, d, None).await?;
        }
        crate::log::queue_in(&mut tx, log_entries).await?;
        sqlx::query("INSERT INTO audit_log (at, actor, action, detail) VALUES ($1, $2, $3, $4)")
            .bind(audit.at)
            .bind(audit.actor.as_str())
            .bind(audit.action.as_str())
            .bind(audit.detail.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.one_device("id", id).await
    }

    async fn device_by_key(&self, public_key: &str) -> Result<Option<DeviceRecord>> {
        self.one_device("public_key", public_key).await
    }

    async fn list_devices(&self, page: &DevicePage) -> Result<Vec<DeviceRecord>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id > $1 AND ($2 IS NULL OR state = $2) \
             AND ($4 IS NULL OR source = $4) ORDER BY id LIMIT $3"
        );
        sqlx::query(&sql)
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(page.state.map(DeviceState::as_str))
            .bind(to_bigint(page.limit, "limit")?)
            .bind(page.source.as_deref())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device_from_row)
            .collect()
    }

    async fn insert_pending_device(
        &self,
        d: &DeviceRecord,
        source: &str,
        limits: PendingLimits,
    ) -> Result<Result<(), PendingRefusal>> {
        let mut tx = self.begin_write().await?;
        // One pending enrollment at a time, so no two floods pass the same count: PostgreSQL
        // takes a transaction lock for it first (on every node); SQLite takes its write lock
        // with the first write.
        if self.engine() == crate::sql::Engine::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(crate::cluster::LOCK_NAMESPACE)
                .bind(crate::cluster::PENDING_ENROLLMENT_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        insert_device_row(&mut tx, d, Some(source)).await?;
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE state = 'pending'")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let from_source: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE state = 'pending' AND source = $1")
            .bind(source)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let refusal = if from_source as u64 > limits.max_per_source {
            Some(PendingRefusal::TooManyFromSource)
        } else if total as u64 > limits.max_pending {
            Some(PendingRefusal::TooManyPending)
        } else {
            None
        };
        match refusal {
            Some(r) => {
                tx.rollback().await?;
                Ok(Err(r))
            }
            None => {
                tx.commit().await?;
                Ok(Ok(()))
            }
        }
    }

    async fn device_source(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT source FROM devices WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get::<Option<String>, _>("source")).transpose()?.flatten())
    }

    async fn enroll_with_token(
        &self,
        secret_sha256: &str,
        now: i64,
        device: &DeviceRecord,
        source: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1 \
             WHERE secret_sha256 = $1 AND expires_at > $2 AND uses < max_uses",
        )
        .bind(secret_sha256)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // A failed insert (say, a parallel retry with the same key) rolls the use back.
        insert_device_row(&mut tx, device, source).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_devices(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM devices").fetch_one(&self.pool).await?;
        count_from_row(&row)
    }

    async fn has_accepted_devices(&self) -> Result<bool> {
        let row =
            sqlx::query("SELECT id FROM devices WHERE state = 'accepted' LIMIT 1").fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    async fn set_device_state(&self, id: &str, state: DeviceState) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // The write lock first, then the state it leaves (for the per-group counts).
        let done =
            sqlx::query("UPDATE devices SET hostname = hostname WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query("SELECT state, groups FROM devices WHERE id = $1").bind(id).fetch_one(&mut *tx).await?;
        let was_accepted = row.try_get::<String, _>("state")? == DeviceState::Accepted.as_str();
        let groups = split_names(&row.try_get::<String, _>("groups")?);
        sqlx::query("UPDATE devices SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let is_accepted = state == DeviceState::Accepted;
        if was_accepted != is_accepted {
            // Only accepted devices count: in their groups, and in compliance.
            let delta = if is_accepted { 1 } else { -1 };
            crate::compliance::adjust_group_devices(&mut tx, &groups, delta).await?;
            let rows = sqlx::query("SELECT target, state FROM device_update_states WHERE device_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            let mut deltas: BTreeMap<(String, Bucket), i64> = BTreeMap::new();
            for row in rows {
                let state: String = row.try_get("state")?;
                *deltas.entry((row.try_get("target")?, Bucket::of_state(&state))).or_insert(0) += delta;
            }
            crate::compliance::apply_compliance_deltas(&mut tx, &deltas).await?;
        }
        if state != DeviceState::Accepted {
            sqlx::query("DELETE FROM device_sessions WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM device_challenges WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
            crate::changes::notify_in(&mut tx, self.engine(), crate::Change::Sessions).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn complete_enrollment(&self, id: &str, hostname: &str, inventory: &str, at: i64) -> Result<()> {
        let done = sqlx::query("UPDATE devices SET hostname = $1, inventory = $2, enrolled_at = $3 WHERE id = $4")
            .bind(hostname)
            .bind(inventory)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn record_checkins(&self, checkins: &[CheckinRecord]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Rows in one order on every node (no two batches wait for each other), and a newer
        // check-in another node wrote is never overwritten by an older one.
        let mut ordered: Vec<&CheckinRecord> = checkins.iter().collect();
        ordered.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        for c in ordered {
            // A version beyond the column's range is stored as the largest it holds: one
            // device's value can never fail the batch of every other device.
            let version = i64::try_from(c.timestamp_version).unwrap_or(i64::MAX);
            sqlx::query(
                "UPDATE devices SET last_checkin = $1, timestamp_version = $2, inventory = $3 \
                 WHERE id = $4 AND (last_checkin IS NULL OR last_checkin <= $1)",
            )
            .bind(c.at)
            .bind(version)
            .bind(&c.inventory)
            .bind(&c.device_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_enrollment_token(&self, t: &EnrollmentTokenRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_sha256, groups, expires_at, max_uses, uses, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(&t.secret_sha256)
        .bind(join_names("group", &t.groups)?)
        .bind(t.expires_at)
        .bind(to_bigint(t.max_uses, "max_uses")?)
        .bind(to_bigint(t.uses, "uses")?)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || "an enrollment token with this id or secret exists".into()))?;
        Ok(())
    }

    async fn enrollment_token(&self, secret_sha256: &str) -> Result<Option<EnrollmentTokenRecord>> {
        sqlx::query(
            "SELECT id, secret_sha256, groups, expires_at, max_uses, uses, created_at FROM enrollment_tokens \
             WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| token_from_row(&r))
        .transpose()
    }

    async fn insert_challenge(&self, nonce: &str, device_id: &str, expires_at: i64, max_live: u64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO device_challenges (nonce, device_id, expires_at) VALUES ($1, $2, $3)")
            .bind(nonce)
            .bind(device_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, || "challenge exists".into()))?;
        // The new one and the max_live - 1 that expire last stay.
        sqlx::query(
            "DELETE FROM device_challenges WHERE device_id = $1 AND nonce <> $2 AND nonce NOT IN \
             (SELECT nonce FROM device_challenges WHERE device_id = $1 AND nonce <> $2 \
              ORDER BY expires_at DESC, nonce LIMIT $3)",
        )
        .bind(device_id)
        .bind(nonce)
        .bind(to_bigint(max_live.max(1) - 1, "max_live")?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sweep_expired(&self, now: i64, pending_before: i64) -> Result<u64> {
        let sessions =
            sqlx::query("DELETE FROM device_sessions WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        let challenges =
            sqlx::query("DELETE FROM device_challenges WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        let pending = sqlx::query("DELETE FROM devices WHERE state = 'pending' AND enrolled_at < $1")
            .bind(pending_before)
            .execute(&self.pool)
            .await?;
        Ok(sessions.rows_affected() + challenges.rows_affected() + pending.rows_affected())
    }

    async fn take_challenge(&self, nonce: &str, device_id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM device_challenges WHERE nonce = $1 AND device_id = $2 AND expires_at > $3")
            .bind(nonce)
            .bind(device_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        // Expired challenges are swept on the way.
        sqlx::query("DELETE FROM device_challenges WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_session(&self, secret_sha256: &str, device_id: &str, expires_at: i64) -> Result<()> {
        sqlx::query("INSERT INTO device_sessions (secret_sha256, device_id, expires_at) VALUES ($1, $2, $3)")
            .bind(secret_sha256)
            .bind(device_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict_or(e, || "session exists".into()))?;
        Ok(())
    }

    async fn session_device(&self, secret_sha256: &str, now: i64) -> Result<Option<DeviceRecord>> {
        Ok(self.session_device_until(secret_sha256, now).await?.map(|(d, _)| d))
    }

    async fn session_device_until(&self, secret_sha256: &str, now: i64) -> Result<Option<(DeviceRecord, i64)>> {
        let sql = format!(
            "SELECT {}, s.expires_at AS session_expires FROM device_sessions s JOIN devices d ON d.id = s.device_id \
             WHERE s.secret_sha256 = $1 AND s.expires_at > $2 AND d.state = 'accepted'",
            DEVICE_COLUMNS.split(", ").map(|c| format!("d.{c}")).collect::<Vec<_>>().join(", ")
        );
        let Some(row) = sqlx::query(&sql).bind(secret_sha256).bind(now).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some((device_from_row(&row)?, row.try_get("session_expires")?)))
    }

    async fn insert_reports(
        &self,
        device_id: &str,
        reports: &[ReportRecord],
        batch: &SignedBatch,
        received_at: i64,
        limits: ReportLimits,
    ) -> Result<ReportsAccepted> {
        let mut tx = self.begin_write().await?;
        // The write lock first (see the module docs; a column no foreign key points at), then
        // the newest sequence number by index.
        sqlx::query("UPDATE devices SET hostname = hostname WHERE id = $1").bind(device_id).execute(&mut *tx).await?;
        // Only an accepted device counts in compliance (one revoked since its session was
        // checked still has its reports kept; they count again if it is accepted again).
        let counts = sqlx::query("SELECT state FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<String, _>("state"))
            .transpose()?
            .is_some_and(|state| state == DeviceState::Accepted.as_str());
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM status_reports WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await?;
        let mut seq: i64 = row.try_get("seq")?;
        let targets: i64 = sqlx::query("SELECT COUNT(*) AS n FROM device_update_states WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let mut targets = targets as u64;
        let mut accepted = 0;
        // The batch's number for this device; stored below only if a report of it is new.
        let batch_seq: i64 =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM report_batches WHERE device_id = $1")
                .bind(device_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("seq")?;
        // The batch's net change to the compliance counts, written once at the end.
        let mut deltas: BTreeMap<(String, Bucket), i64> = BTreeMap::new();
        for r in reports {
            let done = sqlx::query(
                "INSERT INTO status_reports (device_id, id, target, state, reason, exit_code, at, received_at, seq, \
                 batch_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (device_id, id) DO NOTHING",
            )
            .bind(device_id)
            .bind(&r.id)
            .bind(&r.target)
            .bind(&r.state)
            .bind(&r.reason)
            .bind(r.exit_code)
            .bind(r.at)
            .bind(received_at)
            .bind(seq + 1)
            .bind(batch_seq)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            seq += 1;
            accepted += 1;
            let previous: Option<String> =
                sqlx::query("SELECT state FROM device_update_states WHERE device_id = $1 AND target = $2")
                    .bind(device_id)
                    .bind(&r.target)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.try_get("state"))
                    .transpose()?;
            if let Some(previous) = &previous {
                *deltas.entry((r.target.clone(), Bucket::of_state(previous))).or_insert(0) -= 1;
            }
            *deltas.entry((r.target.clone(), Bucket::of_state(&r.state))).or_insert(0) += 1;
            if previous.is_none() {
                targets += 1;
                if targets > limits.max_targets {
                    tx.rollback().await?;
                    return Err(StoreError::Refused(format!(
                        "reports: a device may report on at most {} targets",
                        limits.max_targets
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO device_update_states (device_id, target, report_id, state, reason, exit_code, at, seq, \
                 batch_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (device_id, target) DO UPDATE SET report_id = excluded.report_id, \
                 state = excluded.state, reason = excluded.reason, exit_code = excluded.exit_code, \
                 at = excluded.at, seq = excluded.seq, batch_seq = excluded.batch_seq",
            )
            .bind(device_id)
            .bind(&r.target)
            .bind(&r.id)
            .bind(&r.state)
            .bind(&r.reason)
            .bind(r.exit_code)
            .bind(r.at)
            .bind(seq)
            .bind(batch_seq)
            .execute(&mut *tx)
            .await?;
        }
        if accepted > 0 {
            let held: i64 = sqlx::query(
                "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS n FROM report_batches WHERE device_id = $1",
            )
            .bind(device_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            let size = batch.message.len() as u64;
            if u64::try_from(held).unwrap_or(0).saturating_add(size) > limits.max_batch_bytes {
                tx.rollback().await?;
                return Err(StoreError::Refused(format!(
                    "reports: the signed batches kept for this device would pass {} bytes",
                    limits.max_batch_bytes
                )));
            }
            sqlx::query(
                "INSERT INTO report_batches (device_id, seq, message, bytes, signature, received_at, forwarded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(device_id)
            .bind(batch_seq)
            .bind(&batch.message)
            .bind(to_bigint(size, "bytes")?)
            .bind(&batch.signature)
            .bind(received_at)
            .bind((!limits.forward).then_some(received_at))
            .execute(&mut *tx)
            .await?;
        }
        if counts {
            crate::compliance::apply_compliance_deltas(&mut tx, &deltas).await?;
        }
        // Retention: the oldest reports beyond the history go (by index).
        let keep = to_bigint(limits.history.max(1), "history")?;
        let dropped = sqlx::query("DELETE FROM status_reports WHERE device_id = $1 AND seq <= $2")
            .bind(device_id)
            .bind(seq - keep)
            .execute(&mut *tx)
            .await?;
        // A batch goes with the last retained report that came in it.
        if dropped.rows_affected() > 0 {
            sqlx::query(
                "DELETE FROM report_batches WHERE device_id = $1 AND forwarded_at IS NOT NULL \
                 AND seq NOT IN (SELECT batch_seq FROM status_reports WHERE device_id = $1 AND batch_seq IS NOT NULL) \
                 AND seq NOT IN (SELECT batch_seq FROM device_update_states WHERE device_id = $1 AND batch_seq IS NOT NULL)",
            )
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ReportsAccepted { accepted, duplicates: reports.len() as u64 - accepted })
    }

    async fn report_evidence(&self, device_id: &str, target: &str) -> Result<Option<(ReportRecord, SignedBatch)>> {
        let row = sqlx::query(
            "SELECT s.report_id AS report_id, s.target AS target, s.state AS state, s.reason AS reason, \
             s.exit_code AS exit_code, s.at AS at, b.message AS message, b.signature AS signature \
             FROM device_update_states s JOIN report_batches b ON b.device_id = s.device_id AND b.seq = s.batch_seq \
             WHERE s.device_id = $1 AND s.target = $2",
        )
        .bind(device_id)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let report = report_from_row(&row, "report_id")?;
            Ok((report, SignedBatch { message: row.try_get("message")?, signature: row.try_get("signature")? }))
        })
        .transpose()
    }

    async fn replica_groups(&self, replica: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT group_name FROM replica_groups WHERE replica = $1 ORDER BY group_name")
            .bind(replica)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("group_name")?)).collect()
    }

    async fn set_replica_groups(&self, replica: &str, groups: &[String]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM replica_groups WHERE replica = $1").bind(replica).execute(&mut *tx).await?;
        for group in groups {
            sqlx::query("INSERT INTO replica_groups (replica, group_name) VALUES ($1, $2)")
                .bind(replica)
                .bind(group.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn unforwarded_batches(&self, limit: u64) -> Result<Vec<UnforwardedBatch>> {
        let rows = sqlx::query(
            "SELECT device_id, seq, message, signature FROM report_batches WHERE forwarded_at IS NULL \
             ORDER BY received_at, device_id, seq LIMIT $1",
        )
        .bind(to_bigint(limit, "limit")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UnforwardedBatch {
                    device_id: r.try_get("device_id")?,
                    seq: from_bigint(r.try_get("seq")?, "seq")?,
                    batch: SignedBatch { message: r.try_get("message")?, signature: r.try_get("signature")? },
                })
            })
            .collect()
    }

    async fn mark_forwarded(&self, batches: &[(String, u64)], at: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (device_id, seq) in batches {
            sqlx::query("UPDATE report_batches SET forwarded_at = $1 WHERE device_id = $2 AND seq = $3")
                .bind(at)
                .bind(device_id.as_str())
                .bind(to_bigint(*seq, "seq")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn device_reports(&self, device_id: &str) -> Result<Vec<ReportRecord>> {
        let rows = sqlx::query(
            "SELECT id, target, state, reason, exit_code, at FROM status_reports WHERE device_id = $1 \
             ORDER BY seq",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| report_from_row(row, "id")).collect()
    }

    async fn device_update_states(&self, device_id: &str) -> Result<Vec<ReportRecord>> {
        let rows = sqlx::query(
            "SELECT report_id, target, state, reason, exit_code, at FROM device_update_states \
             WHERE device_id = $1 ORDER BY target",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| report_from_row(row, "report_id")).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn device() -> DeviceRecord {
        DeviceRecord { id: "d".into(), ..test_device(0, &["pilot"]) }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Overlapping batches sent concurrently, each several times (retries after lost
        /// answers), store every report id exactly once, and the newest state per target is
        /// the one with the highest sequence number.
        #[test]
        fn report_ingest_is_exactly_once_under_concurrent_retries(
            batches in prop::collection::vec(prop::collection::vec(0u32..40, 1..20), 1..6),
            retries in 1usize..4,
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (accepted, stored, states) = rt.block_on(async {
                let (_dir, store) = crate::sql::test_store().await;
                store.insert_device(&device()).await.unwrap();
                let limits = ReportLimits { history: 1000, max_targets: 100, max_batch_bytes: 64 << 20, forward: false };
                let mut tasks = Vec::new();
                for _ in 0..retries {
                    for batch in &batches {
                        let store = store.clone();
                        let records: Vec<ReportRecord> = batch
                            .iter()
                            .map(|i| ReportRecord {
                                id: format!("r{i}"),
                                target: format!("t{}", i % 5),
                                state: "installed".into(),
                                reason: None,
                                exit_code: None,
                                at: i64::from(*i),
                            })
                            .collect();
                        tasks.push(tokio::spawn(async move { store.insert_reports("d", &records, &test_batch(), 1, limits).await }));
                    }
                }
                let mut accepted = 0;
                for task in tasks {
                    accepted += task.await.unwrap().unwrap().accepted;
                }
                let stored = store.device_reports("d").await.unwrap();
                let states = store.device_update_states("d").await.unwrap();
                (accepted, stored, states)
            });
            let distinct: BTreeSet<String> = batches.iter().flatten().map(|i| format!("r{i}")).collect();
            prop_assert_eq!(accepted, distinct.len() as u64);
            let ids: Vec<String> = stored.iter().map(|r| r.id.clone()).collect();
            prop_assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), distinct);
            prop_assert_eq!(ids.len(), stored.len());
            // The newest state of each target is its last report in arrival order.
            for state in &states {
                let last = stored.iter().rev().find(|r| r.target == state.target).unwrap();
                prop_assert_eq!(&last.id, &state.id);
            }
            let targets: BTreeSet<&str> = stored.iter().map(|r| r.target.as_str()).collect();
            prop_assert_eq!(states.len(), targets.len());
        }
    }
}
