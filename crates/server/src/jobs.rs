//! Background work: renew online metadata before it expires, warn about offline roles, delete
//! expired device sessions and challenges, apply approval rules, run rollouts. Of the nodes
//! sharing one database only the one holding the jobs lease does it (`domain::cluster`); every
//! node tries to take or keep the lease every few seconds, so the work moves within seconds of
//! its leader dying.

use std::sync::Arc;
use std::time::Duration;

use crate::AppState;
use crate::domain::error::chain;

pub async fn run(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = i64::try_from(state.config.expiry.check_interval_secs.max(1)).unwrap_or(i64::MAX);
    // The lease is kept in a task of its own, so a long pass of jobs never lets it lapse.
    take_lease(&state).await;
    tokio::spawn(keep_lease(state.clone(), stop.clone()));
    // On a shared database: hear the other nodes, so what this one keeps in memory is never
    // older than what they commit (on SQLite this returns at once).
    let coherent = (state.clone(), stop.clone());
    tokio::spawn(async move {
        let (state, stop) = coherent;
        state.cluster.keep_caches_coherent(&state.repo, &state.devices, stop).await;
    });
    let (mut last_run, mut warned): (Option<i64>, Vec<String>) = (None, Vec::new());
    loop {
        let now = crate::unix_now();
        if !state.cluster.leading() {
            last_run = None;
        } else if last_run.is_none_or(|at| now - at >= interval) {
            last_run = Some(now);
            run_jobs(&state, now, &mut warned).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn take_lease(state: &AppState) {
    if let Err(e) = state.cluster.lead().await {
        tracing::error!(error = %chain(&e), "taking the jobs lease failed");
    }
}

/// Take or keep the jobs lease every few seconds, on every node.
async fn keep_lease(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(crate::domain::cluster::RENEW_SECS)) => {}
            _ = stop.changed() => return,
        }
        take_lease(&state).await;
    }
}

/// One pass of every background job (on the leading node); each step only while this node
/// still leads.
async fn run_jobs(state: &AppState, now: i64, warned: &mut Vec<String>) {
    for step in 0..6 {
        if !state.cluster.leading() {
            return;
        }
        let (job, ok) = match step {
            // A mirror signs nothing: its upstream renews, approves and runs the rollouts.
            0 | 2..=4 if state.repo.is_mirror() => continue,
            0 => (
                "renew",
                match state.repo.renew(now).await {
                    Ok(renewed) => {
                        if !renewed.is_empty() {
                            let names: Vec<String> =
                                renewed.iter().map(|r| format!("{}@{}", r.role, r.version)).collect();
                            tracing::info!(renewed = ?names, "renewed online metadata");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "renewing online metadata failed");
                        false
                    }
                },
            ),
            1 => {
                let devices = match state.devices.sweep(now).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(deleted = n, "expired device sessions and challenges");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "sweeping expired sessions failed");
                        false
                    }
                };
                let console = match state.console.sweep(now).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "sweeping ended console sessions failed");
                        false
                    }
                };
                ("sweep", devices && console)
            }
            2 => (
                "rules",
                match state.rules.run(&state.repo, &state.reports, now).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(approvals = n, "approval rules approved updates");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "applying approval rules failed");
                        false
                    }
                },
            ),
            3 => (
                "rollouts",
                match state.rollouts.tick(&state.repo, now).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::warn!(halted = n, "rollouts halted");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "checking rollouts failed");
                        false
                    }
                },
            ),
            4 if state.config.approvals.decline_superseded => (
                "decline-superseded",
                match state.rules.decline_superseded(&state.repo, &state.reports, now).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(declined = n, "declined superseded updates");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "declining superseded updates failed");
                        false
                    }
                },
            ),
            5 => ("expiry-warnings", expiry_warnings(state, now, warned).await),
            _ => continue,
        };
        state.metrics.job(job, ok);
    }
}

/// How often the sequencer looks for queued log entries: a new checkpoint at least every
/// second while there are any.
const SEQUENCE_EVERY: Duration = Duration::from_millis(500);

/// Integrate queued transparency-log entries, on the node that leads the jobs (and under the
/// database's `Log` lock, so that two nodes can never both sequence).
pub async fn sequence_log(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if !state.log.enabled() {
        return;
    }
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SEQUENCE_EVERY) => false,
            _ = stop.changed() => true,
        };
        if state.cluster.leading() {
            // A full batch is followed by the next at once.
            loop {
                match state.log.integrate(crate::unix_now()).await {
                    Ok(Some(_)) if !stopping => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %chain(&e), "integrating log entries failed; tried again shortly");
                        break;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Write buffered check-ins every second, and once more when the server stops.
pub async fn flush_checkins(state: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = stop.changed() => true,
        };
        if let Err(e) = state.devices.flush_checkins().await {
            tracing::error!(error = %chain(&e), "writing check-ins failed; kept for the next attempt");
        }
        if stopping {
            return;
        }
    }
}

/// Warn (in the log, and a `role_near_expiry` webhook event) about offline roles that expire
/// soon, and (in the log) about admin tokens that end within two weeks; each warning once,
/// while it lasts.
async fn expiry_warnings(state: &AppState, now: i64, warned: &mut Vec<String>) -> bool {
    let (health, tokens) = match (state.repo.health(now).await, state.tokens.list().await) {
        (Ok(health), Ok(tokens)) => (health, tokens),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %chain(&e), "reading expiry dates failed");
            return false;
        }
    };
    for w in health.warnings.iter().filter(|w| !warned.contains(w)) {
        tracing::warn!(warning = %w, "metadata expiry");
        let event = crate::domain::events::Event {
            expiring_role: Some(w.split(' ').next().unwrap_or_default().to_owned()),
            reason: Some(w.clone()),
            ..crate::domain::events::Event::new("role_near_expiry", "server", now)
        };
        state.events.emit(event).await;
    }
    let soon = now.saturating_add(14 * 86_400);
    let token_warnings: Vec<String> = tokens
        .iter()
        .filter(|t| !t.revoked && t.expires_at > now && t.expires_at <= soon)
        .map(|t| {
            format!(
                "admin token {} ({}) is refused from {}: rotate it (ringfence token rotate {})",
                t.id,
                t.name,
                ringfence_trust::expiry::format(t.expires_at),
                t.id
            )
        })
        .collect();
    for w in token_warnings.iter().filter(|w| !warned.contains(w)) {
        tracing::warn!(warning = %w, "admin token expiry");
    }
    *warned = health.warnings.into_iter().chain(token_warnings).collect();
    true
}
