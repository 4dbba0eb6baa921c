//! Receiving an upload: the multipart field `file` is streamed chunk by chunk into a temporary
//! file of our own naming in `--uploads` (never into memory, never under the client's name),
//! counted as it comes so that an upload over the limit is cut off at once (413) and its
//! partial file removed. The type is then told by the content ([`upload_format`]), and the file
//! is renamed to the extension its reader expects. The [`Upload`] deletes the file when
//! dropped, whatever the import's ending.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Multipart;
use axum::extract::Request;
use axum::extract::multipart::MultipartError;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http_body::{Frame, SizeHint};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, too_large};
use crate::source::{UPLOAD_HEAD_BYTES, upload_format};

/// The multipart field that holds the file (as the original tool's curl examples send it).
pub(crate) const FILE_FIELD: &str = "file";

/// Longest client file name kept for display, in characters.
const DISPLAY_NAME_CHARS: usize = 120;

/// An uploaded file on disk, deleted when dropped.
#[derive(Debug)]
pub(crate) struct Upload {
    /// The file, named by us, ending in the extension of its sniffed format.
    pub path: TempPath,
    /// The client's file name reduced to a harmless display name (no directories, no
    /// control characters), for the stats' `file`.
    pub display_name: String,
    /// Bytes received.
    pub bytes: u64,
}

/// Streams the field `file` of `multipart` into a new file in `directory`, refusing more
/// than `max_bytes` (413) and content that is no spreadsheet (415). Other fields are skipped.
/// Once `shutdown` is cancelled, an upload still streaming is refused (503).
pub(crate) async fn receive(
    multipart: Multipart,
    directory: &Path,
    max_bytes: u64,
    shutdown: &CancellationToken,
) -> Result<Upload, ApiError> {
    tokio::select! {
        received = receive_file(multipart, directory, max_bytes) => received,
        () = shutdown.cancelled() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down: the upload was not finished in time; retry on the next instance",
        )),
    }
}

/// [`receive`] without the shutdown: dropped with it, the partial file is deleted.
async fn receive_file(
    mut multipart: Multipart,
    directory: &Path,
    max_bytes: u64,
) -> Result<Upload, ApiError> {
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|error| multipart_error(&error, max_bytes))?;
        let Some(mut field) = field else {
            return Err(ApiError::bad_request(format!(
                "no file in the upload: send it as the multipart field \"{FILE_FIELD}\" (curl -F '{FILE_FIELD}=@data.xlsx')"
            )));
        };
        if field.name() != Some(FILE_FIELD) {
            continue;
        }
        let display_name = display_name(field.file_name());
        let partial = tempfile::Builder::new()
            .prefix("upload-")
            .rand_bytes(16)
            .suffix(".part")
            .tempfile_in(directory)
            .map_err(|error| {
                ApiError::internal(&anyhow::Error::new(error).context(format!(
                    "cannot create an upload file in {}",
                    directory.display()
                )))
            })?;
        let (file, partial) = partial.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut head: Vec<u8> = Vec::with_capacity(UPLOAD_HEAD_BYTES);
        let mut bytes: u64 = 0;
        // `partial` is deleted by its drop on every early return below
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|error| multipart_error(&error, max_bytes))?
        {
            bytes += chunk.len() as u64;
            if bytes > max_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    too_large(max_bytes),
                ));
            }
            if head.len() < UPLOAD_HEAD_BYTES {
                let wanted = (UPLOAD_HEAD_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..wanted]);
            }
            file.write_all(&chunk)
                .await
                .map_err(|error| write_error(error, directory))?;
        }
        file.flush()
            .await
            .map_err(|error| write_error(error, directory))?;
        drop(file);
        if bytes == 0 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{} is empty", quoted(&display_name)),
            ));
        }
        let claimed = claimed_extension(&display_name);
        let Some(extension) = upload_format(&head, claimed.as_deref()) else {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} is not a spreadsheet (expected .xlsx, .xlsm, .xlsb, .xls, .ods or .csv content)",
                    quoted(&display_name)
                ),
            ));
        };
        let path = rename_to(partial, extension)?;
        return Ok(Upload {
            path,
            display_name,
            bytes,
        });
    }
}

/// Gives the partial file its reader's extension, keeping it deleted-on-drop.
fn rename_to(partial: TempPath, extension: &str) -> Result<TempPath, ApiError> {
    let target: PathBuf = partial.with_extension(extension);
    let kept = partial.keep().map_err(|error| {
        ApiError::internal(&anyhow::Error::new(error).context("cannot keep the upload file"))
    })?;
    match std::fs::rename(&kept, &target) {
        Ok(()) => TempPath::try_from_path(target.clone()).map_err(|error| {
            // cannot happen for an absolute or relative path that was just created; delete it
            let _removed = std::fs::remove_file(&target);
            ApiError::internal(&anyhow::Error::new(error).context("cannot track the upload file"))
        }),
        Err(error) => {
            let _removed = std::fs::remove_file(&kept);
            Err(ApiError::internal(
                &anyhow::Error::new(error).context("cannot rename the upload file"),
            ))
        }
    }
}

/// The client's file name, reduced to its last path component without control characters,
/// and shortened: it is shown, never used as a path.
pub(crate) fn display_name(client_name: Option<&str>) -> String {
    let last = client_name
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|ch| !ch.is_control())
        .take(DISPLAY_NAME_CHARS)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "upload".to_string()
    } else {
        cleaned
    }
}

/// The extension of a display name, lowercase.
fn claimed_extension(display_name: &str) -> Option<String> {
    Path::new(display_name)
        .extension()
        .map(|extension| extension.to_string_lossy().to_ascii_lowercase())
}

fn quoted(name: &str) -> String {
    format!("{name:?}")
}

/// A multipart error as the client's error: over the body limit is 413, the rest 400.
fn multipart_error(error: &MultipartError, max_bytes: u64) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, too_large(max_bytes))
    } else {
        ApiError::bad_request(format!("malformed multipart upload: {}", error.body_text()))
    }
}

fn write_error(error: std::io::Error, directory: &Path) -> ApiError {
    ApiError::internal(&anyhow::Error::new(error).context(format!(
        "cannot write the upload into {}",
        directory.display()
    )))
}

/// Most bytes of a refused request's body read (and thrown away) before its answer is sent.
const REFUSED_BODY_READ_MAX_BYTES: u64 = 64 << 20;

/// Longest a refused request's body is read before its answer is sent anyway.
const REFUSED_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Middleware: a request refused (4xx) before its body was read (no token, a table not
/// allowed, too many imports at once, a bad query) has the rest of its body read and thrown
/// away, up to a bound, before the answer goes out. Answering and closing while the client
/// is still sending makes most clients report a broken connection instead of the answer
/// (the 401, 403 or 429 the client needs to act on). Past the bound the answer is sent and
/// the connection closed, as before.
pub(crate) async fn read_refused_bodies(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let shared = Arc::new(Mutex::new(body));
    let request = Request::from_parts(parts, Body::new(SharedBody(Arc::clone(&shared))));
    let response = next.run(request).await;
    let status = response.status();
    // not after 413 or 408 (the body is what was refused, or took too long), nor after a
    // 5xx: a shutdown answers 503 to an upload still streaming and must not wait for it
    let refused = status.is_client_error()
        && status != StatusCode::PAYLOAD_TOO_LARGE
        && status != StatusCode::REQUEST_TIMEOUT;
    if refused {
        // the handler is done with the body: what it left unread is ours to read
        let rest = std::mem::take(&mut *lock_body(&shared));
        let mut frames = rest.into_data_stream();
        let _ = tokio::time::timeout(REFUSED_BODY_READ_TIMEOUT, async {
            let mut read = 0_u64;
            while let Some(Ok(chunk)) = frames.next().await {
                read += chunk.len() as u64;
                if read > REFUSED_BODY_READ_MAX_BYTES {
                    break;
                }
            }
        })
        .await;
    }
    response
}

/// A request body that the handler reads through while [`read_refused_bodies`] keeps a hold
/// on it (the lock is only ever taken by one of the two at a time).
struct SharedBody(Arc<Mutex<Body>>);

fn lock_body(body: &Mutex<Body>) -> std::sync::MutexGuard<'_, Body> {
    // a poll that panicked leaves a body that is only read to be thrown away
    body.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut *lock_body(&self.0)).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        lock_body(&self.0).is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        lock_body(&self.0).size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_file_name_is_only_shown_never_a_path() {
        let cases = [
            (Some("sales.xlsx"), "sales.xlsx"),
            (Some("../../etc/passwd.xlsx"), "passwd.xlsx"),
            (Some("..\\..\\win.ini"), "win.ini"),
            (Some("/abs/path/q3.csv"), "q3.csv"),
            (Some(".."), "upload"),
            (Some("a\nb\u{0}.xlsx"), "ab.xlsx"),
            (Some(".hidden.csv"), "hidden.csv"),
            (None, "upload"),
        ];
        for (given, expected) in cases {
            assert_eq!(display_name(given), expected, "{given:?}");
        }
    }
}
