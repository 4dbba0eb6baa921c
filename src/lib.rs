//! `importer` loads one sheet of a spreadsheet into a PostgreSQL table.
//!
//! The data flows one way:
//! `source` (calamine / CSV rows) -> `pipeline` (reader thread: `convert` each cell by the
//! column's `schema` type, record rejections in `rejects`) -> bounded channel -> `strategy`
//! workers (sequential, concurrent, batch, copy) -> `sink` (INSERT or COPY) -> `stats`.
//! `cmd` holds one file per subcommand; `cli` the flags.

pub mod cli;
pub mod cmd;
pub mod convert;
pub mod dates;
pub mod import;
pub mod job;
pub mod message;
pub mod pipeline;
pub mod progress;
pub mod rejects;
pub mod schema;
pub mod sink;
pub mod source;
pub mod stats;
pub mod strategy;
