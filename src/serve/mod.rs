//! `importer serve`: the upload service. An HTTP front end (axum, tower-http) over the same
//! import core as `importer run` ([`crate::import::run`]): a request's upload is streamed to a
//! temporary file, imported with the service's run options (the query may override some),
//! and answered with the stats; every import is recorded in the run ledger, so
//! `GET /imports/{id}` outlives the process.
//!
//! - `routes`: the router and handlers (what each endpoint answers);
//! - `upload`: streaming a multipart upload to disk, size limit, type by content;
//! - `connections`: the accept loop, header timeout, connection limit (slow clients);
//! - `auth`: the bearer token and the `--allow-table` patterns;
//! - `imports`: running imports as owned tasks, their live progress, rejects files;
//! - `metrics`: the Prometheus metrics; `error`: the `{"error": ...}` responses.
//!
//! Shutdown (SIGTERM, Ctrl-C): stop accepting connections, give running imports
//! `--shutdown-grace`, then cancel the rest through their tokens (the ledger records them
//! `cancelled`), wait for every task, give open connections a few seconds more, and return.
//! A second signal ends the process at once (`cmd::serve`).

mod auth;
mod connections;
mod error;
mod imports;
mod metrics;
mod routes;
mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::is_loopback_address;
pub use connections::{ConnectionLimits, HEADER_TIMEOUT, MAX_CONNECTIONS, REFUSALS_AT_ONCE};
pub use imports::Retention;
pub use routes::REJECTS_SHOWN;

use crate::import::ImportOptions;
use crate::sink::ledger::Ledger;

/// How long open connections may take to end once the running imports were cancelled.
const SERVER_DRAIN: Duration = Duration::from_secs(5);

/// Everything the service is started with: plain data (`cmd::serve` builds it from flags).
#[derive(Clone)]
pub struct ServeConfig {
    /// Where to listen (port 0: any free port, logged).
    pub listen: SocketAddr,
    /// Directory of the uploads in progress and the kept rejects files.
    pub uploads: PathBuf,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Imports running at once.
    pub max_concurrent_imports: usize,
    /// The `--allow-table` patterns (never empty).
    pub allowed_tables: Vec<String>,
    /// The table an upload goes to when the request names none.
    pub default_table: Option<String>,
    /// The bearer token, if one is required.
    pub token: Option<String>,
    /// How long running imports may go on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Longest request.
    pub request_timeout: Duration,
    /// The header timeout and the most connections open at once.
    pub connections: ConnectionLimits,
    /// How rejects files are kept.
    pub retention: Retention,
    /// The run options every import starts from (`file` is replaced by the upload's).
    pub defaults: ImportOptions,
    /// The run ledger (the service always records its imports).
    pub ledger_schema: String,
}

/// The state every handler shares.
pub(crate) struct AppState {
    config: RuntimeConfig,
    pool: PgPool,
    ledger: Ledger,
    imports: imports::Imports,
    metrics: Arc<metrics::Metrics>,
    /// Cancelled when the shutdown grace is over: running imports and uploads still
    /// streaming stop then.
    cancel_imports: CancellationToken,
}

/// The config as the handlers use it (the token already digested).
struct RuntimeConfig {
    uploads: PathBuf,
    max_upload_bytes: u64,
    allowed_tables: Vec<String>,
    default_table: Option<String>,
    token: Option<auth::Token>,
    request_timeout: Duration,
    defaults: ImportOptions,
}

/// Runs the service until `shutdown` resolves (a signal), then shuts down as the module
/// doc says. Fails before listening when the address, the uploads directory or the token do
/// not allow a safe start.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.allowed_tables.is_empty() {
        anyhow::bail!("no table is allowed: give a default table or at least one table pattern");
    }
    if config.token.is_none() && !is_loopback_address(&config.listen) {
        anyhow::bail!(
            "refusing to listen on {} without a token: beyond loopback every request must carry one; set IMPORTER_TOKEN or pass --token-file",
            config.listen
        );
    }
    std::fs::create_dir_all(&config.uploads).with_context(|| {
        format!(
            "cannot create the uploads directory {}",
            config.uploads.display()
        )
    })?;
    let pool = service_pool(config.defaults.database_url.as_deref())?;
    let metrics = Arc::new(metrics::Metrics::new());
    let cancel_imports = CancellationToken::new();
    let state = Arc::new(AppState {
        imports: imports::Imports::new(
            config.max_concurrent_imports,
            config.uploads.clone(),
            config.retention,
            Arc::clone(&metrics),
            cancel_imports.clone(),
        ),
        config: RuntimeConfig {
            uploads: config.uploads.clone(),
            max_upload_bytes: config.max_upload_bytes,
            allowed_tables: config.allowed_tables.clone(),
            default_table: config.default_table.clone(),
            token: config.token.as_deref().map(auth::Token::new),
            request_timeout: config.request_timeout,
            defaults: config.defaults.clone(),
        },
        pool: pool.clone(),
        ledger: Ledger::new(config.ledger_schema.clone()),
        metrics,
        cancel_imports: cancel_imports.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the address listened on")?;
    // only once the port is ours: a second instance started by mistake on the same
    // directory fails to bind above and leaves the running one's files alone
    remove_leftover_uploads(&config.uploads);
    imports::prune_rejects(&config.uploads, config.retention);
    info!(
        address = %address,
        max_connections = config.connections.max_connections,
        header_timeout_seconds = config.connections.header_timeout.as_secs_f64(),
        "listening on http://{address}"
    );
    let stop_accepting = CancellationToken::new();
    let app = routes::router(Arc::clone(&state));
    let server = connections::serve(listener, app, config.connections, stop_accepting.clone());
    tokio::pin!(server);
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut server => {}
        () = &mut shutdown => {
            let running = state.imports.running_count();
            info!(running, grace_seconds = config.shutdown_grace.as_secs(), "shutting down: no new connections; running imports get the grace period");
            stop_accepting.cancel();
            state.imports.tracker().close();
            let mut served = false;
            let graceful = async {
                (&mut server).await;
                served = true;
                state.imports.tracker().wait().await;
            };
            if tokio::time::timeout(config.shutdown_grace, graceful).await.is_err() {
                warn!(running = state.imports.running_count(), "the shutdown grace is over: cancelling the running imports");
                cancel_imports.cancel();
                state.imports.tracker().wait().await;
                // cancelled uploads answer 503 at once; a client still sending or reading
                // slowly is not waited for beyond SERVER_DRAIN (dropping the server closes it)
                if !served && tokio::time::timeout(SERVER_DRAIN, &mut server).await.is_err() {
                    warn!(drain_seconds = SERVER_DRAIN.as_secs(), "connections still open after the shutdown: closing them");
                }
            }
        }
    }
    // imports started by requests still being answered are awaited too
    state.imports.tracker().close();
    state.imports.tracker().wait().await;
    pool.close().await;
    info!("service stopped");
    Ok(())
}

/// A small pool of the service's own, for `/ready` and ledger reads; lazy, so that the
/// service starts (and `/ready` says 503) while the database is down.
fn service_pool(database_url: Option<&str>) -> anyhow::Result<PgPool> {
    let target = crate::sink::conninfo::resolve(database_url)?;
    let options = target.options.application_name("importer serve");
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Locks a std mutex of the service; its holders never panic, so a poisoned one still
/// holds consistent data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes upload and rejects files a killed service left half-written (ours by name).
fn remove_leftover_uploads(uploads: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(uploads) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("upload-") || name.starts_with(".rejects-"))
            && let Err(error) = std::fs::remove_file(entry.path())
        {
            warn!(error = %error, file = %entry.path().display(), "cannot delete a leftover upload");
        }
    }
}
