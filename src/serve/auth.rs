//! Who may call the service and what they may name: the bearer token (checked in constant
//! time), the same-origin rule (no cross-site request, and without a token no `Host` but a
//! loopback name), and the `--allow-table` patterns. The token is required whenever one is
//! configured, and `serve::run` refuses to listen beyond loopback without one.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::sink::TableName;
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
        .and_then(bearer_credentials);
    match given {
        Some(given) if token.matches(given.trim()) => next.run(request).await,
        Some(_) => unauthorized("wrong token"),
        None => unauthorized(
            "this service needs a token: send the header 'Authorization: Bearer TOKEN'",
        ),
    }
}

/// Middleware against cross-site requests and DNS rebinding: refuses (403) a request whose
/// `Origin`, when sent, is not the service's own (`http://` or `https://` and the `Host` the
/// request was sent to), or that the browser marks `Sec-Fetch-Site: cross-site` (a link
/// followed to the page is let through). Without a token, the `Host` must also be a loopback
/// name: a page of another site whose name was rebound to 127.0.0.1 names itself there.
pub(crate) async fn require_same_origin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        });
    if state.config.token.is_none() && !host.is_some_and(is_loopback_host) {
        return forbidden(
            "without a token this service answers only requests addressed to a loopback name (localhost, 127.0.0.1, [::1])",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = host.is_some_and(|host| {
            origin.to_str().is_ok_and(|origin| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
            })
        });
        if !same {
            return forbidden(
                "cross-origin requests are refused: use the service's own page or a client that sends no Origin",
            );
        }
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let followed_link = (request.method() == Method::GET || request.method() == Method::HEAD)
        && headers
            .get("sec-fetch-mode")
            .is_some_and(|value| value.as_bytes() == b"navigate");
    if cross_site && !followed_link {
        return forbidden(
            "cross-site requests are refused: use the service's own page or a client that sends no Origin",
        );
    }
    next.run(request).await
}

/// Whether a `Host` value (`NAME[:PORT]`) names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

fn forbidden(message: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// The credentials of an `Authorization` value of the Bearer scheme, whose name is
/// case-insensitive (RFC 9110, 11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Whether `table` (as the request names it) matches one of `patterns`. Schema and name are
/// matched separately, `*` standing for any run of characters but never a dot: `sales_*`
/// admits `sales_2024` but not `sales_x.payroll`, and a pattern without a dot admits only
/// unqualified names (those the search path resolves).
pub(crate) fn table_allowed(patterns: &[String], table: &str) -> bool {
    let Ok(table) = TableName::parse(table) else {
        return false;
    };
    patterns
        .iter()
        .any(|pattern| pattern_matches(pattern, table.schema.as_deref(), &table.name))
}

/// Whether a table the ledger names by its resolved `schema` and `name` is one `patterns`
/// admit: a qualified pattern matches both parts, an unqualified one the name of a table in
/// one of the `search_path` schemas (where an unqualified request name lands).
pub(crate) fn resolved_table_allowed(
    patterns: &[String],
    search_path: &[String],
    schema: &str,
    name: &str,
) -> bool {
    patterns.iter().any(|pattern| {
        pattern_matches(pattern, Some(schema), name)
            || (!pattern.contains('.')
                && search_path.iter().any(|listed| listed == schema)
                && pattern_matches(pattern, None, name))
    })
}

/// One pattern against one table name, split as [`TableName::parse`] splits it.
fn pattern_matches(pattern: &str, schema: Option<&str>, name: &str) -> bool {
    match (pattern.split_once('.'), schema) {
        (Some((schema_pattern, name_pattern)), Some(schema)) => {
            glob_matches(schema_pattern, schema) && glob_matches(name_pattern, name)
        }
        (None, None) => glob_matches(pattern, name),
        _ => false,
    }
}

/// `*` matches any run of characters other than `.`; everything else matches itself.
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
        } else if let Some((star_p, star_t)) = star
            && text[star_t] != '.'
        {
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
    fn table_patterns_match_schema_and_name_apart_with_star_never_a_dot() {
        let patterns = vec!["businesses".to_string(), "staging.*".to_string()];
        let cases = [
            ("businesses", true),
            ("businesses2", false),
            ("public.businesses", false),
            ("staging.orders", true),
            ("staging.", false),
            ("staging.a.b", false),
            ("stagingx.orders", false),
            ("other", false),
        ];
        for (table, expected) in cases {
            assert_eq!(table_allowed(&patterns, table), expected, "{table}");
        }
        let sales = ["sales*".to_string()];
        assert!(table_allowed(&sales, "sales_2024"));
        assert!(!table_allowed(&sales, "sales.x"));
        assert!(!table_allowed(&sales, "sales.payroll"));
        assert!(!table_allowed(&sales, "salesx.payroll"));
        assert!(table_allowed(&["*".to_string()], "anything"));
        assert!(!table_allowed(&["*".to_string()], "other.anything"));
        assert!(table_allowed(&["*.*".to_string()], "other.anything"));
        assert!(table_allowed(&["a*b*c".to_string()], "aXXbYYc"));
        assert!(!table_allowed(&["a*b*c".to_string()], "aXXbYY"));
        assert!(!table_allowed(&[], "businesses"));
    }

    #[test]
    fn a_ledger_table_is_allowed_by_its_resolved_schema() {
        let patterns = vec!["businesses".to_string(), "staging.*".to_string()];
        let search_path = vec!["public".to_string()];
        let cases = [
            ("public", "businesses", true),
            ("other", "businesses", false),
            ("staging", "orders", true),
            ("public", "orders", false),
            ("sales", "payroll", false),
        ];
        for (schema, name, expected) in cases {
            assert_eq!(
                resolved_table_allowed(&patterns, &search_path, schema, name),
                expected,
                "{schema}.{name}"
            );
        }
    }

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        let cases = [
            ("localhost", true),
            ("LOCALHOST:8080", true),
            ("127.0.0.1:8080", true),
            ("127.1.2.3", true),
            ("[::1]:8080", true),
            ("[::1]", true),
            ("evil.example:8080", false),
            ("localhost.evil.example", false),
            ("10.0.0.1:8080", false),
            ("[::2]:80", false),
            ("", false),
        ];
        for (host, expected) in cases {
            assert_eq!(is_loopback_host(host), expected, "{host}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bEaReR a b", Some("a b")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("Bearer", None),
        ];
        for (value, expected) in cases {
            assert_eq!(bearer_credentials(value), expected, "{value}");
        }
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
