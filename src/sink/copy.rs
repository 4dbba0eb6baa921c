//! COPY FROM STDIN in PostgreSQL's text format: the encoder and the chunk writer.
//!
//! Values arrive already validated and in text input form (see `convert`), so the server
//! parses them exactly as it parses the INSERT methods' casts. Where a plain COPY cannot
//! say what the INSERT methods say (a NOT NULL column's default for a NULL value, or
//! upsert's `ON CONFLICT`), the chunk is copied into a temporary text table and moved on
//! with the same `INSERT ... SELECT` the batch method uses, in one transaction, so every
//! method leaves the same rows.

use sqlx::{Connection, Executor, PgConnection};

use crate::pipeline::ConvertedRow;
use crate::schema::Column;
use crate::sink::chunks::ChunkMark;
use crate::sink::insert::{insert_head, select_columns};
use crate::sink::{TargetTable, quote_ident};

/// Per-connection temporary table that chunks pass through when a plain COPY cannot do.
const CHUNK_TABLE: &str = "importer_chunk";

/// The COPY statement for one target table and one sheet column order.
#[derive(Debug, Clone)]
pub struct CopyStatement {
    copy_sql: String,
    /// With a plain COPY: `None`. Otherwise the temp table's DDL and the INSERT that moves a
    /// chunk from it into the target.
    via_chunk_table: Option<(String, String)>,
}

impl CopyStatement {
    /// Builds the statement for `columns` (one per sheet column, in sheet order); `conflict`
    /// is upsert's `ON CONFLICT ...` clause.
    pub fn new(table: &TargetTable, columns: &[Column], conflict: Option<&str>) -> Self {
        let needs_default = columns
            .iter()
            .any(|column| column.not_null && column.default_sql.is_some());
        if !needs_default && conflict.is_none() {
            let column_list: Vec<String> = columns
                .iter()
                .map(|column| quote_ident(&column.name))
                .collect();
            return CopyStatement {
                copy_sql: format!(
                    "COPY {} ({}) FROM STDIN",
                    table.name.quoted(),
                    column_list.join(", ")
                ),
                via_chunk_table: None,
            };
        }
        let text_columns: Vec<String> = (1..=columns.len())
            .map(|position| format!("c{position} text"))
            .collect();
        let create = format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {CHUNK_TABLE} ({}) ON COMMIT DELETE ROWS",
            text_columns.join(", ")
        );
        let insert = format!(
            "{} {} {}",
            insert_head(table, columns),
            select_columns(columns, CHUNK_TABLE),
            conflict.unwrap_or_default()
        );
        CopyStatement {
            copy_sql: format!("COPY {CHUNK_TABLE} FROM STDIN"),
            via_chunk_table: Some((create, insert)),
        }
    }

    /// Writes `rows`: all or nothing. Returns the rows written. With `mark`, the write is
    /// recorded in the chunk ledger in the same transaction.
    pub async fn copy_rows(
        &self,
        connection: &mut PgConnection,
        rows: &[ConvertedRow],
        mark: Option<&ChunkMark>,
    ) -> Result<u64, sqlx::Error> {
        let Some((create, insert)) = &self.via_chunk_table else {
            return match mark {
                None => copy_in(connection, &self.copy_sql, rows).await,
                Some(mark) => copy_recorded(connection, &self.copy_sql, rows, mark).await,
            };
        };
        let mut transaction = connection.begin().await?;
        sqlx::query(create).execute(&mut *transaction).await?;
        copy_in(&mut transaction, &self.copy_sql, rows).await?;
        let written = sqlx::query(insert)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if let Some(mark) = mark {
            let record = mark
                .ledger
                .qualify("SELECT importer.record_chunk($1, $2, $3, $4, $5, $6, $7, $8)");
            sqlx::query(&record)
                .bind(mark.run_id)
                .bind(mark.first_row)
                .bind(mark.last_row)
                .bind(i64::try_from(written).unwrap_or(i64::MAX))
                .bind(mark.fence.token)
                .bind(mark.fence.lock_key)
                .bind(mark.fence.lock_pid)
                .bind(mark.fence.lock_backend_start)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(written)
    }
}

/// A plain COPY and its chunk-ledger row in one transaction: BEGIN, the COPY, then one
/// simple-query message with the ledger call and the COMMIT, so recording costs one round
/// trip more than the COPY alone, plus the BEGIN.
async fn copy_recorded(
    connection: &mut PgConnection,
    copy_sql: &str,
    rows: &[ConvertedRow],
    mark: &ChunkMark,
) -> Result<u64, sqlx::Error> {
    (&mut *connection).execute("BEGIN").await?;
    let result = match copy_in(&mut *connection, copy_sql, rows).await {
        Ok(written) => {
            let record_and_commit = format!("{}; COMMIT", mark.record_sql(written));
            // a &str without arguments goes out as one simple-query message
            (&mut *connection)
                .execute(record_and_commit.as_str())
                .await
                .map(|_| written)
        }
        Err(error) => Err(error),
    };
    if result.is_err() {
        // a failed statement skips the rest of its message, COMMIT included; the error that
        // got here is the one to report, and a connection that cannot roll back is closed
        (&mut *connection).execute("ROLLBACK").await.ok();
    }
    result
}

/// One COPY of `rows`, which ends in finish() or abort().
async fn copy_in(
    connection: &mut PgConnection,
    copy_sql: &str,
    rows: &[ConvertedRow],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    // one allocation per chunk: the unescaped size, plus a separator or newline per value
    let size: usize = rows
        .iter()
        .flat_map(|row| &row.values)
        .map(|value| value.as_ref().map_or(2, String::len) + 1)
        .sum();
    let mut data = Vec::with_capacity(size + size / 64);
    for row in rows {
        encode_row(&row.values, &mut data);
    }
    let mut copy = connection.copy_in_raw(copy_sql).await?;
    if let Err(error) = copy.send(data).await {
        // contract of PgCopyIn: every COPY ends in finish() or abort()
        copy.abort("importer: sending the chunk failed").await.ok();
        return Err(error);
    }
    copy.finish().await
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
