//! The TinyIDS protocol, revision 2: the wire codec, a server (`ids serve`) keeping each
//! client's expected hash in SQLite, a client (`ids client ...`), TLS 1.3 on both sides, local
//! administration of the server's records (`ids server ...`) and the daemon's remote CHECK task.
//!
//! One command per TCP connection, one reply line, then the server closes. Replies are the six
//! fixed lines of [`Reply`]. TinyIDS's RSA mode is not implemented; TLS replaces it.
pub mod admin;

pub mod client;
pub mod codec;
pub mod remote_check;
pub mod server;
pub mod settings;
pub mod store;
pub mod tls;

/// The port TinyIDS servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 10500;
/// The protocol revision this implementation speaks (`TEST 2`).
pub const REVISION: &str = "2";

/// A server's answer; each is sent as its text followed by CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Mismatch,
    NotFound,
    InvalidClient,
    InvalidCommand,
    InvalidPassphrase,
}

impl Reply {
    pub const ALL: [Reply; 6] = [
        Reply::Ok,
        Reply::Mismatch,
        Reply::NotFound,
        Reply::InvalidClient,
        Reply::InvalidCommand,
        Reply::InvalidPassphrase,
    ];

    pub fn code(self) -> u16 {
        match self {
            Reply::Ok => 20,
            Reply::Mismatch => 30,
            Reply::NotFound => 31,
            Reply::InvalidClient => 40,
            Reply::InvalidCommand => 41,
            Reply::InvalidPassphrase => 42,
        }
    }

    /// The reply line without its line end.
    pub fn text(self) -> &'static str {
        match self {
            Reply::Ok => "20 OK",
            Reply::Mismatch => "30 MISMATCH",
            Reply::NotFound => "31 NOT FOUND",
            Reply::InvalidClient => "40 INVALID CLIENT",
            Reply::InvalidCommand => "41 INVALID COMMAND",
            Reply::InvalidPassphrase => "42 INVALID PASSPHRASE",
        }
    }

    /// The bytes on the wire.
    pub fn wire(self) -> &'static [u8] {
        match self {
            Reply::Ok => b"20 OK\r\n",
            Reply::Mismatch => b"30 MISMATCH\r\n",
            Reply::NotFound => b"31 NOT FOUND\r\n",
            Reply::InvalidClient => b"40 INVALID CLIENT\r\n",
            Reply::InvalidCommand => b"41 INVALID COMMAND\r\n",
            Reply::InvalidPassphrase => b"42 INVALID PASSPHRASE\r\n",
        }
    }

    /// Parses a reply line as a server sent it (line end and surrounding blanks ignored).
    pub fn parse(line: &str) -> Option<Reply> {
        let line = line.trim();
        Reply::ALL.into_iter().find(|reply| reply.text() == line)
    }

    /// Lower-case name used in JSON output and alerts (`ok`, `mismatch`, `not_found`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Reply::Ok => "ok",
            Reply::Mismatch => "mismatch",
            Reply::NotFound => "not_found",
            Reply::InvalidClient => "invalid_client",
            Reply::InvalidCommand => "invalid_command",
            Reply::InvalidPassphrase => "invalid_passphrase",
        }
    }
}
