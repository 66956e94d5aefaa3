//! The console's pages. Each one checks the viewer's scopes with the list the matching API
//! route uses (`crate::caller::needs`), reads through the domain layer (aggregates and pages,
//! never a scan of the fleet) and renders with maud.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use ringfence_proto::GroupName;
use ringfence_proto::api::{RolloutStatus, UpdateManifest};
use ringfence_proto::device::{DeviceInfo, EnrollmentTokenRequest};

use super::html::{Series, action_button, ago, chart, csrf_field, next_link, page, progress, when};
use super::{PageResult, Viewer, check_csrf, form, query};
use crate::AppState;
use crate::caller::needs;
use crate::domain::devices::{DeviceAction, DeviceState};
use crate::domain::rollouts::RolloutSample;
use crate::error::ApiError;

type Shared = State<Arc<AppState>>;
type Query<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

/// How old a rollout's stage counts on a page may be (the job loop recounts every interval).
const TALLY_AGE: i64 = 120;

/// Rows per page of a listing.
const PAGE: u64 = 50;

/// A group's compliance rows read at most at once (the CSV, an update's page).
const MAX_ROWS: u64 = 100_000;

/// A query string with every value percent-encoded.
fn encoded(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// A listing's `after` key, held to what the API's pages take.
fn page_key(after: &str) -> Result<String, super::PageError> {
    let page = crate::admin::PageQuery { limit: None, after: Some(after.to_owned()) };
    Ok(page.checked()?.1.to_owned())
}

fn bad(message: impl Into<String>) -> super::PageError {
    super::PageError::Api(ApiError::BadRequest(message.into()))
}

fn rollout_done(r: &RolloutStatus) -> u64 {
    r.installed
}

/// The devices a rollout reaches when complete: its stages' devices (or, before they are
/// counted, those with a state).
fn rollout_total(r: &RolloutStatus) -> u64 {
    let placed: u64 = r.stages.iter().map(|s| s.devices).sum();
    placed.max(r.installed + r.failed + r.stuck + r.needed)
}

/// A rollout's failure bound as people say it.
fn failure_bound(r: &RolloutStatus) -> String {
    if r.max_failures >= crate::domain::rollouts::NO_COUNT_BOUND {
        format!("{}% of its devices fail", r.max_failure_percent)
    } else {
        format!("{} failures or {}% of its devices", r.max_failures, r.max_failure_percent)
    }
}

pub async fn dashboard(State(state): Shared, viewer: Viewer) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let now = crate::unix_now();
    let fleet = state.console.fleet(now).await?;
    let pending = state.repo.list_pending().await?;
    let rollouts = state.rollouts.status_for_display(&state.repo, now, TALLY_AGE).await?;
    let health = state.repo.health(now).await?;
    let active: Vec<&RolloutStatus> = rollouts.iter().filter(|r| r.state != "archived").collect();
    // Tokens are an administrator's business (the API lists them to `admin` only).
    let expiring: Vec<_> = if viewer.caller.require(needs::ADMIN).is_ok() {
        let soon = now.saturating_add(14 * 86_400);
        state
            .tokens
            .list()
            .await?
            .into_iter()
            .filter(|t| !t.revoked && t.expires_at > now && t.expires_at <= soon)
            .collect()
    } else {
        Vec::new()
    };
    let failed: u64 = active.iter().map(|r| r.failed + r.stuck).sum();
    let body = html! {
        section.cards {
            div.card { h2 { "Devices seen in 24 h" } p.figure { (fleet.seen) } p { "of " (fleet.accepted) " accepted" } }
            div.card { h2 { "Waiting to be admitted" } p.figure { (fleet.pending) } p { a href="/console/devices?state=pending" { "pending devices" } } }
            div.card { h2 { "Approvals waiting for signatures" } p.figure { (pending.len()) } p { a href="/console/approvals" { "pending versions" } } }
            div.card { h2 { "Failed or stuck in rollouts" } p.figure { (failed) } p { a href="/console/rollouts" { "rollouts" } } }
        }
        h2 { "Rollouts in progress" }
        @if active.is_empty() { p.empty { "No rollout is running." } }
        @else {
            table {
                thead { tr { th { "Group" } th { "Update" } th { "State" } th { "Installed" } th { "Failed" } } }
                tbody {
                    @for r in &active {
                        tr {
                            td { (r.group) } td { a href=(format!("/console/updates/{}", r.update)) { (r.update) } }
                            td { span class=(format!("state {}", r.state)) { (r.state) } }
                            td { (progress(rollout_done(r), rollout_total(r))) }
                            td { (r.failed + r.stuck) }
                        }
                    }
                }
            }
        }
        h2 { "Repository health" }
        @if health.warnings.is_empty() { p.ok { "Every role is current." } }
        @for w in &health.warnings { p.warning { (w) } }
        @for t in &expiring {
            p.warning { "Admin token " (t.name) " (" code { (t.id) } ") is refused from " (when(t.expires_at))
                ": rotate it with " code { "ringfence token rotate " (t.id) } "." }
        }
        table {
            thead { tr { th { "Role" } th { "Version" } th { "Expires" } th { "Renewed by" } } }
            tbody {
                @for role in &health.roles {
                    tr { td { (role.role) } td { (role.version) } td { (role.expires) }
                         td { @if role.offline { "offline signers" } @else { "the server" } } }
                }
            }
        }
    };
    Ok(page(&viewer, "/console/", "Dashboard", body))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    classification: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    kb: String,
    #[serde(default)]
    cve: String,
    #[serde(default)]
    after: String,
}

impl UpdateQuery {
    fn matches(&self, u: &UpdateManifest) -> bool {
        let q = self.q.to_lowercase();
        (q.is_empty() || u.id.to_lowercase().contains(&q) || u.title.to_lowercase().contains(&q))
            && (self.product.is_empty() || u.product.eq_ignore_ascii_case(&self.product))
            && (self.classification.is_empty() || u.classification.as_str() == self.classification)
            && (self.severity.is_empty() || u.severity.as_str() == self.severity)
            && (self.kb.is_empty() || u.kb.iter().any(|k| k.eq_ignore_ascii_case(&self.kb)))
            && (self.cve.is_empty() || u.cves.iter().any(|c| c.eq_ignore_ascii_case(&self.cve)))
    }
}

fn select(name: &str, current: &str, options: &[&str]) -> Markup {
    html! {
        select name=(name) id=(name) {
            option value="" { "any" }
            @for o in options { option value=(o) selected[*o == current] { (o) } }
        }
    }
}

pub async fn updates(State(state): Shared, viewer: Viewer, q: Query<UpdateQuery>) -> PageResult {
    viewer.caller.require(needs::CATALOG)?;
    let q = query(q)?;
    if [&q.q, &q.product, &q.classification, &q.severity, &q.kb, &q.cve, &q.after].iter().any(|v| v.len() > 128) {
        return Err(bad("each filter: at most 128 characters"));
    }
    let (found, next) = state.repo.find_updates(|u| q.matches(u), &q.after, PAGE).await?;
    let body = html! {
        form.filters method="get" action="/console/updates" {
            label for="q" { "Search" } input id="q" name="q" value=(q.q) placeholder="id or title";
            label for="product" { "Product" } input id="product" name="product" value=(q.product);
            label for="classification" { "Classification" }
            (select("classification", &q.classification, &["security", "critical", "feature", "bugfix", "driver", "tool"]))
            label for="severity" { "Severity" }
            (select("severity", &q.severity, &["critical", "important", "moderate", "low", "unspecified"]))
            label for="kb" { "KB" } input id="kb" name="kb" value=(q.kb);
            label for="cve" { "CVE" } input id="cve" name="cve" value=(q.cve);
            button type="submit" { "Filter" }
        }
        @if found.is_empty() { p.empty { "No update matches." } }
        @else {
            table.updates {
                thead { tr { th { "Update" } th { "Title" } th { "Product" } th { "Classification" } th { "Severity" } th { "Released" } } }
                tbody {
                    @for u in &found {
                        tr {
                            td { a href=(format!("/console/updates/{}", u.id)) { (u.id) } }
                            td { (u.title) } td { (u.product) } td { (u.classification.as_str()) }
                            td { (u.severity.as_str()) } td { (u.release_date) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            (next_link("/console/updates", &[("q", &q.q), ("product", &q.product), ("classification", &q.classification),
                ("severity", &q.severity), ("kb", &q.kb), ("cve", &q.cve)], "after", &next))
        }
    };
    Ok(page(&viewer, "/console/updates", "Updates", body))
}

pub async fn update(State(state): Shared, viewer: Viewer, Path(id): Path<String>) -> PageResult {
    viewer.caller.require(needs::CATALOG)?;
    if id.len() > 64 {
        return Err(ApiError::NotFound.into());
    }
    let (u, paths) = state.repo.update(&id).await?.ok_or(ApiError::NotFound)?;
    let groups = state.repo.groups().await?;
    // How each group approved it, and its devices' states (the group's compliance rows).
    let mut approvals = Vec::new();
    for g in &groups {
        for (path, custom) in state.repo.approvals_of(&g.name).await? {
            if custom.update_id == u.id {
                approvals.push((g.name.clone(), path, custom));
            }
        }
    }
    let mut compliance = Vec::new();
    let sees_fleet = viewer.caller.require(needs::FLEET).is_ok();
    if sees_fleet {
        for g in &groups {
            let report = state.reports.compliance(&state.repo, &g.name, "", MAX_ROWS).await?;
            for row in report.rows.into_iter().filter(|r| r.update_id.as_deref() == Some(u.id.as_str())) {
                compliance.push((g.name.clone(), row));
            }
        }
    }
    let body = html! {
        p.lead { (u.title) }
        @if !u.description.is_empty() { p { (u.description) } }
        dl.facts {
            dt { "Publisher" } dd { (u.publisher) }
            dt { "Product" } dd { (u.product) }
            dt { "Classification" } dd { (u.classification.as_str()) }
            dt { "Severity" } dd { (u.severity.as_str()) }
            dt { "Released" } dd { (u.release_date) }
            dt { "KB" } dd { (u.kb.join(", ")) }
            dt { "CVEs" } dd { @for c in &u.cves { a href=(format!("/console/cve?{}", encoded(&[("cve", c)]))) { (c) } " " } }
            dt { "Supersedes" } dd { (u.supersedes.join(", ")) }
            dt { "Installer" } dd { code { (u.installer.module) } }
        }
        h2 { "Files" }
        table {
            thead { tr { th { "Name" } th { "Length" } th { "SHA-256" } } }
            tbody { @for f in &u.files { tr { td { (f.name) } td { (f.length) } td { code.hash { (f.sha256) } } } } }
        }
        p { "Published as: " @for p in &paths { code { (p) } " " } }
        h2 { "Approvals" }
        @if approvals.is_empty() { p.empty { "No group approves it yet." } }
        @else {
            table {
                thead { tr { th { "Group" } th { "Path" } th { "Action" } th { "Deadline" } th { "Staged" } } }
                tbody {
                    @for (group, path, custom) in &approvals {
                        tr { td { (group) } td { code { (path) } } td { (custom.action.as_str()) }
                             td { (custom.deadline.as_deref().unwrap_or("none")) }
                             td { @if let Some(stages) = &custom.rollout { (stages.len()) " stages signed" } @else { "no" } } }
                    }
                }
            }
        }
        h2 { "Compliance per group" }
        @if !sees_fleet { p.empty { "Your token lacks the read scope the fleet's reports need." } }
        @else if compliance.is_empty() { p.empty { "No group's devices have this update to install." } }
        @else {
            table.compliance {
                thead { tr { th { "Group" } th { "Installed" } th { "Needed" } th { "Failed" } th { "Not applicable" } th { "No status" } } }
                tbody {
                    @for (group, r) in &compliance {
                        tr { td { (group) } td { (progress(r.installed, r.installed + r.needed + r.failed + r.no_status)) }
                             td { (r.needed) } td { (r.failed) } td { (r.not_applicable) } td { (r.no_status) } }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "/console/updates", &format!("Update {}", u.id), body))
}

pub async fn approvals(State(state): Shared, viewer: Viewer) -> PageResult {
    viewer.caller.require(needs::CATALOG)?;
    let pending = state.repo.list_pending().await?;
    let body = html! {
        p.lead {
            "Role versions the server prepared and cannot sign: each is published once enough of its keys sign it. \
             Signing happens offline, on the signer's own machine, with the command shown; the console never holds a key."
        }
        @if pending.is_empty() { p.empty { "Nothing is waiting for signatures." } }
        @for p in &pending {
            section.pending {
                h2 { (p.role) " version " (p.version) }
                p { "Prepared " (when(p.created_at)) ". Signatures: " (p.signed_by.len()) " of " (p.threshold) " needed." }
                dl.facts {
                    dt { "Signed by" } dd { @if p.signed_by.is_empty() { "nobody yet" } @for k in &p.signed_by { code.hash { (k) } " " } }
                    dt { "May still sign" } dd { @for k in &p.waiting_for { code.hash { (k) } " " } }
                }
                p { "To review and sign it:" }
                pre.command { "ringfence pending sign " (p.role) " --key YOUR-KEY.pem" }
            }
        }
    };
    Ok(page(&viewer, "/console/approvals", "Pending approvals", body))
}

pub async fn rollouts(State(state): Shared, viewer: Viewer) -> PageResult {
    viewer.caller.require(needs::ROLLOUTS)?;
    let now = crate::unix_now();
    let rollouts = state.rollouts.status_for_display(&state.repo, now, TALLY_AGE).await?;
    let may_steer = viewer.caller.require(needs::APPROVE).is_ok();
    let (mut schedules, mut histories) = (Vec::new(), Vec::new());
    for r in &rollouts {
        let approvals = state.repo.approvals_of(&r.group).await?;
        let stages = approvals.values().find(|c| c.update_id == r.update).and_then(|c| c.rollout.clone());
        schedules.push(stages);
        histories.push(state.rollouts.samples(r.group.as_str(), &r.update).await?);
    }
    let body = html! {
        @if rollouts.is_empty() { p.empty { "No rollout has been started. " code { "ringfence rollout start" } " starts one." } }
        @for ((r, schedule), history) in rollouts.iter().zip(&schedules).zip(&histories) {
            section.rollout {
                h2 { (r.group) " · " a href=(format!("/console/updates/{}", r.update)) { (r.update) } " "
                     span class=(format!("state {}", r.state)) { (r.state) } }
                @if r.state == "halted" { p.reason { "Halted: " (r.reason) } }
                @else if !r.reason.is_empty() { p { "Last change: " (r.reason) } }
                p { "Share the server allows now: " (r.share) "% (the approvers allow " (r.approved_share) "%). Stage "
                    (r.stage + 1) " of " (r.stages.len()) " since " (r.stage_since) "; soak " (r.soak_hours) " h, advance at "
                    (r.success_percent) "% success. Halts itself once " (failure_bound(r)) "." }
                p { "Installed " (progress(rollout_done(r), rollout_total(r))) " · failed " (r.failed) " · stuck " (r.stuck)
                    " · still to install " (r.needed) " · retries " (r.retries) }
                table.stages {
                    thead { tr { th { "Stage" } th { "Share" } th { "Devices" } th { "Installed" } th { "Failed" } } }
                    tbody {
                        @for (i, s) in r.stages.iter().enumerate() {
                            tr class=[(i == r.stage).then_some("current")] {
                                td { (i + 1) } td { (s.percent) "%" } td { (s.devices) }
                                td { (progress(s.installed, s.devices)) } td { (s.failed) }
                            }
                        }
                    }
                }
                p.hint { "Stage counts are at most " (TALLY_AGE / 60) " minutes old; state and failure counts are current." }
                @if history.is_empty() {
                    p.hint { "No progress counted yet: the server looks at running rollouts every few minutes." }
                } @else {
                    (chart("Progress: installed and failed (or stuck), % of the group's devices, and the share allowed",
                           "hours", &history_series(history)))
                }
                @if let Some(stages) = schedule {
                    (chart("The approvers' signed schedule: share allowed over time", "hours",
                           &[Series { class: "share", label: "share allowed", points: schedule_points(stages) }]))
                }
                @if may_steer {
                    div.actions {
                        @let base = format!("/console/rollouts/{}/{}", r.group, r.update);
                        @if r.state == "running" { (action_button(&viewer, &format!("{base}/pause"), "Pause", "")) }
                        @if r.state == "paused" || r.state == "halted" { (action_button(&viewer, &format!("{base}/resume"), "Resume", "")) }
                        @if r.failed > 0 || r.stuck > 0 { (action_button(&viewer, &format!("{base}/retry"), "Retry the failed", "")) }
                        @if r.state != "stopped" && r.state != "archived" { (action_button(&viewer, &format!("{base}/stop"), "Stop", "danger")) }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "/console/rollouts", "Rollouts", body))
}

/// A rollout's samples as lines over hours from the first: installed and failed (stuck
/// counted as failed, as the halt counts them) as a share of the group's devices then, and the
/// share the server allowed.
fn history_series(samples: &[RolloutSample]) -> Vec<Series<'static>> {
    let start = samples.first().map_or(0, |s| s.at);
    let hours = |s: &RolloutSample| s.at.saturating_sub(start) as f64 / 3600.0;
    let percent = |part: u64, s: &RolloutSample| {
        if s.devices == 0 { 0.0 } else { (part as f64 * 100.0 / s.devices as f64).min(100.0) }
    };
    vec![
        Series {
            class: "installed",
            label: "installed",
            points: samples.iter().map(|s| (hours(s), percent(s.installed, s))).collect(),
        },
        Series {
            class: "failed",
            label: "failed or stuck",
            points: samples.iter().map(|s| (hours(s), percent(s.failed + s.stuck, s))).collect(),
        },
        Series {
            class: "share",
            label: "share allowed",
            points: samples.iter().map(|s| (hours(s), f64::from(s.share))).collect(),
        },
    ]
}

/// The approvers' stages as (hours from the first stage, share).
fn schedule_points(stages: &[ringfence_proto::tuf::RolloutStage]) -> Vec<(f64, f64)> {
    let times: Vec<Option<i64>> = stages.iter().map(|s| ringfence_trust::expiry::parse(&s.not_before).ok()).collect();
    let start = times.iter().flatten().min().copied().unwrap_or(0);
    let mut points = Vec::new();
    let mut last = 0.0;
    for (s, t) in stages.iter().zip(times) {
        let x = t.map_or(0.0, |t| (t - start) as f64 / 3600.0);
        points.push((x, last));
        points.push((x, f64::from(s.percent)));
        last = f64::from(s.percent);
    }
    points
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn rollout_action(
    State(state): Shared,
    viewer: Viewer,
    Path((group, update, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> PageResult {
    let f: CsrfForm = form(&headers, body).await?;
    check_csrf(&viewer, &f.csrf)?;
    viewer.caller.require(needs::APPROVE)?;
    let group = GroupName::parse(&group).map_err(|_| ApiError::NotFound)?;
    if update.len() > 64 {
        return Err(ApiError::NotFound.into());
    }
    state.rollouts.act(&state.repo, &group, &update, &action, &viewer.caller.actor(), crate::unix_now()).await?;
    Ok(Redirect::to("/console/rollouts").into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    after: String,
}

fn device_rows(devices: &[DeviceInfo], now: i64) -> Markup {
    html! {
        table.devices {
            thead { tr { th { "Device" } th { "Host name" } th { "State" } th { "Groups" } th { "Last seen" } th { "Updates" } } }
            tbody {
                @for d in devices {
                    tr {
                        td { a href=(format!("/console/devices/{}", d.id)) { code { (d.id) } } }
                        td { (d.hostname) }
                        td { span class=(format!("state {}", d.state)) { (d.state) } }
                        td { (d.groups.join(", ")) }
                        td { @if let Some(t) = d.last_checkin { (ago(t, now)) } @else { "never" } }
                        td { (d.updates.iter().filter(|u| u.state.as_str() == "installed").count()) " installed, "
                             (d.updates.iter().filter(|u| u.state.as_str() == "failed").count()) " failed" }
                    }
                }
            }
        }
    }
}

pub async fn devices(State(state): Shared, viewer: Viewer, q: Query<DeviceQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    if q.q.len() > 128 || q.after.len() > 128 || !q.after.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("q and after: at most 128 characters"));
    }
    let filter = match q.state.as_str() {
        "" => None,
        s => Some(DeviceState::parse(s).ok_or_else(|| bad("state: pending, accepted, rejected or revoked"))?),
    };
    let now = crate::unix_now();
    let found = if q.q.is_empty() {
        state.devices.list(&q.after, PAGE, filter).await?
    } else {
        state.devices.find(q.q.trim(), filter, &q.after, PAGE).await?
    };
    let is_admin = viewer.caller.require(needs::ADMIN).is_ok();
    let body = html! {
        form.filters method="get" action="/console/devices" {
            label for="q" { "Search" } input id="q" name="q" value=(q.q) placeholder="device id prefix or host name";
            label for="state" { "State" } (select("state", &q.state, &["pending", "accepted", "rejected", "revoked"]))
            button type="submit" { "Search" }
        }
        @if found.is_empty() { p.empty { "No device matches." } } @else { (device_rows(&found, now)) }
        @if found.len() as u64 == PAGE && let Some(last) = found.last() {
            (next_link("/console/devices", &[("q", &q.q), ("state", &q.state)], "after", &last.id))
        }
        @if is_admin {
            h2 { "Enrollment token" }
            p { "Devices enrolling with a token join its groups and are accepted at once; without one they wait here as pending." }
            form.filters method="post" action="/console/enrollment-tokens" {
                (csrf_field(&viewer))
                label for="groups" { "Groups" } input id="groups" name="groups" required placeholder="pilot, servers";
                label for="hours" { "Valid for (hours)" } input id="hours" name="hours" type="number" min="1" max="8760" value="24";
                label for="uses" { "Uses" } input id="uses" name="uses" type="number" min="1" max="100000" value="10";
                button type="submit" { "Create" }
            }
        }
    };
    Ok(page(&viewer, "/console/devices", "Devices", body))
}

pub async fn device(State(state): Shared, viewer: Viewer, Path(id): Path<String>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    if id.len() > 128 {
        return Err(ApiError::NotFound.into());
    }
    let d = state.devices.get(&id).await?.ok_or(ApiError::NotFound)?;
    let history = state.devices.history(&id).await?;
    let now = crate::unix_now();
    let is_admin = viewer.caller.require(needs::ADMIN).is_ok();
    let base = format!("/console/devices/{}", d.id);
    let body = html! {
        dl.facts {
            dt { "Host name" } dd { (d.hostname) }
            dt { "State" } dd { span class=(format!("state {}", d.state)) { (d.state) } }
            dt { "Groups" } dd { (d.groups.join(", ")) }
            dt { "Key" } dd { code.hash { (d.public_key) } }
            dt { "Enrolled" } dd { (when(d.enrolled_at)) }
            dt { "Last seen" } dd { @if let Some(t) = d.last_checkin { (when(t)) " (" (ago(t, now)) ")" } @else { "never" } }
            dt { "Trusted timestamp" } dd { @if let Some(v) = d.timestamp_version { "version " (v) } @else { "none yet" } }
            dt { "System" } dd { (d.inventory.os) " " (d.inventory.os_version) " " (d.inventory.architecture) ", agent " (d.inventory.agent_version) }
        }
        @if is_admin {
            div.actions {
                @if d.state == "pending" || d.state == "rejected" { (action_button(&viewer, &format!("{base}/accept"), "Accept", "")) }
                @if d.state == "pending" { (action_button(&viewer, &format!("{base}/reject"), "Reject", "danger")) }
                @if d.state == "accepted" { (action_button(&viewer, &format!("{base}/revoke"), "Revoke", "danger")) }
            }
        }
        h2 { "Updates" }
        @if d.updates.is_empty() { p.empty { "No report yet." } }
        @else { (report_table(&d.updates)) }
        h2 { "History" }
        @if history.is_empty() { p.empty { "No report yet." } } @else { (report_table(&history)) }
    };
    Ok(page(&viewer, "/console/devices", &format!("Device {}", d.hostname), body))
}

fn report_table(reports: &[ringfence_proto::device::StatusReport]) -> Markup {
    html! {
        table {
            thead { tr { th { "When" } th { "Approval path" } th { "State" } th { "Exit code" } th { "Reason" } } }
            tbody {
                @for r in reports {
                    tr { td { (when(r.at)) } td { code { (r.target) } } td { span class=(format!("state {}", r.state.as_str())) { (r.state.as_str()) } }
                         td { @if let Some(c) = r.exit_code { (c) } } td { (r.reason.as_deref().unwrap_or("")) } }
                }
            }
        }
    }
}

pub async fn device_action(
    State(state): Shared,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> PageResult {
    let f: CsrfForm = form(&headers, body).await?;
    check_csrf(&viewer, &f.csrf)?;
    viewer.caller.require(needs::ADMIN)?;
    let action = DeviceAction::parse(&action).ok_or(ApiError::NotFound)?;
    let device = state.devices.change_state(&id, action, &viewer.caller.actor(), crate::unix_now()).await?;
    Ok(Redirect::to(&format!("/console/devices/{}", device.id)).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenForm {
    csrf: String,
    groups: String,
    hours: u64,
    uses: u64,
}

pub async fn create_enrollment_token(
    State(state): Shared,
    viewer: Viewer,
    headers: HeaderMap,
    body: Body,
) -> PageResult {
    let f: EnrollmentTokenForm = form(&headers, body).await?;
    check_csrf(&viewer, &f.csrf)?;
    viewer.caller.require(needs::ADMIN)?;
    let groups = f
        .groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| GroupName::parse(g).map_err(|e| bad(format!("groups: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if !(1..=8760).contains(&f.hours) {
        return Err(bad("hours: 1 to 8760"));
    }
    let request = EnrollmentTokenRequest { groups, expires_in_secs: f.hours * 3600, max_uses: f.uses };
    let created = state.devices.create_enrollment_token(&request, &viewer.caller.actor(), crate::unix_now()).await?;
    let body = html! {
        p { "Give this token to the devices that should enroll (" code { "ringfence-agent enroll --token …" } "). It is shown only now." }
        pre.command.secret { (created.token) }
        p { "Valid until " (when(created.expires_at)) ", for " (f.uses) " device(s). Token id " code { (created.id) } "." }
        p { a href="/console/devices" { "Back to the devices" } }
    };
    Ok(page(&viewer, "/console/devices", "Enrollment token created", body))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceQuery {
    #[serde(default)]
    group: String,
    #[serde(default)]
    after: String,
}

pub async fn compliance(State(state): Shared, viewer: Viewer, q: Query<ComplianceQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    let groups = state.repo.groups().await?;
    let chosen = match q.group.as_str() {
        "" => groups.first().map(|g| g.name.clone()),
        g => Some(GroupName::parse(g).map_err(|e| bad(format!("group: {e}")))?),
    };
    let report = match &chosen {
        Some(g) => Some(state.reports.compliance(&state.repo, g, &page_key(&q.after)?, PAGE).await?),
        None => None,
    };
    let names: Vec<String> = groups.iter().map(|g| g.name.to_string()).collect();
    let current = chosen.as_ref().map(|g| g.to_string()).unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/console/compliance" {
            label for="group" { "Group" }
            select name="group" id="group" { @for n in &names { option value=(n) selected[*n == current] { (n) } } }
            button type="submit" { "Show" }
            " " a href="/console/cve" { "By CVE" }
        }
        @if let Some(report) = &report {
            p { (report.devices) " accepted device(s) in " (report.group) " and the groups below it. "
                a.download href=(format!("/console/compliance.csv?group={}", report.group)) download { "Download CSV" } }
            @if report.rows.is_empty() { p.empty { "The group approves nothing yet." } }
            @else {
                table.compliance {
                    thead { tr { th { "Approval path" } th { "Update" } th { "Action" } th { "Installed" } th { "Needed" } th { "Failed" } th { "Not applicable" } th { "No status" } } }
                    tbody {
                        @for r in &report.rows {
                            tr { td { code { (r.target) } } td { @if let Some(u) = &r.update_id { a href=(format!("/console/updates/{u}")) { (u) } } }
                                 td { @if let Some(a) = r.action { (a.as_str()) } }
                                 td { (progress(r.installed, report.devices)) } td { (r.needed) } td { (r.failed) }
                                 td { (r.not_applicable) } td { (r.no_status) } }
                        }
                    }
                }
                @if report.rows.len() as u64 == PAGE && let Some(last) = report.rows.last() {
                    (next_link("/console/compliance", &[("group", &current)], "after", last.target.as_str()))
                }
            }
        } @else { p.empty { "No group exists yet." } }
    };
    Ok(page(&viewer, "/console/compliance", "Compliance", body))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    group: String,
}

/// The whole group's compliance as CSV (every page of it), as the API's `format=csv` writes it.
pub async fn compliance_csv(State(state): Shared, viewer: Viewer, q: Query<CsvQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    let group = GroupName::parse(&q.group).map_err(|e| bad(format!("group: {e}")))?;
    // One call: the report reads the group's aggregates whole and pages them in memory.
    let report = state.reports.compliance(&state.repo, &group, "", MAX_ROWS).await?;
    let rows: Vec<Vec<String>> =
        report.rows.into_iter().map(|r| crate::admin_reports::compliance_fields(&group, r)).collect();
    let mut r = crate::admin_reports::csv(crate::admin_reports::COMPLIANCE_HEADER, rows);
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"compliance-{group}.csv\"")) {
        r.headers_mut().insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CveQuery {
    #[serde(default)]
    cve: String,
    #[serde(default)]
    after: String,
}

pub async fn cve(State(state): Shared, viewer: Viewer, q: Query<CveQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    let report = if q.cve.is_empty() {
        None
    } else {
        let cve = ringfence_proto::api::parse_cve(&q.cve).ok_or_else(|| bad("cve: a CVE id, like CVE-2025-59287"))?;
        Some(state.reports.cve(&state.repo, &cve, &page_key(&q.after)?, PAGE).await?)
    };
    let body = html! {
        form.filters method="get" action="/console/cve" {
            label for="cve" { "CVE" } input id="cve" name="cve" value=(q.cve) placeholder="CVE-2025-59287";
            button type="submit" { "Show" }
        }
        @if let Some(r) = &report {
            p { "Fixed by: " @if r.updates.is_empty() { "no update in the catalog" }
                @for u in &r.updates { a href=(format!("/console/updates/{u}")) { (u) } " " } }
            table {
                thead { tr { th { "Group" } th { "Approved" } th { "Installed" } } }
                tbody { @for g in &r.groups { tr { td { (g.group) } td { @if g.approved { "yes" } @else { "no" } } td { (progress(g.installed, g.devices)) } } } }
            }
            h2 { "Devices still exposed" }
            p { a.download href=(format!("/console/cve.csv?{}", encoded(&[("cve", &r.cve)]))) download { "Download CSV" } }
            @if r.exposed.is_empty() { p.empty { "None reported." } }
            @else {
                table {
                    thead { tr { th { "Device" } th { "Host name" } th { "Approval path" } th { "State" } th { "When" } } }
                    tbody { @for e in &r.exposed { tr { td { a href=(format!("/console/devices/{}", e.device_id)) { code { (e.device_id) } } }
                        td { (e.hostname) } td { code { (e.target) } } td { (e.state) } td { (when(e.at)) } } } }
                }
            }
        }
    };
    Ok(page(&viewer, "/console/compliance", "Compliance by CVE", body))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CveCsvQuery {
    cve: String,
}

/// The devices still exposed to a CVE as CSV (at most [`MAX_ROWS`]), as the API writes it.
pub async fn cve_csv(State(state): Shared, viewer: Viewer, q: Query<CveCsvQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    let cve = ringfence_proto::api::parse_cve(&q.cve).ok_or_else(|| bad("cve: a CVE id, like CVE-2025-59287"))?;
    let report = state.reports.cve(&state.repo, &cve, "", MAX_ROWS).await?;
    let rows: Vec<Vec<String>> =
        report.exposed.into_iter().map(|d| crate::admin_reports::cve_fields(&report.cve, d)).collect();
    let mut r = crate::admin_reports::csv(crate::admin_reports::CVE_HEADER, rows);
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"exposed-{cve}.csv\"")) {
        r.headers_mut().insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn audit(State(state): Shared, viewer: Viewer, q: Query<AuditQuery>) -> PageResult {
    viewer.caller.require(needs::FLEET)?;
    let q = query(q)?;
    let records = state.audit.page(q.before, PAGE).await?;
    let body = html! {
        table.audit {
            thead { tr { th { "#" } th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
            tbody { @for r in &records { tr { td { (r.seq) } td { (when(r.at)) } td { (r.actor) } td { (r.action) } td { (r.detail) } } } }
        }
        @if records.len() as u64 == PAGE && let Some(last) = records.last() {
            (next_link("/console/audit", &[], "before", &last.seq.to_string()))
        }
    };
    Ok(page(&viewer, "/console/audit", "Audit trail", body))
}

pub async fn log(State(state): Shared, viewer: Viewer) -> PageResult {
    viewer.caller.require(needs::CATALOG)?;
    let checkpoint = state.log.checkpoint().await?;
    let (size, entries) = state.log.recent_entries(PAGE).await?;
    let body = html! {
        p.lead { "Everything the server signs or is asked to sign is an entry here; agents and signers refuse a version that is not. \
                  Anyone can check it from " code { "/log/checkpoint" } " and the tiles on the device listener." }
        h2 { "Newest checkpoint" }
        @if let Some(c) = &checkpoint { pre.note { (String::from_utf8_lossy(c)) } } @else { p.empty { "The log has no checkpoint yet." } }
        h2 { "Newest entries (of " (size) ")" }
        table.log {
            thead { tr { th { "Index" } th { "Entry" } } }
            tbody { @for (i, e) in &entries { tr { td { (i) } td { pre { (e) } } } } }
        }
    };
    Ok(page(&viewer, "/console/log", "Transparency log", body))
}

pub async fn groups(State(state): Shared, viewer: Viewer) -> PageResult {
    viewer.caller.require(needs::CATALOG)?;
    let groups = state.repo.groups().await?;
    let body = html! {
        p.lead { "Read-only: groups, their approvers and thresholds change only through offline-signed top-level metadata." }
        table.groups {
            thead { tr { th { "Group" } th { "Parent" } th { "Approvers" } th { "Threshold" } th { "Server approves" } th { "Maintenance windows" } } }
            tbody {
                @for g in &groups {
                    tr {
                        td { a href=(format!("/console/compliance?group={}", g.name)) { (g.name) } }
                        td { @if let Some(p) = &g.parent { (p) } }
                        td { @for k in &g.approvers { code.hash { (k) } " " } }
                        td { (g.threshold) }
                        td { @if g.auto_approve { "yes (online auto-approver key)" }
                             @else if let Some(from) = &g.inherits_auto_approval_from { "inherits from " (from) }
                             @else { "no: approvers sign" } }
                        td { @for w in &g.windows { (w.days.join(",")) " " (w.start) "–" (w.end) " " (w.tz) br; } }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "/console/groups", "Groups", body))
}
