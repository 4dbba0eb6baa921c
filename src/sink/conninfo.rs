//! Where to connect, read as libpq reads it: a `postgres://` / `postgresql://` URL, a libpq
//! keyword string (`host=db dbname=warehouse user=loader`), or, when neither is given, the
//! `PG*` environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE,
//! ...). The built-in default (the docker-compose.yml server) applies only when nothing at
//! all is given.
//!
//! A keyword string is turned into the equivalent URL query (`postgres://?host=db&...`) so
//! that sqlx's own parser, the one that reads URLs, reads it too: the two syntaxes cannot
//! drift apart. Like libpq, values given explicitly win over the environment. This module
//! only parses; `sink::connect` connects.

use std::str::FromStr;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;

/// The server of docker-compose.yml; used when no URL is given and no `PG*` variable
/// (PGHOST, PGUSER, ...) is set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://importer:importer@localhost:5432/importer";

/// The environment variables that say where to connect, as libpq reads them. Any one of them
/// set means the user has said something, so the built-in default no longer applies.
pub const PG_ENVIRONMENT: [&str; 10] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGOPTIONS",
];

/// The keywords of a libpq keyword string that `importer` understands.
const KEYWORDS: [&str; 10] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "application_name",
    "options",
];

/// Where the server is, and how it was named.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    /// The connection options, before `importer`'s own settings are added.
    pub options: PgConnectOptions,
    /// Whether nothing was given and the docker-compose.yml server is assumed.
    pub is_default: bool,
}

/// Resolves `given` (the flag or DATABASE_URL, if either is set) into connection options.
pub fn resolve(given: Option<&str>) -> anyhow::Result<ConnectTarget> {
    match given {
        Some(text) => Ok(ConnectTarget {
            options: parse(text)?,
            is_default: false,
        }),
        None if PG_ENVIRONMENT
            .iter()
            .any(|name| std::env::var_os(name).is_some()) =>
        {
            Ok(ConnectTarget {
                options: PgConnectOptions::new(),
                is_default: false,
            })
        }
        None => Ok(ConnectTarget {
            options: parse(DEFAULT_DATABASE_URL)?,
            is_default: true,
        }),
    }
}

/// Parses a URL or a keyword string. The error never repeats the text: it may hold a password.
pub fn parse(text: &str) -> anyhow::Result<PgConnectOptions> {
    let trimmed = text.trim();
    if let Some((scheme, _)) = trimmed.split_once("://") {
        if scheme != "postgres" && scheme != "postgresql" {
            bail!(
                "--database-url / DATABASE_URL has the scheme {:?}; only postgres:// and postgresql:// URLs (or a libpq keyword string such as \"host=db dbname=warehouse\") are accepted",
                shorten(scheme, 20)
            );
        }
        return PgConnectOptions::from_str(trimmed).map_err(|_| {
            anyhow::anyhow!(
                "invalid --database-url / DATABASE_URL: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            )
        });
    }
    if trimmed.contains('=') {
        let url = keyword_url(trimmed).context("invalid --database-url / DATABASE_URL")?;
        return PgConnectOptions::from_str(&url).map_err(|_| {
            anyhow::anyhow!(
                "invalid --database-url / DATABASE_URL: a value of the keyword string is not valid (host, port, sslmode, ...)"
            )
        });
    }
    bail!(
        "invalid --database-url / DATABASE_URL: expected a postgres:// URL or a libpq keyword string such as \"host=db dbname=warehouse user=loader\""
    )
}

/// The URL equivalent of a libpq keyword string: `postgres://?host=db&dbname=x`.
fn keyword_url(text: &str) -> anyhow::Result<String> {
    let pairs = keyword_pairs(text)?;
    let query: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", percent_encode(value)))
        .collect();
    Ok(format!("postgres://?{}", query.join("&")))
}

/// Splits a keyword string into `(keyword, value)` pairs as libpq does: `key = value`
/// separated by whitespace, a value in single quotes may hold spaces, and a backslash escapes
/// the next character (`\'`, `\\`). Unknown keywords are an error naming the keyword.
fn keyword_pairs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|ch| ch.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(ch) = chars.next_if(|ch| *ch != '=' && !ch.is_whitespace()) {
            key.push(ch);
        }
        while chars.next_if(|ch| ch.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            bail!(
                "keyword {:?} of the keyword string has no \"=\" after it",
                shorten(&key, 40)
            );
        }
        if !KEYWORDS.contains(&key.as_str()) {
            bail!(
                "unknown keyword {:?} in the keyword string (known: {})",
                shorten(&key, 40),
                KEYWORDS.join(", ")
            );
        }
        while chars.next_if(|ch| ch.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => bail!("the value of {key:?} ends in a lone backslash"),
                    },
                    Some(ch) => value.push(ch),
                    None => bail!("the quoted value of {key:?} has no closing quote"),
                }
            }
        } else {
            while let Some(ch) = chars.next_if(|ch| !ch.is_whitespace()) {
                if ch == '\\' {
                    match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => bail!("the value of {key:?} ends in a lone backslash"),
                    }
                } else {
                    value.push(ch);
                }
            }
        }
        pairs.push((key, value));
    }
    if pairs.is_empty() {
        bail!("the keyword string is empty");
    }
    Ok(pairs)
}

/// Percent-encodes every byte but ASCII letters and digits (safe in a URL query value).
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// At most `max_chars` characters of `text`, with "..." when cut.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgSslMode;

    use super::*;

    #[test]
    fn keyword_strings_read_like_libpq() {
        let options = parse(
            r"host=db.internal port = 6543 dbname='my db' user=loader password='it\'s' sslmode=require application_name=nightly",
        )
        .unwrap();
        assert_eq!(options.get_host(), "db.internal");
        assert_eq!(options.get_port(), 6543);
        assert_eq!(options.get_database(), Some("my db"));
        assert_eq!(options.get_username(), "loader");
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
        assert_eq!(options.get_application_name(), Some("nightly"));
        let pairs = keyword_pairs(r"password='it\'s a \\ test' host=h").unwrap();
        assert_eq!(pairs[0].1, r"it's a \ test");
        let options = parse("host=h options='-c search_path=x'").unwrap();
        assert_eq!(options.get_options(), Some("-c search_path=x"));
    }

    #[test]
    fn keyword_strings_refuse_unknown_keys_and_broken_quotes() {
        let unknown = format!("{:#}", parse("host=h colour=blue").unwrap_err());
        assert!(unknown.contains("\"colour\""), "{unknown}");
        let unclosed = format!("{:#}", parse("host=h password='abc").unwrap_err());
        assert!(unclosed.contains("no closing quote"), "{unclosed}");
        assert!(!unclosed.contains("abc"), "no password in {unclosed}");
        assert!(parse("host").is_err());
        assert!(parse("sslmode=sometimes").is_err());
    }

    #[test]
    fn only_postgres_urls_are_accepted() {
        assert!(parse("postgres://u@h/db").is_ok());
        assert!(parse("postgresql://u@h:5433/db?sslmode=verify-full").is_ok());
        let mysql = parse("mysql://root:secret@h/db").unwrap_err().to_string();
        assert!(
            mysql.contains("\"mysql\"") && !mysql.contains("secret"),
            "{mysql}"
        );
        assert!(parse("just-a-name").is_err());
    }

    #[test]
    fn shorten_cuts_at_characters() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("äöüß", 2), "äö...");
    }
}
