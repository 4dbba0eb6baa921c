//! Unattended nightly loads (issue 4): the run ledger, `--skip-unchanged`, `importer history`,
//! the per-table run lock and `--wait-lock`, `--summary`, `--connect-timeout`, and SIGTERM in
//! the middle of a long run. Every test has its own database; the lock is held from the test
//! through the library's own key function, so that nothing depends on timing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use importer::sink::lock::table_lock_key;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

use crate::util::{TempDir, TestDb, fatal_error_line, run_importer};

/// How long a test waits for something the run does by itself (a log line, a waiting lock)
/// before it fails; generous, because debug builds of parallel tests share the machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The pause between two looks at something the test waits for.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Writes `people.csv` (name, age) with `rows` rows into `dir`.
fn people_csv(dir: &TempDir, rows: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.path("people.csv");
    let mut text = String::from("name,age\n");
    for (name, age) in rows {
        text.push_str(&format!("{name},{age}\n"));
    }
    std::fs::write(&path, text).expect("csv is written");
    path
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("file is readable");
    format!("{:x}", Sha256::digest(&bytes))
}

/// The ledger's rows, oldest first, as name -> text (NULL as JSON null).
fn ledger(db: &TestDb) -> Vec<Value> {
    db.rows("SELECT row_to_json(r)::text FROM importer.runs r ORDER BY id")
        .into_iter()
        .map(|row| {
            let text = row[0].clone().expect("row_to_json is not null");
            serde_json::from_str(&text).expect("row_to_json is JSON")
        })
        .collect()
}

fn ledger_exists(db: &TestDb) -> bool {
    db.scalar("SELECT to_regclass('importer.runs')::text")
        .is_some()
}

/// A session lock held from the test on a connection of its own, as another run would.
struct HeldLock {
    runtime: Runtime,
    connection: Option<PgConnection>,
    key: i64,
    /// The holding backend's pid.
    pid: i32,
}

impl HeldLock {
    /// Takes the run lock of `schema.table` in the database at `url`.
    fn take(url: &str, schema: &str, table: &str) -> HeldLock {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime starts");
        let key = table_lock_key(schema, table);
        let (connection, pid) = runtime.block_on(async {
            let mut connection = PgConnection::connect(url).await.expect("the test connects");
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut connection)
                .await
                .expect("the test takes the lock");
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut connection)
                .await
                .expect("pid");
            (connection, pid)
        });
        HeldLock {
            runtime,
            connection: Some(connection),
            key,
            pid,
        }
    }

    /// Releases the lock and closes the connection.
    fn release(mut self) {
        let mut connection = self.connection.take().expect("held until released");
        self.runtime.block_on(async {
            let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .fetch_one(&mut connection)
                .await
                .expect("the test releases the lock");
            assert!(released, "the test held the lock");
            connection.close().await.expect("closes");
        });
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

/// The binary with DATABASE_URL set, stdout and stderr piped, logs at info.
fn spawn_importer(db: &TestDb, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the importer binary starts")
}

/// Polls `ready` every POLL_INTERVAL until it holds; panics with `what` after PATIENCE, or
/// as soon as the child has exited.
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

// ---- the ledger ------------------------------------------------------------------------

#[test]
fn a_successful_run_is_in_the_ledger_with_its_stats_sha256_and_outcome() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30"), ("bob", "41")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&["run", "--format", "json", path_str(&csv)]);
    assert_eq!(run.code, 0, "{run:?}");
    let runs = ledger(&db);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let entry = &runs[0];
    assert_eq!(entry["outcome"], "succeeded");
    assert_eq!(entry["sha256"], sha256_of(&csv));
    assert_eq!(entry["file_size"], std::fs::metadata(&csv).unwrap().len());
    assert_eq!(
        entry["file_path"],
        std::path::absolute(&csv).unwrap().display().to_string()
    );
    assert_eq!(entry["sheet"], "people.csv");
    assert_eq!(entry["table_schema"], "public");
    assert_eq!(entry["table_name"], "people");
    assert_eq!(entry["method"], "batch");
    assert_eq!(entry["mode"], "append");
    assert_eq!(entry["stats"], run.json(), "the stats are the printed ones");
    assert!(entry["started_at"].is_string() && entry["finished_at"].is_string());
    assert_eq!(entry["error"], Value::Null);
}

#[test]
fn a_run_failing_on_an_unknown_column_is_in_the_ledger_as_failed_with_its_error() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,Zip Code\nann,1234\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, city text)");
    let run = db.importer(&["run", path_str(&csv)]);
    let line = fatal_error_line(&run);
    let runs = ledger(&db);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "failed");
    let error = runs[0]["error"].as_str().expect("an error is recorded");
    assert!(error.contains("Zip Code"), "{error}");
    assert!(
        line.contains(error),
        "the ledger holds the printed error: {line}"
    );
    assert_eq!(runs[0]["stats"], Value::Null, "no stats were printed");
    assert!(runs[0]["finished_at"].is_string());
}

#[test]
fn max_errors_is_recorded_as_failed_and_rejected_rows_as_rejected_rows() {
    let dir = TempDir::new();
    let csv = people_csv(
        &dir,
        &[("ann", "x"), ("bob", "y"), ("cy", "z"), ("dee", "4")],
    );
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let stopped = db.importer(&[
        "run",
        "-m",
        "sequential",
        "--max-errors",
        "1",
        path_str(&csv),
    ]);
    let line = fatal_error_line(&stopped);
    assert!(line.contains("--max-errors"), "{line}");
    let finished = db.importer(&["run", "--format", "json", path_str(&csv)]);
    assert_eq!(finished.code, 3, "{finished:?}");
    let runs = ledger(&db);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "failed");
    let error = runs[0]["error"].as_str().expect("an error is recorded");
    assert!(error.contains("--max-errors 1"), "{error}");
    assert!(
        runs[0]["stats"]["error_count"].as_u64() > Some(1),
        "the stats of the early stop are kept: {runs:?}"
    );
    assert_eq!(runs[1]["outcome"], "rejected_rows");
    assert_eq!(runs[1]["stats"], finished.json());
}

#[test]
fn two_first_runs_at_once_both_find_or_create_the_ledger() {
    let dir = TempDir::new();
    let db = TestDb::new();
    let files: Vec<_> = (0..4)
        .map(|index| {
            let path = dir.path(&format!("first_{index}.csv"));
            std::fs::write(&path, "name\nann\n").unwrap();
            path
        })
        .collect();
    let children: Vec<Child> = files
        .iter()
        .map(|file| spawn_importer(&db, &["run", path_str(file)]))
        .collect();
    for child in children {
        let output = child.wait_with_output().expect("run ends");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let runs = ledger(&db);
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(runs.iter().all(|run| run["outcome"] == "succeeded"));
}

#[test]
fn first_runs_at_once_into_existing_tables_all_succeed_every_round_and_print_no_notices() {
    // the ledger's set-up raced: about one round in three failed with a deadlock
    const ROUNDS: usize = 15;
    const TABLES: [&str; 3] = ["first_a", "first_b", "first_c"];
    let dir = TempDir::new();
    let files: Vec<_> = TABLES
        .iter()
        .map(|table| {
            let path = dir.path(&format!("{table}.csv"));
            std::fs::write(&path, "name\nann\nbob\n").unwrap();
            path
        })
        .collect();
    for round in 1..=ROUNDS {
        let db = TestDb::new();
        for table in TABLES {
            db.execute(&format!("CREATE TABLE {table} (name text)"));
        }
        let children: Vec<Child> = TABLES
            .iter()
            .zip(&files)
            .map(|(table, file)| spawn_importer(&db, &["run", "-t", table, path_str(file)]))
            .collect();
        for child in children {
            let output = child.wait_with_output().expect("run ends");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(0), "round {round}: {stderr}");
            assert!(
                !stderr.contains("NOTICE")
                    && !stderr.contains("notice")
                    && !stderr.contains("skipping"),
                "round {round}: the set-up's notices are silenced: {stderr}"
            );
        }
        let runs = ledger(&db);
        assert_eq!(runs.len(), TABLES.len(), "round {round}: {runs:?}");
        assert!(
            runs.iter().all(|run| run["outcome"] == "succeeded"),
            "round {round}: {runs:?}"
        );
        for table in TABLES {
            assert_eq!(db.count(table), 2, "round {round}: {table}");
        }
    }
}

#[test]
fn a_ledger_upgrade_while_another_run_writes_deadlocks_neither_run() {
    let dir = TempDir::new();
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE long_load (name text, age integer); CREATE TABLE upgrader (name text)",
    );
    let small = dir.path("upgrader.csv");
    std::fs::write(&small, "name\nann\n").unwrap();
    let first = db.importer(&["run", "-t", "upgrader", path_str(&small)]);
    assert_eq!(first.code, 0, "{first:?}");
    const ROWS: usize = 30_000;
    let big = dir.path("long_load.csv");
    let mut text = String::from("name,age\n");
    for row in 0..ROWS {
        text.push_str(&format!("n{row},{}\n", row % 90));
    }
    std::fs::write(&big, text).unwrap();
    // per-row commits: the writers' transactions follow each other without a pause
    let mut writer = spawn_importer(
        &db,
        &[
            "run",
            "-m",
            "concurrent",
            "-w",
            "2",
            "-t",
            "long_load",
            path_str(&big),
        ],
    );
    wait_until(&mut writer, "rows are in", || db.count("long_load") > 200);
    // the ledger as an earlier version left it: the next run upgrades it
    db.execute(
        "COMMENT ON FUNCTION importer.record_chunk(bigint, bigint, bigint, bigint, bigint, bigint, integer, bigint) \
         IS 'importer chunk ledger v2: an earlier version'",
    );
    let upgrade = db.importer(&["run", "-t", "upgrader", path_str(&small)]);
    assert_eq!(upgrade.code, 0, "{upgrade:?}");
    assert!(
        writer.try_wait().expect("child status").is_none(),
        "the upgrade ran while the other run was still writing (make the file larger if not)"
    );
    let output = writer.wait_with_output().expect("run ends");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(db.count("long_load"), ROWS as i64);
    let comment = db.scalar(
        "SELECT obj_description('importer.record_chunk(bigint, bigint, bigint, bigint, bigint, bigint, integer, bigint)'::regprocedure, 'pg_proc')",
    );
    assert!(
        comment.is_some_and(|comment| comment.starts_with("importer chunk ledger v3:")),
        "upgraded"
    );
}

#[test]
fn dry_run_and_bench_write_no_ledger_and_need_no_lock() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let held = HeldLock::take(&db.url, "public", "people");
    let dry = db.importer(&["run", "--dry-run", path_str(&csv)]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let bench = db.importer(&[
        "bench",
        "--repeat",
        "1",
        "--methods",
        "copy",
        path_str(&csv),
    ]);
    assert_eq!(bench.code, 0, "{bench:?}");
    held.release();
    assert!(!ledger_exists(&db), "neither creates the ledger");
    assert_eq!(db.count("people"), 0);
}

// ---- --skip-unchanged ------------------------------------------------------------------

#[test]
fn skip_unchanged_skips_content_already_loaded_and_records_the_skip() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30"), ("bob", "41")]);
    let db = TestDb::new();
    let first = db.importer(&["run", "--skip-unchanged", path_str(&csv)]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(db.count("people"), 2);
    let first_id = ledger(&db)[0]["id"].as_i64().expect("id");

    let again = db.importer(&[
        "run",
        "--skip-unchanged",
        "--format",
        "json",
        path_str(&csv),
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    let skipped = again.json();
    assert_eq!(skipped["skipped"], true);
    assert_eq!(skipped["file"], "people.csv");
    assert_eq!(skipped["table"], "people");
    assert_eq!(skipped["sha256"], sha256_of(&csv));
    assert_eq!(skipped["previous_run_id"], first_id);
    assert_eq!(db.count("people"), 2, "nothing is loaded twice");

    let text = db.importer(&["run", "--skip-unchanged", path_str(&csv)]);
    assert_eq!(text.code, 0, "{text:?}");
    assert_eq!(text.stdout.trim().lines().count(), 1, "one line\n{text:?}");
    assert!(text.stdout.starts_with("skipped"), "{text:?}");
    assert!(text.stdout.contains(&format!("run {first_id}")), "{text:?}");
    assert!(text.stdout.contains("people"), "{text:?}");

    let runs = ledger(&db);
    assert_eq!(runs.len(), 3, "{runs:?}");
    for skip in &runs[1..] {
        assert_eq!(skip["outcome"], "skipped");
        assert_eq!(skip["previous_run_id"], first_id);
        assert_eq!(skip["sha256"], sha256_of(&csv));
        assert!(skip["finished_at"].is_string());
    }
    assert_eq!(runs[1]["id"], skipped["run_id"]);

    // a changed file is loaded, under the same name
    people_csv(&dir, &[("ann", "30"), ("bob", "41"), ("cy", "25")]);
    let changed = db.importer(&[
        "run",
        "--skip-unchanged",
        "--format",
        "json",
        path_str(&csv),
    ]);
    assert_eq!(changed.code, 0, "{changed:?}");
    assert_eq!(changed.json()["success_count"], 3);
    assert_eq!(db.count("people"), 5);
    assert_eq!(ledger(&db)[3]["outcome"], "succeeded");
}

#[test]
fn skip_unchanged_does_not_skip_content_whose_load_failed_or_went_elsewhere() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, city text)");
    let failed = db.importer(&["run", path_str(&csv)]);
    assert_eq!(failed.code, 1, "unknown column age\n{failed:?}");
    db.execute("DROP TABLE people; CREATE TABLE people (name text, age integer)");
    let retried = db.importer(&["run", "--skip-unchanged", path_str(&csv)]);
    assert_eq!(retried.code, 0, "{retried:?}");
    assert_eq!(db.count("people"), 1);
    let elsewhere = db.importer(&["run", "--skip-unchanged", "-t", "others", path_str(&csv)]);
    assert_eq!(elsewhere.code, 0, "{elsewhere:?}");
    assert_eq!(db.count("others"), 1, "another table is another load");
}

// ---- importer history --------------------------------------------------------------------

#[test]
fn history_lists_runs_newest_first_as_text_or_json_and_filters_by_table() {
    let dir = TempDir::new();
    let db = TestDb::new();
    let empty = db.importer(&["history", "--format", "json"]);
    assert_eq!(empty.code, 0, "no ledger yet is no error\n{empty:?}");
    assert_eq!(empty.json(), serde_json::json!([]));
    let empty_text = db.importer(&["history"]);
    assert_eq!(empty_text.code, 0, "{empty_text:?}");
    assert_eq!(empty_text.stdout.trim().lines().count(), 2, "a header only");
    assert!(!ledger_exists(&db), "history creates nothing");

    let people = people_csv(&dir, &[("ann", "30")]);
    let pets = dir.path("pets.csv");
    std::fs::write(&pets, "name\nrex\n").unwrap();
    for file in [&people, &pets, &people] {
        let run = db.importer(&["run", path_str(file)]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    let all = db.importer(&["history", "--format", "json"]);
    assert_eq!(all.code, 0, "{all:?}");
    let all = all.json();
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 3);
    let ids: Vec<i64> = all.iter().map(|run| run["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );
    assert_eq!(all[0]["table"], "public.people");
    assert_eq!(all[0]["outcome"], "succeeded");
    assert_eq!(all[0]["stats"]["success_count"], 1);
    assert_eq!(all[0]["sha256"], sha256_of(&people));
    assert_eq!(all[1]["table"], "public.pets");

    let filtered = db.importer(&["history", "--table", "people", "--format", "json"]);
    let filtered = filtered.json();
    let filtered = filtered.as_array().expect("an array");
    assert_eq!(filtered.len(), 2);
    assert!(filtered.iter().all(|run| run["table"] == "public.people"));
    let qualified = db.importer(&["history", "--table", "public.pets", "--format", "json"]);
    assert_eq!(qualified.json().as_array().map(Vec::len), Some(1));
    let limited = db.importer(&["history", "--limit", "1", "--format", "json"]);
    assert_eq!(limited.json()[0]["id"], ids[0]);

    let text = db.importer(&["history", "--table", "people"]);
    assert_eq!(text.code, 0, "{text:?}");
    let lines: Vec<&str> = text.stdout.trim().lines().collect();
    assert_eq!(lines.len(), 4, "header, rule, two runs\n{text:?}");
    for column in ["Run", "Started", "Table", "Outcome", "Inserted", "Rejected"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    assert!(lines[2].contains("public.people") && lines[2].contains("succeeded"));
    assert!(lines[2].contains(&ids[0].to_string()));
}

// ---- the run lock ------------------------------------------------------------------------

#[test]
fn a_run_on_a_table_another_session_is_loading_fails_fast_naming_table_and_holder() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let held = HeldLock::take(&db.url, "public", "people");
    let started = Instant::now();
    // schema-qualified or not, it is the same table and the same lock
    for table in ["people", "public.people"] {
        let run = db.importer(&["run", "-t", table, path_str(&csv)]);
        let line = fatal_error_line(&run);
        assert!(line.contains("public.people"), "names the table: {line}");
        assert!(
            line.contains(&format!("pid {}", held.pid)),
            "names the holder: {line}"
        );
        assert!(line.contains("--wait-lock"), "says how to wait: {line}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
    assert_eq!(db.count("people"), 0);
    // another table is not held off
    let other = db.importer(&["run", "-t", "other_people", path_str(&csv)]);
    assert_eq!(other.code, 0, "{other:?}");
    held.release();
    let after = db.importer(&["run", path_str(&csv)]);
    assert_eq!(after.code, 0, "{after:?}");
    assert_eq!(db.count("people"), 1);
}

#[test]
fn wait_lock_gives_up_after_its_time_or_runs_once_the_holder_lets_go() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30"), ("bob", "41")]);
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let held = HeldLock::take(&db.url, "public", "people");

    let started = Instant::now();
    let gave_up = db.importer(&["run", "--wait-lock", "1", path_str(&csv)]);
    let line = fatal_error_line(&gave_up);
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(line.contains("public.people"), "{line}");
    assert!(line.contains("after waiting 1 s"), "says it waited: {line}");
    assert_eq!(db.count("people"), 0);

    let mut waiting = spawn_importer(
        &db,
        &[
            "run",
            "--wait-lock",
            "10",
            "--format",
            "json",
            path_str(&csv),
        ],
    );
    let key = held.key;
    wait_until(&mut waiting, "the run waits for the lock", || {
        waiting_for(&db, key) == 1
    });
    assert_eq!(db.count("people"), 0, "nothing is written while waiting");
    held.release();
    let output = waiting.wait_with_output().expect("run ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stats: Value = serde_json::from_slice(&output.stdout).expect("stats JSON");
    assert_eq!(stats["success_count"], 2);
    assert_eq!(db.count("people"), 2);
}

// ---- --summary ---------------------------------------------------------------------------

#[test]
fn summary_file_holds_the_stats_json_of_stdout_also_on_an_early_stop() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30"), ("bob", "x"), ("cy", "y")]);
    let summary = dir.path("summary.json");
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let run = db.importer(&[
        "run",
        "--format",
        "json",
        "--summary",
        path_str(&summary),
        path_str(&csv),
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    let written = std::fs::read_to_string(&summary).expect("summary is written");
    assert_eq!(written.trim(), run.stdout.trim());

    // text on stdout, the same object in the file
    let text = db.importer(&["run", "--summary", path_str(&summary), path_str(&csv)]);
    assert_eq!(text.code, 3, "{text:?}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).expect("JSON");
    assert_eq!(written["success_count"], 1);
    assert_eq!(written["error_count"], 2);
    assert!(text.stdout.contains("| Method"), "{text:?}");

    // an early stop still prints the stats, and so still writes them
    std::fs::remove_file(&summary).unwrap();
    let stopped = db.importer(&[
        "run",
        "-m",
        "sequential",
        "--max-errors",
        "0",
        "--format",
        "json",
        "--summary",
        path_str(&summary),
        path_str(&csv),
    ]);
    assert_eq!(stopped.code, 1, "{stopped:?}");
    let written = std::fs::read_to_string(&summary).expect("summary is written");
    assert_eq!(written.trim(), stopped.stdout.trim());

    // a skipped run writes its skip report there, as on stdout
    let first = dir.path("pets.csv");
    std::fs::write(&first, "name\nrex\n").unwrap();
    db.importer(&["run", path_str(&first)]);
    let skipped = db.importer(&[
        "run",
        "--skip-unchanged",
        "--format",
        "json",
        "--summary",
        path_str(&summary),
        path_str(&first),
    ]);
    assert_eq!(skipped.code, 0, "{skipped:?}");
    let written = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(written.trim(), skipped.stdout.trim());
}

// ---- --connect-timeout -------------------------------------------------------------------

#[test]
fn connect_timeout_retries_an_unreachable_server_then_says_how_long_it_tried() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30")]);
    let url = "postgres://x:secretpw@127.0.0.1:1/db";
    let started = Instant::now();
    let run = run_importer(
        &[
            "run",
            "--connect-timeout",
            "1",
            "--database-url",
            url,
            path_str(&csv),
        ],
        None,
    );
    let elapsed = started.elapsed();
    let line = fatal_error_line(&run);
    assert!(
        elapsed >= Duration::from_secs(1),
        "it retried for 1 s: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "then gave up: {elapsed:?}"
    );
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(line.contains("accepting TCP connections?"), "{line}");
    assert!(line.contains("gave up after 1."), "says how long: {line}");
    assert!(line.contains("--connect-timeout 1"), "{line}");
    assert!(
        run.stderr.contains("retrying"),
        "each retry is logged\n{run:?}"
    );
    assert!(!run.stderr.contains("secretpw"), "{run:?}");

    let once = run_importer(
        &[
            "run",
            "--connect-timeout",
            "0",
            "--database-url",
            url,
            path_str(&csv),
        ],
        None,
    );
    let line = fatal_error_line(&once);
    assert!(line.contains("tried once"), "{line}");
    assert!(!once.stderr.contains("retrying"), "{once:?}");
}

#[test]
fn connect_timeout_does_not_retry_a_missing_database() {
    let dir = TempDir::new();
    let csv = people_csv(&dir, &[("ann", "30")]);
    let db = TestDb::new();
    let missing = format!("{}_missing", db.url);
    let started = Instant::now();
    let run = run_importer(
        &[
            "run",
            "--connect-timeout",
            "30",
            "--database-url",
            &missing,
            path_str(&csv),
        ],
        None,
    );
    let line = fatal_error_line(&run);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails at once\n{run:?}"
    );
    assert!(line.contains("does not exist"), "{line}");
    assert!(!run.stderr.contains("retrying"), "{run:?}");
}

// ---- SIGTERM -----------------------------------------------------------------------------

#[test]
fn sigterm_in_a_long_run_exits_143_with_the_stats_of_what_is_in_and_records_cancelled() {
    let dir = TempDir::new();
    let workbook = dir.path("big.xlsx");
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            "300000",
            "--seed",
            "4",
            path_str(&workbook),
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE big (name text, category text, phone text, email text, address text, \
         city text, country text, website text, description text)",
    );
    let mut child = spawn_importer(&db, &["run", "--format", "json", path_str(&workbook)]);

    // stderr is read on a thread: each line goes to the test, which waits for the start
    let stderr = child.stderr.take().expect("stderr is piped");
    let (line_sender, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
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
            .unwrap_or_else(|_| panic!("no \"import started\" line; stderr so far:\n{log:#?}"));
        let started = line.contains("import started");
        log.push(line);
        if started {
            break;
        }
    }
    // once rows are in, the writers (and the run's signal handler) are surely at work
    wait_until(&mut child, "rows are in the table", || db.count("big") > 0);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    let output = child.wait_with_output().expect("run ends");
    log.extend(lines.iter());
    reader.join().expect("stderr reader");
    assert_eq!(output.status.code(), Some(143), "{log:#?}");
    let stats: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("stats JSON on stdout ({error}): {log:#?}"));
    let total = stats["total_records"].as_u64().expect("total");
    let success = stats["success_count"].as_u64().expect("success");
    let error = stats["error_count"].as_u64().expect("error");
    assert_eq!(success + error, total, "{stats}");
    assert!(success > 0, "{stats}");
    assert!(total < 300_000, "the run stopped early: {stats}");
    assert_eq!(
        db.count("big"),
        success as i64,
        "exactly the rows counted are in"
    );
    let runs = ledger(&db);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "cancelled");
    assert_eq!(runs[0]["stats"], stats);
    assert!(runs[0]["finished_at"].is_string());
}
