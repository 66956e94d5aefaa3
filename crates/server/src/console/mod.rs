//! The web console, on the admin listener under `/console/`: pages rendered here (maud,
//! escaping everything it interpolates), one embedded stylesheet, no script at all.
//!
//! Security of the console itself:
//! - a browser logs in with an admin token and gets a session cookie (`__Host-` prefixed,
//!   `HttpOnly`, `Secure`, `SameSite=Strict`, path `/`); the session stands for the token (its
//!   scopes, checked with the API's own lists in [`crate::caller::needs`]) and ends when idle,
//!   at its expiry, at logout, or when the token is revoked ([`crate::domain::console`]);
//! - every change is a `POST` whose form carries the session's CSRF token, and whose
//!   `Sec-Fetch-Site` (when the browser sends one) is `same-origin` and `Origin` (when sent) is
//!   this listener; the login form is held to the same origin rules;
//! - every answer carries a Content-Security-Policy that allows no script, no frames, forms only
//!   to this origin and styles only from the embedded stylesheet, and `Cache-Control: no-store`;
//! - forms and queries are parsed into fixed structs (unknown fields refused), bodies at most
//!   [`MAX_FORM`] bytes;
//! - the console never asks for a signing key: pending approvals show the command to run.

mod html;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::caller::Caller;
use crate::domain::console::{csrf_matches, csrf_token};
use crate::error::ApiError;

/// The session cookie's name: `__Host-` makes browsers refuse it unless it is `Secure`, has
/// path `/` and no domain.
pub const COOKIE: &str = "__Host-ringfence-console";

/// Largest form body a console page posts.
const MAX_FORM: usize = 4096;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(pages::dashboard))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/style.css", get(stylesheet))
        .route("/console/updates", get(pages::updates))
        .route("/console/updates/{id}", get(pages::update))
        .route("/console/approvals", get(pages::approvals))
        .route("/console/rollouts", get(pages::rollouts))
        .route("/console/rollouts/{group}/{update}/{action}", post(pages::rollout_action))
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/{id}", get(pages::device))
        .route("/console/devices/{id}/{action}", post(pages::device_action))
        .route("/console/enrollment-tokens", post(pages::create_enrollment_token))
        .route("/console/compliance", get(pages::compliance))
        .route("/console/compliance.csv", get(pages::compliance_csv))
        .route("/console/cve", get(pages::cve))
        .route("/console/cve.csv", get(pages::cve_csv))
        .route("/console/audit", get(pages::audit))
        .route("/console/log", get(pages::log))
        .route("/console/groups", get(pages::groups))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The headers every console answer carries (and `Host` for an HTTP/2 request).
async fn security_headers(mut request: Request, next: Next) -> Response {
    // HTTP/2 names the host in the `:authority` pseudo-header, not in `Host`: the origin checks
    // read `Host`.
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` with the console's own forms.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn stylesheet() -> Response {
    let mut r = Response::new(Body::from(include_str!("style.css")));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    r
}

/// A console page's failure: shown as a page (or, with no session, a way to the login).
#[derive(Debug)]
pub enum PageError {
    /// No live session: a page asked for goes to the login; a change is refused.
    NoSession {
        wants_page: bool,
    },
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError::Api(e)
    }
}

impl From<crate::domain::Error> for PageError {
    fn from(e: crate::domain::Error) -> Self {
        PageError::Api(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::NoSession { wants_page: true } => Redirect::to("/console/login").into_response(),
            PageError::NoSession { wants_page: false } => {
                html::bare_page(StatusCode::FORBIDDEN, "Not signed in", "Log in again and repeat the action.")
            }
            PageError::Api(e) => {
                if let ApiError::Internal(cause) = &e {
                    tracing::error!(cause = %crate::domain::error::chain(cause.as_ref()), "internal error");
                }
                let status = e.status();
                html::bare_page(status, status.canonical_reason().unwrap_or("Error"), &e.to_string())
            }
        }
    }
}

pub type PageResult = Result<Response, PageError>;

/// Who is looking: a live console session, as the API caller it stands for.
pub struct Viewer {
    pub caller: Caller,
    /// The token each form of this session must carry.
    pub csrf: String,
    secret: String,
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let wants_page = parts.method == axum::http::Method::GET;
        let secret = session_cookie(&parts.headers).ok_or(PageError::NoSession { wants_page })?;
        let holder = match state.console.session(&secret, crate::unix_now()).await {
            Ok(holder) => holder,
            Err(crate::domain::Error::Unauthenticated) => return Err(PageError::NoSession { wants_page }),
            Err(e) => return Err(e.into()),
        };
        Ok(Viewer { caller: Caller::from(holder), csrf: csrf_token(&secret), secret })
    }
}

/// Refuse a change that a page of another site may have sent: `Sec-Fetch-Site` other than
/// `same-origin`, an `Origin` other than this listener's, or neither header (every browser
/// sends `Origin` with a form's `POST`).
fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let refused = || PageError::Api(ApiError::Forbidden("refused: this request came from another site".into()));
    if !headers.contains_key("sec-fetch-site") && !headers.contains_key(header::ORIGIN) {
        return Err(refused());
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(refused());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).ok_or_else(refused)?;
        if origin.to_str().ok() != Some(&format!("https://{host}")) {
            return Err(refused());
        }
    }
    Ok(())
}

/// A form body, bounded and parsed into `T` (unknown fields refused), from this origin.
pub async fn form<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, PageError> {
    same_origin(headers)?;
    let bytes = crate::admin::read_body(body, MAX_FORM).await?;
    serde_urlencoded::from_bytes(&bytes).map_err(|e| PageError::Api(ApiError::BadRequest(format!("form: {e}"))))
}

/// A change's form: its CSRF token must be this session's.
pub fn check_csrf(viewer: &Viewer, given: &str) -> Result<(), PageError> {
    if csrf_matches(&viewer.secret, given) {
        Ok(())
    } else {
        Err(PageError::Api(ApiError::Forbidden("refused: the form's CSRF token is not this session's".into())))
    }
}

/// A page's query string, parsed into `T` (unknown fields refused).
pub fn query<T: DeserializeOwned>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, PageError> {
    Ok(crate::admin::query(query)?)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginQuery {
    once: Option<String>,
}

/// The login form; with `?once=CODE` (the link `ringfence quickstart` prints), a button that
/// spends the one-time code: following the link logs nobody in by itself, so a link preview
/// or prefetch cannot spend it.
async fn login_page(
    q: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let q = query(q)?;
    Ok(match q.once {
        Some(code) if code.len() <= 128 => html::login_once(&code),
        _ => html::login(None, StatusCode::OK),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    token: Option<String>,
    once: Option<String>,
}

async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::device_api::PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> PageResult {
    // Attempts per source address first (headers only): a guesser is refused before its form
    // is read or a token looked up.
    let source = crate::device_api::source_of(peer);
    if let Err(retry_after) = state.login_throttle.take(&source, std::time::Instant::now()) {
        let why = format!("Too many login attempts from this address: try again in {retry_after} seconds.");
        let mut page = html::login(Some(&why), StatusCode::TOO_MANY_REQUESTS);
        page.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return Ok(page);
    }
    let form: LoginForm = form(&headers, body).await?;
    let now = crate::unix_now();
    let outcome = match (&form.token, &form.once) {
        (Some(token), None) => state.console.login(token.trim(), now).await.map(|(secret, _)| secret),
        (None, Some(code)) => state.console.login_once(code.trim(), now).await,
        _ => return Err(PageError::Api(ApiError::BadRequest("form: a token or a one-time code".into()))),
    };
    match outcome {
        Ok(secret) => {
            if let Some(old) = session_cookie(&headers) {
                state.console.discard(&old).await?;
            }
            let cookie = format!(
                "{COOKIE}={secret}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
                state.console.session_secs()
            );
            let mut r = Redirect::to("/console/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
            Ok(r)
        }
        Err(crate::domain::Error::Unauthenticated) => {
            let why = if form.once.is_some() {
                "That one-time login was used already, has expired, or its token was revoked."
            } else {
                "That token is not valid (unknown, mistyped or revoked)."
            };
            Ok(html::login(Some(why), StatusCode::UNAUTHORIZED))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CsrfForm {
    csrf: String,
}

/// Log out: the session ends and the cookie goes. Without a live session (it ended already)
/// only the cookie goes.
async fn logout(
    State(state): State<Arc<AppState>>,
    viewer: Result<Viewer, PageError>,
    headers: HeaderMap,
    body: Body,
) -> PageResult {
    let form: CsrfForm = form(&headers, body).await?;
    match viewer {
        Ok(viewer) => {
            check_csrf(&viewer, &form.csrf)?;
            state.console.logout(&viewer.secret, &viewer.caller.actor(), crate::unix_now()).await?;
        }
        Err(PageError::NoSession { .. }) => {}
        Err(e) => return Err(e),
    }
    let mut r = Redirect::to("/console/login").into_response();
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&gone).map_err(ApiError::internal)?);
    Ok(r)
}
