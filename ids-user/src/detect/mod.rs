//! Attack detection from logs and file and exec events (README "Detection").
//!
//! - [`rules`]: the rules file (shipped, embedded; extended or replaced by `rules = PATH`).
//! - [`parse`]: sshd and access-log parsers that take the address only from what the logging
//!   program wrote; evidence escaping.
//! - [`window`]: per (rule, address) sliding windows; one alert per burst.
//! - [`follow`]: log following driven by the sensor's write events, across rotation and restarts.
//! - [`webshell`]: signatures scanned in files written under `web_roots`.
//! - [`process`]: a web server (or a descendant) executing a program.
//! - [`worker`]: the detect thread that ties them together, writes alerts to the events log and
//!   the store, and sends ban requests to the one ban path (`crate::bans`).
pub mod config;
pub mod engine;
pub mod follow;
pub mod journal;
pub mod parse;
pub mod process;
pub mod rules;
pub mod webshell;
pub mod window;
pub mod worker;

use std::path::PathBuf;

use ids_common::FileOp;

/// Longest log line the detectors look at; the rest of a longer line is cut off and counted.
pub const MAX_LINE: usize = 8192;
/// Longest evidence string in an alert.
pub const MAX_EVIDENCE: usize = 512;

/// What the worker's queue carries.
#[derive(Debug)]
pub(crate) enum Input {
    File {
        op: FileOp,
        path: PathBuf,
        new_path: Option<PathBuf>,
    },
    Exec {
        pid: u32,
        ppid: u32,
        filename: String,
        argv: Vec<String>,
        /// The process table's view of it (its ancestors spare reading `/proc`).
        process: Option<std::sync::Arc<crate::process::ProcessView>>,
    },
    /// A line of `[[journal]]` source number `source` (see [`journal`]).
    Journal {
        source: usize,
        line: Vec<u8>,
    },
    /// SIGHUP: the detectors' settings and rules as read again. Queued behind the events that
    /// came before it, so each event meets the rules of its time and none is skipped.
    Reload(Box<worker::Reload>),
}
