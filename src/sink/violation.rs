//! Constraint violations described for people: the server's message once, with the key
//! columns of the constraint (or unique index) it names, read from the catalog.
//!
//! PostgreSQL's DETAIL (`Key (email)=(a@x) already exists.`) holds the offending values,
//! which are cell values and never go to stderr or the ledger; the columns come from
//! `pg_index` or `pg_constraint` instead. Used where a whole statement fails on a constraint
//! (publishing an atomic run); rows rejected one by one keep their own reasons.

use sqlx::PgPool;
use sqlx::postgres::PgDatabaseError;

use super::quote_ident;

/// The first server error in `error`'s chain that names a constraint, as
/// `duplicate key value violates unique constraint "people_pkey" on (id)`; `None` when there
/// is none. A catalog lookup that fails leaves the columns out rather than the message.
pub async fn describe(pool: &PgPool, error: &anyhow::Error) -> Option<String> {
    let database = error.chain().find_map(|cause| match cause.downcast_ref() {
        Some(sqlx::Error::Database(database)) => Some(database),
        _ => None,
    })?;
    let postgres = database.try_downcast_ref::<PgDatabaseError>()?;
    let constraint = postgres.constraint()?;
    let message = postgres.message().to_string();
    let columns = match postgres.schema() {
        Some(schema) => key_columns(pool, schema, postgres.table(), constraint).await,
        None => Vec::new(),
    };
    if columns.is_empty() {
        return Some(message);
    }
    let columns: Vec<String> = columns.iter().map(|column| quote_ident(column)).collect();
    Some(format!("{message} on ({})", columns.join(", ")))
}

/// The columns of the unique index or constraint `constraint` in `schema` (on `table`), in
/// key order; empty when the catalog does not say.
async fn key_columns(
    pool: &PgPool,
    schema: &str,
    table: Option<&str>,
    constraint: &str,
) -> Vec<String> {
    // a unique index made with CREATE UNIQUE INDEX has no pg_constraint row, and a primary
    // key or unique constraint has an index of its own name: the index comes first
    let columns: Result<Option<Vec<String>>, sqlx::Error> = sqlx::query_scalar(
        "SELECT coalesce(
                  (SELECT ARRAY(SELECT a.attname::text
                                  FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                 ORDER BY k.ord)
                     FROM pg_index i
                    WHERE i.indexrelid = to_regclass($1)),
                  (SELECT ARRAY(SELECT a.attname::text
                                  FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                                 ORDER BY k.ord)
                     FROM pg_constraint c
                    WHERE c.conname = $2 AND c.connamespace = to_regnamespace($3)
                      AND ($4::text IS NULL OR c.conrelid = to_regclass($5))
                    LIMIT 1))",
    )
    .bind(format!("{}.{}", quote_ident(schema), quote_ident(constraint)))
    .bind(constraint)
    .bind(quote_ident(schema))
    .bind(table)
    .bind(table.map(|table| format!("{}.{}", quote_ident(schema), quote_ident(table))))
    .fetch_one(pool)
    .await;
    columns.ok().flatten().unwrap_or_default()
}
