//! Admin routes for reports: `/api/v1/reports/compliance?group=G`, `/api/v1/reports/cve/{id}`,
//! `/api/v1/reports/stale?days=N`. Each a page at a time (`limit`, `after`), as JSON or, with
//! `format=csv`, as CSV. The work is `domain::reports`. And `/api/v1/reports/site/{name}`:
//! the devices enrolled through one downstream replica, by state and by target (JSON).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ringfence_proto::GroupName;
use ringfence_proto::api::parse_cve;

use crate::AppState;
use crate::admin::{PageQuery, query};
use crate::caller::{Caller, needs};
use crate::error::{ApiError, ApiResult};

type Shared = State<Arc<AppState>>;
type Query<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::get;
    axum::Router::new()
        .route("/api/v1/reports/compliance", get(compliance))
        .route("/api/v1/reports/cve/{cve}", get(cve))
        .route("/api/v1/reports/stale", get(stale))
        .route("/api/v1/reports/site/{name}", get(site))
}

/// Compliance of the devices enrolled through one downstream replica.
async fn site(State(state): Shared, caller: Caller, Path(name): Path<String>) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("site: a replica's token name".into()));
    }
    Ok(Json(state.devices.site_compliance(&name).await?).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    group: Option<String>,
    days: Option<u64>,
    limit: Option<u64>,
    after: Option<String>,
    format: Option<String>,
}

impl ReportQuery {
    fn page(&self) -> ApiResult<(u64, String)> {
        let page = PageQuery { limit: self.limit, after: self.after.clone() };
        let (limit, after) = page.checked()?;
        Ok((limit, after.to_owned()))
    }

    fn csv(&self) -> ApiResult<bool> {
        match self.format.as_deref() {
            None | Some("json") => Ok(false),
            Some("csv") => Ok(true),
            Some(_) => Err(ApiError::BadRequest("format: json or csv".into())),
        }
    }
}

/// One CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`,
/// `+`, `-` or `@` (a formula to a spreadsheet; host names come from devices) gets a `'`.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value.to_owned() };
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

pub(crate) fn csv(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Response {
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    let mut response = Response::new(Body::from(out));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    response
}

async fn compliance(State(state): Shared, caller: Caller, q: Query<ReportQuery>) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let q = query(q)?;
    let (limit, after) = q.page()?;
    let group = q.group.as_deref().ok_or_else(|| ApiError::BadRequest("group: required".into()))?;
    let group = GroupName::parse(group).map_err(|e| ApiError::BadRequest(format!("group: {e}")))?;
    let report = state.reports.compliance(&state.repo, &group, &after, limit).await?;
    if !q.csv()? {
        return Ok(Json(report).into_response());
    }
    let rows = report.rows.into_iter().map(|r| compliance_fields(&report.group, r));
    Ok(csv(COMPLIANCE_HEADER, rows))
}

/// The columns of a compliance CSV.
pub(crate) const COMPLIANCE_HEADER: &[&str] = &[
    "group",
    "target",
    "update_id",
    "action",
    "deadline",
    "installed",
    "needed",
    "failed",
    "not_applicable",
    "uninstalled",
    "no_status",
];

/// One compliance row's CSV fields, in [`COMPLIANCE_HEADER`]'s order.
pub(crate) fn compliance_fields(group: &GroupName, r: ringfence_proto::api::ComplianceRow) -> Vec<String> {
    vec![
        group.to_string(),
        r.target.to_string(),
        r.update_id.unwrap_or_default(),
        r.action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
        r.deadline.unwrap_or_default(),
        r.installed.to_string(),
        r.needed.to_string(),
        r.failed.to_string(),
        r.not_applicable.to_string(),
        r.uninstalled.to_string(),
        r.no_status.to_string(),
    ]
}

async fn cve(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
    q: Query<ReportQuery>,
) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let q = query(q)?;
    let (limit, after) = q.page()?;
    let id = parse_cve(&id).ok_or_else(|| ApiError::BadRequest("a CVE id, like CVE-2025-59287".into()))?;
    let report = state.reports.cve(&state.repo, &id, &after, limit).await?;
    if !q.csv()? {
        return Ok(Json(report).into_response());
    }
    let rows = report.exposed.into_iter().map(|d| cve_fields(&report.cve, d));
    Ok(csv(CVE_HEADER, rows))
}

/// The columns of an exposed-devices CSV.
pub(crate) const CVE_HEADER: &[&str] = &["cve", "device_id", "hostname", "target", "state", "at"];

/// One exposed device's CSV fields, in [`CVE_HEADER`]'s order.
pub(crate) fn cve_fields(cve: &str, d: ringfence_proto::api::ExposedDevice) -> Vec<String> {
    vec![cve.to_owned(), d.device_id, d.hostname, d.target, d.state, d.at.to_string()]
}

async fn stale(State(state): Shared, caller: Caller, q: Query<ReportQuery>) -> ApiResult<Response> {
    caller.require(needs::FLEET)?;
    let q = query(q)?;
    let (limit, after) = q.page()?;
    let days = q.days.unwrap_or(30);
    if days > 3650 {
        return Err(ApiError::BadRequest("days: 0 to 3650".into()));
    }
    let devices = state.devices.stale(days, crate::unix_now(), &after, limit).await?;
    if !q.csv()? {
        return Ok(Json(devices).into_response());
    }
    let rows = devices
        .into_iter()
        .map(|d| vec![d.id, d.hostname, d.groups.join(" "), d.last_checkin.map(|t| t.to_string()).unwrap_or_default()]);
    Ok(csv(&["device_id", "hostname", "groups", "last_checkin"], rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }
}
