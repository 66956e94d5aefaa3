//! Headless Chromium driven through ChromeDriver over the W3C WebDriver protocol (plain HTTP
//! and JSON on loopback): what the console tests use to act as an administrator would.
//!
//! `scripts/test` installs Debian's `chromium` and `chromium-driver` and sets
//! `RINGFENCE_REQUIRE_BROWSER`; run without them (a plain `cargo nextest run`), a browser test
//! says it was skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    pub downloads: PathBuf,
}

pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// A new headless Chromium with its own profile and download directory under `dir`, or
    /// `None` (the test is skipped) when Chromium is not installed and not required.
    pub fn start(dir: &Path) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var_os("RINGFENCE_REQUIRE_BROWSER").is_none(),
                "RINGFENCE_REQUIRE_BROWSER is set but Chromium is not installed: run scripts/test"
            );
            eprintln!("skipped: no Chromium (scripts/test installs chromium and chromium-driver)");
            return None;
        }
        let port = crate::common::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let downloads = dir.join("downloads");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&downloads).unwrap();
        std::fs::create_dir_all(&profile).unwrap();
        // Root has no sandbox; the closed network needs Chromium's own traffic off.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The admin listener's certificate is the installation's own.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let mut browser = Browser { driver, base, session: String::new(), http, downloads };
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"].as_str().expect("a session id").to_owned();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut answer = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            (_, body) => self.http.post(&url).send_json(body.unwrap_or_else(|| json!({}))),
        }
        .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = answer.status().as_u16();
        let value: Value = answer.body_mut().read_json().unwrap_or(Value::Null);
        assert!(status == 200, "webdriver {method} {path}: {status} {value}");
        value.get("value").cloned().unwrap_or(Value::Null)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The visible text of the page's body ("" while a page is loading).
    pub fn text(&self) -> String {
        let Some(body) = self.try_find("body") else { return String::new() };
        let url = format!("{}/session/{}/element/{}/text", self.base, self.session, body.id);
        let Ok(mut answer) = self.http.get(&url).call() else { return String::new() };
        let value: Value = answer.body_mut().read_json().unwrap_or(Value::Null);
        value["value"].as_str().unwrap_or_default().to_owned()
    }

    /// The first element `css` selects; the test fails when there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| panic!("no element {css:?} on {}:\n{}", self.url(), self.text()))
    }

    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let mut answer =
            self.http.post(&url).send_json(json!({"using": "css selector", "value": css})).expect("webdriver find");
        if answer.status().as_u16() != 200 {
            return None;
        }
        let value: Value = answer.body_mut().read_json().unwrap();
        let id = value["value"][ELEMENT].as_str()?.to_owned();
        Some(Element { browser: self, id })
    }

    /// The cookie `name` as the browser keeps it (with its `httpOnly`, `secure`, `sameSite`).
    pub fn cookie(&self, name: &str) -> Option<Value> {
        let url = format!("{}/session/{}/cookie/{name}", self.base, self.session);
        let mut answer = self.http.get(&url).call().unwrap();
        (answer.status().as_u16() == 200).then(|| answer.body_mut().read_json::<Value>().unwrap()["value"].clone())
    }

    /// Run a script through the driver (not the page: the page's policy allows none). Used
    /// only to play an attacker who altered a form.
    pub fn execute(&self, script: &str) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self, out: &Path) {
        use base64::Engine;
        let data = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap();
        std::fs::write(out, png).unwrap();
    }

    /// Screenshots for `docs/CONSOLE.md`, only when `RINGFENCE_CONSOLE_SCREENSHOTS` names a
    /// directory (`scripts/console-screenshots`).
    pub fn document(&self, name: &str) {
        if let Some(dir) = std::env::var_os("RINGFENCE_CONSOLE_SCREENSHOTS") {
            self.screenshot(&Path::new(&dir).join(format!("{name}.png")));
        }
    }

    /// Wait (at most 10 s) until `check` holds for the page's text.
    pub fn wait_for_text(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "waited for {what} on {}:\n{text}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    pub fn click(&self) {
        self.browser.session_call("POST", &self.path("/click"), Some(json!({})));
    }

    pub fn type_text(&self, text: &str) {
        self.browser.session_call("POST", &self.path("/clear"), Some(json!({})));
        self.browser.session_call("POST", &self.path("/value"), Some(json!({ "text": text })));
    }

    /// An attribute of the element (empty when it has none).
    pub fn attribute(&self, name: &str) -> String {
        let value = self.browser.session_call("GET", &self.path(&format!("/attribute/{name}")), None);
        value.as_str().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        self.browser.session_call("GET", &self.path("/text"), None).as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http.delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
