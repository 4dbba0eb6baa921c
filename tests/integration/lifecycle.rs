//! A run's lifecycle, flags and output: output paths checked before anything is written and
//! a summary failing after the commit, signals before the import proper, a failed atomic
//! publish, flag combinations refused as usage errors, the fatal error as a JSON line, what a
//! dry run says, and where the ledger lives (`--ledger-schema`, `--no-ledger`). Every test
//! has its own database; waits are on log lines or on pg_locks, never on sleeps for timing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use importer::sink::lock::table_lock_key;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

use crate::util::{Run, TempDir, TestDb, fatal_error_line, run_importer};

/// How long a test waits for something the run does by itself before it fails; generous,
/// because debug builds of parallel tests share the machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// The pause between two looks at something the test waits for.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The contract's ImportStats fields, exactly.
const CONTRACT_FIELDS: [&str; 10] = [
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
];

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Writes `people.csv` (id, name) with `rows` rows into `dir`.
fn people_csv(dir: &TempDir, rows: &[(&str, &str)]) -> PathBuf {
    let path = dir.path("people.csv");
    let mut text = String::from("id,name\n");
    for (id, name) in rows {
        text.push_str(&format!("{id},{name}\n"));
    }
    std::fs::write(&path, text).expect("csv is written");
    path
}

/// The rows of a ledger table, oldest first, as JSON objects.
fn ledger_rows(db: &TestDb, ledger: &str) -> Vec<Value> {
    db.rows(&format!(
        "SELECT row_to_json(r)::text FROM {ledger} r ORDER BY id"
    ))
    .into_iter()
    .map(|row| serde_json::from_str(&row[0].clone().expect("not null")).expect("JSON"))
    .collect()
}

fn relation_exists(db: &TestDb, name: &str) -> bool {
    db.rows(&format!("SELECT to_regclass('{name}')::text"))[0][0].is_some()
}

/// The binary with DATABASE_URL set and extra environment, stdout and stderr piped.
fn spawn_importer(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_importer"));
    command
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .env_remove("IMPORTER_LEDGER_SCHEMA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("the importer binary starts")
}

/// Waits for a spawned run to end and collects what it printed.
fn finish(child: Child) -> Run {
    let output = child.wait_with_output().expect("run ends");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls `ready` until it holds; panics after PATIENCE, or as soon as the child has exited.
fn wait_until(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("the run ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Sessions waiting for the advisory lock `key` (in pg_locks, not granted).
fn waiting_for(db: &TestDb, key: i64) -> i64 {
    let bits = key as u64;
    let (high, low) = (bits >> 32, bits & 0xffff_ffff);
    db.scalar(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND classid::bigint = {high} AND objid::bigint = {low} AND objsubid = 1"
    ))
    .expect("count")
    .parse()
    .expect("number")
}

/// Sends `signal` (TERM, INT) to the child.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal}");
}

/// A session lock held from the test on a connection of its own, as another run would.
struct HeldLock {
    runtime: Runtime,
    connection: Option<PgConnection>,
    key: i64,
}

impl HeldLock {
    fn take(url: &str, schema: &str, table: &str) -> HeldLock {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime starts");
        let key = table_lock_key(schema, table);
        let connection = runtime.block_on(async {
            let mut connection = PgConnection::connect(url).await.expect("the test connects");
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut connection)
                .await
                .expect("the test takes the lock");
            connection
        });
        HeldLock {
            runtime,
            connection: Some(connection),
            key,
        }
    }

    fn release(mut self) {
        let mut connection = self.connection.take().expect("held until released");
        self.runtime.block_on(async {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut connection)
                .await
                .expect("the test releases the lock");
            connection.close().await.expect("closes");
        });
    }
}

/// Stats that count nothing: what a run stopped before its import prints.
fn assert_empty_stats(stats: &Value, table: &str) {
    assert_eq!(stats["total_records"], 0, "{stats}");
    assert_eq!(stats["success_count"], 0, "{stats}");
    assert_eq!(stats["error_count"], 0, "{stats}");
    assert_eq!(stats["table"], table, "{stats}");
}

// ---- output paths --------------------------------------------------------------------------

#[test]
fn an_output_path_that_cannot_be_written_fails_before_anything_is_locked_recorded_or_created() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann")]);
    let missing_dir = dir.path("no such dir");
    let db = TestDb::new();
    for (flag, path) in [
        ("--summary", missing_dir.join("s.json")),
        ("--rejects", missing_dir.join("r.csv")),
        ("--summary", dir.0.clone()),
        ("--rejects", dir.0.clone()),
    ] {
        let run = db.importer(&["run", "-t", "fresh", flag, path_str(&path), path_str(&csv)]);
        let line = fatal_error_line(&run);
        assert!(
            line.contains(&format!("{flag} {}", path.display())),
            "names the flag and the path: {line}"
        );
        assert!(!relation_exists(&db, "fresh"), "no table was created");
        assert!(!relation_exists(&db, "importer.runs"), "no ledger was made");
    }
    assert!(!missing_dir.exists());
}

#[test]
fn a_summary_failing_after_the_commit_keeps_the_rows_outcome_and_says_what_is_in() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann"), ("2", "bob")]);
    let summary_dir = dir.path("summaries");
    std::fs::create_dir(&summary_dir).expect("dir is made");
    let summary = summary_dir.join("people.json");
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer, name text)");
    // the run passes the output check, then queues for the lock; the summary's directory
    // goes away while it waits, so the summary fails only after the rows are committed
    let held = HeldLock::take(&db.url, "public", "people");
    let mut child = spawn_importer(
        &db,
        &[
            "run",
            "--wait-lock",
            "600",
            "--summary",
            path_str(&summary),
            path_str(&csv),
        ],
        &[],
    );
    wait_until(&mut child, "the run waits for the lock", || {
        waiting_for(&db, held.key) == 1
    });
    std::fs::remove_dir(&summary_dir).expect("the summary's directory is removed");
    held.release();
    let run = finish(child);

    assert_eq!(run.code, 1, "{run:?}");
    let line = run
        .stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line\n{run:?}"));
    assert!(
        line.contains("2 rows are in table people from this run"),
        "says what is in the table: {line}"
    );
    assert!(line.contains("summary"), "names what failed: {line}");
    assert_eq!(db.count("people"), 2);
    let runs = ledger_rows(&db, "importer.runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "succeeded", "the rows' outcome");
    assert!(
        runs[0]["error"]
            .as_str()
            .is_some_and(|error| error.contains("summary")),
        "the error is recorded too: {:?}",
        runs[0]
    );

    let again = db.importer(&["run", "--skip-unchanged", path_str(&csv)]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.starts_with("skipped"), "{again:?}");
    assert_eq!(db.count("people"), 2, "not loaded a second time");
}

// ---- signals before the import -------------------------------------------------------------

#[test]
fn sigterm_while_waiting_for_the_lock_prints_empty_stats_and_records_the_run_cancelled() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann")]);
    let summary = dir.path("summary.json");
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer, name text)");
    let held = HeldLock::take(&db.url, "public", "people");
    let mut child = spawn_importer(
        &db,
        &[
            "run",
            "--wait-lock",
            "600",
            "--format",
            "json",
            "--summary",
            path_str(&summary),
            path_str(&csv),
        ],
        &[],
    );
    wait_until(&mut child, "the run waits for the lock", || {
        waiting_for(&db, held.key) == 1
    });
    send_signal(&child, "TERM");
    let run = finish(child);
    held.release();

    assert_eq!(run.code, 143, "{run:?}");
    let stats = run.json();
    assert_empty_stats(&stats, "people");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary is written"))
            .expect("summary is JSON");
    assert_eq!(summary, stats);
    assert_eq!(db.count("people"), 0);
    let runs = ledger_rows(&db, "importer.runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "cancelled");
    assert_eq!(runs[0]["error"], "stopped by SIGTERM");
    assert_eq!(runs[0]["stats"], stats);
    assert!(runs[0]["finished_at"].is_string());
}

#[test]
fn sigint_during_type_inference_prints_empty_stats_records_cancelled_and_creates_no_table() {
    let dir = TempDir::new();
    let csv = dir.path("big.csv");
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            "150000",
            "--seed",
            "7",
            path_str(&csv),
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    let db = TestDb::new();
    let mut child = spawn_importer(
        &db,
        &["run", "-t", "fresh", "--format", "json", path_str(&csv)],
        &[],
    );
    // stderr is read on a thread; the signal goes out as soon as inference has begun
    let stderr = child.stderr.take().expect("stderr is piped");
    let (line_sender, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line_sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no inference line; stderr so far:\n{log:#?}"));
        let inferring = line.contains("inferring column types");
        log.push(line);
        if inferring {
            break;
        }
    }
    send_signal(&child, "INT");
    let output = child.wait_with_output().expect("run ends");
    log.extend(lines.iter());
    reader.join().expect("stderr reader");

    assert_eq!(output.status.code(), Some(130), "{log:#?}");
    let stats: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("stats JSON on stdout ({error}): {log:#?}"));
    assert_empty_stats(&stats, "fresh");
    assert!(
        !relation_exists(&db, "fresh"),
        "the table was not created: {log:#?}"
    );
    let runs = ledger_rows(&db, "importer.runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "cancelled");
    assert_eq!(runs[0]["error"], "stopped by SIGINT");
    assert_eq!(runs[0]["stats"], stats);
}

// ---- atomic publish ------------------------------------------------------------------------

#[test]
fn a_failed_atomic_publish_counts_the_rows_read_and_names_the_constraint_and_key_once() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann"), ("2", "bob"), ("3", "cy")]);
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE people (id integer CONSTRAINT people_pkey PRIMARY KEY, name text);
         INSERT INTO people VALUES (1, 'kept')",
    );
    let run = db.importer(&["run", "--atomic", "--format", "json", path_str(&csv)]);
    let line = fatal_error_line(&run);
    let stats = run.json();
    assert_eq!(stats["total_records"], 3, "the rows read: {stats}");
    assert_eq!(stats["success_count"], 0, "nothing is in: {stats}");
    assert_eq!(stats["error_count"], 3, "{stats}");
    assert_eq!(
        line.matches("people_pkey").count(),
        1,
        "the constraint once: {line}"
    );
    assert!(line.contains(r#"("id")"#), "its key columns: {line}");
    assert!(
        !line.contains("ann") && !line.contains("=(1)"),
        "no values: {line}"
    );
    assert_eq!(db.count("people"), 1, "the target is untouched");
    let runs = ledger_rows(&db, "importer.runs");
    assert_eq!(runs[0]["outcome"], "failed");
    assert_eq!(runs[0]["stats"], stats);
}

// ---- usage errors --------------------------------------------------------------------------

#[test]
fn flag_combinations_that_cannot_work_are_usage_errors_before_any_connection() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann")]);
    let same = dir.path("out.json");
    let csv = path_str(&csv);
    let same = path_str(&same);
    // nothing listens there: a run that tried to connect would retry, then fail with exit 1
    let closed = "postgres://importer@127.0.0.1:9/none";
    let combinations: [&[&str]; 7] = [
        &["--mode", "upsert"],
        &["--key", "id"],
        &["--key", "id", "--mode", "replace"],
        &["--skip-unchanged", "--dry-run"],
        &["--skip-unchanged", "--no-ledger"],
        &["--wait-lock", "5", "--dry-run"],
        &["--summary", same, "--rejects", same],
    ];
    for flags in combinations {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.push(csv);
        let started = Instant::now();
        let run = run_importer(&args, Some(closed));
        assert_eq!(run.code, 2, "{flags:?}\n{run:?}");
        assert!(run.stderr.starts_with("error: "), "{flags:?}\n{run:?}");
        assert!(run.stderr.contains("Usage:"), "clap's usage error\n{run:?}");
        assert!(
            !run.stderr.contains("connect") && started.elapsed() < Duration::from_secs(10),
            "no connection was tried: {flags:?}\n{run:?}"
        );
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    assert!(!Path::new(same).exists(), "no output was written");
}

#[test]
fn harmless_flag_combinations_still_run() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer PRIMARY KEY, name text)");
    for flags in [
        &["--atomic", "--dry-run"][..],
        &["--mode", "upsert", "--key", "id", "--dry-run"],
        &["--no-ledger", "--dry-run"],
        &["--no-ledger", "--wait-lock", "5"],
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.push(path_str(&csv));
        let run = db.importer(&args);
        assert_eq!(run.code, 0, "{flags:?}\n{run:?}");
    }
}

// ---- --log-format json -------------------------------------------------------------------------

#[test]
fn with_log_format_json_the_fatal_error_is_one_json_line() {
    let dir = TempDir::new();
    let path = dir.path("people.csv");
    std::fs::write(&path, "id,nickname\n1,ann\n").expect("csv is written");
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer, name text)");
    let run = db.importer(&["run", "--log-format", "json", path_str(&path)]);
    assert_eq!(run.code, 1, "{run:?}");
    let lines: Vec<Value> = run
        .stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{line:?} is not JSON ({error})\n{run:?}"))
        })
        .collect();
    let errors: Vec<&Value> = lines
        .iter()
        .filter(|line| line["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "one error line\n{run:?}");
    let message = errors[0]["fields"]["message"]
        .as_str()
        .expect("the error's message");
    assert!(message.contains("nickname"), "{message}");
    assert!(errors[0]["timestamp"].is_string(), "{:?}", errors[0]);

    // the text format keeps its `error: ` line
    let text = db.importer(&["run", path_str(&path)]);
    assert!(fatal_error_line(&text).contains("nickname"), "{text:?}");
}

// ---- --dry-run -------------------------------------------------------------------------------

#[test]
fn a_dry_run_says_so_and_prints_the_create_table_a_real_run_would_execute() {
    let dir = TempDir::new();
    let path = dir.path("fresh.csv");
    std::fs::write(&path, "Id,Full Name\n1,ann\n2,bob\n").expect("csv is written");
    let db = TestDb::new();

    let json = db.importer(&["run", "--dry-run", "--format", "json", path_str(&path)]);
    assert_eq!(json.code, 0, "{json:?}");
    let stats = json.json();
    assert_eq!(stats["dry_run"], true, "{stats}");
    assert_eq!(stats["success_count"], 2, "{stats}");
    let statement = stats["create_table"].as_str().expect("the statement");
    assert!(
        statement.starts_with(r#"CREATE TABLE IF NOT EXISTS "fresh" ("#),
        "{statement}"
    );
    assert!(!relation_exists(&db, "fresh"), "nothing was created");

    let text = db.importer(&["run", "--dry-run", path_str(&path)]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("Would insert"), "{text:?}");
    assert!(
        text.stdout.contains(&format!("{statement};")),
        "the statement above the table: {text:?}"
    );

    // it is the statement a real run executes: run by hand, the real run loads into it
    db.execute(statement);
    let real = db.importer(&["run", "--format", "json", path_str(&path)]);
    assert_eq!(real.code, 0, "{real:?}");
    let real_stats = real.json();
    let fields: Vec<&str> = real_stats
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = CONTRACT_FIELDS.to_vec();
    expected.sort_unstable();
    let mut fields = fields;
    fields.sort_unstable();
    assert_eq!(fields, expected, "a real run's JSON is the contract's");
    assert!(
        db.importer(&["run", path_str(&path)])
            .stdout
            .contains("Inserted")
    );
    assert_eq!(db.count("fresh"), 4);
}

// ---- where the ledger lives ----------------------------------------------------------------

#[test]
fn ledger_schema_from_flag_or_env_holds_the_ledger_and_history_reads_it_there() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer, name text)");

    let flagged = db.importer(&["run", "--ledger-schema", "Audit Log", path_str(&csv)]);
    assert_eq!(flagged.code, 0, "{flagged:?}");
    assert_eq!(ledger_rows(&db, r#""Audit Log".runs"#).len(), 1);
    assert!(
        !relation_exists(&db, "importer.runs"),
        "not the default ledger"
    );

    let child = spawn_importer(
        &db,
        &["run", path_str(&csv)],
        &[("IMPORTER_LEDGER_SCHEMA", "ops")],
    );
    let from_env = finish(child);
    assert_eq!(from_env.code, 0, "{from_env:?}");
    assert_eq!(ledger_rows(&db, "ops.runs").len(), 1);
    assert!(
        !relation_exists(&db, "importer.runs"),
        "not the default ledger"
    );

    let history = db.importer(&[
        "history",
        "--ledger-schema",
        "Audit Log",
        "--format",
        "json",
    ]);
    assert_eq!(history.code, 0, "{history:?}");
    let runs = history.json();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(runs[0]["outcome"], "succeeded");
    let default = db.importer(&["history", "--format", "json"]);
    assert_eq!(default.json(), serde_json::json!([]), "{default:?}");
}

#[test]
fn no_ledger_records_nothing_but_still_takes_the_table_lock() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("1", "ann"), ("2", "bob")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (id integer, name text)");

    let run = db.importer(&["run", "--no-ledger", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("people"), 2);
    assert!(!relation_exists(&db, "importer.runs"), "no ledger was made");

    let held = HeldLock::take(&db.url, "public", "people");
    let locked = db.importer(&["run", "--no-ledger", path_str(&csv)]);
    let line = fatal_error_line(&locked);
    assert!(line.contains("being loaded by another run"), "{line}");
    held.release();
    assert_eq!(db.count("people"), 2, "the locked run wrote nothing");
    assert!(!relation_exists(&db, "importer.runs"), "no ledger was made");
}
