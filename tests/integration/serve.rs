//! `importer serve`: the real binary listening on 127.0.0.1:0, real HTTP (reqwest and curl),
//! a real PostgreSQL database per test. [`Service`] starts one and is reused by the page's
//! browser test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client, multipart};
use serde_json::Value;

use crate::util::{TempDir, TestDb, fixture, project_fixture, run_importer};

/// Longest a service takes to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `importer serve`, killed when dropped.
pub(crate) struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its `--uploads` directory.
    pub uploads: PathBuf,
    stderr: Arc<Mutex<String>>,
    _dir: Option<TempDir>,
}

impl Service {
    /// Starts `importer serve` on a free loopback port against `database_url`, with `args`
    /// added (e.g. `--table`, `--allow-table`) and its own uploads directory.
    pub(crate) fn start(database_url: &str, args: &[&str]) -> Service {
        let dir = TempDir::new();
        let uploads = dir.path("uploads");
        let mut service = Service::start_with(database_url, args, &[], &uploads);
        service._dir = Some(dir);
        service
    }

    /// As [`Service::start`], with environment variables and a given uploads directory
    /// (kept by the caller, e.g. across a restart).
    pub(crate) fn start_with(
        database_url: &str,
        args: &[&str],
        environment: &[(&str, &str)],
        uploads: &Path,
    ) -> Service {
        Service::launch(
            serve_command(database_url, args, environment, uploads),
            uploads,
        )
    }

    /// As [`Service::start_with`], the process limited to `open_files` open files (soft and
    /// hard limit alike, so that the service cannot raise it).
    pub(crate) fn start_with_open_files(
        database_url: &str,
        args: &[&str],
        uploads: &Path,
        open_files: u64,
    ) -> Service {
        use std::os::unix::process::CommandExt;
        let mut command = serve_command(database_url, args, &[], uploads);
        let limit = libc::rlimit {
            rlim_cur: open_files,
            rlim_max: open_files,
        };
        // SAFETY: the closure runs in the forked child before exec and makes one
        // async-signal-safe system call on a value copied in, allocating nothing.
        unsafe {
            command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        Service::launch(command, uploads)
    }

    /// Spawns `command` listening on a free port and waits for the address it prints.
    fn launch(mut command: Command, uploads: &Path) -> Service {
        command.args(["--listen", "127.0.0.1:0"]);
        let mut child = command.spawn().expect("the importer binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (address_sender, address) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: String = rest
                        .chars()
                        .take_while(|ch| !ch.is_whitespace() && *ch != '"')
                        .collect();
                    address_sender.send(address).ok();
                }
                let mut text = collected.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let address = match address.recv_timeout(START_TIMEOUT) {
            Ok(address) => address,
            Err(_) => {
                child.kill().ok();
                child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "importer serve did not print `listening on http://ADDR`; stderr:\n{}",
                    stderr.lock().expect("stderr lock")
                );
            }
        };
        Service {
            child,
            base: format!("http://{address}"),
            uploads: uploads.to_path_buf(),
            stderr,
            _dir: None,
        }
    }

    /// The URL of `path` (starting with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the service logged so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with a pid of our own child and a valid signal number
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM is sent");
    }

    /// Kills the process (SIGKILL: no shutdown of any kind) and reaps it.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("the service is killed");
        self.child.wait().expect("the killed service is reaped");
    }

    /// Waits for the process to end, at most `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The `importer serve` command, without `--listen`.
fn serve_command(
    database_url: &str,
    args: &[&str],
    environment: &[(&str, &str)],
    uploads: &Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_importer"));
    command
        .arg("serve")
        .arg("--uploads")
        .arg(uploads)
        .args(["--database-url", database_url])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .env_remove("IMPORTER_TOKEN")
        .envs(environment.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A test database holding fixtures/businesses.sql.
fn businesses_db() -> TestDb {
    let db = TestDb::new();
    let sql =
        std::fs::read_to_string(project_fixture("businesses.sql")).expect("businesses.sql reads");
    db.execute(&sql);
    db
}

/// `importer generate` of `rows` rows, `bad_rows` of them invalid, into `dir`.
fn generate(dir: &TempDir, name: &str, rows: u64, bad_rows: f64) -> PathBuf {
    let out = dir.path(name);
    let run = run_importer(
        &[
            "generate",
            "--rows",
            &rows.to_string(),
            "--seed",
            "7",
            "--bad-rows",
            &bad_rows.to_string(),
            out.to_str().expect("utf-8 path"),
        ],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    out
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client builds")
}

/// POSTs `file` as the field `file` named `name` to `path_and_query`.
fn post_file(
    service: &Service,
    path_and_query: &str,
    file: &Path,
    name: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let bytes = std::fs::read(file).expect("upload file reads");
    let form = multipart::Form::new().part(
        "file",
        multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let mut request = client().post(service.url(path_and_query)).multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("the request is answered");
    let status = response.status();
    let text = response.text().expect("the body reads");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
    (status, json)
}

fn get_json(service: &Service, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().get(service.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().expect("the request is answered");
    let status = response.status();
    let text = response.text().expect("the body reads");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
    (status, json)
}

/// The files in the uploads directory (none must be left of an upload).
fn upload_files(service: &Service) -> Vec<String> {
    std::fs::read_dir(&service.uploads)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with("rejects-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the real `curl`, returning its stdout.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "300"])
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("curl does not run ({error}); install it (apt-get install -y curl)")
        });
    assert!(output.status.success(), "curl {args:?} failed: {output:?}");
    String::from_utf8(output.stdout).expect("curl prints UTF-8")
}

/// Waits until `GET /imports/{id}` has left `running`, returning it.
fn wait_for_import(service: &Service, id: i64, token: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, view) = get_json(service, &format!("/imports/{id}"), token);
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] != "running" {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "import {id} still running: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rejects CSV an answer links (`rejects_href`).
fn rejects_csv(service: &Service, answer: &Value) -> String {
    let href = answer["rejects_href"]
        .as_str()
        .unwrap_or_else(|| panic!("no rejects file: {answer}"));
    let response = client().get(service.url(href)).send().expect("answered");
    assert_eq!(response.status(), StatusCode::OK, "{href}");
    response.text().expect("the CSV reads")
}

/// A test's piece of work for a thread of its own.
type Job<'scope, T> = Box<dyn FnOnce() -> T + Send + 'scope>;

/// Runs every job on a thread of its own at once; their results, in order.
fn at_once<T: Send>(jobs: Vec<Job<'_, T>>) -> Vec<T> {
    std::thread::scope(|scope| {
        let running: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        running
            .into_iter()
            .map(|job| job.join().expect("a test thread"))
            .collect()
    })
}

fn assert_stats_shape(stats: &Value, method: &str, rows: u64) {
    for field in [
        "method",
        "file",
        "table",
        "total_records",
        "success_count",
        "error_count",
        "duration_seconds",
        "records_per_second",
        "workers",
        "batch_size",
    ] {
        assert!(stats.get(field).is_some(), "stats lack {field}: {stats}");
    }
    assert_eq!(stats["method"], method, "{stats}");
    assert_eq!(stats["total_records"], rows, "{stats}");
    assert_eq!(
        stats["success_count"].as_u64().unwrap() + stats["error_count"].as_u64().unwrap(),
        rows,
        "{stats}"
    );
}

#[test]
fn the_tutorial_curl_calls_answer_its_json_with_every_method() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "sample_data.xlsx", 300, 0.0);
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let health: Value = serde_json::from_str(&curl(&[&service.url("/health")])).unwrap();
    assert_eq!(health, serde_json::json!({"status": "healthy"}));
    let form = format!("file=@{}", file.display());
    for method in ["sequential", "concurrent", "batch", "copy"] {
        let url = service.url(&format!("/upload?method={method}"));
        let answer: Value =
            serde_json::from_str(&curl(&["-X", "POST", &url, "-F", &form])).unwrap();
        assert_eq!(
            answer["message"], "Import completed successfully",
            "{answer}"
        );
        assert_eq!(answer["method"], method, "{answer}");
        assert_stats_shape(&answer["stats"], method, 300);
        assert_eq!(answer["stats"]["success_count"], 300, "{answer}");
        assert_eq!(answer["stats"]["file"], "sample_data.xlsx", "{answer}");
        assert_eq!(answer["stats"]["table"], "businesses", "{answer}");
        assert_eq!(answer["rejected_total"], 0, "{answer}");
    }
    assert_eq!(db.count("businesses"), 4 * 300);
    assert!(
        upload_files(&service).is_empty(),
        "{:?}",
        upload_files(&service)
    );
}

#[test]
fn twenty_uploads_at_once_end_with_their_stats_or_429_and_nothing_lost_or_doubled() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "batch.xlsx", 500, 0.0);
    let service = Arc::new(Service::start(
        &db.url,
        &["--table", "businesses", "--max-concurrent-imports", "4"],
    ));
    let answers: Vec<(StatusCode, Value)> = at_once(
        (0..20)
            .map(|_| {
                let (service, file) = (Arc::clone(&service), file.clone());
                Box::new(move || post_file(&service, "/upload", &file, "batch.xlsx", None))
                    as Job<'_, (StatusCode, Value)>
            })
            .collect(),
    );
    let mut succeeded = 0;
    for (status, answer) in &answers {
        match *status {
            StatusCode::OK => {
                assert_stats_shape(&answer["stats"], "batch", 500);
                assert_eq!(answer["stats"]["success_count"], 500, "{answer}");
                succeeded += 1;
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                assert!(answer["error"].is_string(), "{answer}");
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert!(succeeded >= 1, "{answers:?}");
    assert_eq!(db.count("businesses"), 500 * succeeded);
    let (_, metrics_status) = (0, client().get(service.url("/metrics")).send().unwrap());
    let metrics = metrics_status.text().unwrap();
    assert!(
        metrics.contains(&format!(
            "importer_imports_total{{outcome=\"succeeded\"}} {succeeded}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("importer_imports_in_flight 0"),
        "{metrics}"
    );
    assert!(
        upload_files(&service).is_empty(),
        "{:?}",
        upload_files(&service)
    );
}

/// Starts a multipart upload on a raw connection and leaves it unfinished: it holds one of
/// the `--max-concurrent-imports` places while it streams.
fn unfinished_upload(service: &Service) -> TcpStream {
    let address = service.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    let head = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.csv\"\r\nContent-Type: text/csv\r\n\r\nname,city\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{head}\r\n",
        head.len()
    );
    stream.write_all(request.as_bytes()).expect("writes");
    stream
}

#[test]
fn every_error_has_its_status_and_a_json_message() {
    let db = businesses_db();
    let dir = TempDir::new();
    let good = generate(&dir, "good.xlsx", 50, 0.0);
    let service = Service::start(
        &db.url,
        &[
            "--table",
            "businesses",
            "--allow-table",
            "businesses",
            "--allow-table",
            "staging_*",
            "--max-concurrent-imports",
            "1",
            "--wait-lock",
            "0",
        ],
    );
    let expect = |status: StatusCode, answer: &Value, part: &str| {
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {answer}"));
        assert!(error.contains(part), "{status}: {error:?} lacks {part:?}");
        assert!(!error.contains("postgres://"), "{error}");
    };
    // 400: an unknown method, a key without upsert, no file
    let (status, answer) = post_file(&service, "/upload?method=turbo", &good, "good.xlsx", None);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    expect(status, &answer, "unknown method \"turbo\"");
    let (status, answer) = post_file(&service, "/upload?key=id", &good, "good.xlsx", None);
    assert_eq!(status, StatusCode::BAD_REQUEST);
    expect(status, &answer, "mode=upsert");
    let response = client()
        .post(service.url("/upload"))
        .multipart(multipart::Form::new().text("other", "x"))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    expect(
        StatusCode::BAD_REQUEST,
        &response.json().unwrap(),
        "field \"file\"",
    );
    // 403: a table outside --allow-table
    let (status, answer) = post_file(
        &service,
        "/upload?table=pg_authid",
        &good,
        "good.xlsx",
        None,
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    expect(status, &answer, "not allowed");
    // 415: not a spreadsheet, whatever its name
    let html = dir.path("page.xlsx");
    std::fs::write(
        &html,
        "<!DOCTYPE html><html><body><table></table></body></html>",
    )
    .unwrap();
    let (status, answer) = post_file(&service, "/upload", &html, "page.xlsx", None);
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    expect(status, &answer, "not a spreadsheet");
    let binary = dir.path("tool.xlsx");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00").unwrap();
    let (status, _) = post_file(&service, "/upload", &binary, "tool.xlsx", None);
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 422: a zip that is no workbook; a header that does not map
    let broken = dir.path("broken.xlsx");
    std::fs::write(&broken, b"PK\x03\x04 this is not really a zip archive").unwrap();
    let (status, answer) = post_file(&service, "/upload", &broken, "broken.xlsx", None);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let unmapped = dir.path("unmapped.csv");
    std::fs::write(&unmapped, "name,shoe_size\nAda,38\n").unwrap();
    let (status, answer) = post_file(&service, "/upload", &unmapped, "unmapped.csv", None);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    expect(status, &answer, "shoe_size");
    // 409: another run holds the table's run lock
    let lock_key = importer::sink::lock::table_lock_key("public", "businesses");
    let holder = std::thread::spawn({
        let url = db.url.clone();
        move || {
            let mut psql = Command::new("psql")
                .args([&url, "-qX"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("psql runs (apt-get install -y postgresql-client)");
            let mut stdin = psql.stdin.take().unwrap();
            writeln!(stdin, "SELECT pg_advisory_lock({lock_key});\n\\echo locked").unwrap();
            let mut stdout = BufReader::new(psql.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("locked") {
                line.clear();
                stdout.read_line(&mut line).unwrap();
            }
            (psql, stdin)
        }
    });
    let (mut psql, stdin) = holder.join().unwrap();
    let (status, answer) = post_file(&service, "/upload", &good, "good.xlsx", None);
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    drop(stdin);
    psql.wait().ok();
    // 429: the one import place is taken by an upload still streaming
    let slow = unfinished_upload(&service);
    std::thread::sleep(Duration::from_millis(300));
    let (status, answer) = post_file(&service, "/upload", &good, "good.xlsx", None);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    expect(status, &answer, "too many imports");
    drop(slow);
    // 404 with the same shape; the GET /imports/{id} of no import
    let (status, answer) = get_json(&service, "/no/such/thing", None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(answer["error"].is_string());
    let (status, _) = get_json(&service, "/imports/999999", None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    // and the good upload goes through once the place is free
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = post_file(&service, "/upload", &good, "good.xlsx", None);
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
        assert!(Instant::now() < deadline, "the place was never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        upload_files(&service).is_empty(),
        "{:?}",
        upload_files(&service)
    );
    // 503: the database does not answer
    let down = Service::start(
        "postgres://postgres@127.0.0.1:1/nothing",
        &["--table", "businesses", "--connect-timeout", "0"],
    );
    let (status, answer) = get_json(&down, "/ready", None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, answer) = post_file(&down, "/upload", &good, "good.xlsx", None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, answer) = get_json(&service, "/ready", None);
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[test]
fn an_upload_over_the_limit_is_cut_off_while_streaming_and_leaves_no_file() {
    let db = businesses_db();
    let service = Service::start(&db.url, &["--table", "businesses", "--max-upload-mb", "1"]);
    // a chunked body (no Content-Length to refuse up front): the service must count
    let address = service.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\r\nname,city\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{head}\r\n",
        head.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let line = "Ada Lovelace,London\r\n".repeat(3000); // about 63 KB per chunk
    let mut sent: usize = 0;
    // 2 MiB: past the limit, far from the 100 MiB a service without one would take
    while sent < 2 * 1024 * 1024 {
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        if stream.write_all(chunk.as_bytes()).is_err() {
            break; // the service closed the connection: it stopped reading
        }
        sent += line.len();
    }
    // the body is never finished: the answer can only come from the cut-off
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("larger than the limit of 1 MiB"),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upload_files(&service).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", upload_files(&service));
        std::thread::sleep(Duration::from_millis(50));
    }
    // with a Content-Length over the limit, curl is refused with the same JSON
    let dir = TempDir::new();
    let big = dir.path("big.csv");
    std::fs::write(
        &big,
        "name,city\n".to_string() + &"Ada,London\n".repeat(200_000),
    )
    .unwrap();
    let output = curl(&[
        "-X",
        "POST",
        &service.url("/upload"),
        "-F",
        &format!("file=@{}", big.display()),
        "-w",
        "\n%{http_code}",
    ]);
    assert!(output.ends_with("\n413"), "{output}");
    assert!(output.contains("\"error\""), "{output}");
    assert!(
        upload_files(&service).is_empty(),
        "{:?}",
        upload_files(&service)
    );
    assert_eq!(db.count("businesses"), 0);
}

#[test]
fn a_path_traversal_file_name_is_harmless() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "good.xlsx", 20, 0.0);
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let names = [
        format!("../../../../../../tmp/evil-{marker}.xlsx"),
        format!("..\\..\\..\\evil-{marker}.xlsx"),
        format!("/tmp/evil-{marker}.xlsx"),
    ];
    for name in &names {
        let (status, answer) = post_file(&service, "/upload", &file, name, None);
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            answer["stats"]["file"],
            format!("evil-{marker}.xlsx"),
            "{answer}"
        );
    }
    assert!(!Path::new(&format!("/tmp/evil-{marker}.xlsx")).exists());
    let parent = service.uploads.parent().unwrap();
    let outside: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(&marker))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    assert!(
        upload_files(&service).is_empty(),
        "{:?}",
        upload_files(&service)
    );
    assert_eq!(db.count("businesses"), 60);
}

#[test]
fn a_token_is_required_and_checked() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "good.xlsx", 20, 0.0);
    let token = "correct horse battery staple";
    let service = Service::start_with(
        &db.url,
        &["--table", "businesses"],
        &[("IMPORTER_TOKEN", token)],
        &dir.path("uploads"),
    );
    let (status, answer) = post_file(&service, "/upload", &file, "good.xlsx", None);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    let (status, _) = post_file(&service, "/upload", &file, "good.xlsx", Some("wrong"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_json(&service, "/imports", None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_json(&service, "/metrics", Some("wrong"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = post_file(&service, "/upload", &file, "good.xlsx", Some(token));
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _) = get_json(&service, "/imports", Some(token));
    assert_eq!(status, StatusCode::OK);
    // probes and what the page needs stay open
    assert_eq!(get_json(&service, "/health", None).0, StatusCode::OK);
    let (status, config) = get_json(&service, "/config", None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["token_required"], true, "{config}");
    assert_eq!(config["table"], "businesses", "{config}");
    assert_eq!(
        config["allowed_tables"],
        serde_json::json!(["businesses"]),
        "{config}"
    );
    assert_eq!(config["default_method"], "batch", "{config}");
    let page = client().get(service.url("/")).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers().contains_key("content-security-policy"));
    assert!(page.text().unwrap().contains("<form"));
    assert!(!service.stderr().contains(token), "the token is logged");
    assert_eq!(db.count("businesses"), 20);
    // a token file does as well
    let token_file = dir.path("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let from_file = Service::start_with(
        &db.url,
        &[
            "--table",
            "businesses",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
        &dir.path("uploads2"),
    );
    assert_eq!(
        get_json(&from_file, "/imports", None).0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_json(&from_file, "/imports", Some("from-a-file")).0,
        StatusCode::OK
    );
    // beyond loopback without a token, the service refuses to start
    let output = serve_command(&db.url, &["--table", "businesses"], &[], &dir.path("u3"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("the importer binary runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn sigterm_lets_a_running_import_finish_within_the_grace_period() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "slow.xlsx", 3000, 0.0);
    let mut service = Service::start(
        &db.url,
        &[
            "--table",
            "businesses",
            "--method",
            "sequential",
            "--shutdown-grace",
            "120",
        ],
    );
    let upload = std::thread::scope(|scope| {
        let service = &service;
        let upload = scope.spawn(|| post_file(service, "/upload", &file, "slow.xlsx", None));
        // the import is under way once the ledger has it
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'importer' AND datname = current_database()").as_deref() == Some("0") {
            assert!(Instant::now() < deadline, "the import never connected");
            std::thread::sleep(Duration::from_millis(20));
        }
        service.terminate();
        upload.join().expect("upload thread")
    });
    let (status, answer) = upload;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["stats"]["success_count"], 3000, "{answer}");
    let exit = service.wait(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(0), "{}", service.stderr());
    assert_eq!(db.count("businesses"), 3000);
}

#[test]
fn sigterm_cancels_an_import_still_running_when_the_grace_is_over() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "slow.xlsx", 100_000, 0.0);
    let mut service = Service::start(
        &db.url,
        &[
            "--table",
            "businesses",
            "--method",
            "sequential",
            "--shutdown-grace",
            "1",
        ],
    );
    let (status, answer) = post_file(&service, "/imports", &file, "slow.xlsx", None);
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"].as_i64().expect("an id");
    let started = Instant::now();
    while db.count("businesses") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no row arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // live while it runs: the rows so far, no stats yet
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, live) = get_json(&service, &format!("/imports/{id}"), None);
        assert_eq!(status, StatusCode::OK, "{live}");
        assert_eq!(live["status"], "running", "{live}");
        assert!(live["stats"].is_null(), "{live}");
        assert_eq!(live["file"], "slow.xlsx", "{live}");
        if live["rows"]["written"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no rows reported: {live}");
        std::thread::sleep(Duration::from_millis(100));
    }
    service.terminate();
    let exit = service.wait(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(0), "{}", service.stderr());
    let outcome = db.scalar(&format!(
        "SELECT outcome FROM importer.runs WHERE id = {id}"
    ));
    assert_eq!(outcome.as_deref(), Some("cancelled"));
    let written = db.count("businesses");
    assert!(written > 0 && written < 100_000, "{written}");
}

#[test]
fn an_import_is_found_after_the_service_restarted() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "nightly.xlsx", 200, 0.05);
    let uploads = dir.path("uploads");
    let mut service = Service::start_with(&db.url, &["--table", "businesses"], &[], &uploads);
    let (status, answer) = post_file(&service, "/imports", &file, "nightly.xlsx", None);
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"].as_i64().expect("an id");
    assert_eq!(answer["href"], format!("/imports/{id}"));
    assert_eq!(answer["status"], "running");
    let before = wait_for_import(&service, id, None);
    assert_eq!(before["status"], "rejected_rows", "{before}");
    service.terminate();
    assert_eq!(service.wait(Duration::from_secs(30)).code(), Some(0));
    let restarted = Service::start_with(&db.url, &["--table", "businesses"], &[], &uploads);
    let (status, after) = get_json(&restarted, &format!("/imports/{id}"), None);
    assert_eq!(status, StatusCode::OK, "{after}");
    for field in [
        "id",
        "status",
        "table",
        "method",
        "rows",
        "stats",
        "error",
        "rejects_href",
    ] {
        assert!(after.get(field).is_some(), "{field} missing: {after}");
    }
    assert_eq!(after["status"], "rejected_rows", "{after}");
    assert_eq!(after["method"], "batch", "{after}");
    assert_eq!(after["file"], "nightly.xlsx", "{after}");
    assert_eq!(after["stats"]["total_records"], 200, "{after}");
    assert_eq!(after["rows"]["read"], 200, "{after}");
    assert_eq!(
        after["rows"]["written"], before["rows"]["written"],
        "{after}"
    );
    assert_eq!(after["rejects_href"], format!("/imports/{id}/rejects.csv"));
    let (status, list) = get_json(&restarted, "/imports", None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["imports"][0]["id"], id, "{list}");
    let csv = client()
        .get(restarted.url(&format!("/imports/{id}/rejects.csv")))
        .send()
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    let csv = csv.text().unwrap();
    assert!(csv.starts_with("row_number,column,reason"), "{csv}");
}

#[test]
fn rejected_rows_are_answered_200_with_the_rejects() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "messy.xlsx", 400, 0.05);
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let (status, answer) = post_file(&service, "/upload?method=copy", &file, "messy.xlsx", None);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let rejected = answer["stats"]["error_count"].as_u64().unwrap();
    assert!(rejected > 0, "{answer}");
    // rejected rows are no success: the message says how many
    assert_eq!(
        answer["message"],
        format!("Import completed with {rejected} of 400 rows rejected (see rejects)"),
        "{answer}"
    );
    assert_eq!(answer["rejected_total"], rejected, "{answer}");
    let rejects = answer["rejects"].as_array().expect("rejects");
    assert_eq!(rejects.len() as u64, rejected.min(100), "{answer}");
    for reject in rejects {
        assert!(reject["row_number"].as_u64().unwrap() >= 2, "{reject}");
        assert!(reject["reason"].is_string(), "{reject}");
        assert!(reject.get("column").is_some(), "{reject}");
    }
    let csv = rejects_csv(&service, &answer);
    assert_eq!(csv.lines().count() as u64, rejected + 1, "{csv}");
    assert_eq!(
        db.count("businesses") as u64,
        answer["stats"]["success_count"].as_u64().unwrap()
    );
}

#[test]
fn a_database_failure_answers_a_generic_line_and_logs_the_details() {
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    std::fs::write(&file, "name\nAda\n").unwrap();
    let down = Service::start(
        "postgres://secret_user@127.0.0.1:1/secret_db",
        &["--table", "people", "--connect-timeout", "0"],
    );
    let (status, answer) = post_file(&down, "/upload", &file, "people.csv", None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let error = answer["error"].as_str().expect("an error line");
    assert!(error.contains("the service log has the details"), "{error}");
    for secret in ["127.0.0.1", ":1", "secret_db", "secret_user"] {
        assert!(!answer.to_string().contains(secret), "{secret}: {answer}");
    }
    // the operator sees what failed
    let deadline = Instant::now() + Duration::from_secs(10);
    while !down.stderr().contains("import of an upload failed") {
        assert!(Instant::now() < deadline, "{}", down.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = down.stderr();
    assert!(
        logged.contains("secret_db") && logged.contains("127.0.0.1:1"),
        "{logged}"
    );
}

/// The status code curl saw for `args` (`-w '%{http_code}'`, body discarded).
fn curl_status(args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    curl(&all)
}

#[test]
fn cross_site_and_rebound_requests_are_refused() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "good.xlsx", 20, 0.0);
    let form = format!("file=@{}", file.display());
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let upload = service.url("/upload");
    let address = service.base.trim_start_matches("http://").to_string();
    let port = address.rsplit(':').next().expect("a port");
    // a page of another site posting a form (a CORS simple request)
    for header in [
        "Origin: http://evil.example".to_string(),
        "Origin: null".to_string(),
        format!("Origin: http://localhost:{port}"),
        "Sec-Fetch-Site: cross-site".to_string(),
    ] {
        let status = curl_status(&["-X", "POST", &upload, "-H", &header, "-F", &form]);
        assert_eq!(status, "403", "{header}");
    }
    // a site whose name was rebound to 127.0.0.1 is same-origin to the browser, not to us
    for path in ["/upload", "/imports", "/"] {
        let status = curl_status(&[
            &service.url(path),
            "-H",
            &format!("Host: evil.example:{port}"),
            "-H",
            &format!("Origin: http://evil.example:{port}"),
        ]);
        assert_eq!(status, "403", "{path}");
    }
    let answer = curl(&[&service.url("/imports"), "-H", "Host: evil.example"]);
    assert!(answer.contains("loopback"), "{answer}");
    assert_eq!(db.count("businesses"), 0);
    // the page's own requests, followed links and clients without Origin go through
    let origin = format!("Origin: {}", service.base);
    let status = curl_status(&[
        "-X",
        "POST",
        &upload,
        "-H",
        &origin,
        "-H",
        "Sec-Fetch-Site: same-origin",
        "-F",
        &form,
    ]);
    assert_eq!(status, "200");
    let link = curl_status(&[
        &service.url("/"),
        "-H",
        "Sec-Fetch-Site: cross-site",
        "-H",
        "Sec-Fetch-Mode: navigate",
    ]);
    assert_eq!(link, "200");
    let named = curl_status(&[
        &service.url("/imports"),
        "-H",
        &format!("Host: localhost:{port}"),
    ]);
    assert_eq!(named, "200");
    let (status, _) = post_file(&service, "/upload", &file, "good.xlsx", None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(db.count("businesses"), 40);
}

#[test]
fn with_a_token_any_host_is_served_but_not_cross_site() {
    let db = businesses_db();
    let dir = TempDir::new();
    let token = "tok3n";
    let service = Service::start_with(
        &db.url,
        &["--table", "businesses"],
        &[("IMPORTER_TOKEN", token)],
        &dir.path("uploads"),
    );
    let bearer = format!("Authorization: BEARER {token}");
    let imports = service.url("/imports");
    let status = curl_status(&[&imports, "-H", &bearer, "-H", "Host: importer.internal"]);
    assert_eq!(
        status, "200",
        "the scheme name is case-insensitive, any Host"
    );
    let status = curl_status(&[&imports, "-H", &bearer, "-H", "Origin: http://evil.example"]);
    assert_eq!(status, "403");
}

#[test]
fn an_allow_pattern_never_admits_a_table_of_another_schema() {
    let db = businesses_db();
    db.execute("CREATE SCHEMA sales; CREATE TABLE sales.payroll (name text, city text)");
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    std::fs::write(&file, "name,city\nAda,London\n").unwrap();
    let service = Service::start(&db.url, &["--allow-table", "sales*"]);
    for table in ["sales.payroll", "salesx.payroll"] {
        let (status, answer) = post_file(
            &service,
            &format!("/upload?table={table}"),
            &file,
            "people.csv",
            None,
        );
        assert_eq!(status, StatusCode::FORBIDDEN, "{table}: {answer}");
    }
    assert_eq!(db.count("sales.payroll"), 0);
    let (status, answer) = post_file(
        &service,
        "/upload?table=sales_2024",
        &file,
        "people.csv",
        None,
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(db.count("sales_2024"), 1);
}

#[test]
fn imports_into_tables_outside_the_allow_list_are_neither_listed_nor_shown() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "good.xlsx", 20, 0.0);
    // an `importer run` into another table, in the same run ledger
    let run = db.importer(&["run", "--table", "secret", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let secret_id: i64 = db
        .scalar("SELECT max(id) FROM importer.runs")
        .and_then(|id| id.parse().ok())
        .expect("the run is in the ledger");
    let service = Service::start(&db.url, &["--table", "businesses"]);
    let (status, answer) = post_file(&service, "/upload", &file, "good.xlsx", None);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let own_id = answer["id"].as_i64().expect("an id");
    let (status, list) = get_json(&service, "/imports", None);
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = list["imports"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|import| import["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![own_id], "{list}");
    let (status, answer) = get_json(&service, &format!("/imports/{secret_id}"), None);
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    // after a restart (from the ledger, not memory) the service's own run is still shown
    drop(service);
    let restarted = Service::start(&db.url, &["--table", "businesses"]);
    let (status, answer) = get_json(&restarted, &format!("/imports/{own_id}"), None);
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        get_json(&restarted, &format!("/imports/{secret_id}"), None).0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn an_upload_still_streaming_does_not_hold_up_the_shutdown() {
    let db = businesses_db();
    let dir = TempDir::new();
    let good = generate(&dir, "good.xlsx", 5, 0.0);
    let mut service = Service::start(
        &db.url,
        &[
            "--table",
            "businesses",
            "--max-concurrent-imports",
            "1",
            "--shutdown-grace",
            "1",
        ],
    );
    let mut slow = unfinished_upload(&service);
    // the one place is taken once the service is receiving the slow upload
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = post_file(&service, "/upload", &good, "good.xlsx", None);
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert!(Instant::now() < deadline, "{status}: {answer}");
    }
    let imported = db.count("businesses");
    let stopping = Instant::now();
    service.terminate();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("shutting down"), "{answer}");
    let exit = service.wait(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0), "{}", service.stderr());
    assert!(stopping.elapsed() < Duration::from_secs(20));
    assert_eq!(db.count("businesses"), imported);
}

#[test]
fn a_second_signal_ends_the_shutdown_at_once() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "slow.xlsx", 100_000, 0.0);
    let mut service = Service::start(
        &db.url,
        &[
            "--table",
            "businesses",
            "--method",
            "sequential",
            "--shutdown-grace",
            "600",
        ],
    );
    let (status, answer) = post_file(&service, "/imports", &file, "slow.xlsx", None);
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("businesses") == 0 {
        assert!(Instant::now() < deadline, "no row arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    service.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !service.stderr().contains("shutting down") {
        assert!(Instant::now() < deadline, "{}", service.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    service.terminate();
    let exit = service.wait(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{}", service.stderr());
    assert!(
        service.stderr().contains("second signal"),
        "{}",
        service.stderr()
    );
    assert!(db.count("businesses") < 100_000);
}

#[test]
fn a_second_instance_on_a_taken_port_leaves_the_running_ones_files_alone() {
    let db = businesses_db();
    let dir = TempDir::new();
    let uploads = dir.path("uploads");
    let service = Service::start_with(&db.url, &["--table", "businesses"], &[], &uploads);
    let in_flight = uploads.join("upload-in-flight.part");
    std::fs::write(&in_flight, "name,city\n").unwrap();
    let address = service.base.trim_start_matches("http://");
    let output = serve_command(&db.url, &["--table", "businesses"], &[], &uploads)
        .args(["--listen", address])
        .output()
        .expect("the importer binary runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(
        in_flight.is_file(),
        "the running service's upload was deleted"
    );
}

#[test]
fn keep_rejects_zero_still_keeps_the_file_it_links() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "messy.xlsx", 100, 0.1);
    let service = Service::start(&db.url, &["--table", "businesses", "--keep-rejects", "0"]);
    let (status, answer) = post_file(&service, "/upload", &file, "messy.xlsx", None);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let href = answer["rejects_href"].as_str().expect("a rejects file");
    let csv = client().get(service.url(href)).send().unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(csv.text().unwrap().starts_with("row_number,"));
}

#[test]
fn serve_without_a_table_nor_an_allowed_one_is_a_usage_error() {
    let run = run_importer(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--uploads",
            "/nonexistent",
        ],
        Some("postgres://postgres@127.0.0.1:1/nothing"),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--table"), "{}", run.stderr);
    assert!(run.stderr.contains("--allow-table"), "{}", run.stderr);
}

#[test]
fn error_answers_name_the_client_s_file_never_the_service_s_path() {
    let db = TestDb::new();
    db.execute("CREATE TABLE typed_people (name text, age integer)");
    let dir = TempDir::new();
    let service = Service::start(&db.url, &["--allow-table", "*"]);
    let uploads = service.uploads.display().to_string();
    // (file on disk, name the client gives it, query)
    let mut cases: Vec<(PathBuf, String, String)> = std::fs::read_dir(fixture("crashers"))
        .expect("the crashers directory reads")
        .map(|entry| entry.expect("an entry").path())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (path, format!("client {name}"), String::new())
        })
        .collect();
    assert!(cases.len() >= 28, "{} crashers", cases.len());
    let whole = generate(&dir, "whole.xlsx", 200, 0.0);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path("truncated.xlsx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.path("empty.xlsx");
    std::fs::write(&empty, b"").unwrap();
    let people = dir.path("people.csv");
    std::fs::write(&people, "name,age\nAda,36\nBob,old\n").unwrap();
    cases.extend([
        (truncated, "Q3 report.xlsx".to_string(), String::new()),
        (empty, "nothing.xlsx".to_string(), String::new()),
        // a workbook named as CSV, and CSV named as a workbook
        (whole, "workbook.csv".to_string(), String::new()),
        (
            people.clone(),
            "people.xls".to_string(),
            "?table=typed_people".to_string(),
        ),
        (
            people,
            "people.csv".to_string(),
            "?table=typed_people".to_string(),
        ),
    ]);
    let check = |name: &str, text: &str| {
        for server_side in [uploads.as_str(), "/tmp", "upload-"] {
            assert!(
                !text.contains(server_side),
                "{name}: the answer names {server_side:?}: {text}"
            );
        }
    };
    // two senders: the hostile files take a while, and the machine is shared
    let service = &service;
    let answers: Vec<(String, StatusCode, Value)> = at_once(
        cases
            .chunks(cases.len().div_ceil(2))
            .map(|chunk| {
                Box::new(move || {
                    chunk
                        .iter()
                        .map(|(path, name, query)| {
                            let (status, answer) =
                                post_file(service, &format!("/upload{query}"), path, name, None);
                            (name.clone(), status, answer)
                        })
                        .collect::<Vec<_>>()
                }) as Job<'_, _>
            })
            .collect(),
    )
    .into_iter()
    .flatten()
    .collect();
    let mut failures = 0;
    for (name, status, answer) in &answers {
        let text = answer.to_string();
        check(name, &text);
        if *status == StatusCode::OK {
            assert_eq!(answer["stats"]["file"], name.as_str(), "{text}");
        } else {
            failures += 1;
            let error = answer["error"].as_str().unwrap_or_else(|| panic!("{text}"));
            assert!(error.contains(name.as_str()), "{name}: {status} {error}");
        }
        if let Some(id) = answer["id"].as_i64() {
            let (_, view) = get_json(service, &format!("/imports/{id}"), None);
            check(name, &view.to_string());
            if answer["rejects_href"].is_string() {
                check(name, &rejects_csv(service, answer));
            }
        }
    }
    assert!(failures >= 15, "{failures} error answers: {answers:?}");
    // a CSV's cell references (in the rejects file) name the file as the client did
    let (_, _, people) = answers
        .iter()
        .find(|(name, _, _)| name == "people.csv")
        .expect("people.csv answered");
    let csv = rejects_csv(service, people);
    assert!(csv.contains("not an integer: old (people.csv!B3)"), "{csv}");
}

/// Waits until no connection of an import (or of a service) is left on the database.
fn wait_for_no_importer_sessions(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sessions = db.scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND application_name LIKE 'importer%'",
        );
        if sessions.as_deref() == Some("0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sessions:?} sessions of the killed service are still open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_import_of_a_killed_service_is_died_with_the_rows_it_committed() {
    let db = businesses_db();
    let dir = TempDir::new();
    let file = generate(&dir, "big.xlsx", 100_000, 0.0);
    let uploads = dir.path("uploads");
    let args = ["--table", "businesses", "--method", "sequential"];
    let mut service = Service::start_with(&db.url, &args, &[], &uploads);
    let (status, answer) = post_file(&service, "/imports", &file, "big.xlsx", None);
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"].as_i64().expect("an id");
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("businesses") == 0 {
        assert!(Instant::now() < deadline, "no row arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    service.kill();
    // once the killed process's sessions are gone, nothing more of the run can commit
    wait_for_no_importer_sessions(&db);
    let in_table = db.count("businesses");
    assert!(in_table > 0 && in_table < 100_000, "{in_table}");
    let recorded = db.scalar(&format!(
        "SELECT outcome FROM importer.runs WHERE id = {id}"
    ));
    assert_eq!(
        recorded.as_deref(),
        Some("running"),
        "nobody recorded its end"
    );
    let restarted = Service::start_with(&db.url, &args, &[], &uploads);
    let (status, view) = get_json(&restarted, &format!("/imports/{id}"), None);
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "died", "{view}");
    assert!(
        view["error"]
            .as_str()
            .is_some_and(|error| error.contains("killed")),
        "{view}"
    );
    assert_eq!(view["file"], "big.xlsx", "{view}");
    assert_eq!(view["rows"]["written"], in_table, "{view}");
    // the dead process took its count of the rows read and rejected with it
    assert!(view["rows"]["read"].is_null(), "{view}");
    assert!(view["rows"]["rejected"].is_null(), "{view}");
    assert!(view["stats"].is_null(), "{view}");
    let (status, list) = get_json(&restarted, "/imports", None);
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = list["imports"]
        .as_array()
        .and_then(|imports| imports.iter().find(|import| import["id"] == id))
        .unwrap_or_else(|| panic!("import {id} is not listed: {list}"));
    assert_eq!(listed["status"], "died", "{listed}");
    assert_eq!(listed["rows"]["written"], in_table, "{listed}");
}

/// Opens a connection to `service` and sends half a request header, then nothing more.
fn stalled_connection(service: &Service) -> TcpStream {
    let address = service.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {address}\r\nX-Stalled: ").as_bytes())
        .expect("writes");
    stream
}

/// Whether the service closed `stream`: it reads the end (or a reset) within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).expect("timeout set");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn stalled_clients_past_the_open_file_limit_leave_health_answering() {
    const OPEN_FILES: u64 = 256;
    let db = TestDb::new();
    let dir = TempDir::new();
    let service = Service::start_with_open_files(
        &db.url,
        &[
            "--table",
            "people",
            "--max-concurrent-imports",
            "1",
            "--header-timeout",
            "2",
        ],
        &dir.path("uploads"),
        OPEN_FILES,
    );
    // more stalled clients than the service has descriptors
    let mut stalled: Vec<TcpStream> = (0..OPEN_FILES + 44)
        .map(|_| stalled_connection(&service))
        .collect();
    let health = Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client builds")
        .get(service.url("/health"))
        .send()
        .expect("/health answers a new connection");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().expect("JSON"),
        serde_json::json!({"status": "healthy"})
    );
    // one stalled after the others: only the header timeout can close it
    let mut last = stalled_connection(&service);
    assert!(
        closed_within(&mut last, Duration::from_secs(60)),
        "a connection that sent half a header is still open a minute later"
    );
    for (number, stream) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(60)),
            "stalled connection {number} is still open"
        );
    }
    let (status, _) = get_json(&service, "/health", None);
    assert_eq!(status, StatusCode::OK);
    assert!(!service.stderr().contains("panic"), "{}", service.stderr());
}

/// `GET /health` on a connection of its own, as raw HTTP: the whole answer.
fn raw_health(service: &Service) -> String {
    let address = service.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("writes");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout set");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("an answer within a minute");
    answer
}

#[test]
fn a_newcomer_gets_503_when_every_connection_is_in_a_request() {
    let db = businesses_db();
    let service = Service::start(
        &db.url,
        &["--table", "businesses", "--max-connections", "1"],
    );
    // the one connection must be inside its request when the next arrives; until then the
    // next one closes it (it is between requests) and is served: try again
    let mut attempts = 0;
    let refused = loop {
        attempts += 1;
        let mut upload = unfinished_upload(&service);
        let answer = raw_health(&service);
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            closed_within(&mut upload, Duration::from_secs(60)),
            "served beyond --max-connections 1 while the other connection stayed open"
        );
        assert!(attempts < 50, "the upload never got inside its request");
    };
    assert!(refused.contains("too many connections"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    // once the upload's connection is gone, its place serves again
    let deadline = Instant::now() + Duration::from_secs(60);
    while !raw_health(&service).starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the place was never given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}
