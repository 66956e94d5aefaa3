//! Request ids and Prometheus metrics (`GET /metrics` on the admin listener, a token with the
//! `read` scope):
//! requests and their latencies by listener and route, check-ins, reports ingested, job runs
//! and failures, counted as they happen; devices by state, rollouts by state and every role's
//! time to expiry, read when scraped. Encoded by `prometheus-client` in the OpenMetrics text
//! format.
//!
//! Labels never carry what a caller chose: a route is the router's pattern
//! (`/repo/targets/{*path}`), or `unmatched`, so a scanner cannot grow the series.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    checkins: Counter,
    reports: Counter,
    jobs: Family<Labels, Counter>,
    webhooks: Family<Labels, Counter>,
    outbox: Gauge,
    devices: Family<Labels, Gauge>,
    devices_seen: Gauge,
    rollouts: Family<Labels, Gauge>,
    role_expiry: Family<Labels, Gauge>,
    log_size: Gauge,
    caches_on: Gauge,
    /// One scrape at a time: a scrape clears and refills the scrape-time families.
    render: std::sync::Mutex<()>,
}

/// What the scrape reads afresh.
pub struct Snapshot {
    /// (state, devices)
    pub devices: Vec<(&'static str, u64)>,
    pub devices_seen_24h: u64,
    /// (state, rollouts)
    pub rollouts: Vec<(String, u64)>,
    /// (role, seconds until it expires; negative once expired)
    pub role_expiry: Vec<(String, i64)>,
    pub log_size: u64,
    /// Webhook events waiting for delivery.
    pub webhook_waiting: u64,
    /// Whether this node keeps the newest metadata and sessions in memory (always with the
    /// embedded database; on PostgreSQL while it hears the other nodes).
    pub caches_on: bool,
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let (checkins, reports) = (Counter::default(), Counter::default());
        let jobs = Family::<Labels, Counter>::default();
        let webhooks = Family::<Labels, Counter>::default();
        let outbox = Gauge::default();
        let devices = Family::<Labels, Gauge>::default();
        let devices_seen = Gauge::default();
        let rollouts = Family::<Labels, Gauge>::default();
        let role_expiry = Family::<Labels, Gauge>::default();
        let log_size = Gauge::default();
        let caches_on = Gauge::default();
        registry.register(
            "ringfence_http_requests",
            "HTTP requests answered, by listener, route and status",
            requests.clone(),
        );
        registry.register(
            "ringfence_http_request_duration_seconds",
            "Time to answer an HTTP request (to its headers), by listener and route",
            latency.clone(),
        );
        registry.register("ringfence_device_checkins", "Device check-ins answered", checkins.clone());
        registry.register("ringfence_reports_ingested", "Status reports received in accepted batches", reports.clone());
        registry.register("ringfence_job_runs", "Background job runs, by job and outcome", jobs.clone());
        registry.register("ringfence_webhook_deliveries", "Webhook delivery attempts, by outcome", webhooks.clone());
        registry.register("ringfence_webhook_events_waiting", "Webhook events waiting for delivery", outbox.clone());
        registry.register("ringfence_devices", "Devices by state", devices.clone());
        registry.register(
            "ringfence_devices_seen_24h",
            "Accepted devices seen in the last 24 hours",
            devices_seen.clone(),
        );
        registry.register("ringfence_rollouts", "Rollouts by state", rollouts.clone());
        registry.register(
            "ringfence_role_expiry_seconds",
            "Seconds until each role's newest published version expires",
            role_expiry.clone(),
        );
        registry.register("ringfence_log_entries", "Entries on the transparency log", log_size.clone());
        registry.register(
            "ringfence_caches_on",
            "1 while this node keeps the newest metadata and sessions in memory (on PostgreSQL: while it hears the other nodes)",
            caches_on.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            checkins,
            reports,
            jobs,
            webhooks,
            outbox,
            devices,
            devices_seen,
            rollouts,
            role_expiry,
            log_size,
            caches_on,
            render: std::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn checkin(&self) {
        self.checkins.inc();
    }

    pub fn reports_ingested(&self, n: u64) {
        self.reports.inc_by(n);
    }

    /// A background job ran (`ok`) or failed.
    pub fn job(&self, job: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.jobs.get_or_create(&vec![("job", job.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// A webhook delivery attempt succeeded (`ok`) or failed.
    pub fn webhook(&self, ok: bool) {
        let outcome = if ok { "delivered" } else { "failed" };
        self.webhooks.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
    }

    fn request(&self, listener: &'static str, route: String, status: u16, seconds: f64) {
        let labels = vec![("listener", listener.to_owned()), ("route", route.clone()), ("status", status.to_string())];
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&vec![("listener", listener.to_owned()), ("route", route)]).observe(seconds);
    }

    /// The text a scrape answers, with the scrape-time values set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        let _one = self.render.lock().map_err(|_| std::fmt::Error)?;
        self.outbox.set(gauge_value(snapshot.webhook_waiting));
        self.devices.clear();
        for (state, n) in &snapshot.devices {
            self.devices.get_or_create(&vec![("state", (*state).to_owned())]).set(gauge_value(*n));
        }
        self.devices_seen.set(gauge_value(snapshot.devices_seen_24h));
        self.rollouts.clear();
        for (state, n) in &snapshot.rollouts {
            self.rollouts.get_or_create(&vec![("state", state.clone())]).set(gauge_value(*n));
        }
        self.role_expiry.clear();
        for (role, secs) in &snapshot.role_expiry {
            self.role_expiry.get_or_create(&vec![("role", role.clone())]).set(*secs);
        }
        self.log_size.set(gauge_value(snapshot.log_size));
        self.caches_on.set(i64::from(snapshot.caches_on));
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Every request of a listener (a middleware): given an id (`x-request-id` on the answer, and
/// a tracing span `request` with it, so every log line the request causes carries it),
/// counted and timed, and logged once answered (target `ringfence_access`, level debug).
pub async fn record(
    axum::extract::State((state, listener)): axum::extract::State<(std::sync::Arc<crate::AppState>, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    use tracing::Instrument;
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = request_id();
    let method = request.method().clone();
    let span = tracing::info_span!("request", id = %id, listener, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    span.in_scope(|| tracing::debug!(target: "ringfence_access", status, seconds, "answered"));
    state.metrics.request(listener, route, status, seconds);
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A request id unique to this process and unlikely to repeat across processes: a random
/// prefix chosen at start and a count.
fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut random = [0u8; 4];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut random);
        hex::encode(random)
    });
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_every_family_and_no_caller_chosen_label() {
        let m = Metrics::default();
        m.checkin();
        m.reports_ingested(3);
        m.job("renew", true);
        m.request("device", "unmatched".into(), 404, 0.001);
        let snapshot = Snapshot {
            devices: vec![("accepted", 2), ("pending", 1)],
            devices_seen_24h: 2,
            rollouts: vec![("running".into(), 1)],
            role_expiry: vec![("timestamp".into(), 3600)],
            log_size: 7,
            webhook_waiting: 0,
            caches_on: true,
        };
        let text = m.render(&snapshot).unwrap();
        for line in [
            "ringfence_device_checkins_total 1",
            "ringfence_reports_ingested_total 3",
            "ringfence_job_runs_total{job=\"renew\",outcome=\"ok\"} 1",
            "ringfence_devices{state=\"accepted\"} 2",
            "ringfence_devices_seen_24h 2",
            "ringfence_rollouts{state=\"running\"} 1",
            "ringfence_role_expiry_seconds{role=\"timestamp\"} 3600",
            "ringfence_log_entries 7",
            "ringfence_caches_on 1",
            "ringfence_http_requests_total{listener=\"device\",route=\"unmatched\",status=\"404\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // A state gone since the last scrape is not reported again.
        let later = Snapshot { rollouts: vec![], ..snapshot };
        assert!(!m.render(&later).unwrap().contains("ringfence_rollouts{"));
    }
}
