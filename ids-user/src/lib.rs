//! The `ids` sensor as a library: the binary's `main` only calls `cli::run`.
pub(crate) mod alert;
pub(crate) mod bans;
pub(crate) mod bounds;
pub mod cli;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod daemon;
pub(crate) mod detect;
// Public for the binary's `main`, which prints a failed command's error with it.
pub mod error_text;
pub(crate) mod event;
pub(crate) mod fleet;
// Entry points for the fuzz targets (fuzz/); only built with the `fuzzing` feature, so the normal
// build keeps every other module crate-private and its dead-code analysis intact.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod harness;
pub(crate) mod integrity;
pub(crate) mod item;
pub(crate) mod metrics;
pub(crate) mod output;
pub(crate) mod path_prefix;
pub(crate) mod process;
pub(crate) mod sensor;
pub(crate) mod store;
pub(crate) mod time;
pub(crate) mod tinyids;
