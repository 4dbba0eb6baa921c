//! INSERT builders: one row per statement (`VALUES`) or many (`SELECT ... FROM UNNEST` of
//! one text array per column, so a statement binds one parameter per column whatever the
//! row count: PostgreSQL's 65,535-parameter limit never applies).
//!
//! Values arrive as text (see `convert`) and are cast to the column's type in SQL; text
//! columns take them uncast, so varchar(n) still refuses a value that is too long. A NOT NULL
//! column with a default falls back to the default when its value is NULL.

use sqlx::{PgConnection, Row};

use crate::pipeline::ConvertedRow;
use crate::schema::Column;
use crate::sink::chunks::ChunkMark;
use crate::sink::{TargetTable, quote_ident};

/// The INSERT statements for one target table and one sheet column order.
#[derive(Debug, Clone)]
pub struct InsertStatement {
    single_row_sql: String,
    multi_row_sql: String,
    column_count: usize,
}

impl InsertStatement {
    /// Builds the statements for `columns` (one per sheet column, in sheet order), each
    /// ending in `conflict` (an `ON CONFLICT ...` clause, for upsert) when given.
    pub fn new(table: &TargetTable, columns: &[Column], conflict: Option<&str>) -> Self {
        let head = insert_head(table, columns);
        let conflict = conflict
            .map(|clause| format!(" {clause}"))
            .unwrap_or_default();
        let placeholders: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(position, column)| value_expression(column, &format!("${}", position + 1)))
            .collect();
        let single_row_sql = format!("{head} VALUES ({}){conflict}", placeholders.join(", "));
        let arrays: Vec<String> = (1..=columns.len())
            .map(|position| format!("${position}::text[]"))
            .collect();
        let multi_row_sql = format!(
            "{head} {}{conflict}",
            select_columns(columns, &format!("UNNEST({})", arrays.join(", ")))
        );
        let column_count = columns.len();
        InsertStatement {
            single_row_sql,
            multi_row_sql,
            column_count,
        }
    }

    /// Inserts one row with one `INSERT ... VALUES`; with `mark`, recorded in the chunk
    /// ledger by the same statement.
    pub async fn insert_row(
        &self,
        connection: &mut PgConnection,
        row: &ConvertedRow,
        mark: Option<&ChunkMark>,
    ) -> Result<u64, sqlx::Error> {
        let sql = match mark {
            Some(mark) => recorded(&self.single_row_sql, self.column_count, mark),
            None => self.single_row_sql.clone(),
        };
        let mut query = sqlx::query(&sql);
        for value in &row.values {
            query = query.bind(value.as_deref());
        }
        run_counted(query, mark, connection).await
    }

    /// Inserts all `rows` with one `INSERT ... SELECT FROM UNNEST(...)`; with `mark`,
    /// recorded in the chunk ledger by the same statement.
    pub async fn insert_rows(
        &self,
        connection: &mut PgConnection,
        rows: &[ConvertedRow],
        mark: Option<&ChunkMark>,
    ) -> Result<u64, sqlx::Error> {
        let sql = match mark {
            Some(mark) => recorded(&self.multi_row_sql, self.column_count, mark),
            None => self.multi_row_sql.clone(),
        };
        let mut query = sqlx::query(&sql);
        for position in 0..self.column_count {
            let column: Vec<Option<&str>> = rows
                .iter()
                .map(|row| row.values[position].as_deref())
                .collect();
            query = query.bind(column);
        }
        run_counted(query, mark, connection).await
    }
}

/// Runs an INSERT whose values are bound and returns the rows it wrote; with `mark`, the
/// statement is the [`recorded`] form, whose chunk-ledger arguments are bound here.
async fn run_counted(
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    mark: Option<&ChunkMark>,
    connection: &mut PgConnection,
) -> Result<u64, sqlx::Error> {
    match mark {
        None => Ok(query.execute(connection).await?.rows_affected()),
        Some(mark) => recorded_count(
            query
                .bind(mark.run_id)
                .bind(mark.first_row)
                .bind(mark.last_row)
                .bind(mark.fence.token)
                .bind(mark.fence.lock_key)
                .bind(mark.fence.lock_pid)
                .bind(mark.fence.lock_backend_start)
                .fetch_one(connection)
                .await?,
        ),
    }
}

/// The rows a recorded INSERT wrote, as `importer.record_chunk` returns them.
fn recorded_count(row: sqlx::postgres::PgRow) -> Result<u64, sqlx::Error> {
    let row_count: i64 = row.try_get(0)?;
    Ok(u64::try_from(row_count).unwrap_or_default())
}

/// `insert` (which binds `column_count` parameters) wrapped so that the same statement
/// records it in the chunk ledger of `mark`, so data and ledger row commit together in one
/// statement (one round trip): `WITH written AS (insert RETURNING 1) SELECT
/// importer.record_chunk(run, first, last, count, fence...)`.
fn recorded(insert: &str, column_count: usize, mark: &ChunkMark) -> String {
    let run = column_count + 1;
    // only the function's name is qualified: `insert` holds names from files and flags
    let record_chunk = mark.ledger.qualify("importer.record_chunk");
    format!(
        "WITH written AS ({insert} RETURNING 1) SELECT {record_chunk}(${run}::bigint, ${}::bigint, ${}::bigint, (SELECT count(*) FROM written), ${}::bigint, ${}::bigint, ${}::integer, ${}::bigint)",
        run + 1,
        run + 2,
        run + 3,
        run + 4,
        run + 5,
        run + 6
    )
}

/// `INSERT INTO target (columns...)`.
pub fn insert_head(table: &TargetTable, columns: &[Column]) -> String {
    let column_list: Vec<String> = columns
        .iter()
        .map(|column| quote_ident(&column.name))
        .collect();
    format!(
        "INSERT INTO {} ({})",
        table.name.quoted(),
        column_list.join(", ")
    )
}

/// `SELECT <typed values> FROM <source> AS u(c1, ..., cn)`: `source` yields one text column
/// per sheet column (UNNEST of text arrays, or a text table).
pub fn select_columns(columns: &[Column], source: &str) -> String {
    let selected: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(position, column)| value_expression(column, &format!("u.c{}", position + 1)))
        .collect();
    let aliases: Vec<String> = (1..=columns.len())
        .map(|position| format!("c{position}"))
        .collect();
    format!(
        "SELECT {} FROM {source} AS u({})",
        selected.join(", "),
        aliases.join(", ")
    )
}

/// The SQL expression that turns the text in `source` into the column's value.
fn value_expression(column: &Column, source: &str) -> String {
    let typed = if column.column_type.is_text() {
        source.to_string()
    } else {
        format!("{source}::{}", column.sql_type)
    };
    match (&column.default_sql, column.not_null) {
        // contract: NULL for a NOT NULL column gets its default (it is rejected only when
        // there is none); a nullable column keeps the NULL, as psql's \copy would
        (Some(default_sql), true) => format!("COALESCE({typed}, {default_sql})"),
        _ => typed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;
    use crate::sink::TableName;

    fn column(name: &str, column_type: ColumnType, sql_type: &str) -> Column {
        Column {
            name: name.to_string(),
            column_type,
            sql_type: sql_type.to_string(),
            not_null: false,
            has_default: false,
            default_sql: None,
        }
    }

    #[test]
    fn statements_quote_names_cast_non_text_and_fall_back_to_defaults() {
        let mut created = column(
            "created at",
            ColumnType::TimestampTz,
            "timestamp with time zone",
        );
        created.not_null = true;
        created.has_default = true;
        created.default_sql = Some("now()".to_string());
        let columns = vec![
            column("name", ColumnType::Text, "character varying(20)"),
            column("qty", ColumnType::Integer, "integer"),
            created,
        ];
        let table = TargetTable {
            name: TableName::parse("sales.orders").unwrap(),
            columns: columns.clone(),
        };
        let statement = InsertStatement::new(&table, &columns, None);
        assert_eq!(
            statement.single_row_sql,
            r#"INSERT INTO "sales"."orders" ("name", "qty", "created at") VALUES ($1, $2::integer, COALESCE($3::timestamp with time zone, now()))"#
        );
        assert_eq!(
            statement.multi_row_sql,
            r#"INSERT INTO "sales"."orders" ("name", "qty", "created at") SELECT u.c1, u.c2::integer, COALESCE(u.c3::timestamp with time zone, now()) FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(c1, c2, c3)"#
        );
    }
}
