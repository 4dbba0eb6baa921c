//! Who may call the service and what they may name: the bearer token (checked in constant
//! time) and the `--allow-table` patterns. The token is required whenever one is configured,
//! and `cmd::serve` refuses to listen beyond loopback without one.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use std::sync::Arc;

/// The configured bearer token.
#[derive(Clone)]
pub(crate) struct Token {
    /// SHA-256 of the token: compared in constant time whatever the lengths.
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Token(redacted)")
    }
}

impl Token {
    /// A token from its text (already trimmed, non-empty).
    pub fn new(text: &str) -> Self {
        Token {
            digest: Sha256::digest(text.as_bytes()).into(),
        }
    }

    /// Whether `given` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.digest.ct_eq(&given).into()
    }
}

/// Whether the service may listen on `address` without a token: only on loopback.
pub fn is_loopback_address(address: &SocketAddr) -> bool {
    address.ip().is_loopback()
}

/// Middleware: refuses a request without the right `Authorization: Bearer TOKEN` (401),
/// when a token is configured.
pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.config.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        });
    match given {
        Some(given) if token.matches(given.trim()) => next.run(request).await,
        Some(_) => unauthorized("wrong token"),
        None => unauthorized(
            "this service needs a token: send the header 'Authorization: Bearer TOKEN'",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Whether `table` (as the request names it) matches one of `patterns`, where `*` stands
/// for any run of characters and everything else matches itself exactly.
pub(crate) fn table_allowed(patterns: &[String], table: &str) -> bool {
    patterns.iter().any(|pattern| glob_matches(pattern, table))
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // iterative wildcard matching with one backtrack point: linear in practice, no recursion
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] != '*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&ch| ch == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_patterns_match_whole_names_with_star_as_any_run() {
        let patterns = vec!["businesses".to_string(), "staging.*".to_string()];
        let cases = [
            ("businesses", true),
            ("businesses2", false),
            ("public.businesses", false),
            ("staging.orders", true),
            ("staging.", true),
            ("stagingx.orders", false),
            ("other", false),
        ];
        for (table, expected) in cases {
            assert_eq!(table_allowed(&patterns, table), expected, "{table}");
        }
        assert!(table_allowed(&["*".to_string()], "anything.at_all"));
        assert!(table_allowed(&["a*b*c".to_string()], "aXXbYYc"));
        assert!(!table_allowed(&["a*b*c".to_string()], "aXXbYY"));
        assert!(!table_allowed(&[], "businesses"));
    }

    #[test]
    fn the_token_matches_only_itself() {
        let token = Token::new("s3cret");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(redacted)");
    }
}
