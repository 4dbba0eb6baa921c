//! Integration tests: the real binary against a real PostgreSQL, one database per test
//! (see util.rs). Run with `DATABASE_URL=postgres://USER@HOST:PORT/DB cargo test`.

mod cli;
mod cluster;
mod create_table;
mod faults;
mod formats;
mod modes;
mod nightly;
mod rejects;
mod strategies;
mod util;
