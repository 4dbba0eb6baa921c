//! The page at `GET /` in a real headless chromium: Debian's `chromium` driven through
//! `chromedriver` over WebDriver (fantoccini). Each test starts the real service on
//! 127.0.0.1:0 against a database of its own, chooses a file in the page, uploads it, waits
//! for the stats table the page draws from `GET /imports/{id}`, and then checks the table in
//! PostgreSQL. Without chromium or chromedriver the tests fail and say how to install them.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::serve::Service;
use crate::util::{TempDir, TestDb, fixture, project_fixture};

/// How long a test waits for the page to show an import's result.
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long chromedriver and the page get to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "the browser tests need Debian's chromium and chromedriver: run \
     `apt-get install -y chromium chromium-driver` (or `.ci/run --setup-only`, which installs them)";

/// Reads lines of `stream` (in a thread that keeps draining it afterwards, so the process
/// never blocks on a full pipe) until one contains `marker`, and returns the word after it.
fn read_line_until(
    stream: impl std::io::Read + Send + 'static,
    marker: &'static str,
    child: &mut Child,
    what: &str,
) -> String {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<String, String>>(1);
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sender = Some(sender);
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(found) = line.split_once(marker).map(|(_, rest)| rest) {
                let word: String = found
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                // "... on port 42303." ends its sentence
                let word = word.trim_end_matches('.').to_string();
                if let Some(sender) = sender.take() {
                    sender.send(Ok(word)).ok();
                }
            } else if sender.is_some() {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        if let Some(sender) = sender {
            sender.send(Err(seen)).ok();
        }
    });
    match receiver.recv_timeout(START_TIMEOUT) {
        Ok(Ok(word)) => word,
        Ok(Err(output)) => {
            let status = child.wait().ok();
            panic!("{what} ended before saying \"{marker}\" ({status:?}):\n{output}")
        }
        Err(_) => {
            child.kill().ok();
            panic!("{what} did not say \"{marker}\" within {START_TIMEOUT:?}")
        }
    }
}

/// An executable on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver on a free port, in a process group of its own so that the chromium it
/// starts goes with it when the test ends, however it ends.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let chromedriver = find_program("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not on PATH; {INSTALL_HINT}"));
        let mut child = Command::new(chromedriver)
            .arg("--port=0")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("chromedriver does not start ({error}); {INSTALL_HINT}")
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let port = read_line_until(
            stdout,
            "started successfully on port ",
            &mut child,
            "chromedriver",
        );
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // the group holds chromedriver and the browser it started: this test's processes only
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        self.child.wait().ok();
    }
}

/// A headless chromium session whose downloads land in `downloads`.
struct Browser {
    client: Client,
    downloads: TempDir,
    _driver: Driver,
}

impl Browser {
    async fn start(width: u32, height: u32) -> Browser {
        let chromium = find_program("chromium")
            .unwrap_or_else(|| panic!("chromium is not on PATH; {INSTALL_HINT}"));
        let driver = Driver::start();
        let downloads = TempDir::new();
        let options = serde_json::json!({
            "binary": chromium,
            // CI runs as root in a container: no sandbox, and /dev/shm may be tiny
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                format!("--window-size={width},{height}"),
            ],
            "prefs": {
                "download.default_directory": downloads.0,
                "download.prompt_for_download": false,
            },
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|error| {
                panic!("chromium does not start a session ({error}); {INSTALL_HINT}")
            });
        Browser {
            client,
            downloads,
            _driver: driver,
        }
    }

    /// Runs `test` against the page, then ends the session even when `test` panicked.
    async fn run<F, Fut>(self, test: F)
    where
        F: FnOnce(Client, PathBuf) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let outcome = tokio::spawn(test(self.client.clone(), self.downloads.0.clone())).await;
        self.client.close().await.ok();
        if let Err(error) = outcome {
            match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("the browser test did not finish: {error}"),
            }
        }
    }
}

/// Text of the element `css` matches, waiting for it to exist.
async fn text_of(client: &Client, css: &str) -> String {
    let element = client
        .wait()
        .at_most(START_TIMEOUT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no element {css} in the page ({error})"));
    element
        .text()
        .await
        .unwrap_or_else(|error| panic!("text of {css}: {error}"))
}

/// Waits until the page shows `#result` or an error, and fails with what it shows otherwise.
async fn wait_for_result(client: &Client) {
    let deadline = Instant::now() + RESULT_TIMEOUT;
    loop {
        let state = client
            .execute(
                "const shown = (id) => !document.getElementById(id).hidden; \
                 return {result: shown('result'), error: shown('error') ? document.getElementById('error').textContent : null, \
                         phase: document.getElementById('phase').textContent};",
                vec![],
            )
            .await
            .expect("the page answers a script");
        if state["result"] == true {
            return;
        }
        if let Some(error) = state["error"].as_str() {
            panic!("the page shows an error instead of a result: {error}");
        }
        assert!(
            Instant::now() < deadline,
            "no result in the page within {RESULT_TIMEOUT:?}; it says: {}",
            state["phase"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stats table as (field, value) pairs, from its `data-field` rows.
async fn stats_table(client: &Client) -> serde_json::Map<String, serde_json::Value> {
    let fields = client
        .execute(
            "const out = {}; \
             for (const row of document.querySelectorAll('#stats tbody tr')) \
               out[row.dataset.field] = row.querySelector('td').textContent; \
             return out;",
            vec![],
        )
        .await
        .expect("the page answers a script");
    match fields {
        serde_json::Value::Object(map) => map,
        other => panic!("the stats table reads as {other}"),
    }
}

/// Opens the page and waits until it has read `/config` (the method list is filled).
async fn open_page(client: &Client, base_url: &str) {
    client
        .goto(&format!("{base_url}/"))
        .await
        .expect("the page loads");
    client
        .wait()
        .at_most(START_TIMEOUT)
        .for_element(Locator::Css("#method option"))
        .await
        .expect("the page fills the method list from GET /config");
}

/// Chooses `file` in the file field and sends the form.
async fn upload(client: &Client, file: &Path) {
    let path = file.canonicalize().expect("fixture exists");
    client
        .find(Locator::Id("file"))
        .await
        .expect("file field")
        .send_keys(path.to_str().expect("fixture paths are UTF-8"))
        .await
        .expect("the file is chosen");
    client
        .find(Locator::Id("upload"))
        .await
        .expect("upload button")
        .click()
        .await
        .expect("the form is sent");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime starts")
}

#[test]
fn page_uploads_a_workbook_and_shows_its_stats() {
    let db = TestDb::new();
    let service = Service::start(&db.url, &["--table", "dataset"]);
    let base_url = service.base.clone();
    let workbook = fixture("dataset_xlsxwriter.xlsx");

    runtime().block_on(async {
        let browser = Browser::start(1024, 900).await;
        browser
            .run(|client, _downloads| async move {
                open_page(&client, &base_url).await;
                let table = client
                    .find(Locator::Id("table"))
                    .await
                    .expect("table field")
                    .prop("value")
                    .await
                    .expect("table value");
                assert_eq!(
                    table.as_deref(),
                    Some("dataset"),
                    "prefilled from GET /config"
                );
                let method = client
                    .find(Locator::Id("method"))
                    .await
                    .expect("method list")
                    .prop("value")
                    .await
                    .expect("method value");
                assert_eq!(
                    method.as_deref(),
                    Some("batch"),
                    "the configured default method"
                );
                assert!(
                    text_of(&client, "#table-hint").await.contains("dataset"),
                    "the allowed table is shown"
                );
                assert!(
                    !client
                        .find(Locator::Id("token"))
                        .await
                        .expect("token field")
                        .is_displayed()
                        .await
                        .expect("token field state"),
                    "no token asked for on loopback without --token-file"
                );

                upload(&client, &workbook).await;
                wait_for_result(&client).await;

                let stats = stats_table(&client).await;
                for (field, expected) in [
                    ("method", "batch"),
                    ("file", "dataset_xlsxwriter.xlsx"),
                    ("table", "dataset"),
                    ("total_records", "4"),
                    ("success_count", "4"),
                    ("error_count", "0"),
                    ("batch_size", "1,000"),
                ] {
                    assert_eq!(
                        stats.get(field).and_then(|v| v.as_str()),
                        Some(expected),
                        "{field} in {stats:?}"
                    );
                }
                for field in ["duration_seconds", "records_per_second", "workers"] {
                    assert!(stats.contains_key(field), "{field} in {stats:?}");
                }
                assert_eq!(
                    text_of(&client, "#outcome").await,
                    "Import completed successfully."
                );
                assert_eq!(text_of(&client, "#rows-written").await, "4");
                assert!(
                    !client
                        .find(Locator::Id("rejects-section"))
                        .await
                        .expect("rejects section")
                        .is_displayed()
                        .await
                        .expect("rejects section state"),
                    "no rejects offered when every row is in"
                );

                // the page's address names the import, so a reload shows it again
                let address = client.current_url().await.expect("page address");
                assert!(
                    address
                        .fragment()
                        .is_some_and(|fragment| fragment.starts_with("import-")),
                    "{address}"
                );
                client.refresh().await.expect("the page reloads");
                wait_for_result(&client).await;
                let again = stats_table(&client).await;
                assert_eq!(
                    again.get("success_count"),
                    stats.get("success_count"),
                    "{again:?}"
                );
            })
            .await;
    });

    assert_eq!(db.count("dataset"), 4, "the page's upload is in the table");
    assert_eq!(
        db.scalar("SELECT name FROM dataset WHERE id = 2"),
        Some("Bob, \"the\" builder".to_string())
    );
}

#[test]
fn page_offers_the_rejects_of_a_file_with_rejected_rows_on_a_narrow_screen() {
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).expect("schema"));
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let base_url = service.base.clone();
    // the tutorial's workbook: 10,000 rows, 13 of them with an empty Name (NOT NULL)
    let workbook = project_fixture("businesses.xlsx");

    runtime().block_on(async {
        // a phone-sized window: the page must not need horizontal scrolling
        let browser = Browser::start(390, 844).await;
        browser
            .run(|client, downloads| async move {
                open_page(&client, &base_url).await;
                client
                    .find(Locator::Id("method"))
                    .await
                    .expect("method list")
                    .select_by_value("copy")
                    .await
                    .expect("copy is offered");
                upload(&client, &workbook).await;
                wait_for_result(&client).await;

                let stats = stats_table(&client).await;
                for (field, expected) in [
                    ("method", "copy"),
                    ("file", "businesses.xlsx"),
                    ("table", "businesses"),
                    ("total_records", "10,000"),
                    ("success_count", "9,987"),
                    ("error_count", "13"),
                ] {
                    assert_eq!(stats.get(field).and_then(|v| v.as_str()), Some(expected), "{field} in {stats:?}");
                }
                assert!(
                    text_of(&client, "#outcome").await.contains("13 rejected rows"),
                    "the outcome names the rejected rows"
                );

                // the first rejected rows, read from the service, with row number, column, reason
                client
                    .wait()
                    .at_most(START_TIMEOUT)
                    .for_element(Locator::Css("#rejects tbody tr"))
                    .await
                    .expect("the first rejected rows are listed");
                let rejects = client
                    .execute(
                        "return [...document.querySelectorAll('#rejects tbody tr')] \
                           .map((row) => [...row.cells].map((cell) => cell.textContent));",
                        vec![],
                    )
                    .await
                    .expect("the page answers a script");
                let rejects = rejects.as_array().expect("rows");
                assert_eq!(rejects.len(), 13, "{rejects:?}");
                for reject in rejects {
                    let row_number: u64 = reject[0].as_str().unwrap_or("").parse().unwrap_or_else(|_| {
                        panic!("row number of {reject}")
                    });
                    assert!(row_number >= 2, "{reject}");
                    assert!(!reject[2].as_str().unwrap_or("").is_empty(), "a reason: {reject}");
                }

                let download = client
                    .find(Locator::Id("download-rejects"))
                    .await
                    .expect("download button");
                assert!(
                    download.is_displayed().await.expect("button state"),
                    "the rejects download is offered"
                );
                download.click().await.expect("the download starts");
                let link = client
                    .wait()
                    .at_most(START_TIMEOUT)
                    .for_element(Locator::Css("#rejects-link:not([hidden])"))
                    .await
                    .expect("the page offers the fetched CSV as a file");
                let name = link
                    .attr("download")
                    .await
                    .expect("link attributes")
                    .expect("a download name");
                assert!(name.starts_with("rejects-") && name.ends_with(".csv"), "{name}");
                let saved = wait_for_file(&downloads.join(&name)).await;
                let mut lines = saved.lines();
                assert!(
                    lines
                        .next()
                        .is_some_and(|header| header.starts_with("row_number,column,reason")),
                    "the contract's rejects header: {saved}"
                );
                assert_eq!(lines.count(), 13, "one line per rejected row");

                let overflow = client
                    .execute(
                        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                        vec![],
                    )
                    .await
                    .expect("the page answers a script");
                assert!(
                    overflow.as_i64().unwrap_or(1) <= 0,
                    "the page is wider than a 390-pixel screen by {overflow} pixels"
                );
            })
            .await;
    });

    assert_eq!(
        db.count("businesses"),
        9987,
        "the rows the stats count as written are in the table"
    );
}

#[test]
fn page_asks_for_the_token_and_shows_the_services_error_plainly() {
    let db = TestDb::new();
    let secrets = TempDir::new();
    let token_file = secrets.path("token");
    std::fs::write(&token_file, "page-test-token\n").expect("token file");
    let service = Service::start(
        &db.url,
        &[
            "--table",
            "dataset",
            "--token-file",
            token_file.to_str().expect("temp paths are UTF-8"),
        ],
    );
    let base_url = service.base.clone();
    let workbook = fixture("dataset_xlsxwriter.xlsx");

    runtime().block_on(async {
        let browser = Browser::start(1024, 900).await;
        browser
            .run(|client, _downloads| async move {
                open_page(&client, &base_url).await;
                let token = client
                    .find(Locator::Id("token"))
                    .await
                    .expect("token field");
                assert!(
                    token.is_displayed().await.expect("token field state"),
                    "GET /config says a token is required, so the page asks for it"
                );

                // a wrong token: the service's {"error": ...} is shown as it is
                token.send_keys("not-the-token").await.expect("typing");
                upload(&client, &workbook).await;
                let error = client
                    .wait()
                    .at_most(START_TIMEOUT)
                    .for_element(Locator::Css("#error:not([hidden])"))
                    .await
                    .expect("the refusal is shown")
                    .text()
                    .await
                    .expect("error text");
                assert!(
                    !error.is_empty() && !error.contains('{'),
                    "one plain line, not JSON: {error}"
                );
                assert!(
                    error.to_lowercase().contains("token"),
                    "the 401 says what is wrong: {error}"
                );

                token.clear().await.expect("clearing");
                token.send_keys("page-test-token").await.expect("typing");
                client
                    .find(Locator::Id("upload"))
                    .await
                    .expect("upload button")
                    .click()
                    .await
                    .expect("the form is sent again");
                wait_for_result(&client).await;
                let stats = stats_table(&client).await;
                assert_eq!(
                    stats.get("success_count").and_then(|v| v.as_str()),
                    Some("4"),
                    "{stats:?}"
                );
                let kept = client
                    .execute("return sessionStorage.getItem('importer.token');", vec![])
                    .await
                    .expect("the page answers a script");
                assert_eq!(kept, "page-test-token", "the token is kept for this tab");
            })
            .await;
    });

    assert_eq!(db.count("dataset"), 4);
}

/// The text of a file the browser is downloading, once it is complete.
async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // chromium writes NAME.crdownload and renames it when done
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not downloaded within {START_TIMEOUT:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn page_shows_the_rows_so_far_while_an_import_runs() {
    const ROW_COUNT: u64 = 200_000;
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("big.csv");
    let mut text = String::from("id,name,qty\n");
    for row in 0..ROW_COUNT {
        text.push_str(&format!("{row},name {row},{}\n", row % 97));
    }
    std::fs::write(&csv, text).expect("CSV written");
    // small batches: the import takes long enough for the page to poll it several times
    let service = Service::start(&db.url, &["--table", "big", "--batch-size", "200"]);
    let base_url = service.base.clone();

    runtime().block_on(async {
        let browser = Browser::start(1024, 900).await;
        browser
            .run(|client, _downloads| async move {
                open_page(&client, &base_url).await;
                upload(&client, &csv).await;
                let deadline = Instant::now() + RESULT_TIMEOUT;
                let mut rows_seen_while_running = Vec::new();
                loop {
                    let state = client
                        .execute(
                            "return {done: !document.getElementById('result').hidden, \
                                     read: document.getElementById('rows-read').textContent, \
                                     bar: !document.getElementById('bar').hidden};",
                            vec![],
                        )
                        .await
                        .expect("the page answers a script");
                    if state["done"] == true {
                        break;
                    }
                    let read: u64 = state["read"]
                        .as_str()
                        .unwrap_or("")
                        .replace(',', "")
                        .parse()
                        .unwrap_or_else(|_| panic!("rows read is a number: {state}"));
                    if read > 0 && read < ROW_COUNT {
                        assert_eq!(state["bar"], true, "a progress bar while running");
                        rows_seen_while_running.push(read);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no result within {RESULT_TIMEOUT:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(
                    !rows_seen_while_running.is_empty(),
                    "the page showed rows read while the import ran"
                );
                assert!(
                    rows_seen_while_running
                        .windows(2)
                        .all(|pair| pair[0] <= pair[1]),
                    "rows read only grow: {rows_seen_while_running:?}"
                );
                wait_for_result(&client).await;
                let stats = stats_table(&client).await;
                assert_eq!(
                    stats.get("total_records").and_then(|v| v.as_str()),
                    Some("200,000"),
                    "{stats:?}"
                );
                assert_eq!(text_of(&client, "#rows-read").await, "200,000");
            })
            .await;
    });

    assert_eq!(db.count("big"), ROW_COUNT as i64);
}
