//! Integration tests: the real binary against a real PostgreSQL, one database per test
//! (see util.rs). Run with `DATABASE_URL=postgres://USER@HOST:PORT/DB cargo test`.

mod cli;
mod cluster;
mod conventions;
mod create_table;
mod csv_input;
mod database;
mod faults;
mod formats;
mod hostile_inputs;
mod library;
mod lifecycle;
mod modes;
mod nightly;
mod rejects;
mod resume;
mod serve;
mod serve_page;
mod strategies;
mod util;
mod xls_reader;
mod xlsx_reader;
