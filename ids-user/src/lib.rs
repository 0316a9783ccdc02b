//! The `ids` sensor as a library: the binary's `main` only calls `cli::run`.
pub mod bans;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod detect;
pub mod event;
pub mod integrity;
pub mod monitor;
pub mod sensor;
pub mod store;
pub mod tinyids;
