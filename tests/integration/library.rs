//! The library API for one import (`importer::import::run`), called in-process against a
//! real PostgreSQL: the report it returns, cancellation by token, the failure kinds, the
//! rejected rows it keeps, and what the progress sink hears.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use importer::import::{
    self, FailureKind, ImportControl, ImportFailure, ImportOptions, ImportOutcome, ImportReport,
    Method, Mode, ProgressSink, RowsSoFar,
};
use importer::sink::lock::table_lock_key;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::util::{TempDir, TestDb};

/// Runs one import as a task on a runtime of its own, as a service's handler would.
#[allow(clippy::result_large_err)] // the failure is what the test inspects, as returned
fn import(options: ImportOptions, control: ImportControl) -> Result<ImportReport, ImportFailure> {
    let runtime = tokio::runtime::Runtime::new().expect("test runtime starts");
    // a task of its own on a multi-threaded runtime: the import's future is Send
    runtime.block_on(async {
        tokio::spawn(import::run(options, control))
            .await
            .expect("the import does not panic")
    })
}

/// The options of a test import of `file` into `table` of `db`.
fn options(db: &TestDb, file: &Path, table: &str) -> ImportOptions {
    ImportOptions {
        table: Some(table.to_string()),
        connect_timeout: Duration::from_secs(5),
        ..ImportOptions::new(file.to_path_buf(), db.url.clone())
    }
}

fn write_csv(path: &Path, text: &str) {
    std::fs::write(path, text).expect("the test CSV is written");
}

fn ledger_row(db: &TestDb, run_id: i64) -> Value {
    let text = db
        .scalar(&format!(
            "SELECT row_to_json(r)::text FROM importer.runs r WHERE id = {run_id}"
        ))
        .expect("the run is in the ledger");
    serde_json::from_str(&text).expect("the ledger row is JSON")
}

/// A progress sink that keeps what it heard, and cancels `cancel` (when given) once it hears
/// of rows read.
#[derive(Default)]
struct Heard {
    started: Mutex<Vec<Option<i64>>>,
    rows: Mutex<Vec<RowsSoFar>>,
    cancel: Option<CancellationToken>,
}

impl ProgressSink for Heard {
    fn started(&self, run_id: Option<i64>) {
        self.started.lock().expect("not poisoned").push(run_id);
    }

    fn rows(&self, rows: RowsSoFar) {
        self.rows.lock().expect("not poisoned").push(rows);
        if let Some(cancel) = &self.cancel
            && rows.read > 0
        {
            cancel.cancel();
        }
    }
}

#[test]
fn an_import_returns_its_stats_and_report_and_the_sink_hears_the_run_and_its_rows() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("upload-7f3a.csv");
    write_csv(&csv, "name,amount\nada,1\nbob,2\ncy,3\n");
    let heard = Arc::new(Heard::default());
    let control = ImportControl {
        progress: Some(heard.clone()),
        ..ImportControl::new()
    };
    let report = import(
        ImportOptions {
            display_name: Some("clients.csv".to_string()),
            method: Method::Copy,
            ..options(&db, &csv, "clients")
        },
        control,
    )
    .expect("the import succeeds");

    assert_eq!(report.outcome, ImportOutcome::AllIn);
    assert_eq!(report.stats.file, "clients.csv");
    assert_eq!(report.stats.table, "clients");
    assert_eq!(report.stats.method, "copy");
    assert_eq!(report.stats.total_records, 3);
    assert_eq!(report.stats.success_count, 3);
    assert_eq!(report.stats.error_count, 0);
    assert_eq!(report.rejected_total, 0);
    assert!(report.rejections.is_empty());
    assert_eq!(db.count("clients"), 3);
    let run_id = report.run_id.expect("the run is recorded");
    let row = ledger_row(&db, run_id);
    assert_eq!(row["outcome"], "succeeded");
    assert_eq!(row["file_path"], "clients.csv", "{row}");
    assert_eq!(
        row["stats"],
        serde_json::to_value(&report.stats).expect("stats serialise")
    );

    assert_eq!(*heard.started.lock().unwrap(), vec![Some(run_id)]);
    let rows = heard.rows.lock().unwrap();
    let last = rows.last().expect("the sink heard the rows");
    assert_eq!(
        *last,
        RowsSoFar {
            read: 3,
            written: 3,
            rejected: 0
        }
    );
}

#[test]
fn a_cancelled_token_ends_the_import_cancelled_with_every_row_read_accounted_for() {
    let db = TestDb::new();
    db.execute("CREATE TABLE numbers (n bigint, label text)");
    let dir = TempDir::new();
    let csv = dir.path("numbers.csv");
    let total_rows = 200_000;
    let mut text = String::from("n,label\n");
    for n in 1..=total_rows {
        text.push_str(&format!("{n},row {n}\n"));
    }
    write_csv(&csv, &text);
    let control = ImportControl::new();
    let heard = Arc::new(Heard {
        cancel: Some(control.cancel.clone()),
        ..Heard::default()
    });
    control.cancel_cause.set("the test".to_string()).unwrap();
    let control = ImportControl {
        progress: Some(heard.clone()),
        ..control
    };
    let report = import(
        ImportOptions {
            method: Method::Sequential,
            ..options(&db, &csv, "numbers")
        },
        control,
    )
    .expect("a cancelled import is no failure");

    assert_eq!(report.outcome, ImportOutcome::Cancelled);
    let stats = &report.stats;
    assert!(stats.total_records > 0, "{stats:?}");
    assert!(stats.total_records < total_rows, "{stats:?}");
    assert_eq!(stats.success_count + stats.error_count, stats.total_records);
    assert_eq!(db.count("numbers") as u64, stats.success_count);
    let row = ledger_row(&db, report.run_id.expect("the run is recorded"));
    assert_eq!(row["outcome"], "cancelled");
    assert_eq!(row["error"], "stopped by the test");
}

#[test]
fn a_table_another_run_is_loading_fails_as_locked() {
    let db = TestDb::new();
    db.execute("CREATE TABLE busy (name text)");
    let dir = TempDir::new();
    let csv = dir.path("busy.csv");
    write_csv(&csv, "name\nada\n");
    let runtime = tokio::runtime::Runtime::new().expect("test runtime starts");
    let failure = runtime.block_on(async {
        let mut holder = PgConnection::connect(&db.url)
            .await
            .expect("the test connects");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(table_lock_key("public", "busy"))
            .execute(&mut holder)
            .await
            .expect("the test takes the table's lock");
        let result = import::run(options(&db, &csv, "busy"), ImportControl::new()).await;
        holder.close().await.ok();
        result.expect_err("a locked table fails the import")
    });

    assert_eq!(failure.kind, FailureKind::Locked, "{failure}");
    assert!(
        failure
            .to_string()
            .contains("is being loaded by another run"),
        "{failure}"
    );
    assert_eq!(db.count("busy"), 0);
}

#[test]
fn a_header_cell_that_is_no_column_fails_as_input() {
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    write_csv(&csv, "name,shoe size\nada,38\n");
    let failure = import(options(&db, &csv, "people"), ImportControl::new())
        .expect_err("an unknown column fails the import");

    assert_eq!(failure.kind, FailureKind::Input, "{failure}");
    assert!(failure.to_string().contains("shoe"), "{failure}");
    assert!(failure.stats.is_none());
}

#[test]
fn a_server_that_cannot_be_reached_fails_as_database() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    write_csv(&csv, "name\nada\n");
    let failure = import(
        ImportOptions {
            connect_timeout: Duration::ZERO,
            ..ImportOptions::new(csv.clone(), "postgres://postgres@127.0.0.1:1/postgres")
        },
        ImportControl::new(),
    )
    .expect_err("an unreachable server fails the import");

    assert_eq!(failure.kind, FailureKind::Database, "{failure}");
    assert!(failure.run_id.is_none());
}

#[test]
fn options_that_contradict_each_other_fail_as_usage() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    write_csv(&csv, "name\nada\n");
    let failure = import(
        ImportOptions {
            mode: Mode::Upsert,
            ..options(&db, &csv, "people")
        },
        ImportControl::new(),
    )
    .expect_err("an upsert without a key fails");

    assert_eq!(failure.kind, FailureKind::Usage, "{failure}");
    assert!(failure.to_string().contains("--key"), "{failure}");
}

#[test]
fn the_report_keeps_the_first_rejected_rows_with_their_row_column_and_reason() {
    let db = TestDb::new();
    db.execute("CREATE TABLE counts (name text, n integer NOT NULL)");
    let dir = TempDir::new();
    let csv = dir.path("counts.csv");
    write_csv(&csv, "name,n\nada,1\nbob,lots\ncy,3\ndee,\neve,2.5\n");
    let report = import(
        ImportOptions {
            kept_rejections: 2,
            ..options(&db, &csv, "counts")
        },
        ImportControl::new(),
    )
    .expect("rejected rows are no failure");

    assert_eq!(report.outcome, ImportOutcome::SomeRejected);
    assert_eq!(report.rejected_total, 3);
    assert_eq!(report.stats.error_count, 3);
    assert_eq!(report.stats.success_count, 2);
    assert_eq!(report.rejections.len(), 2, "{:?}", report.rejections);
    let first = &report.rejections[0];
    assert_eq!(first.row_number, 3);
    assert_eq!(first.column.as_deref(), Some("n"));
    assert!(first.reason.contains("not an integer"), "{first:?}");
    let second = &report.rejections[1];
    assert_eq!(second.row_number, 5);
    assert_eq!(second.column.as_deref(), Some("n"));
}

#[test]
fn a_skipped_import_says_which_run_loaded_the_content() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let csv = dir.path("once.csv");
    write_csv(&csv, "name\nada\n");
    let first = import(options(&db, &csv, "once"), ImportControl::new()).expect("first run");
    let second = import(
        ImportOptions {
            skip_unchanged: true,
            ..options(&db, &csv, "once")
        },
        ImportControl::new(),
    )
    .expect("second run");

    assert_eq!(second.outcome, ImportOutcome::Skipped);
    let skipped = second.skipped.expect("the skip report");
    assert_eq!(Some(skipped.previous_run_id), first.run_id);
    assert_eq!(second.run_id, Some(skipped.run_id));
    assert_eq!(second.stats.total_records, 0);
    assert_eq!(db.count("once"), 1);
}

/// A progress sink that, on the first rows it hears (the staging table exists by then), says
/// so on `loading` and holds its import still until `go` (at most a minute).
struct Gate {
    loading: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ProgressSink for Gate {
    fn rows(&self, _rows: RowsSoFar) {
        let loading = self.loading.lock().expect("not poisoned").take();
        if let Some(loading) = loading {
            loading.send(()).ok();
            let go = self.go.lock().expect("not poisoned");
            go.recv_timeout(Duration::from_secs(60)).ok();
        }
    }
}

/// Starts an atomic import of `file` into `table` on a thread, held mid-load: returns once its
/// staging table exists, with the sender that lets it go on and the thread.
#[allow(clippy::result_large_err)] // the failure is what the test inspects, as returned
fn held_atomic_import(
    db: &TestDb,
    file: &Path,
    table: &str,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Result<ImportReport, ImportFailure>>,
) {
    let (loading_sender, loading) = std::sync::mpsc::channel();
    let (go, go_receiver) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        loading: Mutex::new(Some(loading_sender)),
        go: Mutex::new(go_receiver),
    });
    let options = ImportOptions {
        atomic: true,
        ..options(db, file, table)
    };
    let control = ImportControl {
        progress: Some(gate),
        ..ImportControl::new()
    };
    let held = std::thread::spawn(move || import(options, control));
    loading
        .recv_timeout(Duration::from_secs(60))
        .expect("the held import starts loading");
    (go, held)
}

/// Staging tables of this process, of the naming `importer_staging_{pid}_{random}`.
fn staging_tables_of_this_process(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(&format!(
        "SELECT relname::text FROM pg_class WHERE relname LIKE 'importer\\_staging\\_{}\\_%'",
        std::process::id()
    ))
}

#[test]
fn two_atomic_imports_into_two_tables_of_one_schema_at_once_both_succeed() {
    let db = TestDb::new();
    db.execute("CREATE TABLE first (name text, amount integer); CREATE TABLE second (name text, amount integer)");
    let dir = TempDir::new();
    let csv = dir.path("amounts.csv");
    write_csv(&csv, "name,amount\nada,1\nbob,2\ncy,3\n");
    let (go, held) = held_atomic_import(&db, &csv, "first");
    // the service's case: one process, two staging tables in one schema at once
    let second = import(
        ImportOptions {
            atomic: true,
            ..options(&db, &csv, "second")
        },
        ImportControl::new(),
    );
    go.send(()).expect("the held import waits");
    let first = held.join().expect("the held import's thread ends");
    let second = second.expect("the second import succeeds beside the first");
    let first = first.expect("the first import succeeds");
    assert_eq!(first.outcome, ImportOutcome::AllIn);
    assert_eq!(second.outcome, ImportOutcome::AllIn);
    assert_eq!(db.count("first"), 3);
    assert_eq!(db.count("second"), 3);
    assert!(staging_tables_of_this_process(&db).is_empty());
}

#[test]
fn a_dead_runs_staging_table_is_dropped_but_a_live_one_of_the_same_pid_is_not() {
    let db = TestDb::new();
    db.execute("CREATE TABLE first (name text, amount integer); CREATE TABLE second (name text, amount integer)");
    let dir = TempDir::new();
    let csv = dir.path("amounts.csv");
    write_csv(&csv, "name,amount\nada,1\nbob,2\ncy,3\n");
    let (go, held) = held_atomic_import(&db, &csv, "first");
    assert_eq!(staging_tables_of_this_process(&db).len(), 1);
    // a run into `second` by an earlier process of the same pid (a container restarted: pid
    // 1 every time) died, leaving its staging table under the pid-only name
    let dead_staging = format!("importer_staging_{}", std::process::id());
    db.execute(&format!(
        "CREATE TABLE IF NOT EXISTS public.{dead_staging} (name text, amount integer);
         INSERT INTO importer.runs (file_path, file_size, sha256, sheet, table_schema,
                table_name, method, mode, outcome, lock_pid, lock_backend_start,
                staging_schema, staging_name)
         VALUES ('old.csv', 0, 'x', 'old', 'public', 'second', 'batch', 'append', 'running',
                 0, now(), 'public', '{dead_staging}')"
    ));
    let second = import(options(&db, &csv, "second"), ImportControl::new())
        .expect("the import into second succeeds");
    assert_eq!(second.outcome, ImportOutcome::AllIn);
    assert!(
        db.rows(&format!(
            "SELECT 1 FROM pg_class WHERE relname = '{dead_staging}'"
        ))
        .is_empty(),
        "the dead run's staging table is dropped"
    );
    assert_eq!(
        staging_tables_of_this_process(&db).len(),
        1,
        "the live run's staging table is kept"
    );
    go.send(()).expect("the held import waits");
    let first = held
        .join()
        .expect("the held import's thread ends")
        .expect("the live import succeeds");
    assert_eq!(first.outcome, ImportOutcome::AllIn);
    assert_eq!(db.count("first"), 3);
}

#[test]
fn a_rejects_file_that_cannot_be_written_fails_as_internal() {
    let db = TestDb::new();
    db.execute("CREATE TABLE scores (name text, points integer)");
    let dir = TempDir::new();
    let csv = dir.path("scores.csv");
    write_csv(&csv, "name,points\nada,1\nbob,many\n");
    // a full disk: the rows load, the rejects file fails when it is flushed
    let failure = import(
        ImportOptions {
            rejects: Some("/dev/full".into()),
            ..options(&db, &csv, "scores")
        },
        ImportControl::new(),
    )
    .expect_err("an output file failed");
    assert_eq!(failure.kind, FailureKind::Internal, "{failure}");
    assert!(
        failure.to_string().contains("an output file failed"),
        "{failure}"
    );
    assert_eq!(db.count("scores"), 1);
}
