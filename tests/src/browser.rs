//! The browser test harness: Debian's headless Chromium driven through
//! chromedriver (started here on a loopback port, killed on drop) with a
//! fresh profile. It fails the test on any console error of the page and on
//! any request to an address outside 127.0.0.0/8 (and resolves no host
//! name at all), and keeps a screenshot of every step under
//! `<target>/browser/<test>/<nn>-<step>.png`. Without Chromium or
//! chromedriver a test fails naming the Debian packages; it never passes
//! silently.
//!
//! The methods block (the harness owns a small Tokio runtime), so the
//! end-to-end tests, which are synchronous, call them directly.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package chromium-driver).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The panel's screen; every page is looked at in this window.
pub const WINDOW: (u32, u32) = (800, 480);

/// How long a wait for the page lasts by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// A headless browser for one test.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    driver_log: PathBuf,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    step: usize,
    /// Requests seen in the performance log so far (all checked).
    requests_seen: usize,
}

/// Fails the test unless Chromium and chromedriver are installed.
pub fn require_chromium() {
    for (path, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).is_file(),
            "{what} ({path}) is required by the browser tests: install the Debian packages \
             chromium and chromium-driver (`apt-get install chromium chromium-driver`, or \
             `cargo xtask setup`)"
        );
    }
}

/// The directory the screenshots of `test` go to: under the workspace's
/// target directory (`CARGO_TARGET_DIR`, or `target/` by default).
pub fn screenshot_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the workspace root")
                .join("target")
        });
    target.join("browser").join(test)
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`), which
/// fantoccini has no method for: the entries of one log type since the last
/// call.
#[derive(Debug)]
struct GetLog(&'static str);

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// True for an address the browser may talk to: an IPv4 literal in
/// 127.0.0.0/8. Host names are not resolved by the test browser at all.
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "http" | "https" | "ws" | "wss" | "ftp" => {}
        // data:, blob:, about:, chrome-error: and the like stay in the browser.
        _ => return true,
    }
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        _ => false,
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile;
    /// screenshots go to [`screenshot_dir`]`(test)`, emptied first.
    pub fn start(test: &str) -> Browser {
        require_chromium();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the browser");
        let profile = tempfile::Builder::new()
            .prefix("sgw-browser-")
            .tempdir()
            .expect("a profile directory");
        let shots = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", shots.display()));
        let driver_log = profile.path().join("chromedriver.log");
        let (driver, port) = start_driver(&driver_log);
        let user_data = profile.path().join("chromium");
        let capabilities = capabilities(&user_data);
        let client = runtime
            .block_on(async {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await
            })
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver did not start a Chromium session: {e}\n{}",
                    std::fs::read_to_string(&driver_log).unwrap_or_default()
                )
            });
        let browser = Browser {
            runtime,
            client: Some(client),
            driver,
            driver_log,
            _profile: profile,
            shots,
            step: 0,
            requests_seen: 0,
        };
        // The page must see the panel's screen: the window is the viewport
        // plus whatever the browser draws around it.
        let frame = browser.eval(
            "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
            Vec::new(),
        );
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
        let (width, height) = (WINDOW.0 + extra(0), WINDOW.1 + extra(1));
        browser.block(|c| async move { c.set_window_size(width, height).await });
        browser
    }

    fn client(&self) -> Client {
        self.client.clone().expect("the browser session is open")
    }

    /// Runs one WebDriver call; a failure fails the test.
    fn block<T, F, Fut>(&self, call: F) -> T
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let client = self.client();
        self.runtime
            .block_on(call(client))
            .unwrap_or_else(|e| panic!("WebDriver call failed: {e}"))
    }

    /// Opens `url`.
    pub fn goto(&mut self, url: &str) {
        let url = url.to_owned();
        self.block(|c| async move { c.goto(&url).await });
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the
    /// page and returns what it returns.
    pub fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        let script = script.to_owned();
        self.block(|c| async move { c.execute(&script, args).await })
    }

    /// Waits until the page's `condition` (an expression) is true.
    pub fn wait_until(&mut self, what: &str, condition: &str, within: Duration) {
        let script = format!("return Boolean({condition});");
        let deadline = Instant::now() + within;
        loop {
            if self.eval(&script, Vec::new()) == Value::Bool(true) {
                return;
            }
            self.check_console();
            if Instant::now() > deadline {
                let page = self.page_text();
                self.shot(&format!("timeout-{}", slug(what)));
                panic!("waited {within:?} for {what} ({condition}); the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the element `css` is displayed.
    pub fn wait_visible(&mut self, css: &str, within: Duration) {
        self.wait_until(
            &format!("{css} to be shown"),
            &format!(
                "(function () {{ const e = document.querySelector({sel}); \
                 return e !== null && e.offsetParent !== null; }})()",
                sel = serde_json::to_string(css).unwrap()
            ),
            within,
        );
    }

    /// Clicks the element `css` once it is displayed.
    pub fn click(&mut self, css: &str) {
        self.wait_visible(css, DEFAULT_WAIT);
        let css = css.to_owned();
        self.block(|c| async move { c.find(Locator::Css(&css)).await?.click().await });
    }

    /// Replaces the text of the input `css` with `text`, typed as keys.
    pub fn fill(&mut self, css: &str, text: &str) {
        self.wait_visible(css, DEFAULT_WAIT);
        let (css, text) = (css.to_owned(), text.to_owned());
        self.block(|c| async move {
            let input = c.find(Locator::Css(&css)).await?;
            input.clear().await?;
            input.send_keys(&text).await
        });
    }

    /// The displayed text of the element `css`.
    pub fn text(&self, css: &str) -> String {
        let css = css.to_owned();
        self.block(|c| async move { c.find(Locator::Css(&css)).await?.text().await })
    }

    /// An attribute of the element `css` (`None` when it has none).
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let (css, name) = (css.to_owned(), name.to_owned());
        self.block(|c| async move { c.find(Locator::Css(&css)).await?.attr(&name).await })
    }

    /// Whether the element `css` exists and is displayed.
    pub fn visible(&self, css: &str) -> bool {
        self.eval(
            "const e = document.querySelector(arguments[0]); \
             return e !== null && e.offsetParent !== null;",
            vec![json!(css)],
        ) == Value::Bool(true)
    }

    /// Everything the page shows, for failure messages.
    pub fn page_text(&self) -> String {
        self.eval(
            "return document.body ? document.body.innerText : '';",
            Vec::new(),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a screenshot as the next step `<nn>-<name>.png` and checks the
    /// console and the requests so far. Returns the file.
    pub fn shot(&mut self, name: &str) -> PathBuf {
        self.step += 1;
        let png = self.block(|c| async move { c.screenshot().await });
        let path = self
            .shots
            .join(format!("{:02}-{}.png", self.step, slug(name)));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.check_console();
        path
    }

    /// Fails the test on any console error of the page and on any request
    /// to an address outside 127.0.0.0/8 since the last check.
    pub fn check_console(&mut self) {
        if let Some(message) = self.console_errors().first() {
            self.fail_check(&format!("the page logged an error: {message}"));
        }
        for entry in self.log("performance") {
            let Some(text) = entry["message"].as_str() else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            let message = &event["message"];
            let url = match message["method"].as_str() {
                Some("Network.requestWillBeSent") => &message["params"]["request"]["url"],
                Some("Network.webSocketCreated") => &message["params"]["url"],
                _ => continue,
            };
            let url = url.as_str().unwrap_or_default();
            self.requests_seen += 1;
            if !is_loopback_url(url) {
                self.fail_check(&format!(
                    "the page made a request outside 127.0.0.0/8: {url}"
                ));
            }
        }
    }

    /// The console errors of the page since the last look, taken out of
    /// the browser's log (so [`Browser::check_console`] does not see them
    /// again). For a test that provokes one on purpose.
    pub fn console_errors(&mut self) -> Vec<String> {
        self.log("browser")
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn fail_check(&mut self, what: &str) -> ! {
        self.step += 1;
        if let Ok(png) = self
            .runtime
            .block_on(self.client.clone().expect("open").screenshot())
        {
            let _ = std::fs::write(
                self.shots
                    .join(format!("{:02}-failed-check.png", self.step)),
                png,
            );
        }
        panic!("{what}");
    }

    fn log(&self, kind: &'static str) -> Vec<Value> {
        let value = self.block(|c| async move { c.issue_cmd(GetLog(kind)).await });
        value.as_array().cloned().unwrap_or_default()
    }

    /// Checks the console one last time and closes the browser.
    pub fn finish(mut self) {
        self.check_console();
        // The request check is only worth something if the log works: the
        // page itself was requested, so it must have seen that.
        assert!(
            self.requests_seen > 0,
            "the browser's performance log showed no request at all; the check of \
             requests outside 127.0.0.0/8 is not working"
        );
        if let Some(client) = self.client.take() {
            self.runtime
                .block_on(client.close())
                .unwrap_or_else(|e| panic!("closing the browser failed: {e}"));
        }
    }

    /// The directory the screenshots go to.
    pub fn screenshots(&self) -> &Path {
        &self.shots
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            eprintln!("---- screenshots in {} ----", self.shots.display());
            let log = std::fs::read_to_string(&self.driver_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("---- last chromedriver log lines ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts chromedriver on a loopback port the OS chose; tries again on the
/// rare race where another process took the port first.
fn start_driver(log: &Path) -> (Child, u16) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = crate::free_port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {CHROMEDRIVER}: {e}; install the Debian packages chromium and chromium-driver"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("chromedriver status") {
                last = format!("chromedriver exited at start-up ({status})");
                break;
            }
            if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        if last.is_empty() {
            last = "chromedriver did not listen within 10 s".to_owned();
        }
    }
    panic!(
        "{last}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Headless Chromium that stays on this machine: no sync, updates,
/// background requests or QUIC, no proxy, and no host name resolved at all
/// (pages reach 127.0.0.1 by number only). The browser and
/// performance logs are kept for [`Browser::check_console`].
fn capabilities(user_data: &Path) -> Capabilities {
    let args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-default-apps".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-proxy-server".to_owned(),
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--user-data-dir={}", user_data.display()),
    ];
    let value = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": args,
            "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
        },
        "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// A step name as a file name: lower case letters, digits and dashes.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_pass() {
        for ok in [
            "http://127.0.0.1:8080/api/status",
            "ws://127.3.4.5/",
            "data:,",
            "about:blank",
        ] {
            assert!(is_loopback_url(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "https://example.org/x.js",
            "http://localhost:1/",
            "http://[::1]:80/",
            "http://192.168.1.1/",
        ] {
            assert!(!is_loopback_url(bad), "{bad}");
        }
    }

    #[test]
    fn step_names_become_file_names() {
        assert_eq!(slug("Field refused: empty!"), "field-refused-empty");
    }
}
