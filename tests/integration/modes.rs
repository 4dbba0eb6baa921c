//! `--mode replace|upsert`, `--atomic` and `--dry-run` (issue 4), for every method.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::{TempDir, TestDb, project_fixture, run_importer};

const METHODS: [&str; 4] = ["sequential", "concurrent", "batch", "copy"];

/// Writes `text` as a CSV file in `dir` and returns its path as a string.
fn csv(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Generates a business workbook of `rows` rows (none bad) into `dir`.
fn businesses(dir: &TempDir, rows: u64) -> String {
    let path = dir.path(&format!("businesses_{rows}.xlsx"));
    let out = path.to_str().unwrap().to_string();
    let generated = run_importer(
        &["generate", "--rows", &rows.to_string(), "--seed", "5", &out],
        None,
    );
    assert_eq!(generated.code, 0, "{generated:?}");
    out
}

fn counts(stats: &serde_json::Value) -> (u64, u64, u64) {
    (
        stats["total_records"].as_u64().unwrap(),
        stats["success_count"].as_u64().unwrap(),
        stats["error_count"].as_u64().unwrap(),
    )
}

const PEOPLE: &str = "CREATE TABLE people (id bigserial PRIMARY KEY, email text UNIQUE, name text NOT NULL, age integer CHECK (age < 150));
     CREATE INDEX people_name_idx ON people (name);
     INSERT INTO people (email, name, age) VALUES ('old@x', 'Old', 1), ('a@x', 'Before', 2);";

const INDEXES: &str = "SELECT indexname FROM pg_indexes WHERE tablename = 'people' ORDER BY 1";

#[test]
fn replace_leaves_exactly_the_files_good_rows_and_keeps_the_indexes() {
    let dir = TempDir::new();
    let file = csv(
        &dir,
        "people.csv",
        "email,name,age\na@x,Ann,30\nb@x,,40\nc@x,Cid,200\nd@x,Dee,50\n",
    );
    for method in METHODS {
        let db = TestDb::new();
        db.execute(PEOPLE);
        let indexes_before = db.rows(INDEXES);
        let run = db.importer(&[
            "run", "-m", method, "--mode", "replace", "-t", "people", "--format", "json", &file,
        ]);
        assert_eq!(run.code, 3, "{method}\n{run:?}");
        assert_eq!(counts(&run.json()), (4, 2, 2), "{method}");
        assert_eq!(
            db.rows("SELECT email, name FROM people ORDER BY email"),
            vec![
                vec![Some("a@x".into()), Some("Ann".into())],
                vec![Some("d@x".into()), Some("Dee".into())],
            ],
            "{method}: only the file's good rows"
        );
        assert_eq!(
            db.rows(INDEXES),
            indexes_before,
            "{method}: same index names"
        );
        // the serial sequence lives on: new ids continue after the old ones
        let smallest_id = db.scalar("SELECT min(id) FROM people").unwrap();
        assert!(
            smallest_id.parse::<i64>().unwrap() > 2,
            "{method}: {smallest_id}"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'importer_staging%'"),
            Some("0".into()),
            "{method}: no staging table left"
        );
    }
}

#[test]
fn replace_of_a_table_with_grants_refills_it_in_place() {
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", "email,name,age\nz@x,Zed,9\n");
    let db = TestDb::new();
    db.execute(PEOPLE);
    db.execute(
        "CREATE VIEW people_names AS SELECT name FROM people; GRANT SELECT ON people TO PUBLIC;",
    );
    let run = db.importer(&["run", "--mode", "replace", "-t", "people", &file]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows("SELECT name FROM people_names"),
        vec![vec![Some("Zed".into())]]
    );
    let granted = db.scalar("SELECT has_table_privilege('public', 'people', 'SELECT')::text");
    assert_eq!(granted, Some("true".into()), "the grant survives");
}

/// A reader polling the table while it is replaced sees the old rows, then the new ones,
/// never an empty or half-loaded table.
#[test]
fn replace_seen_from_a_concurrent_reader_never_shows_an_empty_table() {
    let dir = TempDir::new();
    let workbook = businesses(&dir, 20_000);
    let schema = std::fs::read_to_string(project_fixture("businesses.sql")).unwrap();
    let db = TestDb::new();
    db.execute(&schema);
    db.execute("INSERT INTO businesses (name) SELECT 'old ' || n FROM generate_series(1, 5000) n");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, done) = (db.url.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let mut seen = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM businesses")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    seen.push(count);
                }
                seen
            })
        })
    };
    let run = db.importer(&[
        "run",
        "-m",
        "copy",
        "--mode",
        "replace",
        "-b",
        "500",
        "-t",
        "businesses",
        &workbook,
    ]);
    done.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|&count| count == 5000 || count == 20_000),
        "the reader saw another count than old or new: {:?}",
        seen.iter()
            .filter(|&&count| count != 5000 && count != 20_000)
            .collect::<Vec<_>>()
    );
    assert_eq!(db.count("businesses"), 20_000);
}

#[test]
fn upsert_updates_existing_keys_inserts_new_ones_and_the_later_duplicate_wins() {
    let dir = TempDir::new();
    let file = csv(
        &dir,
        "people.csv",
        "email,name,age\na@x,Ann,30\nn@x,New,31\na@x,Ann Again,32\nbad@x,Bad,300\n",
    );
    let rejects = dir.path("rejects.csv");
    for method in METHODS {
        for atomic in [false, true] {
            let db = TestDb::new();
            db.execute(PEOPLE);
            let mut args = vec![
                "run",
                "-m",
                method,
                "--mode",
                "upsert",
                "--key",
                "email",
                "-t",
                "people",
                "--format",
                "json",
                "--rejects",
                rejects.to_str().unwrap(),
            ];
            if atomic {
                args.push("--atomic");
            }
            args.push(&file);
            let run = db.importer(&args);
            let label = format!("{method} atomic={atomic}");
            assert_eq!(run.code, 3, "{label}\n{run:?}");
            // row 2 is superseded by row 4; row 5 breaks the check constraint
            assert_eq!(counts(&run.json()), (4, 2, 2), "{label}");
            assert_eq!(
                db.rows("SELECT email, name, age::text FROM people ORDER BY email"),
                vec![
                    vec![
                        Some("a@x".into()),
                        Some("Ann Again".into()),
                        Some("32".into())
                    ],
                    vec![Some("n@x".into()), Some("New".into()), Some("31".into())],
                    vec![Some("old@x".into()), Some("Old".into()), Some("1".into())],
                ],
                "{label}"
            );
            let rejected = std::fs::read_to_string(&rejects).unwrap();
            assert!(
                rejected
                    .contains("2,email,superseded by row 4 (same key) (people.csv!A2),a@x,Ann,30"),
                "{label}\n{rejected}"
            );
        }
    }
}

#[test]
fn upsert_needs_a_key_with_a_unique_index() {
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", "email,name,age\na@x,Ann,30\n");
    let db = TestDb::new();
    db.execute(PEOPLE);
    let without_key = db.importer(&["run", "--mode", "upsert", "-t", "people", &file]);
    assert_eq!(without_key.code, 2, "{without_key:?}");
    assert!(
        without_key.stderr.contains("--key"),
        "{}",
        without_key.stderr
    );
    let not_unique = db.importer(&[
        "run", "--mode", "upsert", "--key", "name", "-t", "people", &file,
    ]);
    assert_eq!(not_unique.code, 1, "{not_unique:?}");
    assert!(
        not_unique.stderr.contains("unique index") && not_unique.stderr.contains("\"name\""),
        "{}",
        not_unique.stderr
    );
    let unknown = db.importer(&[
        "run", "--mode", "upsert", "--key", "zip", "-t", "people", &file,
    ]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert_eq!(db.count("people"), 2, "nothing was written");
}

#[test]
fn atomic_run_stopped_by_max_errors_leaves_the_target_untouched() {
    let dir = TempDir::new();
    let mut text = String::from("email,name,age\n");
    for index in 0..3000 {
        let age = if index % 500 == 499 { 999 } else { 20 };
        text.push_str(&format!("p{index}@x,P{index},{age}\n"));
    }
    let file = csv(&dir, "people.csv", &text);
    for method in METHODS {
        let db = TestDb::new();
        db.execute(PEOPLE);
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "--atomic",
            "--max-errors",
            "2",
            "-b",
            "100",
            "-t",
            "people",
            "--format",
            "json",
            &file,
        ]);
        assert_eq!(run.code, 1, "{method}\n{run:?}");
        let (total, success, error) = counts(&run.json());
        assert_eq!(
            success, 0,
            "{method}: nothing is in the table because of this run"
        );
        assert_eq!(success + error, total, "{method}");
        assert_eq!(db.count("people"), 2, "{method}: the target is untouched");
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'importer_staging%'"),
            Some("0".into()),
            "{method}: the staging table is gone"
        );
    }
}

#[test]
fn atomic_run_killed_with_sigterm_leaves_the_target_untouched_and_exits_143() {
    let dir = TempDir::new();
    let workbook = businesses(&dir, 200_000);
    let schema = std::fs::read_to_string(project_fixture("businesses.sql")).unwrap();
    let db = TestDb::new();
    db.execute(&schema);
    db.execute("INSERT INTO businesses (name) VALUES ('kept')");
    let mut child = Command::new(env!("CARGO_BIN_EXE_importer"))
        .args([
            "run",
            "-m",
            "batch",
            "-b",
            "500",
            "--atomic",
            "--format",
            "json",
            "-t",
            "businesses",
            &workbook,
        ])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging_like = format!("importer\\_staging\\_{}\\_%", child.id());
    let stderr = child.stderr.take().unwrap();
    let (line_sender, line_receiver) = std::sync::mpsc::channel::<String>();
    let stderr_lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            line_sender.send(line.clone()).ok();
            lines.push(line);
        }
        lines
    });
    // wait for the run to start, then for rows to be staged: the run is mid-way
    loop {
        let line = line_receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the run logs that it started");
        if line.contains("import started") {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    // the staging table is named per run: the child's pid and a random suffix
    let staging = loop {
        if let Some(name) = db.scalar(&format!(
            "SELECT relname::text FROM pg_class WHERE relname LIKE '{staging_like}'"
        )) {
            break name;
        }
        assert!(Instant::now() < deadline, "no staging table was created");
    };
    while db.scalar(&format!("SELECT count(*) FROM {staging}")) == Some("0".into()) {
        assert!(Instant::now() < deadline, "no rows were staged");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = stderr_lines.join().unwrap().join("\n");
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stats on stdout");
    assert_eq!(stats["success_count"], 0, "{stats}");
    assert_eq!(db.count("businesses"), 1, "the target is untouched");
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM pg_class WHERE relname = '{staging}'"
        )),
        Some("0".into())
    );
}

#[test]
fn dry_run_writes_nothing_and_reports_what_would_happen() {
    let dir = TempDir::new();
    let file = csv(
        &dir,
        "people.csv",
        "email,name,age\na@x,Ann,30\nb@x,Bob,old\n",
    );
    let rejects = dir.path("rejects.csv");
    let db = TestDb::new();
    db.execute(PEOPLE);
    for method in METHODS {
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "--dry-run",
            "-t",
            "people",
            "--format",
            "json",
            "--rejects",
            rejects.to_str().unwrap(),
            &file,
        ]);
        assert_eq!(run.code, 3, "{method}\n{run:?}");
        assert_eq!(counts(&run.json()), (2, 1, 1), "{method}");
        assert_eq!(db.count("people"), 2, "{method}: nothing written");
        let rejected = std::fs::read_to_string(&rejects).unwrap();
        assert!(rejected.contains("3,age,not an integer: old"), "{rejected}");
    }
    // a missing table is not created; its inferred types are logged
    let missing = db.importer(&["run", "--dry-run", "-t", "fresh", &file]);
    assert_eq!(missing.code, 0, "{missing:?}");
    assert_eq!(db.scalar("SELECT to_regclass('fresh')::text"), None);
}
