//! The database side: connecting, identifier quoting, reading the target table from the
//! catalog and creating a missing one. `insert` builds INSERTs and `copy` encodes COPY data.
//!
//! Identifiers from files and flags pass through [`quote_ident`], and only there. Values are
//! never formatted into SQL: they are bound, or COPY-encoded.

pub mod chunks;
pub mod conninfo;
pub mod copy;
pub mod insert;
pub mod ledger;
pub mod lock;
pub mod staging;
pub mod violation;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tracing::warn;

use crate::schema::{Column, ColumnType, InferredType};

/// How long a worker waits for a pooled connection before the run fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first pause between two attempts at the first connection; doubled after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The longest pause between two attempts at the first connection.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(4);

/// The least time one connection attempt is given, even when --connect-timeout is nearly over.
const MIN_ATTEMPT_TIME: Duration = Duration::from_secs(1);

/// SQLSTATE cannot_connect_now: "the database system is starting up" (or in recovery).
const CANNOT_CONNECT_NOW: &str = "57P03";

/// SQLSTATE classes whose errors concern the row's data, not the run: 22 data exception,
/// 23 integrity constraint violation, P0 PL/pgSQL raise (a trigger refusing the row).
const ROW_ERROR_CLASSES: [&str; 3] = ["22", "23", "P0"];

/// Quotes an identifier for PostgreSQL: `a"b` -> `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The longest identifier PostgreSQL keeps, in bytes (NAMEDATALEN - 1); it silently cuts
/// longer ones, which would make two different names one table or column.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// How many characters of an over-long name a message quotes.
const QUOTED_NAME_CHARS: usize = 100;

/// Refuses a name PostgreSQL would truncate; `what` says what it names ("table name", ...).
pub fn check_identifier(what: &str, name: &str) -> anyhow::Result<()> {
    if name.len() > MAX_IDENTIFIER_BYTES {
        bail!(
            "{what} {:?} is {} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER_BYTES} bytes",
            conninfo::shorten(name, QUOTED_NAME_CHARS),
            name.len()
        );
    }
    Ok(())
}

/// Refuses column names (folded header cells of a table to create) that PostgreSQL would
/// truncate: the table would get a cut column that no header then matches.
pub fn check_column_names(names: &[String]) -> anyhow::Result<()> {
    for name in names {
        check_identifier("column name", name).context(
            "cannot create the table from this header; shorten the header cell, or create the table first",
        )?;
    }
    Ok(())
}

/// A table name as given: `orders` or `sales.orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when the name was qualified.
    pub schema: Option<String>,
    /// The table itself.
    pub name: String,
}

impl TableName {
    /// Parses `NAME` or `SCHEMA.NAME` (split at the first dot).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema.to_string()), name.to_string()),
            None => (None, text.to_string()),
        };
        if name.is_empty() || schema.as_deref().is_some_and(str::is_empty) {
            bail!(
                "invalid table name {:?}: expected NAME or SCHEMA.NAME",
                conninfo::shorten(text, QUOTED_NAME_CHARS)
            );
        }
        if let Some(schema) = &schema {
            check_identifier("schema name", schema)?;
        }
        check_identifier("table name", &name)?;
        Ok(TableName { schema, name })
    }

    /// The quoted, possibly qualified name for SQL.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(formatter, "{schema}.{}", self.name),
            None => write!(formatter, "{}", self.name),
        }
    }
}

/// The target table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    /// The name as given.
    pub name: TableName,
    /// Its columns in table order.
    pub columns: Vec<Column>,
}

/// Connects to the server `url` names (a `postgres://` URL or a libpq keyword string; `None`
/// when neither --database-url nor DATABASE_URL is set: the `PG*` variables, else the
/// docker-compose.yml server) and returns a pool of up to `max_connections`. The first
/// connection is made here, so that an unreachable server or a wrong password fails with a
/// clear message (which never contains the password). While the server is unreachable or
/// starting up, that first connection is retried with backoff for up to `connect_timeout` (a
/// nightly run should outlast a server restart); a wrong password or database fails at once.
pub async fn connect(
    url: Option<&str>,
    max_connections: u32,
    connect_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let target = conninfo::resolve(url)?;
    let mut options = target.options;
    if options.get_application_name().is_none() {
        options = options.application_name("importer");
    }
    let options = options
        // every chunk commits on its own; waiting for each commit's WAL flush would leave
        // the server idle between chunks, so commits are asynchronous and `flush_commits`
        // makes them all durable, in one synchronous commit, before the stats are printed
        .options([("synchronous_commit", "off")])
        .log_statements(tracing::log::LevelFilter::Trace);
    let server = Server::of(&options, target.is_default);
    connect_first(&options, &server, connect_timeout)
        .await?
        .close()
        .await
        .ok();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// The server a connection goes to, as the messages about it name it.
struct Server {
    /// `HOST:PORT` (or the socket directory).
    address: String,
    /// `HOST:PORT (database "d", user "u")`.
    description: String,
    /// Whether it is the built-in default (the docker-compose.yml server).
    is_default: bool,
}

impl Server {
    fn of(options: &PgConnectOptions, is_default: bool) -> Server {
        let address = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        let description = format!(
            "{address} (database {:?}, user {:?})",
            options.get_database().unwrap_or(options.get_username()),
            options.get_username()
        );
        Server {
            address,
            description,
            is_default,
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.description)
    }
}

/// Opens a new connection with the pool's options, retried like the first one for up to
/// `connect_timeout`: for the end of a run whose connections were lost (a server restart).
pub async fn reconnect(pool: &PgPool, connect_timeout: Duration) -> anyhow::Result<PgConnection> {
    let options = (*pool.connect_options()).clone();
    connect_first(&options, &Server::of(&options, false), connect_timeout).await
}

/// Makes the first connection, retrying connection-level failures (see [`is_transient`])
/// with exponential backoff until `connect_timeout` has passed; 0 means one attempt.
async fn connect_first(
    options: &PgConnectOptions,
    server: &Server,
    connect_timeout: Duration,
) -> anyhow::Result<PgConnection> {
    let started = Instant::now();
    let deadline = started + connect_timeout;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt_count: u32 = 0;
    loop {
        attempt_count += 1;
        let attempt = PgConnection::connect_with(options);
        let result = if connect_timeout.is_zero() {
            attempt.await
        } else {
            // a server that drops packets would hold one attempt for the OS's TCP timeout
            let bound = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_ATTEMPT_TIME);
            tokio::time::timeout(bound, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer from the server",
                    )))
                })
        };
        let error = match result {
            Ok(connection) => return Ok(connection),
            Err(error) if is_transient(&error) => error,
            Err(error) => {
                let error = connection_error(error, server);
                return Err(for_server(format!("{error:#}"), server));
            }
        };
        let now = Instant::now();
        if now >= deadline {
            let tried = if connect_timeout.is_zero() {
                "tried once (--connect-timeout 0)".to_string()
            } else {
                format!(
                    "gave up after {:.1} s and {attempt_count} attempt{} (--connect-timeout {})",
                    now.duration_since(started).as_secs_f64(),
                    if attempt_count == 1 { "" } else { "s" },
                    connect_timeout.as_secs()
                )
            };
            let error = connection_error(error, server);
            return Err(for_server(format!("{error:#}; {tried}"), server));
        }
        if attempt_count == 1 {
            announce_retrying(server, &error, connect_timeout);
        }
        let pause = delay.min(deadline - now);
        warn!(
            server = %server,
            attempt = attempt_count,
            retry_in_seconds = pause.as_millis() as f64 / 1000.0,
            error = %error_message(&error),
            "cannot connect to PostgreSQL yet; retrying"
        );
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Tells a person at a terminal, as soon as the first attempt has failed, that the run is not
/// stuck but retrying, and for how long; whatever the log level, since they are waiting on it.
/// Without a terminal the retry log lines say the same to the log.
#[allow(clippy::print_stderr)]
fn announce_retrying(server: &Server, error: &sqlx::Error, connect_timeout: Duration) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "cannot connect to PostgreSQL at {} ({}); retrying for up to {} s (--connect-timeout {}), Ctrl-C to stop",
            server.address,
            error_message(error),
            connect_timeout.as_secs(),
            connect_timeout.as_secs()
        );
    }
}

/// Whether a failed connection attempt may succeed later: an I/O error (refused, reset,
/// unreachable, timed out) or a server that is starting up. Not: authentication, a missing
/// database, TLS.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => !is_tls_failure(io),
        sqlx::Error::Database(database) => database.code().as_deref() == Some(CANNOT_CONNECT_NOW),
        _ => false,
    }
}

/// Whether an I/O error of a connection attempt is the TLS handshake refusing the server
/// (sqlx passes rustls' certificate errors on as invalid data): retrying cannot help.
fn is_tls_failure(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::InvalidData
}

/// What the error of a connection to the built-in default server adds: that it is the
/// default, and how to name another.
const DEFAULT_SERVER_HINT: &str = "no --database-url, DATABASE_URL or PG* variable (PGHOST, PGPORT, PGUSER, PGDATABASE, ...) is set, so this is the built-in default, the docker-compose.yml server: start it with `docker compose up -d --wait`, or point --database-url or DATABASE_URL (or the PG* variables) at your server";

/// `message` about a connection to `server`, with what to do about the built-in default
/// when it is the one tried.
fn for_server(message: String, server: &Server) -> anyhow::Error {
    match server.is_default {
        true => anyhow::anyhow!("{message}; {DEFAULT_SERVER_HINT}"),
        false => anyhow::anyhow!(message),
    }
}

fn connection_error(error: sqlx::Error, server: &Server) -> anyhow::Error {
    const TLS_HINT: &str = "sslmode require, verify-ca and verify-full need a server with TLS, and verify-ca and verify-full a certificate the client trusts (sslrootcert=PATH)";
    match &error {
        sqlx::Error::Database(database) if database.code().as_deref() == Some("28P01") => {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {server}: password authentication failed; check the password: it is taken from --database-url / DATABASE_URL, else PGPASSWORD, else ~/.pgpass (or PGPASSFILE)"
            )
        }
        sqlx::Error::Database(database) => {
            anyhow::anyhow!(
                "cannot connect to PostgreSQL at {server}: {}",
                database.message()
            )
        }
        sqlx::Error::Io(io) if is_tls_failure(io) => anyhow::anyhow!(
            "cannot connect to PostgreSQL at {server}: TLS failed ({io}); {TLS_HINT}"
        ),
        sqlx::Error::Io(io) if server.is_default => {
            anyhow::anyhow!("cannot connect to PostgreSQL at {server}: {io}")
        }
        sqlx::Error::Io(io) => anyhow::anyhow!(
            "cannot connect to PostgreSQL at {server}: {io}; is a server running on {} and accepting TCP connections?",
            server.address
        ),
        sqlx::Error::Tls(tls) => anyhow::anyhow!(
            "cannot connect to PostgreSQL at {server}: TLS failed ({tls}); {TLS_HINT}"
        ),
        other => anyhow::anyhow!("cannot connect to PostgreSQL at {server}: {other}"),
    }
}

/// Waits until every commit made so far on this server is durable: one synchronous commit
/// flushes the write-ahead log up to its own record, and so past every earlier commit,
/// whichever session made it.
pub async fn flush_commits(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("BEGIN; SET LOCAL synchronous_commit TO on; SELECT txid_current(); COMMIT;")
        .execute(pool)
        .await
        .context("cannot confirm that the rows written are durable")?;
    Ok(())
}

/// Runs one statement whose result is not needed (DDL); `what` names it for the error.
pub(crate) async fn execute(
    pool: &PgPool,
    sql: &str,
    what: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    sqlx::query(sql).execute(pool).await.with_context(what)?;
    Ok(())
}

/// Whether a server error is about the row's data (reject the row) rather than the run.
pub fn is_row_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            ROW_ERROR_CLASSES
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// The column a server error names, if any (PostgreSQL sets it for NOT NULL violations).
pub fn error_column(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.column())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The server's own message for an error, without sqlx's prefix.
pub fn error_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database.message().to_string(),
        other => other.to_string(),
    }
}

/// Whether the schema `name` exists.
pub async fn schema_exists(pool: &PgPool, name: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
        .bind(quote_ident(name))
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot look up schema {name:?}"))
}

/// Reads the table's columns from the catalog; `None` when the table does not exist.
pub async fn load_table(pool: &PgPool, name: &TableName) -> anyhow::Result<Option<TargetTable>> {
    let oid: Option<sqlx::postgres::types::Oid> = sqlx::query_scalar("SELECT to_regclass($1)::oid")
        .bind(name.quoted())
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot look up table {name}"))?;
    let Some(oid) = oid else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT a.attname::text AS name, t.typname::text AS type_name,
                format_type(a.atttypid, a.atttypmod) AS sql_type, a.attnotnull AS not_null,
                (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default,
                pg_get_expr(d.adbin, d.adrelid) AS default_sql
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the columns of table {name}"))?;
    let columns = rows
        .iter()
        .map(|row| {
            let type_name: String = row.try_get("type_name")?;
            Ok(Column {
                name: row.try_get("name")?,
                column_type: ColumnType::from_type_name(&type_name),
                sql_type: row.try_get("sql_type")?,
                not_null: row.try_get("not_null")?,
                has_default: row.try_get("has_default")?,
                default_sql: row.try_get("default_sql")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .with_context(|| format!("cannot read the columns of table {name}"))?;
    Ok(Some(TargetTable {
        name: name.clone(),
        columns,
    }))
}

/// Creates the table with one column per folded header name and its inferred type.
pub async fn create_table(
    pool: &PgPool,
    name: &TableName,
    column_names: &[String],
    column_types: &[InferredType],
) -> anyhow::Result<()> {
    check_column_names(column_names)?;
    let sql = create_table_sql(name, column_names, column_types);
    execute(pool, &sql, || format!("cannot create table {name}")).await?;
    Ok(())
}

/// The statement [`create_table`] executes (a dry run prints it instead).
pub fn create_table_sql(
    name: &TableName,
    column_names: &[String],
    column_types: &[InferredType],
) -> String {
    let definitions: Vec<String> = column_names
        .iter()
        .zip(column_types)
        .map(|(column, inferred)| format!("{} {}", quote_ident(column), inferred.sql_type()))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        name.quoted(),
        definitions.join(", ")
    )
}

/// Upsert's `ON CONFLICT` clause for the key columns of `columns` (the sheet's columns):
/// fatal unless a unique index or primary key covers exactly the key columns.
pub async fn conflict_clause(
    pool: &PgPool,
    table: &TableName,
    columns: &[Column],
    key_positions: &[usize],
) -> anyhow::Result<String> {
    let keys: Vec<String> = key_positions
        .iter()
        .map(|&position| columns[position].name.clone())
        .collect();
    let has_unique_index: bool = sqlx::query_scalar(
        "SELECT EXISTS (
            SELECT 1 FROM pg_index i
             WHERE i.indrelid = to_regclass($1) AND i.indisunique
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND i.indnkeyatts = cardinality($2::text[])
               AND ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts - 1]))
                   @> $2::text[])",
    )
    .bind(table.quoted())
    .bind(&keys)
    .fetch_one(pool)
    .await
    .with_context(|| format!("cannot read the unique indexes of table {table}"))?;
    let key_list: Vec<String> = keys.iter().map(|key| quote_ident(key)).collect();
    let key_list = key_list.join(", ");
    if !has_unique_index {
        bail!(
            "--mode upsert needs a unique index or primary key on exactly ({key_list}) of table {table}; create one with: CREATE UNIQUE INDEX ON {} ({key_list})",
            table.quoted()
        );
    }
    let updates: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(position, _)| !key_positions.contains(position))
        .map(|(_, column)| {
            let name = quote_ident(&column.name);
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    Ok(if updates.is_empty() {
        format!("ON CONFLICT ({key_list}) DO NOTHING")
    } else {
        format!(
            "ON CONFLICT ({key_list}) DO UPDATE SET {}",
            updates.join(", ")
        )
    })
}

/// Creates `copy` shaped like `target`, with what `including` names (`INCLUDING ALL`, ...).
pub async fn create_table_like(
    pool: &PgPool,
    target: &TableName,
    copy: &TableName,
    including: &str,
) -> anyhow::Result<()> {
    let sql = format!(
        "CREATE TABLE {} (LIKE {} {including})",
        copy.quoted(),
        target.quoted()
    );
    execute(pool, &sql, || {
        format!("cannot create table {copy} like {target}")
    })
    .await
}

/// Drops a table if it exists.
pub async fn drop_table(pool: &PgPool, name: &TableName) -> anyhow::Result<()> {
    let sql = format!("DROP TABLE IF EXISTS {}", name.quoted());
    execute(pool, &sql, || format!("cannot drop table {name}")).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_63_bytes_are_refused_counting_bytes() {
        let at_limit = "a".repeat(63);
        assert!(TableName::parse(&at_limit).is_ok());
        let message = TableName::parse(&"a".repeat(64)).unwrap_err().to_string();
        assert!(
            message.contains("table name") && message.contains("64 bytes"),
            "{message}"
        );
        // 32 two-byte characters: 32 characters but 64 bytes
        let umlauts = "ä".repeat(32);
        let message = TableName::parse(&format!("{umlauts}.t"))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("schema name"), "{message}");
        let long = "x".repeat(300);
        let message = check_identifier("column name", &long)
            .unwrap_err()
            .to_string();
        assert!(message.len() < 200, "the name is cut: {message}");
    }

    #[test]
    fn identifiers_are_quoted_and_names_split_at_the_first_dot() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        let qualified = TableName::parse("Sales.Orders 2024").unwrap();
        assert_eq!(qualified.quoted(), r#""Sales"."Orders 2024""#);
        assert_eq!(qualified.to_string(), "Sales.Orders 2024");
        assert_eq!(TableName::parse("t").unwrap().quoted(), r#""t""#);
        assert!(TableName::parse("sales.").is_err());
        assert!(TableName::parse(".t").is_err());
    }
}
