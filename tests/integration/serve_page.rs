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

use fantoccini::elements::Element;
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

    /// Runs `test` against the page at `base_url`, then ends the session even when `test`
    /// panicked.
    async fn run<F, Fut, T>(self, base_url: &str, test: F) -> T
    where
        F: FnOnce(Page) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let page = Page {
            client: self.client.clone(),
            downloads: self.downloads.0.clone(),
        };
        let base_url = base_url.to_string();
        let outcome = tokio::spawn(async move {
            page.open(&base_url).await;
            test(page).await
        })
        .await;
        self.client.close().await.ok();
        match outcome {
            Ok(value) => value,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("the browser test did not finish: {error}"),
            },
        }
    }
}

/// Opens a `width` x `height` browser on the page of `service`, runs `test` in it and
/// returns what `test` returns.
fn with_page<F, Fut, T>(service: &Service, (width, height): (u32, u32), test: F) -> T
where
    F: FnOnce(Page) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime starts")
        .block_on(async {
            Browser::start(width, height)
                .await
                .run(&service.base, test)
                .await
        })
}

/// The page in the browser, and what the tests read and do in it.
struct Page {
    client: Client,
    /// Where the browser saves downloads.
    downloads: PathBuf,
}

impl Page {
    /// Opens the page and waits until it has read `/config` (the method list is filled).
    async fn open(&self, base_url: &str) {
        self.client
            .goto(&format!("{base_url}/"))
            .await
            .expect("the page loads");
        self.wait_for("#method option").await;
    }

    /// The element `css` matches, once it exists.
    async fn wait_for(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(START_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css} in the page ({error})"))
    }

    async fn element(&self, id: &str) -> Element {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|error| panic!("no #{id} in the page ({error})"))
    }

    /// Text of the element `css` matches, waiting for it to exist.
    async fn text(&self, css: &str) -> String {
        self.wait_for(css)
            .await
            .text()
            .await
            .unwrap_or_else(|error| panic!("text of {css}: {error}"))
    }

    /// The current value of the form field `id`.
    async fn value(&self, id: &str) -> String {
        self.element(id)
            .await
            .prop("value")
            .await
            .unwrap_or_else(|error| panic!("value of #{id}: {error}"))
            .unwrap_or_default()
    }

    /// Whether the element `id` is visible.
    async fn shown(&self, id: &str) -> bool {
        self.element(id)
            .await
            .is_displayed()
            .await
            .unwrap_or_else(|error| panic!("visibility of #{id}: {error}"))
    }

    async fn click(&self, id: &str) {
        self.element(id)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("click on #{id}: {error}"));
    }

    async fn type_into(&self, id: &str, text: &str) {
        let field = self.element(id).await;
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("typing works");
    }

    /// The value of a script run in the page.
    async fn script(&self, source: &str) -> serde_json::Value {
        self.client
            .execute(source, vec![])
            .await
            .unwrap_or_else(|error| panic!("the page runs no script ({error}): {source}"))
    }

    /// Chooses `file` in the file field and sends the form.
    async fn upload(&self, file: &Path) {
        let path = file.canonicalize().expect("the file to upload exists");
        self.element("file")
            .await
            .send_keys(path.to_str().expect("test paths are UTF-8"))
            .await
            .expect("the file is chosen");
        self.click("upload").await;
    }

    /// Waits until the page shows `#result`, and fails with what it shows otherwise.
    async fn wait_for_result(&self) {
        let deadline = Instant::now() + RESULT_TIMEOUT;
        loop {
            let state = self
                .script(
                    "const shown = (id) => !document.getElementById(id).hidden; \
                     return {result: shown('result'), \
                             error: shown('error') ? document.getElementById('error').textContent : null, \
                             phase: document.getElementById('phase').textContent};",
                )
                .await;
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

    /// The stats table as field -> shown text, from its `data-field` rows.
    async fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let fields = self
            .script(
                "const out = {}; \
                 for (const row of document.querySelectorAll('#stats tbody tr')) \
                   out[row.dataset.field] = row.querySelector('td').textContent; \
                 return out;",
            )
            .await;
        match fields {
            serde_json::Value::Object(map) => map,
            other => panic!("the stats table reads as {other}"),
        }
    }

    /// Checks the stats table shows `expected` (field, text) pairs.
    async fn assert_stats(&self, expected: &[(&str, &str)]) {
        let stats = self.stats().await;
        for (field, text) in expected {
            assert_eq!(
                stats.get(*field).and_then(|value| value.as_str()),
                Some(*text),
                "{field} in the stats table {stats:?}"
            );
        }
    }

    /// The rejected rows the page lists, once it lists any, as (row number, column,
    /// reason); every one must have a reason.
    async fn rejects(&self) -> Vec<(u64, String, String)> {
        self.wait_for("#rejects tbody tr").await;
        let rows = self
            .script(
                "return [...document.querySelectorAll('#rejects tbody tr')] \
                   .map((row) => [...row.cells].map((cell) => cell.textContent));",
            )
            .await;
        let rows: Vec<Vec<String>> =
            serde_json::from_value(rows).expect("the rejects table reads as rows of text");
        rows.into_iter()
            .map(|cells| {
                let [row_number, column, reason] = <[String; 3]>::try_from(cells)
                    .unwrap_or_else(|cells| panic!("a rejected row has 3 cells: {cells:?}"));
                let row_number = row_number
                    .parse()
                    .unwrap_or_else(|_| panic!("row number {row_number:?}"));
                assert!(!reason.is_empty(), "a reason for row {row_number}");
                (row_number, column, reason)
            })
            .collect()
    }

    /// The text of a file the browser downloaded, once it is complete.
    async fn downloaded(&self, name: &str) -> String {
        let path = self.downloads.join(name);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // chromium writes NAME.crdownload and renames it when done
            if let Ok(text) = std::fs::read_to_string(&path) {
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
}

/// The workbook every writer wrote: 4 rows, all of them loadable into a created table.
fn dataset_workbook() -> PathBuf {
    fixture("dataset_xlsxwriter.xlsx")
}

#[test]
fn page_uploads_a_workbook_and_shows_its_stats() {
    let db = TestDb::new();
    let service = Service::start(&db.url, &["--table", "dataset"]);

    with_page(&service, (1024, 900), |page| async move {
        assert_eq!(
            page.value("table").await,
            "dataset",
            "prefilled from GET /config"
        );
        assert_eq!(
            page.value("method").await,
            "batch",
            "the configured default method"
        );
        assert!(
            page.text("#table-hint").await.contains("dataset"),
            "the allowed table is shown"
        );
        assert!(
            !page.shown("token").await,
            "no token asked for on loopback without --token-file"
        );

        page.upload(&dataset_workbook()).await;
        page.wait_for_result().await;
        page.assert_stats(&[
            ("method", "batch"),
            ("file", "dataset_xlsxwriter.xlsx"),
            ("table", "dataset"),
            ("total_records", "4"),
            ("success_count", "4"),
            ("error_count", "0"),
            ("batch_size", "1,000"),
        ])
        .await;
        let stats = page.stats().await;
        for field in ["duration_seconds", "records_per_second", "workers"] {
            assert!(stats.contains_key(field), "{field} in {stats:?}");
        }
        assert_eq!(
            page.text("#outcome").await,
            "Import completed successfully."
        );
        assert_eq!(page.text("#rows-written").await, "4");
        assert!(
            !page.shown("rejects-section").await,
            "no rejects offered when every row is in"
        );

        // the page's address names the import, so a reload shows it again
        let address = page.client.current_url().await.expect("page address");
        assert!(
            address
                .fragment()
                .is_some_and(|fragment| fragment.starts_with("import-")),
            "{address}"
        );
        page.client.refresh().await.expect("the page reloads");
        page.wait_for_result().await;
        page.assert_stats(&[("success_count", "4")]).await;
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

    // a phone-sized window: the page must not need horizontal scrolling
    with_page(&service, (390, 844), |page| async move {
        page.element("method")
            .await
            .select_by_value("copy")
            .await
            .expect("copy is offered");
        // the tutorial's workbook: 10,000 rows, 13 of them with an empty Name (NOT NULL)
        page.upload(&project_fixture("businesses.xlsx")).await;
        page.wait_for_result().await;
        page.assert_stats(&[
            ("method", "copy"),
            ("file", "businesses.xlsx"),
            ("table", "businesses"),
            ("total_records", "10,000"),
            ("success_count", "9,987"),
            ("error_count", "13"),
        ])
        .await;
        assert!(
            page.text("#outcome").await.contains("13 rejected rows"),
            "the outcome names the rejected rows"
        );

        // the first rejected rows, read from the service: row number, column, reason
        let rejects = page.rejects().await;
        assert_eq!(rejects.len(), 13, "{rejects:?}");
        assert!(
            rejects
                .iter()
                .all(|(row_number, column, _)| *row_number >= 2 && column == "name"),
            "below the header, in name: {rejects:?}"
        );

        assert!(
            page.shown("download-rejects").await,
            "the rejects download is offered"
        );
        page.click("download-rejects").await;
        let name = page
            .wait_for("#rejects-link:not([hidden])")
            .await
            .attr("download")
            .await
            .expect("link attributes")
            .expect("a download name");
        assert!(
            name.starts_with("rejects-") && name.ends_with(".csv"),
            "{name}"
        );
        let saved = page.downloaded(&name).await;
        let mut lines = saved.lines();
        assert!(
            lines
                .next()
                .is_some_and(|header| header.starts_with("row_number,column,reason")),
            "the contract's rejects header: {saved}"
        );
        assert_eq!(lines.count(), 13, "one line per rejected row");

        let overflow = page
            .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            .await;
        assert!(
            overflow.as_i64().unwrap_or(1) <= 0,
            "the page is wider than a 390-pixel screen by {overflow} pixels"
        );
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
    let token_path = token_file.to_str().expect("temp paths are UTF-8");
    let service = Service::start(&db.url, &["--table", "dataset", "--token-file", token_path]);

    with_page(&service, (1024, 900), |page| async move {
        assert!(
            page.shown("token").await,
            "GET /config says a token is required, so the page asks for it"
        );

        // a wrong token: the service's {"error": ...} is shown as the line it is
        page.type_into("token", "not-the-token").await;
        page.upload(&dataset_workbook()).await;
        let error = page.text("#error:not([hidden])").await;
        assert!(
            !error.is_empty() && !error.contains('{'),
            "one plain line, not JSON: {error}"
        );
        assert!(
            error.to_lowercase().contains("token"),
            "the 401 says what is wrong: {error}"
        );

        page.type_into("token", "page-test-token").await;
        page.click("upload").await;
        page.wait_for_result().await;
        page.assert_stats(&[("success_count", "4")]).await;
        let kept = page
            .script("return sessionStorage.getItem('importer.token');")
            .await;
        assert_eq!(kept, "page-test-token", "the token is kept for this tab");
    });

    assert_eq!(db.count("dataset"), 4);
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

    with_page(&service, (1024, 900), |page| async move {
        page.upload(&csv).await;
        let deadline = Instant::now() + RESULT_TIMEOUT;
        let mut rows_seen_while_running = Vec::new();
        loop {
            let state = page
                .script(
                    "return {done: !document.getElementById('result').hidden, \
                             read: document.getElementById('rows-read').textContent, \
                             bar: !document.getElementById('bar').hidden};",
                )
                .await;
            if state["done"] == true {
                break;
            }
            let read: u64 = state["read"]
                .as_str()
                .and_then(|text| text.replace(',', "").parse().ok())
                .unwrap_or_else(|| panic!("rows read is a number: {state}"));
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
            rows_seen_while_running.is_sorted(),
            "rows read only grow: {rows_seen_while_running:?}"
        );
        page.wait_for_result().await;
        page.assert_stats(&[("total_records", "200,000")]).await;
        assert_eq!(page.text("#rows-read").await, "200,000");
    });

    assert_eq!(db.count("big"), ROW_COUNT as i64);
}

#[test]
fn page_refuses_a_file_over_the_upload_limit_before_sending_it() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("too_big.csv");
    let mut text = String::from("id,note\n");
    while text.len() <= 1024 * 1024 {
        text.push_str(&format!("{},{}\n", text.len(), "x".repeat(100)));
    }
    std::fs::write(&csv, text).expect("CSV written");
    let service = Service::start(&db.url, &["--table", "notes", "--max-upload-mb", "1"]);

    with_page(&service, (1024, 900), |page| async move {
        assert!(
            page.text("#file-hint").await.contains("at most 1.0 MiB"),
            "the limit from GET /config is shown"
        );
        page.upload(&csv).await;
        let error = page.text("#error:not([hidden])").await;
        assert!(
            error.contains("too_big.csv") && error.contains("at most 1.0 MiB"),
            "{error}"
        );
        assert!(
            page.shown("upload").await
                && page
                    .element("upload")
                    .await
                    .is_enabled()
                    .await
                    .expect("button state"),
            "the form stays usable"
        );
    });

    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'notes'"),
        Some("0".to_string()),
        "nothing was imported"
    );
}

#[test]
fn page_shows_an_import_again_after_the_service_restarted() {
    let db = TestDb::new();
    db.execute(&std::fs::read_to_string(project_fixture("businesses.sql")).expect("schema"));
    let dir = TempDir::new();
    let uploads = dir.path("uploads");
    let csv = dir.path("people.csv");
    // a title line above the header (header row 2); lines 4 and 6 have no name (NOT NULL),
    // and line 6's city spans two lines, so the rejects CSV the page reads back after the
    // restart holds a quoted multi-line cell
    std::fs::write(
        &csv,
        "People,\nname,city\nAlice,Paris\n,Nowhere\n\"Bob, \"\"the\"\" builder\",Lyon\n,\"two\nlines\"\n",
    )
    .expect("CSV written");
    let args = ["--table", "businesses"];

    let first = Service::start_with(&db.url, &args, &[], &uploads);
    let import_id = with_page(&first, (1024, 900), move |page| async move {
        page.wait_for("details summary")
            .await
            .click()
            .await
            .expect("more options open");
        page.type_into("header-row", "2").await;
        page.upload(&csv).await;
        page.wait_for_result().await;
        page.assert_stats(&[("success_count", "2"), ("error_count", "2")])
            .await;
        let address = page.client.current_url().await.expect("page address");
        address
            .fragment()
            .and_then(|fragment| fragment.strip_prefix("import-"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("the address names the import: {address}"))
    });
    drop(first);

    // the new service knows the import only from the run ledger and the kept rejects CSV
    let second = Service::start_with(&db.url, &args, &[], &uploads);
    let base = second.base.clone();
    with_page(&second, (1024, 900), move |page| async move {
        page.client
            .goto(&format!("{base}/#import-{import_id}"))
            .await
            .expect("the import's address opens");
        page.wait_for_result().await;
        page.assert_stats(&[
            ("file", "people.csv"),
            ("total_records", "4"),
            ("success_count", "2"),
            ("error_count", "2"),
        ])
        .await;
        let rejects = page.rejects().await;
        let row_numbers: Vec<u64> = rejects.iter().map(|(row_number, ..)| *row_number).collect();
        assert_eq!(row_numbers, [4, 6], "{rejects:?}");
        assert!(
            rejects.iter().all(|(_, column, _)| column == "name"),
            "{rejects:?}"
        );
        assert!(
            page.shown("download-rejects").await,
            "the rejects download is offered"
        );
    });

    assert_eq!(db.count("businesses"), 2);
}
