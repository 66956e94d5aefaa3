//! The console's page frame and small pieces: every value goes through maud, which escapes it;
//! nothing here writes raw HTML from data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Viewer;

/// The sections of the navigation bar: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/console/", "Dashboard"),
    ("/console/updates", "Updates"),
    ("/console/approvals", "Approvals"),
    ("/console/rollouts", "Rollouts"),
    ("/console/devices", "Devices"),
    ("/console/compliance", "Compliance"),
    ("/console/groups", "Groups"),
    ("/console/audit", "Audit trail"),
    ("/console/log", "Transparency log"),
];

fn respond(status: StatusCode, page: Markup) -> Response {
    let mut r = (status, page.into_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Ringfence" }
            link rel="stylesheet" href="/console/assets/style.css";
        }
    }
}

/// A page of the console for a signed-in viewer: navigation, who is signed in, logout.
pub fn page(viewer: &Viewer, active: &str, title: &str, body: Markup) -> Response {
    respond(
        StatusCode::OK,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header {
                        span.brand { "Ringfence" }
                        nav {
                            @for (path, label) in NAV {
                                a href=(path) class=[(*path == active).then_some("active")] { (label) }
                            }
                        }
                        form.logout method="post" action="/console/logout" {
                            span.who { (viewer.caller.name) }
                            (csrf_field(viewer))
                            button type="submit" { "Log out" }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        },
    )
}

/// A page without the navigation: `heading` over `body` in a narrow box, titled `title`.
fn narrow_page(status: StatusCode, title: &str, heading: &str, body: Markup) -> Response {
    respond(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    main.narrow {
                        h1 { (heading) }
                        (body)
                    }
                }
            }
        },
    )
}

/// A page without the navigation (errors, refusals).
pub fn bare_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        p.message { (message) }
        p { a href="/console/" { "Back to the console" } }
    };
    narrow_page(status, title, title, body)
}

/// The login page, with an error when a login was refused.
pub fn login(error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/console/login" {
            label for="token" { "Admin token" }
            input id="token" name="token" type="password" autocomplete="off" required placeholder="rfat_…";
            button type="submit" { "Log in" }
        }
        p.hint {
            "Any admin token works (" code { "ringfence token create" } "); the console can do what \
             its scopes allow. It never asks for a signing key: approvals are signed offline."
        }
    };
    narrow_page(status, "Log in", "Ringfence console", body)
}

/// The page a one-time login link opens: one button that spends the code.
pub fn login_once(code: &str) -> Response {
    let body = html! {
        p { "This one-time link logs this browser in once." }
        form method="post" action="/console/login" {
            input type="hidden" name="once" value=(code);
            button type="submit" { "Log in" }
        }
        p.hint { a href="/console/login" { "Log in with an admin token instead" } }
    };
    narrow_page(StatusCode::OK, "Log in", "Ringfence console", body)
}

/// The hidden field every change's form carries.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A one-button form that posts a change.
pub fn action_button(viewer: &Viewer, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(viewer))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn when(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
        }
        Err(_) => unix.to_string(),
    }
}

/// How long ago, roughly, for a dashboard.
pub fn ago(unix: i64, now: i64) -> String {
    let secs = now.saturating_sub(unix).max(0);
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// A progress bar of `part` out of `whole` with its figures.
pub fn progress(part: u64, whole: u64) -> Markup {
    let percent = part.saturating_mul(100).checked_div(whole).unwrap_or(0);
    html! {
        span.progress {
            progress value=(part) max=(whole.max(1)) { (percent) "%" }
            " " (part) " / " (whole) " (" (percent) "%)"
        }
    }
}

/// One line of a chart: a CSS class (its colour), what the legend calls it, and its points
/// (x, y) with y in 0..=100.
pub struct Series<'a> {
    pub class: &'a str,
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A small line chart (inline SVG, no script): x from 0 to the largest x of any series (in
/// `x_unit`, named under the axis), y a percentage.
pub fn chart(title: &str, x_unit: &str, series: &[Series<'_>]) -> Markup {
    let (w, h) = (480.0_f64, 120.0_f64);
    let max_x = series.iter().flat_map(|s| s.points.iter()).map(|p| p.0).fold(0.0_f64, f64::max);
    let scale = if max_x > 0.0 { max_x } else { 1.0 };
    let line = |points: &[(f64, f64)]| -> String {
        points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x / scale * w, h - (y.clamp(0.0, 100.0) / 100.0 * h)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(title) {
                line x1="0" y1=(h) x2=(w) y2=(h) class="axis" {}
                line x1="0" y1="0" x2="0" y2=(h) class="axis" {}
                @for s in series {
                    polyline points=(line(&s.points)) class=(format!("series {}", s.class)) data-points=(s.points.len()) {}
                }
            }
            figcaption {
                (title) " · 0 to " (format!("{max_x:.1}")) " " (x_unit) ", 0 to 100 %"
                @for s in series { " " span class=(format!("key {}", s.class)) { "■ " (s.label) } }
            }
        }
    }
}

/// "Next page" with the listing's own query and `after` (or `before`) set.
pub fn next_link(base: &str, query: &[(&str, &str)], key: &str, value: &str) -> Markup {
    let mut pairs: Vec<(&str, &str)> = query.iter().filter(|(_, v)| !v.is_empty()).copied().collect();
    pairs.push((key, value));
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    html! { p.pager { a href=(format!("{base}?{encoded}")) { "Next page →" } } }
}
