//! COPY FROM STDIN in PostgreSQL's text format: the encoder and the chunk writer.
//!
//! Values arrive already validated and in text input form (see `convert`), so the server
//! parses them exactly as it parses the INSERT methods' casts. Rows whose NULL must fall back
//! to a NOT NULL column's default (which COPY cannot express) are inserted in the same
//! transaction as the chunk, so every method leaves the same rows.

use sqlx::{Connection, PgConnection};

use crate::pipeline::ConvertedRow;
use crate::schema::Column;
use crate::sink::insert::InsertStatement;
use crate::sink::{TargetTable, quote_ident};

/// The COPY statement for one target table and one sheet column order.
#[derive(Debug, Clone)]
pub struct CopyStatement {
    sql: String,
    /// Positions of NOT NULL columns with a default expression.
    defaulted_positions: Vec<usize>,
    fallback: InsertStatement,
}

impl CopyStatement {
    /// Builds the statement for `columns` (one per sheet column, in sheet order).
    pub fn new(table: &TargetTable, columns: &[Column]) -> Self {
        let column_list: Vec<String> = columns
            .iter()
            .map(|column| quote_ident(&column.name))
            .collect();
        let defaulted_positions = columns
            .iter()
            .enumerate()
            .filter(|(_, column)| column.not_null && column.default_sql.is_some())
            .map(|(position, _)| position)
            .collect();
        CopyStatement {
            sql: format!(
                "COPY {} ({}) FROM STDIN",
                table.name.quoted(),
                column_list.join(", ")
            ),
            defaulted_positions,
            fallback: InsertStatement::new(table, columns),
        }
    }

    /// Writes `rows`: one COPY, all or nothing. Returns the rows written.
    pub async fn copy_rows(
        &self,
        connection: &mut PgConnection,
        rows: &[ConvertedRow],
    ) -> Result<u64, sqlx::Error> {
        let needs_default = |row: &&ConvertedRow| {
            self.defaulted_positions
                .iter()
                .any(|&position| row.values[position].is_none())
        };
        if !rows.iter().any(|row| needs_default(&row)) {
            return self.copy_only(connection, rows.iter()).await;
        }
        // COPY cannot ask for a default: those rows go through INSERT, in one transaction
        // with the rest so that a failing chunk leaves nothing behind
        let mut transaction = connection.begin().await?;
        let (defaulted, copied): (Vec<&ConvertedRow>, Vec<&ConvertedRow>) =
            rows.iter().partition(needs_default);
        let mut written = self.copy_only(&mut transaction, copied.into_iter()).await?;
        let defaulted: Vec<ConvertedRow> = defaulted.into_iter().cloned().collect();
        written += self
            .fallback
            .insert_rows(&mut transaction, &defaulted)
            .await?;
        transaction.commit().await?;
        Ok(written)
    }

    async fn copy_only<'a>(
        &self,
        connection: &mut PgConnection,
        rows: impl Iterator<Item = &'a ConvertedRow>,
    ) -> Result<u64, sqlx::Error> {
        let rows: Vec<&ConvertedRow> = rows.collect();
        // one allocation per chunk: the unescaped size, plus a separator or newline per value
        let size: usize = rows
            .iter()
            .flat_map(|row| &row.values)
            .map(|value| value.as_ref().map_or(2, String::len) + 1)
            .sum();
        let mut data = Vec::with_capacity(size + size / 64);
        let mut row_count = 0;
        for row in rows {
            encode_row(&row.values, &mut data);
            row_count += 1;
        }
        if row_count == 0 {
            return Ok(0);
        }
        let mut copy = connection.copy_in_raw(&self.sql).await?;
        if let Err(error) = copy.send(data).await {
            // contract of PgCopyIn: every COPY ends in finish() or abort()
            copy.abort("importer: sending the chunk failed").await.ok();
            return Err(error);
        }
        copy.finish().await
    }
}

/// Appends one row in COPY text format: tab-separated, `\N` for NULL, newline-terminated.
pub fn encode_row(values: &[Option<String>], out: &mut Vec<u8>) {
    for (position, value) in values.iter().enumerate() {
        if position > 0 {
            out.push(b'\t');
        }
        match value {
            None => out.extend_from_slice(b"\\N"),
            Some(text) => encode_text(text, out),
        }
    }
    out.push(b'\n');
}

/// Escapes backslash, tab, newline and carriage return; everything else is sent as is
/// (so `\.` and the literal string `NULL` arrive unchanged).
fn encode_text(text: &str, out: &mut Vec<u8>) {
    let mut rest = text.as_bytes();
    // most cells need no escape: find special bytes with memchr instead of a byte loop
    while let Some(index) = find_special(rest) {
        out.extend_from_slice(&rest[..index]);
        out.extend_from_slice(match rest[index] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[index + 1..];
    }
    out.extend_from_slice(rest);
}

/// The first byte that COPY's text format must escape.
fn find_special(bytes: &[u8]) -> Option<usize> {
    let first = memchr::memchr3(b'\\', b'\t', b'\n', bytes);
    let search_end = first.unwrap_or(bytes.len());
    match memchr::memchr(b'\r', &bytes[..search_end]) {
        Some(carriage_return) => Some(carriage_return),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(values: &[Option<&str>]) -> String {
        let values: Vec<Option<String>> = values
            .iter()
            .map(|value| value.map(str::to_string))
            .collect();
        let mut out = Vec::new();
        encode_row(&values, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_format_escapes_what_the_server_would_misread() {
        let cases = [
            (
                vec![Some("plain"), None, Some("NULL")],
                "plain\t\\N\tNULL\n",
            ),
            (vec![Some("tab\there")], "tab\\there\n"),
            (vec![Some("two\nlines\r\n")], "two\\nlines\\r\\n\n"),
            (vec![Some("back\\slash \\N")], "back\\\\slash \\\\N\n"),
            (vec![Some("\\.")], "\\\\.\n"),
            (vec![Some("")], "\n"),
            (vec![Some("ünïcødé ✓")], "ünïcødé ✓\n"),
        ];
        for (values, expected) in cases {
            assert_eq!(encoded(&values), expected, "{values:?}");
        }
    }

    #[test]
    fn long_cells_are_encoded_whole() {
        let long = "a\tb".repeat(10_000);
        let out = encoded(&[Some(long.as_str())]);
        assert_eq!(out.len(), 40_001);
    }
}
