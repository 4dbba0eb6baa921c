//! Fault injection against a private cluster (see cluster.rs): the server crashes mid-load
//! (`pg_ctl stop -m immediate`, which loses the latest asynchronous commits), and what the
//! run prints must never be more than what the table holds, and must match the chunk ledger.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::util::{Run, TempDir, TestDb, fatal_error_line, run_importer};

/// How long a run in the background may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The columns of a generated business file, all text (CSV cells are strings).
const BUSINESS_COLUMNS: &str = "name text, category text, phone text, email text, address text, city text, country text, website text, description text";

/// Rows of the generated file: more than any run gets through before the crash.
const FILE_ROWS: i64 = 100_000;

/// Generates the business CSV into `dir`.
fn businesses_csv(dir: &TempDir) -> String {
    let path = dir.path("businesses.csv");
    let out = path.to_str().unwrap().to_string();
    let generated = run_importer(
        &[
            "generate",
            "--rows",
            &FILE_ROWS.to_string(),
            "--seed",
            "8",
            &out,
        ],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    out
}

/// The rows the chunk ledger holds for the runs into `table`.
fn ledger_rows_sql(table: &str) -> String {
    format!(
        "SELECT coalesce(sum(c.row_count), 0)::bigint FROM importer.chunks c
           JOIN importer.runs r ON r.id = c.run_id WHERE r.table_name = '{table}'"
    )
}

/// The outcome of the latest run into `table`.
fn last_outcome(cluster: &Cluster, table: &str) -> String {
    cluster
        .scalar(&format!(
            "SELECT outcome FROM importer.runs WHERE table_name = '{table}' ORDER BY id DESC LIMIT 1"
        ))
        .expect("outcome is not null")
}

/// The importer running in the background, its output going to files.
struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    fn spawn(dir: &TempDir, name: &str, args: &[&str], url: &str) -> Background {
        let (stdout, stderr) = (
            dir.path(&format!("{name}.out")),
            dir.path(&format!("{name}.err")),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_importer"))
            .args(args)
            .env("RUST_LOG", "warn")
            .env("DATABASE_URL", url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("the importer binary starts");
        Background {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the run to end (killing it after [`RUN_LIMIT`]).
    fn finish(mut self) -> Run {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the run can be waited for") {
                break status;
            }
            if started.elapsed() > RUN_LIMIT {
                self.child.kill().ok();
                panic!(
                    "the run did not end within {RUN_LIMIT:?}; stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap(),
        }
    }
}

#[test]
fn a_crash_mid_load_is_counted_exactly_after_the_restart_for_every_method() {
    let cluster = Cluster::start();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    // per-row methods commit far more often: a few thousand rows are enough
    for (method, rows_before_crash) in [
        ("copy", 20_000),
        ("batch", 20_000),
        ("sequential", 2_000),
        ("concurrent", 2_000),
    ] {
        let table = format!("crash_{method}");
        cluster.execute(&format!("CREATE TABLE {table} ({BUSINESS_COLUMNS})"));
        let args = [
            "run",
            "-m",
            method,
            "-w",
            "2",
            "-b",
            "500",
            "-t",
            &table,
            "--format",
            "json",
            "--connect-timeout",
            "120",
            &file,
        ];
        let run = Background::spawn(&dir, method, &args, &cluster.url());
        cluster.wait_until_at_least(&ledger_rows_sql(&table), rows_before_crash);
        cluster.crash();
        cluster.resume();
        let run = run.finish();

        let error = fatal_error_line(&run);
        let reported = run.json()["success_count"].as_i64().unwrap();
        let in_table = cluster.count(&table);
        let in_ledger: i64 = cluster
            .scalar(&ledger_rows_sql(&table))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            in_table < FILE_ROWS,
            "{method}: the crash came mid-load\n{run:?}"
        );
        assert_eq!(
            reported, in_table,
            "{method}: the stats say what the table holds\n{run:?}"
        );
        assert_eq!(
            in_ledger, in_table,
            "{method}: the chunk ledger matches the table"
        );
        assert!(
            error.contains(&format!(
                "{in_table} rows are in table {table} from this run"
            )),
            "{method}: {error}"
        );
        assert_eq!(last_outcome(&cluster, &table), "failed", "{method}");

        // --resume continues after what survived: every row exactly once
        let resumed = run_importer(
            &[
                "run", "-m", "copy", "-t", &table, "--resume", "--format", "json", &file,
            ],
            Some(&cluster.url()),
        );
        assert_eq!(resumed.code, 0, "{method}\n{resumed:?}");
        assert_eq!(
            resumed.json()["success_count"],
            FILE_ROWS - in_table,
            "{method}"
        );
        assert_each_row_once(&cluster, &table);
    }
}

/// Checks that `table` holds every row of the generated file exactly once.
fn assert_each_row_once(cluster: &Cluster, table: &str) {
    let distinct = cluster.scalar(&format!("SELECT count(DISTINCT email) FROM {table}"));
    assert_eq!(cluster.count(table), FILE_ROWS, "{table}: every row");
    assert_eq!(distinct, Some(FILE_ROWS.to_string()), "{table}: each once");
}

#[test]
fn a_crash_mid_load_leaves_an_atomic_or_replace_target_untouched_and_no_staging_table() {
    let cluster = Cluster::start();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    for (method, mode) in [
        ("copy", "--atomic"),
        ("batch", "--atomic"),
        ("copy", "--mode=replace"),
        ("batch", "--mode=replace"),
    ] {
        let table = format!(
            "staged_{method}_{}",
            mode.trim_start_matches("--mode=").trim_start_matches("--")
        );
        cluster.execute(&format!(
            "CREATE TABLE {table} ({BUSINESS_COLUMNS}); INSERT INTO {table} (name) VALUES ('a'), ('b'), ('c')"
        ));
        let args = [
            "run",
            "-m",
            method,
            "-w",
            "2",
            "-b",
            "500",
            mode,
            "-t",
            &table,
            "--format",
            "json",
            "--connect-timeout",
            "120",
            &file,
        ];
        let run = Background::spawn(&dir, &table, &args, &cluster.url());
        cluster.wait_until_at_least(&ledger_rows_sql(&table), 10_000);
        cluster.crash();
        cluster.resume();
        let run = run.finish();

        let error = fatal_error_line(&run);
        assert_eq!(run.json()["success_count"], 0, "{table}\n{run:?}");
        assert!(
            error.contains(&format!("0 rows are in table {table}")),
            "{table}: {error}"
        );
        assert_eq!(cluster.count(&table), 3, "{table}: the target is as it was");
        let staging_tables = cluster
            .scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'importer_staging_%'")
            .unwrap();
        assert_eq!(staging_tables, "0", "{table}: the staging table is dropped");
        assert_eq!(last_outcome(&cluster, &table), "failed", "{table}");
    }
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> i64 {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"))
        + label.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {label:?} in {text}"))
}

#[test]
fn a_run_that_cannot_reach_the_server_again_says_at_least_and_at_most() {
    let cluster = Cluster::start();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    let table = "unreachable";
    cluster.execute(&format!("CREATE TABLE {table} ({BUSINESS_COLUMNS})"));
    let args = [
        "run",
        "-m",
        "copy",
        "-w",
        "2",
        "-b",
        "500",
        "-t",
        table,
        "--format",
        "json",
        "--connect-timeout",
        "1",
        &file,
    ];
    let run = Background::spawn(&dir, table, &args, &cluster.url());
    cluster.wait_until_at_least(&ledger_rows_sql(table), 20_000);
    cluster.crash();
    let run = run.finish(); // the server stays down until the run has given up
    cluster.resume();

    let error = fatal_error_line(&run);
    assert!(
        error.contains(&format!("rows are in table {table} (confirmed), at most")),
        "{error}"
    );
    let at_least = number_after(&error, "at least ");
    let at_most = number_after(&error, "at most ");
    assert_eq!(
        run.json()["success_count"],
        at_least,
        "the stats give the confirmed figure"
    );
    let in_table = cluster.count(table);
    assert!(
        at_least <= in_table && in_table <= at_most,
        "at least {at_least} <= {in_table} in the table <= at most {at_most}"
    );
}

/// Terminates the backend holding the run lock of the importer with OS pid `pid`.
fn terminate_lock_backend(cluster: &Cluster, pid: u32) {
    let terminated = cluster.scalar(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'importer pid {pid}'"
    ));
    assert_eq!(
        terminated.as_deref(),
        Some("1"),
        "one lock backend terminated"
    );
}

#[test]
fn a_run_whose_lock_backend_is_terminated_stops_before_its_next_commit() {
    let cluster = Cluster::start();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    for method in ["batch", "sequential"] {
        let table = format!("fenced_{method}");
        cluster.execute(&format!("CREATE TABLE {table} ({BUSINESS_COLUMNS})"));
        let args = [
            "run", "-m", method, "-w", "2", "-b", "200", "-t", &table, "--format", "json", &file,
        ];
        let run = Background::spawn(&dir, &table, &args, &cluster.url());
        cluster.wait_until_at_least(&ledger_rows_sql(&table), 1_000);
        terminate_lock_backend(&cluster, run.child.id());
        let run = run.finish();

        let error = fatal_error_line(&run);
        assert!(
            error.contains(&format!(
                "no longer holds the run lock of table public.{table}"
            )),
            "{method}: {error}"
        );
        let in_table = cluster.count(&table);
        assert!(in_table < FILE_ROWS, "{method}: the run stopped mid-load");
        assert_eq!(run.json()["success_count"], in_table, "{method}\n{run:?}");
        assert_eq!(last_outcome(&cluster, &table), "failed", "{method}");
    }
}

#[test]
fn a_second_run_never_writes_beside_a_first_one_that_lost_its_lock() {
    let cluster = Cluster::start();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    let table = "shared_target";
    cluster.execute(&format!("CREATE TABLE {table} ({BUSINESS_COLUMNS})"));
    let args = [
        "run",
        "-m",
        "concurrent",
        "-w",
        "2",
        "-t",
        table,
        "--format",
        "json",
        &file,
    ];
    let first = Background::spawn(&dir, "first", &args, &cluster.url());
    cluster.wait_until_at_least(&ledger_rows_sql(table), 1_000);
    terminate_lock_backend(&cluster, first.child.id());
    // the second run takes the lock at once, while the first may still be writing
    let second_args = [
        "run", "-m", "batch", "-b", "200", "-t", table, "--format", "json", &file,
    ];
    let second = Background::spawn(&dir, "second", &second_args, &cluster.url());
    let (first, second) = (first.finish(), second.finish());

    assert!(
        fatal_error_line(&first)
            .contains("no longer holds the run lock of table public.shared_target"),
        "{first:?}"
    );
    assert_eq!(second.code, 0, "{second:?}");
    // every unit of the first run committed before the second run's first one
    let apart = cluster.scalar(
        "SELECT (SELECT max(committed_at) FROM importer.chunks WHERE run_id = (SELECT min(run_id) FROM importer.chunks))
              < (SELECT min(committed_at) FROM importer.chunks WHERE run_id = (SELECT max(run_id) FROM importer.chunks))",
    );
    assert_eq!(
        apart.as_deref(),
        Some("true"),
        "the two runs never wrote at the same time"
    );
    let reported = first.json()["success_count"].as_i64().unwrap()
        + second.json()["success_count"].as_i64().unwrap();
    assert_eq!(reported, cluster.count(table));
}

/// Waits until `sql` (one number) on `db` is at least `least`; a failing query (a table not
/// created yet) counts as not yet. Polls, never sleeps for a fixed time.
fn wait_on_db(db: &TestDb, sql: &str, least: i64) {
    let started = Instant::now();
    loop {
        let ledger_ready = db.scalar(
            "SELECT (to_regprocedure('importer.record_chunk(bigint,bigint,bigint,bigint,bigint,bigint,integer,bigint)') IS NOT NULL)::text",
        );
        let value = match ledger_ready.as_deref() {
            Some("true") => db.scalar(&format!("SELECT ({sql})::text")),
            _ => None,
        }
        .and_then(|text| text.parse::<i64>().ok());
        if value.is_some_and(|value| value >= least) {
            return;
        }
        assert!(
            started.elapsed() < RUN_LIMIT,
            "waited for {sql} to reach {least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_run_killed_while_printing_its_stats_has_recorded_its_outcome_so_skip_unchanged_skips() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = dir.path("people.csv");
    let rows: String = (1..=50).map(|id| format!("{id},person {id}\n")).collect();
    std::fs::write(&file, format!("id,name\n{rows}")).unwrap();
    let file = file.to_str().unwrap();

    // a pipe filled to the brim: the run blocks in the middle of printing its stats
    let (reader, writer) = std::io::pipe().unwrap();
    let mut filler_end = writer.try_clone().unwrap();
    let filler = std::thread::spawn(move || {
        use std::io::Write;
        while filler_end.write_all(b"x").is_ok() {}
    });
    let mut run = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args(["run", "-t", "people", "--format", "json", file])
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .expect("the importer binary starts");
    wait_on_db(
        &db,
        "SELECT count(*) FROM importer.runs WHERE outcome = 'succeeded'",
        1,
    );
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run is still printing its stats"
    );
    run.kill().unwrap(); // SIGKILL
    run.wait().unwrap();
    drop(reader); // the filler gets EPIPE and ends
    filler.join().unwrap();

    assert_eq!(db.count("people"), 50);
    let again = db.importer(&[
        "run",
        "-t",
        "people",
        "--skip-unchanged",
        "--format",
        "json",
        file,
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["skipped"], true, "{again:?}");
    assert_eq!(db.count("people"), 50, "no row twice");
}

#[test]
fn a_run_killed_mid_load_is_recorded_as_died_by_the_next_run_which_drops_its_staging_table() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    db.execute(&format!("CREATE TABLE staged ({BUSINESS_COLUMNS})"));
    let args = [
        "run", "-m", "batch", "-b", "200", "--atomic", "-t", "staged", "--format", "json", &file,
    ];
    let mut killed = Background::spawn(&dir, "killed", &args, &db.url);
    wait_on_db(
        &db,
        "SELECT coalesce(sum(row_count), 0) FROM importer.chunks",
        2_000,
    );
    killed.child.kill().unwrap(); // SIGKILL: no outcome, the staging table stays
    killed.child.wait().unwrap();
    let staging = "SELECT count(*)::text FROM pg_tables WHERE tablename LIKE 'importer_staging_%'";
    assert_eq!(db.scalar(staging).as_deref(), Some("1"));
    assert_eq!(
        db.scalar("SELECT outcome FROM importer.runs").as_deref(),
        Some("running")
    );

    let next = db.importer(&[
        "run", "-m", "copy", "--atomic", "-t", "staged", "--format", "json", &file,
    ]);
    assert_eq!(next.code, 0, "{next:?}");
    assert!(next.stderr.contains("recorded it as died"), "{next:?}");
    assert_eq!(
        db.rows("SELECT outcome FROM importer.runs ORDER BY id"),
        vec![
            vec![Some("died".to_string())],
            vec![Some("succeeded".to_string())]
        ]
    );
    assert_eq!(
        db.scalar(staging).as_deref(),
        Some("0"),
        "the dead run's staging table is dropped"
    );
    assert_eq!(db.count("staged"), FILE_ROWS);
}

#[test]
fn a_run_killed_mid_load_is_resumed_by_skip_unchanged_so_every_row_is_in_once() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = businesses_csv(&dir);
    db.execute(&format!("CREATE TABLE resumed ({BUSINESS_COLUMNS})"));
    let args = [
        "run",
        "-m",
        "batch",
        "-b",
        "200",
        "-t",
        "resumed",
        "--skip-unchanged",
        "--format",
        "json",
        &file,
    ];
    let mut killed = Background::spawn(&dir, "killed", &args, &db.url);
    wait_on_db(
        &db,
        "SELECT coalesce(sum(row_count), 0) FROM importer.chunks",
        2_000,
    );
    killed.child.kill().unwrap(); // SIGKILL mid-load
    killed.child.wait().unwrap();
    // a statement the server was running when the process died still commits: wait for the
    // dead run's sessions to end before counting
    wait_on_db(
        &db,
        "SELECT -count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'importer%'",
        0,
    );
    let first = db.count("resumed");
    assert!(first < FILE_ROWS, "killed mid-load");

    let again = db.importer(&args);
    assert_eq!(again.code, 0, "{again:?}");
    let stats = again.json();
    assert_eq!(stats["success_count"], FILE_ROWS - first, "{again:?}");
    assert_eq!(
        stats["total_records"],
        FILE_ROWS - first,
        "the rows already in are not read again"
    );
    assert_eq!(
        db.rows("SELECT outcome, previous_run_id::text FROM importer.runs ORDER BY id"),
        vec![
            vec![Some("died".to_string()), None],
            vec![Some("succeeded".to_string()), Some("1".to_string())],
        ]
    );
    assert_eq!(
        db.rows("SELECT count(*)::text, count(DISTINCT email)::text FROM resumed"),
        vec![vec![
            Some(FILE_ROWS.to_string()),
            Some(FILE_ROWS.to_string())
        ]],
        "every row, once"
    );
}

#[test]
fn a_staged_run_that_lost_its_lock_never_publishes() {
    use importer::sink::{TableName, chunks, ledger, load_table, staging};
    let db = TestDb::new();
    db.execute("CREATE TABLE target (id bigint); CREATE TABLE staged (id bigint); INSERT INTO staged VALUES (1), (2)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime.block_on(async {
        let pool = importer::sink::connect(Some(&db.url), 2, Duration::from_secs(5))
            .await
            .unwrap();
        let ledger = ledger::Ledger::new(importer::cli::DEFAULT_LEDGER_SCHEMA);
        ledger::create_ledger(&pool, &ledger).await.unwrap();
        // the run took the table's lock with token 1; another run took it since (token 2)
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO importer.runs (file_path, file_size, sha256, sheet, table_schema, table_name,
                                        method, mode, outcome, lock_token, lock_key, lock_pid)
             VALUES ('f.csv', 1, 'x', 'f.csv', 'public', 'target', 'copy', 'append', 'running', 1, 42, pg_backend_pid())
             RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO importer.table_locks VALUES ('public', 'target', 2)")
            .execute(&pool)
            .await
            .unwrap();
        let target = TableName::parse("target").unwrap();
        let columns = load_table(&pool, &target).await.unwrap().unwrap().columns;
        let staged = TableName::parse("staged").unwrap();
        let fence = chunks::ChunkLedger {
            run_id,
            ledger,
            fence: chunks::Fence {
                token: 1,
                lock_key: 42,
                lock_pid: sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&pool)
                    .await
                    .unwrap(),
                lock_backend_start: 0,
            },
            connect_timeout: Duration::from_secs(5),
        };
        staging::publish(&pool, &staged, &target, &columns, None, Some(&fence))
            .await
            .expect_err("a fenced run cannot publish")
    });
    assert!(
        format!("{error:#}").contains("no longer holds the run lock of table public.target"),
        "{error:#}"
    );
    assert_eq!(db.count("target"), 0, "nothing was published");
    assert_eq!(db.count("staged"), 2);
}
