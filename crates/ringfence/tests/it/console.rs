//! The web console: an administrator in a real browser (headless Chromium) against a real
//! server, and the console's own defences checked request by request.

use std::io::{Read, Write};
use std::path::Path;

use ringfence_proto::device::DeviceInfo;
use serde_json::{Value, json};

use crate::agents::{Agent, devices, enroll, token};
use crate::browser::Browser;
use crate::common::{Server, run_ok};
use crate::fleet::publish_with;

const COOKIE: &str = "__Host-ringfence-console";

/// An agent that enrolls without a token: it waits as a pending device.
fn enroll_pending(server: &Server, root: &Path, name: &str) -> Agent {
    let (agent, out) = crate::agents::enroll_with(server, root, name, "pilot", None);
    assert!(out.contains("pending"), "{out}");
    agent
}

fn device_state(server: &Server, id: &str) -> String {
    let all: Vec<DeviceInfo> = devices(server);
    all.into_iter().find(|d| d.id == id).unwrap_or_else(|| panic!("no device {id}")).state
}

fn rollout_state(server: &Server) -> String {
    let all: Vec<Value> = serde_json::from_str(&run_ok(server.cli().args(["rollout", "status", "--json"]))).unwrap();
    all[0]["state"].as_str().unwrap().to_owned()
}

/// A page of another site (plain HTTP on `localhost`, another origin and another site than
/// the console's `127.0.0.1`) with a form that posts to the console: what a phishing page
/// would send. Served to one request, then the thread ends.
fn forged_form_page(action: &str) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"go\" type=\"submit\">Win a prize</button>\
         </form></body></html>",
        "0".repeat(64)
    );
    let thread = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        conn.write_all(answer.as_bytes()).unwrap();
    });
    (format!("http://localhost:{port}/"), thread)
}

/// Logs in, finds an update and its compliance, pauses and resumes a rollout, accepts a
/// pending device, downloads a CSV; a page without a session goes to the login; a forged
/// cross-site form and a form with a tampered CSRF token change nothing; logout ends it.
#[test]
fn an_administrator_uses_the_console_in_a_real_browser() {
    let server = Server::start(|_| {});
    let Some(browser) = Browser::start(server.dir.path()) else { return };
    let root = server.dir.path().join("agents");
    let pilot = token(&server, "pilot", 2);
    let first = enroll(&server, &root, "web-1", "pilot", &pilot);
    let _second = enroll(&server, &root, "web-2", "pilot", &pilot);
    let _waiting = enroll_pending(&server, &root, "web-new");
    let pending = devices(&server).into_iter().find(|d| d.state == "pending").unwrap().id;
    publish_with(&server, "kb-web", 0, |m| {
        m["title"] = "Console test update".into();
        m["cves"] = json!(["CVE-2025-59287"]);
    });
    run_ok(server.cli().args(["rollout", "start", "kb-web", "--group", "pilot"]));
    run_ok(server.cli().args(["approve", "kb-web", "--group", "pilot"]));
    let (code, out) = first.check();
    assert_eq!(code, 0, "{out}");
    let console = format!("{}/console/", server.admin_url);

    // Without a session every page goes to the login.
    browser.goto(&format!("{console}devices"));
    assert!(browser.url().ends_with("/console/login"), "{}", browser.url());
    browser.document("login");
    browser.find("#token").type_text("rfat_not-a-token");
    browser.find("button[type=submit]").click();
    browser.wait_for_text("the refusal", |t| t.contains("not valid"));
    assert!(browser.cookie(COOKIE).is_none());
    browser.find("#token").type_text(&server.token);
    browser.find("button[type=submit]").click();
    let dashboard = browser.wait_for_text("the dashboard", |t| t.contains("Devices seen in 24 h"));
    assert!(dashboard.contains("kb-web") && dashboard.contains("running"), "{dashboard}");
    let cookie = browser.cookie(COOKIE).expect("the session cookie");
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["secure"].as_bool()), (Some(true), Some(true)), "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    browser.document("dashboard");

    // Find the update by its CVE, open it: its approval and compliance per group.
    browser.goto(&format!("{console}updates"));
    browser.find("#cve").type_text("CVE-2025-59287");
    browser.find("form.filters button").click();
    browser.wait_for_text("the filtered catalog", |t| t.contains("Console test update"));
    browser.document("updates");
    browser.find("table.updates a").click();
    let update = browser.wait_for_text("the update's page", |t| t.contains("Compliance per group"));
    assert!(update.contains("Update kb-web") && update.contains("install"), "{update}");
    let compliance_row = browser.find("table.compliance tbody tr").text();
    assert!(compliance_row.starts_with("pilot") && compliance_row.contains("1 / 2"), "{compliance_row}");
    browser.document("update");

    // The rollout's progress over time: what the leading node counted when it looked, an
    // hour apart here (one of the two devices installed, none failed).
    let now = ringfence_server::unix_now();
    for at in [now, now + 3600] {
        server.runtime.block_on(server.state.rollouts.tick(&server.state.repo, at)).unwrap();
    }
    browser.goto(&format!("{console}rollouts"));
    let installed = browser.find("figure.chart polyline.installed");
    let points = installed.attribute("points");
    let points: Vec<&str> = points.split(' ').collect();
    assert!(points.len() >= 2, "{points:?}");
    assert_eq!(points.last().map(|p| p.ends_with(",60.0")), Some(true), "half the devices installed: {points:?}");
    let failed = browser.find("figure.chart polyline.failed").attribute("points");
    assert!(failed.split(' ').all(|p| p.ends_with(",120.0")), "none failed: {failed}");
    assert!(browser.text().contains("Progress: installed and failed"), "{}", browser.text());

    // Pause and resume the rollout.
    browser.document("rollouts");
    browser.find("form[action$='/pause'] button").click();
    browser.wait_for_text("the paused rollout", |t| t.contains("paused"));
    assert_eq!(rollout_state(&server), "paused");
    browser.find("form[action$='/resume'] button").click();
    browser.wait_for_text("the resumed rollout", |t| t.contains("running"));
    assert_eq!(rollout_state(&server), "running");

    // Accept the pending device.
    browser.goto(&format!("{console}devices?state=pending"));
    browser.find("table.devices a").click();
    browser.wait_for_text("the device's page", |t| t.contains("pending"));
    browser.find("form[action$='/accept'] button").click();
    browser.wait_for_text("the accepted device", |t| t.contains("accepted"));
    assert_eq!(device_state(&server, &pending), "accepted");
    browser.document("device");

    // The compliance CSV, downloaded by the browser.
    browser.goto(&format!("{console}compliance?group=pilot"));
    browser.document("compliance");
    browser.find("a.download").click();
    let csv_file = browser.downloads.join("compliance-pilot.csv");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !csv_file.exists() {
        assert!(std::time::Instant::now() < deadline, "no download in {:?}", std::fs::read_dir(&browser.downloads));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let csv = std::fs::read_to_string(&csv_file).unwrap();
    assert!(csv.starts_with("group,target,update_id,action"), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("pilot,") && l.contains(",kb-web,install,")), "{csv}");

    // A forged form on another site, posted by this logged-in browser, revokes nothing: the
    // cookie is not sent cross-site, and the request says where it came from.
    let victim = format!("{}/console/devices/{pending}/revoke", server.admin_url);
    let (page, served) = forged_form_page(&victim);
    browser.goto(&page);
    browser.find("#go").click();
    browser.wait_for_text("the refusal", |t| t.contains("Not signed in") || t.contains("another site"));
    served.join().unwrap();
    assert_eq!(device_state(&server, &pending), "accepted", "not revoked");

    // A form of the console with its CSRF token altered is refused too.
    browser.goto(&format!("{console}devices/{pending}"));
    browser.execute("document.querySelector(\"form[action$='/revoke'] input[name=csrf]\").value = 'f'.repeat(64);");
    browser.find("form[action$='/revoke'] button").click();
    browser.wait_for_text("the refusal", |t| t.contains("CSRF"));
    assert_eq!(device_state(&server, &pending), "accepted", "not revoked");

    // Other pages render for a full-scope token.
    for (path, expect) in [
        ("approvals", "Pending approvals"),
        ("groups", "production"),
        ("audit", "logged in to the console"),
        ("log", "Newest checkpoint"),
        ("cve?cve=CVE-2025-59287", "Devices still exposed"),
    ] {
        browser.goto(&format!("{console}{path}"));
        browser.wait_for_text(path, |t| t.contains(expect));
        browser.document(path.split('?').next().unwrap());
    }

    // Logging out ends the session: the same cookie opens nothing.
    browser.goto(&console);
    browser.find("form.logout button").click();
    browser.wait_for_text("the login page", |t| t.contains("Admin token"));
    assert!(browser.cookie(COOKIE).is_none(), "the cookie is gone");
    browser.goto(&format!("{console}devices"));
    assert!(browser.url().ends_with("/console/login"), "{}", browser.url());
}

/// A request to the console by hand: (status, headers, body).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], form: Option<&str>) -> Answer {
    let agent = ringfence_cli::http::agent(&std::fs::read(&server.ca).unwrap()).unwrap();
    let url = format!("{}{path}", server.admin_url);
    let mut answer = if method == "GET" {
        let mut r = agent.get(&url).config().max_redirects(0).build();
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.call().unwrap()
    } else {
        let mut r = agent.post(&url).config().max_redirects(0).build();
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.content_type("application/x-www-form-urlencoded").send(form.unwrap_or("")).unwrap()
    };
    let headers = answer.headers().iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
    Answer { status: answer.status().as_u16(), headers, body: answer.body_mut().read_to_string().unwrap_or_default() }
}

/// Log in with `token`: the session cookie's `name=value`.
fn login(server: &Server, token: &str) -> String {
    let origin = server.admin_url.clone();
    let answer = request(
        server,
        "POST",
        "/console/login",
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        Some(&format!("token={token}")),
    );
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = answer.header("set-cookie").unwrap().to_owned();
    for attribute in ["Path=/", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age=43200"] {
        assert!(cookie.split("; ").any(|a| a == attribute), "{attribute} in {cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[at..at + 64].to_owned()
}

/// The console's defences, request by request: its headers, the session cookie, scopes as in
/// the API, CSRF and origin checks that change nothing when they refuse, a revoked token
/// ending its sessions, one-time logins spent once, and strict queries.
#[test]
fn the_console_refuses_what_a_browser_of_another_site_or_a_lesser_token_may_send() {
    let server = Server::start(|_| {});
    let root = server.dir.path().join("agents");
    let waiting = enroll_pending(&server, &root, "csrf-target");
    let _ = waiting;
    let id = devices(&server).into_iter().find(|d| d.state == "pending").unwrap().id;

    // Without a session: pages redirect to the login, changes are refused; every answer
    // carries the policy that allows no script.
    let page = request(&server, "GET", "/console/devices", &[], None);
    assert_eq!((page.status, page.header("location")), (303, Some("/console/login")));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let login_page = request(&server, "GET", "/console/login", &[], None);
    assert_eq!(login_page.status, 200);
    assert!(!login_page.body.contains("<script"), "no script anywhere");
    assert_eq!(login_page.header("cache-control"), Some("no-store"));
    let anonymous = request(&server, "POST", &format!("/console/devices/{id}/accept"), &[], Some("csrf=x"));
    assert_eq!(anonymous.status, 403);

    // A login posted from another site is refused.
    let cross = request(
        &server,
        "POST",
        "/console/login",
        &[("sec-fetch-site", "cross-site")],
        Some(&format!("token={}", server.token)),
    );
    assert_eq!(cross.status, 403);
    assert!(cross.header("set-cookie").is_none());

    let admin = login(&server, &server.token);
    let cookie = [("cookie", admin.as_str())];
    let device_page = request(&server, "GET", &format!("/console/devices/{id}"), &cookie, None);
    assert_eq!(device_page.status, 200);
    let csrf = csrf_of(&device_page.body);
    let accept = format!("/console/devices/{id}/accept");
    let origin = server.admin_url.clone();
    for (headers, form, why) in [
        (vec![], format!("csrf={csrf}"), "neither Origin nor Sec-Fetch-Site"),
        (vec![("sec-fetch-site", "same-origin")], "".to_owned(), "no CSRF field"),
        (vec![("sec-fetch-site", "same-origin")], format!("csrf={}", "0".repeat(64)), "a wrong CSRF token"),
        (vec![("origin", "https://evil.example")], format!("csrf={csrf}"), "another origin"),
        (vec![("sec-fetch-site", "same-site")], format!("csrf={csrf}"), "another site's page"),
        (vec![("sec-fetch-site", "same-origin")], format!("csrf={csrf}&state=accepted"), "an unknown field"),
    ] {
        let mut all = cookie.to_vec();
        all.extend(headers);
        let refused = request(&server, "POST", &accept, &all, Some(&form));
        assert!(matches!(refused.status, 400 | 403), "{why}: {} {}", refused.status, refused.body);
        assert_eq!(device_state(&server, &id), "pending", "{why}");
    }
    let mut same = cookie.to_vec();
    same.extend([("origin", origin.as_str()), ("sec-fetch-site", "same-origin")]);
    let accepted = request(&server, "POST", &accept, &same, Some(&format!("csrf={csrf}")));
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    assert_eq!(device_state(&server, &id), "accepted");
    // Search by id prefix and by host name, with a state.
    let hostname = devices(&server).into_iter().find(|d| d.id == id).unwrap().hostname;
    for search in [format!("q={}", &id[..6]), format!("q={hostname}&state=accepted")] {
        let found = request(&server, "GET", &format!("/console/devices?{search}"), &cookie, None);
        assert!(found.status == 200 && found.body.contains(&id), "{search}: {}", found.body);
    }
    let none = request(&server, "GET", &format!("/console/devices?q={hostname}&state=revoked"), &cookie, None);
    assert!(none.body.contains("No device matches"), "{}", none.body);
    // The session of another login has another CSRF token.
    let other = login(&server, &server.token);
    let other_csrf = csrf_of(&request(&server, "GET", "/console/", &[("cookie", other.as_str())], None).body);
    assert_ne!(other_csrf, csrf);

    // A read-only token sees the fleet and changes nothing in it (scopes as in the API).
    let created: Value = serde_json::from_slice(
        &server
            .admin()
            .send_json("POST", "/api/v1/tokens", &json!({"name": "viewer", "scopes": ["read"]}))
            .unwrap()
            .ok()
            .unwrap(),
    )
    .unwrap();
    let viewer = login(&server, created["token"].as_str().unwrap());
    let viewer_cookie = [("cookie", viewer.as_str())];
    let page = request(&server, "GET", &format!("/console/devices/{id}"), &viewer_cookie, None);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/revoke\""), "no revoke button for a read-only token");
    let viewer_csrf = csrf_of(&page.body);
    let revoke = request(
        &server,
        "POST",
        &format!("/console/devices/{id}/revoke"),
        &[viewer_cookie[0], ("sec-fetch-site", "same-origin")],
        Some(&format!("csrf={viewer_csrf}")),
    );
    assert_eq!(revoke.status, 403, "{}", revoke.body);
    assert!(revoke.body.contains("admin scope"), "{}", revoke.body);
    assert_eq!(device_state(&server, &id), "accepted");

    // Revoking the token ends its console sessions at once.
    let token_id = created["id"].as_str().unwrap();
    server.admin().send("DELETE", &format!("/api/v1/tokens/{token_id}"), b"", "application/json").unwrap();
    let after = request(&server, "GET", "/console/devices", &viewer_cookie, None);
    assert_eq!((after.status, after.header("location")), (303, Some("/console/login")));

    // A one-time login logs in once.
    let code = server
        .runtime
        .block_on(server.state.console.login_code(&server.token, 900, ringfence_server::unix_now()))
        .unwrap();
    let link = request(&server, "GET", &format!("/console/login?once={code}"), &[], None);
    assert_eq!(link.status, 200);
    assert!(link.header("set-cookie").is_none(), "opening the link logs nobody in");
    let spend =
        |headers: &[(&str, &str)]| request(&server, "POST", "/console/login", headers, Some(&format!("once={code}")));
    let first = spend(&[("sec-fetch-site", "same-origin")]);
    assert_eq!(first.status, 303);
    assert!(first.header("set-cookie").unwrap().starts_with(COOKIE));
    assert_eq!(spend(&[("sec-fetch-site", "same-origin")]).status, 401, "spent");

    // A CVE's exposed devices as CSV; a CVE id that is not one is refused.
    let exposed = request(&server, "GET", "/console/cve.csv?cve=cve-2025-59287", &cookie, None);
    assert_eq!((exposed.status, exposed.header("content-type")), (200, Some("text/csv; charset=utf-8")));
    assert!(exposed.body.starts_with("cve,device_id,hostname,target,state,at"), "{}", exposed.body);
    assert!(exposed.header("content-disposition").unwrap().contains("exposed-CVE-2025-59287.csv"));
    assert_eq!(request(&server, "GET", "/console/cve.csv?cve=nope", &cookie, None).status, 400);

    // Strict queries: an unknown field is refused, not ignored.
    let odd = request(&server, "GET", "/console/devices?sort=evil", &cookie, None);
    assert_eq!(odd.status, 400);

    // Logging out of a session that already ended still removes the cookie.
    let gone = request(
        &server,
        "POST",
        "/console/logout",
        &[("cookie", viewer.as_str()), ("sec-fetch-site", "same-origin")],
        Some("csrf=x"),
    );
    assert_eq!(gone.status, 303);
    assert!(gone.header("set-cookie").unwrap().contains("Max-Age=0"));

    // The audit trail names the console logins and the change made through it.
    let audit = request(&server, "GET", "/console/audit", &cookie, None).body;
    assert!(audit.contains("logged in to the console") && audit.contains(&format!("device {id}")), "{audit}");

    // Guessing tokens is bounded per source address: after a burst, logins are refused (429,
    // with Retry-After) before any token is looked up, the right one included.
    let origin = server.admin_url.clone();
    let guess = |token: &str| {
        request(
            &server,
            "POST",
            "/console/login",
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
            Some(&format!("token={token}")),
        )
    };
    let mut refused_after = None;
    for n in 0..40 {
        let answer = guess("rfat_guess");
        if answer.status == 429 {
            assert!(answer.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()), "{:?}", answer.headers);
            assert!(answer.body.contains("Too many login attempts"), "{}", answer.body);
            refused_after = Some(n);
            break;
        }
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    assert!(refused_after.is_some_and(|n| n <= 30), "{refused_after:?}");
    assert_eq!(guess(&server.token).status, 429, "the right token waits too");
}

/// `ringfence quickstart` prints the console's address and a one-time login link, which logs
/// a browser in once; an enrollment token made in the console is shown once and audited. Run
/// with JSON logs: every line on standard error is a JSON object, and a request's line carries
/// the id its answer's `x-request-id` names.
#[test]
fn quickstart_prints_a_one_time_console_login_that_works_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (device, admin) = (crate::common::free_port(), crate::common::free_port());
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["quickstart", "--device-addr", &format!("127.0.0.1:{device}"), "--admin-addr"])
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--dir")
        .arg(dir.path())
        .env("RINGFENCE_LOG_FORMAT", "json")
        .env("RINGFENCE_LOG", "info,ringfence_access=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _stop = Stop(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let console = format!("https://127.0.0.1:{admin}/console/");
    let mut link = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        assert!(!line.contains("log in with an admin token"), "no one-time login: {line}");
        if let Some(at) = line.find(&format!("{console}login?once=")) {
            link = Some(line[at..].trim().to_owned());
            break;
        }
    }
    let link = link.expect("a one-time login link");
    assert!(link.len() > console.len() + "login?once=rfol_".len() + 63, "{link}");
    let code = link.rsplit('=').next().unwrap().to_owned();
    let ca = std::fs::read(dir.path().join("ringfence-data/tls/cert.pem")).unwrap();
    let agent = ringfence_cli::http::agent(&ca).unwrap();
    let post = |form: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let sent = agent
                .post(&format!("{console}login"))
                .config()
                .max_redirects(0)
                .build()
                .header("sec-fetch-site", "same-origin")
                .content_type("application/x-www-form-urlencoded")
                .send(form);
            match sent {
                Ok(answer) => {
                    let cookie = answer.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
                    let id = answer.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
                    return (answer.status().as_u16(), cookie, id.unwrap_or_default());
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "the server did not answer: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
    };
    let (status, cookie, request_id) = post(&format!("once={code}"));
    assert_eq!(status, 303);
    assert!(!request_id.is_empty(), "every answer names its request");
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.starts_with(COOKIE), "{cookie}");
    let (again, none, other_id) = post(&format!("once={code}"));
    assert_eq!((again, none), (401, None));
    assert_ne!(other_id, request_id);

    // The session works: an enrollment token made in the console is shown once.
    let session = cookie.split(';').next().unwrap().to_owned();
    let get = |path: &str| {
        let mut answer =
            agent.get(&format!("https://127.0.0.1:{admin}{path}")).header("cookie", &session).call().unwrap();
        (answer.status().as_u16(), answer.body_mut().read_to_string().unwrap())
    };
    let (status, page) = get("/console/devices");
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    let mut made = agent
        .post(&format!("https://127.0.0.1:{admin}/console/enrollment-tokens"))
        .header("cookie", &session)
        .header("sec-fetch-site", "same-origin")
        .content_type("application/x-www-form-urlencoded")
        .send(format!("csrf={csrf}&groups=pilot&hours=2&uses=3"))
        .unwrap();
    assert_eq!(made.status().as_u16(), 200);
    let shown = made.body_mut().read_to_string().unwrap();
    assert!(shown.contains("rfet_") && shown.contains("It is shown only now"), "{shown}");
    let (_, audit) = get("/console/audit");
    assert!(audit.contains("one-time login") && audit.contains("enrollment-token"), "{audit}");

    // JSON logs: one object per line; the login's line names its id, route and status.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let login = lines
        .iter()
        .find(|l| l["span"]["id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no line of request {request_id} in\n{log}"));
    assert_eq!(login["span"]["route"], "/console/login", "{login}");
    assert_eq!(login["fields"]["status"], 303, "{login}");
    assert_eq!(login["target"], "ringfence_access", "{login}");
}
