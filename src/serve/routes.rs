//! The HTTP surface: [`router`] builds every route and layer (tests call it too), and the
//! handlers below turn requests into imports and ledger reads. Each handler is thin: the
//! upload is received by `upload`, the import runs in `imports`, errors are [`ApiError`]s.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the upload page |
//! | `GET /health`, `GET /ready` | liveness; whether the database answers |
//! | `GET /config` | what the page needs: default table, allowed tables, methods, limits |
//! | `POST /upload` | import now, answer the stats (the original tool's shape) |
//! | `POST /imports` | start an import, answer 202 with its id |
//! | `GET /imports`, `GET /imports/{id}`, `GET /imports/{id}/rejects.csv` | imports, live and from the ledger |
//! | `GET /metrics` | Prometheus text |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use super::AppState;
use super::auth::{require_same_origin, require_token, resolved_table_allowed, table_allowed};
use super::error::{ApiError, message_for_status};
use super::imports::{Finished, ImportView, RejectView, status_of};
use super::metrics;
use super::upload::{self, Upload};
use crate::import::{ImportOptions, ImportOutcome, Method, Mode};
use crate::schema::default_table_name;
use crate::sink::TableName;
use crate::sink::{chunks, ledger};

/// The page at `GET /`.
const PAGE_HTML: &str = include_str!("page.html");

/// What the page may load and run: only itself (its script and style are inline).
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data: blob:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Room for the multipart framing around the file, beyond `--max-upload-mb`.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Rejected rows returned in a response (`rejects`); `rejected_total` counts them all and
/// the rejects CSV holds them all.
pub const REJECTS_SHOWN: usize = 100;

/// Imports listed by `GET /imports` (newest first) unless `?limit=` says otherwise.
const LISTED_IMPORTS: u32 = 50;

/// Most imports `GET /imports?limit=` lists.
const LISTED_IMPORTS_MAX: u32 = 1000;

/// Newest ledger runs `GET /imports` looks among for those of the allowed tables.
const LEDGER_SCANNED: u32 = 5000;

/// Longest `GET /ready` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The service's routes and layers.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let body_limit = usize::try_from(state.config.max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
        .unwrap_or(usize::MAX);
    let uploads = Router::new()
        .route("/upload", post(upload_now))
        .route("/imports", post(start_import))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit));
    let guarded = Router::new()
        .route("/imports", get(list_imports))
        .route("/imports/{id}", get(show_import))
        .route("/imports/{id}/rejects.csv", get(download_rejects))
        .route("/metrics", get(show_metrics))
        .merge(uploads)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/config", get(config))
        .merge(guarded)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_same_origin,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            json_errors,
        ))
        .layer(middleware::from_fn(super::upload::read_refused_bodies))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Gives every error response the `{"error": ...}` shape, also those no handler wrote
/// (unknown path, body over the limit, timeout, a rejected query string).
async fn json_errors(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let message = message_for_status(status, state.config.max_upload_bytes);
    let mut rewritten = ApiError::new(status, message).into_response();
    for name in [header::WWW_AUTHENTICATE, header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = response.headers().get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

async fn page() -> Response {
    let mut response = Html(PAGE_HTML).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "healthy" }))
}

async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let answered =
        tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool)).await;
    match answered {
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready" }))),
        // the error may name the server; it goes to the log only
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness check: the database did not answer");
            Err(not_ready())
        }
        Err(_) => Err(not_ready()),
    }
}

fn not_ready() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the database does not answer",
    )
}

async fn config(State(state): State<Arc<AppState>>) -> Json<Value> {
    let config = &state.config;
    Json(json!({
        "table": config.default_table,
        "allowed_tables": config.allowed_tables,
        "methods": Method::ALL.iter().map(|method| method.name()).collect::<Vec<_>>(),
        "default_method": config.defaults.method.name(),
        "modes": ["append", "replace", "upsert"],
        "default_mode": config.defaults.mode.name(),
        "max_upload_bytes": config.max_upload_bytes,
        "max_rejects_shown": REJECTS_SHOWN,
        "token_required": config.token.is_some(),
    }))
}

async fn show_metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render()
        .map_err(|error| ApiError::internal(&error))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// The query string of `POST /upload` and `POST /imports`; every field overrides the
/// service's default. Taken as text so that a bad value gets a message naming it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ImportQuery {
    method: Option<String>,
    table: Option<String>,
    sheet: Option<String>,
    mode: Option<String>,
    key: Option<String>,
    atomic: Option<String>,
    header_row: Option<String>,
}

/// `POST /upload`: receive, import, answer the stats.
async fn upload_now(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ImportQuery>,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let started = begin(&state, &query, multipart).await?;
    let finished = started
        .done
        .await
        .map_err(|_| ApiError::internal(&anyhow::anyhow!("an import task ended without a word")))?;
    Ok(finished_response(finished))
}

/// `POST /imports`: receive, start the import, answer 202 with its id once the ledger has it.
async fn start_import(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ImportQuery>,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let mut started = begin(&state, &query, multipart).await?;
    tokio::select! {
        biased;
        run_id = &mut started.run_id => match run_id {
            Ok(id) => Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, format!("/imports/{id}"))],
                Json(json!({ "id": id, "status": "running", "href": format!("/imports/{id}") })),
            ).into_response()),
            // ended before the ledger had it: answer as /upload does
            Err(_) => match started.done.await {
                Ok(finished) => Ok(finished_response(finished)),
                Err(_) => Err(ApiError::internal(&anyhow::anyhow!("an import task ended without a word"))),
            },
        },
        finished = &mut started.done => match finished {
            Ok(finished) => Ok(finished_response(finished)),
            Err(_) => Err(ApiError::internal(&anyhow::anyhow!("an import task ended without a word"))),
        },
    }
}

/// Checks the request, takes a place, receives the file and starts its import.
async fn begin(
    state: &Arc<AppState>,
    query: &ImportQuery,
    multipart: Multipart,
) -> Result<super::imports::Started, ApiError> {
    let mut options = options_for(state, query)?;
    if let Some(table) = &options.table {
        check_table(state, table)?;
    }
    let permit = state.imports.try_permit()?;
    let upload: Upload = upload::receive(
        multipart,
        &state.config.uploads,
        state.config.max_upload_bytes,
        &state.cancel_imports,
    )
    .await?;
    if options.table.is_none() {
        // as `run` names it: the file's stem, folded
        let table = default_table_name(std::path::Path::new(&upload.display_name));
        check_table(state, &table)?;
        options.table = Some(table);
    }
    Ok(state.imports.start(permit, upload, options))
}

fn check_table(state: &AppState, table: &str) -> Result<(), ApiError> {
    TableName::parse(table).map_err(|error| ApiError::bad_request(format!("{error:#}")))?;
    if table_allowed(&state.config.allowed_tables, table) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "table {table:?} is not allowed here (allowed: {})",
                state
                    .config
                    .allowed_tables
                    .iter()
                    .map(|pattern| format!("{pattern:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// The service's defaults with the query's overrides.
pub(crate) fn options_for(
    state: &AppState,
    query: &ImportQuery,
) -> Result<ImportOptions, ApiError> {
    let mut options = state.config.defaults.clone();
    if let Some(method) = non_empty(&query.method) {
        options.method = parse_method(method)?;
    }
    if let Some(mode) = non_empty(&query.mode) {
        options.mode = parse_mode(mode)?;
    }
    if let Some(table) = non_empty(&query.table) {
        options.table = Some(table.to_string());
    }
    if let Some(sheet) = non_empty(&query.sheet) {
        options.sheet = Some(sheet.to_string());
    }
    if let Some(key) = non_empty(&query.key) {
        options.key = key
            .split(',')
            .map(str::trim)
            .filter(|column| !column.is_empty())
            .map(str::to_string)
            .collect();
    }
    if let Some(atomic) = &query.atomic {
        options.atomic = parse_flag("atomic", atomic)?;
    }
    if let Some(header_row) = non_empty(&query.header_row) {
        options.header_row = header_row
            .parse::<u32>()
            .ok()
            .filter(|row| *row >= 1)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "header_row must be a row number from 1, not {header_row:?}"
                ))
            })?;
    }
    if !options.key.is_empty() && options.mode != Mode::Upsert {
        return Err(ApiError::bad_request(format!(
            "key is only used with mode=upsert, not with mode={}",
            options.mode.name()
        )));
    }
    if options.key.is_empty() && options.mode == Mode::Upsert {
        return Err(ApiError::bad_request(
            "mode=upsert needs key=COLUMN[,COLUMN] (a unique index or primary key must cover exactly them)",
        ));
    }
    Ok(options)
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn parse_method(text: &str) -> Result<Method, ApiError> {
    Method::ALL
        .into_iter()
        .find(|method| method.name() == text)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown method {text:?} (methods: sequential, concurrent, batch, copy)"
            ))
        })
}

fn parse_mode(text: &str) -> Result<Mode, ApiError> {
    [Mode::Append, Mode::Replace, Mode::Upsert]
        .into_iter()
        .find(|mode| mode.name() == text)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown mode {text:?} (modes: append, replace, upsert)"
            ))
        })
}

/// A boolean query parameter: `atomic`, `atomic=true|1|yes|on` or `false|0|no|off`.
fn parse_flag(name: &str, text: &str) -> Result<bool, ApiError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {text:?}"
        ))),
    }
}

/// The answer to an import that ended: 200 with the stats (rejected rows included), or
/// the error with its status (and the stats, when rows were processed).
fn finished_response(finished: Finished) -> Response {
    let status = status_of(&finished.result);
    match finished.result {
        Ok(report) if report.outcome == ImportOutcome::Cancelled => {
            let body = json!({
                "error": "the service is shutting down: the import was cancelled after the rows in stats",
                "id": finished.run_id,
                "stats": report.stats,
                "rejected_total": report.rejected_total,
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        Ok(report) => {
            let rejects: Vec<RejectView> = report
                .rejections
                .iter()
                .take(REJECTS_SHOWN)
                .map(RejectView::from)
                .collect();
            let message = match report.outcome {
                ImportOutcome::Skipped => "The file's content is already in the table".to_string(),
                ImportOutcome::SomeRejected => format!(
                    "Import completed with {} of {} rows rejected (see rejects)",
                    report.stats.error_count, report.stats.total_records
                ),
                ImportOutcome::AllIn | ImportOutcome::Cancelled => {
                    "Import completed successfully".to_string()
                }
            };
            let body = json!({
                "message": message,
                "id": finished.run_id,
                "status": status,
                "method": report.stats.method,
                "stats": report.stats,
                "rejects": rejects,
                "rejected_total": report.rejected_total,
                "rejects_href": finished.rejects_href,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(failure) => {
            let error = ApiError::from(&failure);
            if error.status == StatusCode::INTERNAL_SERVER_ERROR {
                return ApiError::internal(&failure.error).into_response();
            }
            let body = json!({
                "error": error.message,
                "id": finished.run_id,
                "stats": failure.stats,
                "rejects_href": finished.rejects_href,
            });
            (error.status, Json(body)).into_response()
        }
    }
}

/// `GET /imports?limit=N`: the newest imports from the run ledger, live ones with their rows.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

async fn list_imports(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(LISTED_IMPORTS)
        .clamp(1, LISTED_IMPORTS_MAX);
    // the ledger is shared with `importer run` and other services: only the runs into
    // tables this service admits are shown, among the newest LEDGER_SCANNED
    let entries = ledger::list_runs(&state.pool, &state.ledger, None, LEDGER_SCANNED)
        .await
        .map_err(ledger_error)?;
    let search_path = search_path(&state).await?;
    let entries: Vec<&ledger::RunEntry> = entries
        .iter()
        .filter(|entry| entry_allowed(&state, &search_path, entry))
        .take(limit as usize)
        .collect();
    let ids: Vec<i64> = entries.iter().map(|entry| entry.id).collect();
    let chunks: HashMap<i64, chunks::RunRows> = chunks::run_rows(&state.pool, &state.ledger, &ids)
        .await
        .map_err(ledger_error)?
        .into_iter()
        .map(|rows| (rows.run_id, rows))
        .collect();
    let imports: Vec<ImportView> = entries
        .into_iter()
        .map(|entry| state.imports.view_of_entry(entry, chunks.get(&entry.id)))
        .collect();
    Ok(Json(json!({ "imports": imports })))
}

async fn show_import(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ImportView>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(view) = state.imports.view(id) {
        return Ok(Json(view));
    }
    let entry = ledger::get_run(&state.pool, &state.ledger, id)
        .await
        .map_err(ledger_error)?;
    match entry {
        Some(entry) if entry_allowed(&state, &search_path(&state).await?, &entry) => {
            let chunks = chunks::run_rows(&state.pool, &state.ledger, &[id])
                .await
                .map_err(ledger_error)?;
            Ok(Json(state.imports.view_of_entry(&entry, chunks.first())))
        }
        // a run into a table outside --allow-table is none of this service's business
        _ => Err(no_such_import(id)),
    }
}

/// Whether a ledger run went into a table the service admits.
fn entry_allowed(state: &AppState, search_path: &[String], entry: &ledger::RunEntry) -> bool {
    let (schema, name) = &entry.schema_and_name;
    resolved_table_allowed(&state.config.allowed_tables, search_path, schema, name)
}

/// The schemas an unqualified table name resolves in, for the service's connections.
async fn search_path(state: &AppState) -> Result<Vec<String>, ApiError> {
    sqlx::query_scalar::<_, Vec<String>>("SELECT current_schemas(false)::text[]")
        .fetch_one(&state.pool)
        .await
        .map_err(|error| ledger_error(anyhow::Error::new(error)))
}

async fn download_rejects(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Some(path) = state.imports.rejects_path(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "import {id} has no rejects file (none were rejected, or it is older than --keep-rejects-hours / --keep-rejects)"
            ),
        ));
    };
    let file = tokio::fs::File::open(&path).await.map_err(|error| {
        ApiError::internal(&anyhow::Error::new(error).context("cannot open a rejects file"))
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"rejects-{id}.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .map_err(|_| ApiError::bad_request(format!("an import id is a number, not {text:?}")))
}

fn no_such_import(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no import {id}"))
}

fn ledger_error(error: anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{error:#}"), "cannot read the run ledger");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot read the run ledger: the database does not answer",
    )
}
