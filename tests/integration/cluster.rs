//! A private PostgreSQL cluster for the fault-injection tests: `initdb` into a fresh
//! temporary directory, started by `pg_ctl` on a free port of 127.0.0.1, stopped and removed
//! on drop (even when the test fails). The tests crash it with `pg_ctl stop -m immediate`,
//! which the shared server must never see.
//!
//! The WAL writer is slowed down (`wal_writer_delay` 10 s) so that asynchronous commits stay
//! unflushed for a while: a crash then really loses the last commits a client was told about,
//! as it can on a busy production server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::runtime::Runtime;

/// How long a poll for a condition waits before the test fails.
const POLL_LIMIT: Duration = Duration::from_secs(120);

/// How long a poll pauses between two looks.
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// A PostgreSQL cluster of the test's own.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    runtime: Runtime,
}

impl Cluster {
    /// Creates and starts a cluster (trust authentication, superuser `postgres`).
    pub fn start() -> Cluster {
        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(format!(
            "importer-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("cluster directory is created");
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime starts"),
        };
        as_postgres(
            Command::new("chown").args(["postgres:", path_str(&cluster.dir)]),
            false,
        );
        cluster.postgres_tool(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data()),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        cluster.resume();
        cluster
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) cluster again and waits until it accepts connections; after a
    /// crash this includes its recovery.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_writer_delay=10s -c wal_writer_flush_after=1GB -c max_connections=40",
            self.port,
            path_str(&self.dir)
        );
        let log = self.dir.join("server.log");
        self.postgres_tool(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data()),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "120",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Crashes the cluster: `pg_ctl stop -m immediate`, which loses what the WAL writer has
    /// not written yet (the latest asynchronous commits).
    pub fn crash(&self) {
        self.postgres_tool(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Runs SQL statements (no results).
    pub fn execute(&self, sql: &str) {
        self.runtime.block_on(async {
            let mut connection = self.connect().await;
            sqlx::raw_sql(sql)
                .execute(&mut connection)
                .await
                .unwrap_or_else(|error| panic!("SQL failed: {error}\n{sql}"));
        });
    }

    /// The single value of a one-row, one-column query, as text (on a fresh connection:
    /// the cluster may have restarted since the last one).
    pub fn scalar(&self, sql: &str) -> Option<String> {
        self.try_scalar(sql)
            .unwrap_or_else(|error| panic!("query failed: {error}\n{sql}"))
    }

    /// [`Cluster::scalar`], or the error.
    pub fn try_scalar(&self, sql: &str) -> Result<Option<String>, sqlx::Error> {
        let wrapped = format!("SELECT v::text FROM ({sql}) AS q(v)");
        self.runtime.block_on(async {
            let mut connection = PgConnection::connect(&self.url()).await?;
            let value: Option<String> = sqlx::query_scalar(&wrapped)
                .fetch_one(&mut connection)
                .await?;
            connection.close().await.ok();
            Ok(value)
        })
    }

    /// `SELECT count(*)` of a table.
    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table}"))
            .expect("count is not null")
            .parse()
            .expect("count is a number")
    }

    /// Waits until `sql` (one number) is at least `least`; the query failing (a table not
    /// created yet) counts as not yet. Polls, never sleeps for a fixed time.
    pub fn wait_until_at_least(&self, sql: &str, least: i64) {
        let started = Instant::now();
        loop {
            let value = self
                .try_scalar(sql)
                .ok()
                .flatten()
                .and_then(|text| text.parse::<i64>().ok());
            if value.is_some_and(|value| value >= least) {
                return;
            }
            assert!(
                started.elapsed() < POLL_LIMIT,
                "waited {POLL_LIMIT:?} for {sql} to reach {least} (last: {value:?})"
            );
            std::thread::sleep(POLL_PAUSE);
        }
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .expect("the private cluster accepts connections")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of PostgreSQL's programs as the `postgres` OS user; panics on failure.
    fn postgres_tool(&self, program: &str, args: &[&str]) {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.dir);
        as_postgres(&mut command, true);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // already stopped after a crash that was not followed by a resume: that is fine
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.args([
            "-D",
            path_str(&self.data()),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        run_as_postgres(&mut stop).ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The bin directory of the newest PostgreSQL installed under /usr/lib/postgresql.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's programs are installed under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb and pg_ctl are installed under /usr/lib/postgresql/VERSION/bin")
        .1
}

/// A port of 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port can be bound");
    listener.local_addr().expect("bound address").port()
}

/// Runs `command` as the `postgres` OS user (PostgreSQL refuses to run as root); with
/// `wrap` false, runs it as is (for chown, which needs root).
fn as_postgres(command: &mut Command, wrap: bool) {
    let result = if wrap {
        run_as_postgres(command)
    } else {
        command
            .output()
            .map_err(|error| error.to_string())
            .and_then(check)
    };
    if let Err(error) = result {
        panic!("{command:?} failed: {error}");
    }
}

fn run_as_postgres(command: &mut Command) -> Result<(), String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
    let output = if is_root {
        let mut wrapped = Command::new("runuser");
        wrapped.args(["-u", "postgres", "--"]);
        wrapped.arg(command.get_program()).args(command.get_args());
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.output()
    } else {
        command.output()
    };
    output.map_err(|error| error.to_string()).and_then(check)
}

fn check(output: std::process::Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
