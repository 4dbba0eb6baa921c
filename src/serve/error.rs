//! The one error type of the HTTP handlers: a status and a one-line message, answered as
//! `{"error": "..."}`. Import failures map here by their [`FailureKind`]; the message is the
//! import's own error line when the client's input is at fault, and a generic line when the
//! database or the service is (those details go to the log only).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::import::{FailureKind, ImportFailure};

/// Seconds a client is asked to wait after a 429 (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "5";

/// The 500 message: the details are in the log, not in the answer.
const INTERNAL_MESSAGE: &str = "internal error in the service; the service log has the details";

/// An error answered to the client: its status and its `{"error": ...}` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// One lowercase line saying what is wrong and, where the client can act, how to fix it.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: a parameter that makes no sense.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500: our own fault; the details go to the log, not to the client.
    pub fn internal(error: &anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_MESSAGE)
    }

    /// The status an import failure of this kind is answered with.
    pub fn status_of(kind: FailureKind) -> StatusCode {
        match kind {
            FailureKind::Usage => StatusCode::BAD_REQUEST,
            FailureKind::Locked => StatusCode::CONFLICT,
            FailureKind::Input => StatusCode::UNPROCESSABLE_ENTITY,
            FailureKind::Database => StatusCode::SERVICE_UNAVAILABLE,
            FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<&ImportFailure> for ApiError {
    fn from(failure: &ImportFailure) -> Self {
        ApiError::new(ApiError::status_of(failure.kind), client_message(failure))
    }
}

/// What a client is told of an import failure: the import's own line when the client can act
/// on it; for the database's or our own fault a generic line, since the details (the
/// server's host, port, database and user, our paths) are the operator's business and go to
/// the service log (the import task logs every failure).
pub(crate) fn client_message(failure: &ImportFailure) -> String {
    match failure.kind {
        FailureKind::Usage | FailureKind::Locked | FailureKind::Input => failure.to_string(),
        FailureKind::Database => {
            "the database is unavailable or failed; the service log has the details".to_string()
        }
        FailureKind::Internal => INTERNAL_MESSAGE.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// What a client is told for an error response that no handler wrote (an unknown path, a
/// wrong method, a body over the limit, a timeout): the same `{"error": ...}` shape.
pub(crate) fn message_for_status(status: StatusCode, max_upload_bytes: u64) -> String {
    match status {
        StatusCode::NOT_FOUND => {
            "no such endpoint (see GET / or README's endpoint list)".to_string()
        }
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => too_large(max_upload_bytes),
        StatusCode::REQUEST_TIMEOUT => "the request took longer than --request-timeout".to_string(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "expected a multipart/form-data body with the file in field \"file\"".to_string()
        }
        other => other
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    }
}

/// The 413 message.
pub(crate) fn too_large(max_upload_bytes: u64) -> String {
    format!(
        "upload larger than the limit of {} MiB (--max-upload-mb)",
        max_upload_bytes / (1024 * 1024)
    )
}
