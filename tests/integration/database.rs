//! The database side of a run: how `importer` connects (URL, libpq keyword string, PG*
//! variables, sslmode, the hint when the server is down), the run lock's documented key,
//! identifier limits, header mapping precedence, and `--mode replace` with foreign keys,
//! index builds and `--swap-timeout`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use importer::sink::lock::table_lock_key;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

use crate::util::{
    TempDir, TestDb, fatal_error_line, importer_command, run_importer, run_importer_with_env,
};

/// Writes `text` as a CSV file in `dir` and returns its path as a string.
fn csv(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The parts of the test database's URL, for PG* variables and keyword strings.
struct Parts {
    host: String,
    port: String,
    user: String,
    database: String,
    password: Option<String>,
}

fn parts(db: &TestDb) -> Parts {
    let options = PgConnectOptions::from_str(&db.url).expect("the test URL parses");
    // the URL's own password, not one sqlx may have found in the environment
    let password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password.to_string());
    Parts {
        host: options.get_host().to_string(),
        port: options.get_port().to_string(),
        user: options.get_username().to_string(),
        database: db.name.clone(),
        password,
    }
}

/// A session of its own on the test database, as another client (psql, a report) would hold.
struct Session {
    runtime: Runtime,
    connection: PgConnection,
}

impl Session {
    fn open(url: &str) -> Session {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime starts");
        let connection = runtime
            .block_on(PgConnection::connect(url))
            .expect("the test session connects");
        Session {
            runtime,
            connection,
        }
    }

    /// Runs SQL statements (no results).
    fn execute(&mut self, sql: &str) {
        self.runtime
            .block_on(sqlx::raw_sql(sql).execute(&mut self.connection))
            .unwrap_or_else(|error| panic!("SQL failed: {error}\n{sql}"));
    }

    /// A one-row, one-column bigint query.
    fn bigint(&mut self, sql: &str) -> i64 {
        self.runtime
            .block_on(sqlx::query_scalar(sql).fetch_one(&mut self.connection))
            .unwrap_or_else(|error| panic!("query failed: {error}\n{sql}"))
    }
}

const PEOPLE_CSV: &str = "name,city\nAnn,Oslo\nBob,Rome\n";

#[test]
fn pg_environment_variables_alone_are_enough() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let parts = parts(&db);
    let mut environment = vec![
        ("PGHOST", parts.host.as_str()),
        ("PGPORT", parts.port.as_str()),
        ("PGUSER", parts.user.as_str()),
        ("PGDATABASE", parts.database.as_str()),
    ];
    if let Some(password) = &parts.password {
        environment.push(("PGPASSWORD", password));
    }
    let run = run_importer_with_env(&["run", "-t", "people", &file], None, &environment);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("people"), 2);
}

#[test]
fn a_libpq_keyword_string_is_accepted_as_the_database_url() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let parts = parts(&db);
    let mut keywords = format!(
        "host={} port = {} user='{}' dbname={} application_name='nightly load'",
        parts.host, parts.port, parts.user, parts.database
    );
    if let Some(password) = &parts.password {
        keywords.push_str(&format!(" password='{}'", password.replace('\'', "\\'")));
    }
    let run = run_importer(
        &["run", "-t", "people", "--database-url", &keywords, &file],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("people"), 2);
    // and as DATABASE_URL
    let run = run_importer(&["run", "-t", "people", &file], Some(&keywords));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(db.count("people"), 4);
}

#[test]
fn a_url_of_another_database_system_is_refused_with_one_line() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let run = run_importer(
        &[
            "run",
            "-t",
            "people",
            "--database-url",
            "mysql://root:secret@127.0.0.1/x",
            "--connect-timeout",
            "0",
            &file,
        ],
        None,
    );
    let line = fatal_error_line(&run);
    assert!(
        line.contains("\"mysql\"") && line.contains("postgres://"),
        "{line}"
    );
    assert!(!line.contains("secret"), "no password in {line}");
    let unknown = run_importer(
        &[
            "run",
            "-t",
            "people",
            "--database-url",
            "host=127.0.0.1 colour=blue",
            &file,
        ],
        None,
    );
    let line = fatal_error_line(&unknown);
    assert!(line.contains("unknown keyword \"colour\""), "{line}");
    assert!(
        db.rows("SELECT 1 FROM pg_tables WHERE tablename = 'people'")
            .is_empty()
    );
}

#[test]
fn sslmode_of_a_keyword_string_or_url_is_honoured() {
    let db = TestDb::new();
    // each row records whether the session that wrote it is encrypted
    db.execute(
        "CREATE FUNCTION session_tls() RETURNS boolean LANGUAGE sql
            AS 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()';
         CREATE TABLE people (name text, city text, tls boolean DEFAULT session_tls());",
    );
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let parts = parts(&db);
    let keywords = |sslmode: &str| {
        let mut text = format!(
            "host={} port={} user={} dbname={} sslmode={sslmode}",
            parts.host, parts.port, parts.user, parts.database
        );
        if let Some(password) = &parts.password {
            text.push_str(&format!(" password='{password}'"));
        }
        text
    };
    let server_has_tls = db.scalar("SELECT current_setting('ssl')").as_deref() == Some("on");
    for (sslmode, encrypted) in [("disable", false), ("require", true)] {
        db.execute("TRUNCATE people");
        let url = keywords(sslmode);
        let run = run_importer(
            &["run", "-t", "people", "--database-url", &url, &file],
            None,
        );
        if encrypted && !server_has_tls {
            let line = fatal_error_line(&run);
            assert!(line.contains("TLS") && line.contains("sslmode"), "{line}");
            continue;
        }
        assert_eq!(run.code, 0, "sslmode={sslmode}\n{run:?}");
        assert_eq!(
            db.rows("SELECT DISTINCT tls FROM people"),
            vec![vec![Some(encrypted.to_string())]],
            "sslmode={sslmode}"
        );
    }
    // verify-full needs a certificate the client trusts for that host name: the local
    // cluster's (if any) is not one, so the connection must fail rather than go unverified
    for url in [
        keywords("verify-full"),
        format!("{}?sslmode=verify-full", db.url),
    ] {
        let run = run_importer(
            &["run", "-t", "people", "--database-url", &url, &file],
            None,
        );
        let line = fatal_error_line(&run);
        assert!(line.contains("TLS") && line.contains("sslmode"), "{line}");
    }
}

#[test]
fn a_down_server_of_an_explicit_url_is_named_instead_of_docker_compose() {
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    // port 1 on the loopback: nothing listens there, the connection is refused at once
    let run = run_importer(
        &[
            "run",
            "--database-url",
            "postgres://loader@127.0.0.1:1/warehouse",
            "--connect-timeout",
            "0",
            &file,
        ],
        None,
    );
    let line = fatal_error_line(&run);
    assert!(
        line.contains("is a server running on 127.0.0.1:1 and accepting TCP connections?"),
        "{line}"
    );
    assert!(!line.contains("docker compose"), "{line}");
}

#[test]
fn the_built_in_default_server_says_it_is_the_default_and_how_to_point_elsewhere() {
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    // no DATABASE_URL and no PG* variable; in a network namespace of its own the default
    // server cannot answer, whatever runs on this machine
    let mut command = std::process::Command::new("unshare");
    command
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_importer"))
        .args(["run", "--connect-timeout", "0", &file])
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL");
    for name in importer::sink::conninfo::PG_ENVIRONMENT {
        command.env_remove(name);
    }
    let output = command
        .output()
        .expect("unshare (util-linux) runs; this test needs it, as root or with CAP_SYS_ADMIN");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("unshare: "),
        "this test needs `unshare --net` (util-linux, run as root): {stderr}"
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("one error line: {stderr}"));
    for part in [
        "localhost:5432 (database \"importer\", user \"importer\")",
        "no --database-url, DATABASE_URL or PG* variable",
        "the built-in default, the docker-compose.yml server",
        "docker compose up -d --wait",
        "point --database-url or DATABASE_URL (or the PG* variables) at your server",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
}

#[test]
fn a_failed_password_says_where_the_password_comes_from() {
    let cluster = crate::cluster::Cluster::start();
    let hba_file = cluster
        .scalar("SELECT current_setting('hba_file')")
        .expect("hba_file");
    // the test's superuser keeps trust; every other user needs a password
    cluster.execute(&format!(
        "CREATE ROLE loader LOGIN PASSWORD 'right';
         COPY (VALUES ('local all all trust'), ('host all postgres 127.0.0.1/32 trust'),
                      ('host all all 127.0.0.1/32 scram-sha-256'))
           TO '{}';
         SELECT pg_reload_conf();",
        hba_file.replace('\'', "''")
    ));
    let port = cluster
        .url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(port, _)| port.to_string())
        .expect("the cluster URL has a port");
    let wrong = format!("postgres://loader:wrong@127.0.0.1:{port}/postgres");
    // the reload is signalled, not awaited: wait until passwords are asked for
    let runtime = Runtime::new().expect("runtime");
    let started = Instant::now();
    while runtime.block_on(PgConnection::connect(&wrong)).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "pg_hba.conf is reloaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let home = dir.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.to_str().unwrap();
    let no_password = format!("postgres://loader@127.0.0.1:{port}/postgres");
    for url in [&wrong, &no_password] {
        // a HOME without .pgpass, so that only the URL speaks
        let run = run_importer_with_env(
            &[
                "run",
                "--database-url",
                url,
                "--connect-timeout",
                "0",
                &file,
            ],
            None,
            &[("HOME", home)],
        );
        let line = fatal_error_line(&run);
        assert!(
            line.contains("password authentication failed"),
            "{url}: {line}"
        );
        assert!(
            line.contains("PGPASSWORD") && line.contains("~/.pgpass"),
            "{url}: {line}"
        );
        assert!(!line.contains("wrong"), "no password in the error: {line}");
    }
}

/// README's SQL for the run-lock key of `schema.table`, with the names as SQL literals.
fn lock_key_sql(schema: &str, table: &str) -> String {
    let literal = |name: &str| format!("'{}'", name.replace('\'', "''"));
    format!(
        r#"SELECT ('x' || left(encode(sha256(convert_to('importer table "' || replace({}, '"', '""') || '"."' || replace({}, '"', '""') || '"', 'UTF8')), 'hex'), 16))::bit(64)::bigint"#,
        literal(schema),
        literal(table)
    )
}

#[test]
fn the_documented_lock_key_sql_matches_and_holds_a_real_run_off() {
    let db = TestDb::new();
    // README's copy-paste form for public.orders, verbatim
    let readme = r#"SELECT ('x' || left(encode(sha256(convert_to('importer table "public"."orders"','UTF8')),'hex'),16))::bit(64)::bigint"#;
    let mut session = Session::open(&db.url);
    assert_eq!(session.bigint(readme), table_lock_key("public", "orders"));
    for (schema, table) in [("public", "orders"), ("Sales 2024", r#"Q3 "final" o'k"#)] {
        assert_eq!(
            session.bigint(&lock_key_sql(schema, table)),
            table_lock_key(schema, table),
            "{schema}.{table}"
        );
    }
    db.execute(
        r#"CREATE SCHEMA "Sales 2024"; CREATE TABLE "Sales 2024"."Q3 ""final"" o'k" (name text, city text)"#,
    );
    let dir = TempDir::new();
    let file = csv(&dir, "orders.csv", PEOPLE_CSV);
    // a script holds the table off with the expression, as README tells it to
    session.execute(&format!(
        "SELECT pg_advisory_lock(({}))",
        lock_key_sql("Sales 2024", r#"Q3 "final" o'k"#)
    ));
    let run = db.importer(&["run", "-t", r#"Sales 2024.Q3 "final" o'k"#, &file]);
    let line = fatal_error_line(&run);
    assert!(line.contains("is being loaded by another run"), "{line}");
    session.execute("SELECT pg_advisory_unlock_all()");
    let run = db.importer(&["run", "-t", r#"Sales 2024.Q3 "final" o'k"#, &file]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn names_past_63_bytes_are_refused_before_anything_is_created_or_locked() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    // two 64-byte names that PostgreSQL would both cut to the same 63 bytes
    let shared = "t".repeat(63);
    for table in [format!("{shared}a"), format!("{shared}b")] {
        let run = db.importer(&["run", "-t", &table, &file]);
        let line = fatal_error_line(&run);
        assert!(
            line.contains("table name")
                && line.contains("is 64 bytes long; PostgreSQL names are at most 63 bytes"),
            "{line}"
        );
    }
    let run = db.importer(&["run", "-t", &format!("{}.people", "s".repeat(70)), &file]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("schema name") && line.contains("70 bytes"),
        "{line}"
    );
    // a 70-byte header with table creation: refused, and no table is left
    let header = "h".repeat(70);
    let long_header = csv(&dir, "long.csv", &format!("name,{header}\nAnn,1\n"));
    let run = db.importer(&["run", "-t", "created", &long_header]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("column name") && line.contains("70 bytes"),
        "{line}"
    );
    let run = db.importer(&[
        "run",
        "-t",
        "people",
        "--mode",
        "upsert",
        "--key",
        &"k".repeat(64),
        &file,
    ]);
    let line = fatal_error_line(&run);
    assert!(line.contains("--key column name"), "{line}");
    assert!(
        db.rows("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")
            .is_empty(),
        "nothing was created"
    );
    assert!(
        db.rows("SELECT 1 FROM pg_namespace WHERE nspname = 'importer'")
            .is_empty(),
        "no run reached the ledger (or the lock)"
    );
}

#[test]
fn a_header_prefers_the_exact_column_and_two_folded_matches_are_fatal() {
    let db = TestDb::new();
    db.execute(r#"CREATE TABLE contacts ("Phone Number" text, "PHONE-NUMBER" text, name text)"#);
    let dir = TempDir::new();
    let exact = csv(&dir, "exact.csv", "name,PHONE-NUMBER\nAnn,555\n");
    let run = db.importer(&["run", "-t", "contacts", &exact]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        db.rows(r#"SELECT "Phone Number", "PHONE-NUMBER" FROM contacts"#),
        vec![vec![None, Some("555".into())]]
    );
    let ambiguous = csv(&dir, "ambiguous.csv", "name,phone number\nBob,777\n");
    let run = db.importer(&["run", "-t", "contacts", &ambiguous]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains("matches two columns")
            && line.contains(r#""Phone Number""#)
            && line.contains(r#""PHONE-NUMBER""#),
        "{line}"
    );
    assert_eq!(db.count("contacts"), 1);
}

const CUSTOMERS: &str = "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text UNIQUE);
     INSERT INTO customers VALUES (1, 'Ann', 'ann@x'), (2, 'Bob', 'bob@x'), (3, 'Cid', 'cid@x');
     CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers (id));
     INSERT INTO orders VALUES (10, 1), (11, 2), (12, NULL);
     CREATE TABLE invoices (id integer PRIMARY KEY, customer_email text REFERENCES customers (email) ON DELETE CASCADE);
     INSERT INTO invoices VALUES (20, 'ann@x');";

const CUSTOMER_ROWS: &str = "SELECT id, name, email FROM customers ORDER BY id";

#[test]
fn replace_of_a_referenced_table_keeps_the_rows_that_reference_it() {
    let dir = TempDir::new();
    // keeps 1 (orders, invoices) and 2 (orders), renames 2, drops 3, adds 4
    let file = csv(
        &dir,
        "customers.csv",
        "id,name,email\n1,Ann,ann@x\n2,Bobby,bob@x\n4,Dee,dee@x\n",
    );
    for method in ["batch", "copy"] {
        let db = TestDb::new();
        db.execute(CUSTOMERS);
        let run = db.importer(&[
            "run",
            "-m",
            method,
            "--mode",
            "replace",
            "-t",
            "customers",
            &file,
        ]);
        assert_eq!(run.code, 0, "{method}\n{run:?}");
        assert_eq!(
            db.rows(CUSTOMER_ROWS),
            vec![
                vec![Some("1".into()), Some("Ann".into()), Some("ann@x".into())],
                vec![Some("2".into()), Some("Bobby".into()), Some("bob@x".into())],
                vec![Some("4".into()), Some("Dee".into()), Some("dee@x".into())],
            ],
            "{method}: exactly the file's rows"
        );
        assert_eq!(
            db.rows("SELECT id, customer_id FROM orders ORDER BY id"),
            vec![
                vec![Some("10".into()), Some("1".into())],
                vec![Some("11".into()), Some("2".into())],
                vec![Some("12".into()), None],
            ],
            "{method}: the referencing rows are intact"
        );
        assert_eq!(db.count("invoices"), 1, "{method}: nothing cascaded");
    }
}

#[test]
fn replace_that_drops_a_referenced_key_fails_naming_it_and_leaves_the_table() {
    let dir = TempDir::new();
    let db = TestDb::new();
    db.execute(CUSTOMERS);
    let before = db.rows(CUSTOMER_ROWS);
    // drops id 1, which orders 10 references
    let drops_id = csv(
        &dir,
        "drops_id.csv",
        "id,name,email\n2,Bob,bob@x\n3,Cid,cid@x\n5,Eve,ann@x\n",
    );
    let run = db.importer(&["run", "--mode", "replace", "-t", "customers", &drops_id]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains(
            r#"foreign key "orders_customer_id_fkey" of table orders references (id) = (1)"#
        ) && line.contains("the table is unchanged"),
        "{line}"
    );
    assert_eq!(db.rows(CUSTOMER_ROWS), before);
    // keeps every id but drops the e-mail an ON DELETE CASCADE key references: refused too,
    // rather than cascading the invoice away
    let drops_email = csv(
        &dir,
        "drops_email.csv",
        "id,name,email\n1,Ann,ann@y\n2,Bob,bob@x\n3,Cid,cid@x\n",
    );
    let run = db.importer(&["run", "--mode", "replace", "-t", "customers", &drops_email]);
    let line = fatal_error_line(&run);
    assert!(
        line.contains(r#"foreign key "invoices_customer_email_fkey" of table invoices references (email) = (ann@x)"#),
        "{line}"
    );
    assert_eq!(db.rows(CUSTOMER_ROWS), before);
    assert_eq!(db.count("invoices"), 1);
    assert_eq!(db.count("orders"), 3);
    assert!(
        db.rows("SELECT 1 FROM pg_tables WHERE tablename LIKE 'importer_staging_%'")
            .is_empty(),
        "the staging table is dropped"
    );
}

#[test]
fn replace_logs_each_index_build_at_info() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE people (name text, city text);
         CREATE INDEX people_city_idx ON people (city);
         CREATE INDEX people_name_idx ON people (lower(name));",
    );
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    let run = run_importer_with_env(
        &["run", "--mode", "replace", "-t", "people", &file],
        Some(&db.url),
        &[("RUST_LOG", "info")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    for index in ["people_city_idx", "people_name_idx"] {
        assert!(
            run.stderr.lines().any(|line| line.contains(" INFO ")
                && line.contains("building index")
                && line.contains(&format!("index={index}"))),
            "{index}\n{run:?}"
        );
    }
    assert!(!run.stderr.contains("slow statement"), "{run:?}");
    assert_eq!(db.count("people"), 2);
}

#[test]
fn replace_gives_up_on_a_busy_table_in_bounded_time_without_stalling_readers() {
    let db = TestDb::new();
    db.execute(
        "CREATE TABLE people (name text, city text); INSERT INTO people VALUES ('Old', 'Town');",
    );
    let dir = TempDir::new();
    let file = csv(&dir, "people.csv", PEOPLE_CSV);
    // a long report: an open transaction that has read the table (ACCESS SHARE, kept)
    let mut report = Session::open(&db.url);
    report.execute("BEGIN; SELECT count(*) FROM people;");
    let started = Instant::now();
    let child = importer_command(
        &[
            "run",
            "--mode",
            "replace",
            "--swap-timeout",
            "3",
            "-t",
            "people",
            &file,
        ],
        Some(&db.url),
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("the importer starts");
    // wait (bounded) until the swap queues for its lock
    let mut reader = Session::open(&db.url);
    let queued =
        "SELECT count(*) FROM pg_locks WHERE relation = 'people'::regclass AND NOT granted";
    while reader.bigint(queued) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the swap never queued for its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // a new reader arriving while the swap waits gets through within one short lock wait
    reader.execute("SET statement_timeout = '5s'");
    let select_started = Instant::now();
    assert_eq!(reader.bigint("SELECT count(*) FROM people"), 1);
    assert!(
        select_started.elapsed() < Duration::from_millis(2500),
        "a reader waited {:?} behind the swap",
        select_started.elapsed()
    );
    let output = child.wait_with_output().expect("the importer ends");
    let run = crate::util::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let elapsed = started.elapsed();
    let line = fatal_error_line(&run);
    assert!(
        line.contains("table people stayed as it was")
            && line.contains("--swap-timeout 3")
            && line.contains("AccessShareLock"),
        "{line}"
    );
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    report.execute("COMMIT");
    assert_eq!(
        db.rows("SELECT name FROM people"),
        vec![vec![Some("Old".into())]],
        "the old rows stay"
    );
}
