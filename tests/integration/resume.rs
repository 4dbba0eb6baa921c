//! A plain re-run after an interrupt: in append mode a run resumes after the rows an earlier
//! cancelled, failed or dead run of the same content left in the table (so each row is in
//! once), `--no-resume` loads every row again, and loading content a finished run already
//! loaded warns and loads. The interrupted load is held mid-way by a trigger that waits for
//! an advisory lock the test holds, so nothing depends on timing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

use crate::util::{Run, TempDir, TestDb, importer_command, run_importer_with_env};

/// Rows of the file the tests load.
const FILE_ROWS: i64 = 20_000;

/// The first row (by its `n`) whose insert waits for the gate.
const GATE_ROW: i64 = 3_000;

/// The advisory key of the gate.
const GATE_KEY: i64 = 7_160_401;

/// How long the test waits for the run to reach a point before it fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// `gated.csv`: `n,label` for n = 1..=FILE_ROWS.
fn numbered_csv(dir: &TempDir) -> PathBuf {
    let path = dir.path("gated.csv");
    let mut text = String::from("n,label\n");
    for n in 1..=FILE_ROWS {
        text.push_str(&format!("{n},row {n}\n"));
    }
    std::fs::write(&path, text).expect("csv is written");
    path
}

/// Creates `gated (n bigint, label text)`, whose inserts of rows from GATE_ROW on wait in
/// their transaction for the advisory lock GATE_KEY while the test holds it.
fn create_gated_table(db: &TestDb) {
    db.execute(&format!(
        "CREATE TABLE gated (n bigint, label text);
         CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.n >= {GATE_ROW} THEN
                 PERFORM pg_advisory_xact_lock_shared({GATE_KEY});
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER gate BEFORE INSERT ON gated FOR EACH ROW EXECUTE FUNCTION gate();"
    ));
}

/// The gate: the advisory lock GATE_KEY, held on a connection of the test's own.
struct Gate {
    runtime: Runtime,
    connection: PgConnection,
}

impl Gate {
    fn close(url: &str) -> Gate {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime starts");
        let connection = runtime.block_on(async {
            let mut connection = PgConnection::connect(url).await.expect("the test connects");
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(GATE_KEY)
                .execute(&mut connection)
                .await
                .expect("the test takes the gate");
            connection
        });
        Gate {
            runtime,
            connection,
        }
    }

    fn open(mut self) {
        self.runtime.block_on(async {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(GATE_KEY)
                .execute(&mut self.connection)
                .await
                .expect("the test opens the gate");
            self.connection.close().await.expect("closes");
        });
    }
}

/// Sessions waiting at the gate.
fn waiting_at_gate(db: &TestDb) -> i64 {
    db.scalar(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND classid::bigint = 0 AND objid::bigint = {GATE_KEY} AND objsubid = 1"
    ))
    .expect("count")
    .parse()
    .expect("number")
}

/// Runs `args` (a load of the gated table) until its rows reach the gate, sends it SIGINT,
/// waits until it has stopped reading, opens the gate and returns how it ended.
fn interrupt_at_the_gate(db: &TestDb, args: &[&str]) -> Run {
    let gate = Gate::close(&db.url);
    let mut child: Child = importer_command(args, Some(&db.url), &[("RUST_LOG", "info")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the importer binary starts");
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
    let deadline = Instant::now() + PATIENCE;
    while waiting_at_gate(db) == 0 {
        assert!(
            child.try_wait().expect("child status").is_none(),
            "the run ended before its rows reached the gate"
        );
        assert!(Instant::now() < deadline, "no writer reached the gate");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut log = Vec::new();
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the run never stopped reading; stderr:\n{log:#?}"));
        let stopped = line.contains("no more rows are read");
        log.push(line);
        if stopped {
            break;
        }
    }
    gate.open();
    let output = child.wait_with_output().expect("run ends");
    log.extend(lines.iter());
    reader.join().expect("stderr reader");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: log.join("\n"),
    }
}

/// Checks an interrupted run: exit 130, some rows in but not all; returns how many are in.
fn rows_in_after_interrupt(db: &TestDb, interrupted: &Run) -> i64 {
    assert_eq!(interrupted.code, 130, "{interrupted:?}");
    let rows_in = db.count("gated");
    assert!(
        rows_in > 0 && rows_in < FILE_ROWS,
        "stopped mid-load: {rows_in}\n{interrupted:?}"
    );
    assert_eq!(
        interrupted.json()["success_count"],
        rows_in,
        "{interrupted:?}"
    );
    rows_in
}

fn distinct_rows(db: &TestDb) -> i64 {
    db.scalar("SELECT count(DISTINCT n) FROM gated")
        .expect("count")
        .parse()
        .expect("number")
}

#[test]
fn a_plain_rerun_after_ctrl_c_resumes_so_that_every_row_is_in_once() {
    let dir = TempDir::new();
    let csv = numbered_csv(&dir);
    let db = TestDb::new();
    create_gated_table(&db);
    let args = [
        "run",
        "-m",
        "copy",
        "-b",
        "200",
        "-w",
        "2",
        "-t",
        "gated",
        "--format",
        "json",
        path_str(&csv),
    ];
    let interrupted = interrupt_at_the_gate(&db, &args);
    let rows_in = rows_in_after_interrupt(&db, &interrupted);
    assert!(
        interrupted.stderr.contains(&format!(
            "a re-run of the same command resumes after the {rows_in} rows of this content already in the table"
        )),
        "the warning says what a re-run does\n{interrupted:?}"
    );

    let again = run_importer_with_env(&args, Some(&db.url), &[("RUST_LOG", "info")]);
    assert_eq!(again.code, 0, "{again:?}");
    let resuming: Vec<&str> = again
        .stderr
        .lines()
        .filter(|line| line.contains("resuming run"))
        .collect();
    assert_eq!(resuming.len(), 1, "one line says so\n{again:?}");
    assert!(
        resuming[0].contains(&format!(
            "resuming run 1: {rows_in} rows of this content are already in table public.gated"
        )),
        "{again:?}"
    );
    assert!(!again.stdout.contains("resum"), "stdout is the stats only");
    let stats = again.json();
    assert_eq!(stats["success_count"], FILE_ROWS - rows_in, "{again:?}");
    assert_eq!(
        stats["total_records"],
        FILE_ROWS - rows_in,
        "the rows already in are not read again"
    );
    assert_eq!(db.count("gated"), FILE_ROWS, "every row");
    assert_eq!(distinct_rows(&db), FILE_ROWS, "each once");
    assert_eq!(
        db.rows("SELECT outcome, previous_run_id::text FROM importer.runs ORDER BY id"),
        vec![
            vec![Some("cancelled".to_string()), None],
            vec![Some("succeeded".to_string()), Some("1".to_string())],
        ]
    );

    let history = run_importer_with_env(&["history"], Some(&db.url), &[]);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(history.stdout.contains("Started (UTC)"), "{history:?}");
    let resumed = history
        .stdout
        .lines()
        .find(|line| line.starts_with("| 2 "))
        .unwrap_or_else(|| panic!("run 2 is listed\n{history:?}"));
    assert!(resumed.contains("resumes run 1"), "{history:?}");
}

#[test]
fn no_resume_loads_every_row_again_after_ctrl_c() {
    let dir = TempDir::new();
    let csv = numbered_csv(&dir);
    let db = TestDb::new();
    create_gated_table(&db);
    let args = [
        "run",
        "-m",
        "batch",
        "-b",
        "200",
        "-t",
        "gated",
        "--format",
        "json",
        path_str(&csv),
    ];
    let interrupted = interrupt_at_the_gate(&db, &args);
    let rows_in = rows_in_after_interrupt(&db, &interrupted);

    let mut again_args = args.to_vec();
    again_args.insert(1, "--no-resume");
    let again = run_importer_with_env(&again_args, Some(&db.url), &[("RUST_LOG", "info")]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(!again.stderr.contains("resuming"), "{again:?}");
    assert_eq!(again.json()["success_count"], FILE_ROWS, "{again:?}");
    assert_eq!(db.count("gated"), rows_in + FILE_ROWS, "the rows in twice");
    assert_eq!(distinct_rows(&db), FILE_ROWS);
}

#[test]
fn a_rerun_of_a_finished_load_warns_once_that_it_was_loaded_and_loads_again() {
    let dir = TempDir::new();
    let csv = dir.path("people.csv");
    std::fs::write(&csv, "name,age\nann,30\nbob,41\n").unwrap();
    let db = TestDb::new();
    db.execute("CREATE TABLE people (name text, age integer)");
    let args = ["run", "-t", "people", path_str(&csv)];
    let first = run_importer_with_env(&args, Some(&db.url), &[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(!first.stderr.contains("already loaded"), "{first:?}");
    let again = run_importer_with_env(&args, Some(&db.url), &[]);
    assert_eq!(again.code, 0, "append is append\n{again:?}");
    let warnings: Vec<&str> = again
        .stderr
        .lines()
        .filter(|line| line.contains("already loaded"))
        .collect();
    assert_eq!(warnings.len(), 1, "{again:?}");
    assert!(
        warnings[0].contains(" WARN ")
            && warnings[0].contains("already loaded into table public.people by run 1 at ")
            && warnings[0].contains("--skip-unchanged skips it"),
        "{again:?}"
    );
    assert_eq!(first.stdout.lines().count(), again.stdout.lines().count());
    assert_eq!(db.count("people"), 4, "loaded again");
}
