//! The request side of the wire format: reading one command line from a connection (bounded in
//! length and time) and parsing it into a [`Request`].
//!
//! A request is one line: a command word (any case) and arguments separated by ASCII whitespace,
//! ended by CRLF or a bare LF; a line the client ends by closing its side is taken as it is.
//! Anything else (an over-long line, bytes that are not UTF-8, control characters such as NUL,
//! an empty line, an unknown command, a wrong argument count) is answered `41 INVALID COMMAND`.
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{REVISION, Reply};

/// A parsed request. Arguments are kept as sent; the command word is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `TEST {revision}` (TinyIDS 0.1.6 and every client since 0.1.4 send `TEST 2`) or `TEST`
    /// alone (revision-1 clients, TinyIDS 0.1.0-0.1.3).
    Test {
        revision: Option<String>,
    },
    Check {
        hash: String,
    },
    Update {
        hash: String,
        passphrase: String,
    },
    Delete {
        passphrase: String,
    },
    ChangePhrase {
        old: String,
        new: String,
    },
}

impl Request {
    /// The command word in upper case (for the audit log; never the arguments).
    pub fn command(&self) -> &'static str {
        match self {
            Request::Test { .. } => "TEST",
            Request::Check { .. } => "CHECK",
            Request::Update { .. } => "UPDATE",
            Request::Delete { .. } => "DELETE",
            Request::ChangePhrase { .. } => "CHANGEPHRASE",
        }
    }

    /// Whether the request carries a passphrase (and so costs an argon2 computation).
    pub fn has_passphrase(&self) -> bool {
        matches!(self, Request::Update { .. } | Request::Delete { .. } | Request::ChangePhrase { .. })
    }

    /// The line a client sends, CRLF included.
    pub fn to_line(&self) -> String {
        match self {
            Request::Test { revision: Some(revision) } => format!("TEST {revision}\r\n"),
            Request::Test { revision: None } => "TEST\r\n".into(),
            Request::Check { hash } => format!("CHECK {hash}\r\n"),
            Request::Update { hash, passphrase } => format!("UPDATE {hash} {passphrase}\r\n"),
            Request::Delete { passphrase } => format!("DELETE {passphrase}\r\n"),
            Request::ChangePhrase { old, new } => format!("CHANGEPHRASE {old} {new}\r\n"),
        }
    }

    /// The answer to TEST: 20 for revision 2, 40 for any other revision. A bare TEST is a
    /// revision-1 client's (TinyIDS 0.1.0-0.1.3), whose other commands are the same: it is
    /// answered 20 so that those clients keep working (TinyIDS 0.1.6's own server answers it 41).
    pub fn test_reply(revision: Option<&str>) -> Reply {
        match revision {
            None => Reply::Ok,
            Some(revision) if revision == REVISION => Reply::Ok,
            Some(_) => Reply::InvalidClient,
        }
    }
}

/// Why a request line could not be parsed; every case is answered 41.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty line")]
    Empty,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("control character 0x{0:02x} in the line")]
    ControlCharacter(u8),
    #[error("unknown command")]
    UnknownCommand,
    #[error("{command} takes {expected} argument(s), got {got}")]
    ArgumentCount { command: &'static str, expected: &'static str, got: usize },
}

/// A token that may be sent as one argument: not empty, no whitespace or control characters.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// Parses one request line; `line` may still carry its CRLF or LF.
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(&byte) = line.iter().find(|&&b| (b < b' ' && !b.is_ascii_whitespace()) || b == 0x7f) {
        return Err(ParseError::ControlCharacter(byte));
    }
    let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let mut words = text.split_ascii_whitespace();
    let command = words.next().ok_or(ParseError::Empty)?;
    let args: Vec<&str> = words.collect();
    let count = |command, expected: &'static str| ParseError::ArgumentCount { command, expected, got: args.len() };
    let owned = |i: usize| args[i].to_string();
    if command.eq_ignore_ascii_case("TEST") {
        match args.len() {
            0 => Ok(Request::Test { revision: None }),
            1 => Ok(Request::Test { revision: Some(owned(0)) }),
            _ => Err(count("TEST", "0 or 1")),
        }
    } else if command.eq_ignore_ascii_case("CHECK") {
        if args.len() != 1 {
            return Err(count("CHECK", "1"));
        }
        Ok(Request::Check { hash: owned(0) })
    } else if command.eq_ignore_ascii_case("UPDATE") {
        if args.len() != 2 {
            return Err(count("UPDATE", "2"));
        }
        Ok(Request::Update { hash: owned(0), passphrase: owned(1) })
    } else if command.eq_ignore_ascii_case("DELETE") {
        if args.len() != 1 {
            return Err(count("DELETE", "1"));
        }
        Ok(Request::Delete { passphrase: owned(0) })
    } else if command.eq_ignore_ascii_case("CHANGEPHRASE") {
        if args.len() != 2 {
            return Err(count("CHANGEPHRASE", "2"));
        }
        Ok(Request::ChangePhrase { old: owned(0), new: owned(1) })
    } else {
        Err(ParseError::UnknownCommand)
    }
}

/// What reading a request line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A line (its end included if one was sent); EOF after some bytes also ends a line.
    Line(Vec<u8>),
    /// More than `max_line` bytes arrived without a line end.
    TooLong,
    /// The client closed without sending anything.
    Closed,
    /// Nothing complete arrived within the read timeout.
    TimedOut,
}

/// Reads one request line of at most `max_line` bytes (line end included), giving up after
/// `timeout` in all (a client dribbling bytes cannot hold the connection longer).
pub async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_line: usize,
    timeout: Duration,
) -> std::io::Result<ReadOutcome> {
    let mut line = Vec::with_capacity(128);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let room = (max_line + 1 - line.len()).min(buf.len());
            let n = reader.read(&mut buf[..room]).await?;
            if n == 0 {
                return Ok(if line.is_empty() {
                    ReadOutcome::Closed
                } else {
                    ReadOutcome::Line(std::mem::take(&mut line))
                });
            }
            let chunk = &buf[..n];
            if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                if line.len() + end + 1 > max_line {
                    return Ok(ReadOutcome::TooLong);
                }
                line.extend_from_slice(&chunk[..=end]);
                return Ok(ReadOutcome::Line(std::mem::take(&mut line)));
            }
            line.extend_from_slice(chunk);
            if line.len() > max_line {
                return Ok(ReadOutcome::TooLong);
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(outcome) => outcome,
        Err(_) => Ok(ReadOutcome::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hash: &str) -> Request {
        Request::Check { hash: hash.into() }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(parse(b"TEST 2\r\n"), Ok(Request::Test { revision: Some("2".into()) }));
        assert_eq!(parse(b"TEST\r\n"), Ok(Request::Test { revision: None }));
        assert_eq!(parse(b"CHECK abc\r\n"), Ok(check("abc")));
        assert_eq!(parse(b"UPDATE abc pw\r\n"), Ok(Request::Update { hash: "abc".into(), passphrase: "pw".into() }));
        assert_eq!(parse(b"DELETE pw\r\n"), Ok(Request::Delete { passphrase: "pw".into() }));
        assert_eq!(parse(b"CHANGEPHRASE a b\r\n"), Ok(Request::ChangePhrase { old: "a".into(), new: "b".into() }));
    }

    #[test]
    fn command_word_is_case_insensitive_and_arguments_keep_their_case() {
        assert_eq!(parse(b"check AbC\r\n"), Ok(check("AbC")));
        assert_eq!(parse(b"ChEcK AbC\n"), Ok(check("AbC")));
        assert_eq!(
            parse(b"changephrase Old New\r\n"),
            Ok(Request::ChangePhrase { old: "Old".into(), new: "New".into() })
        );
    }

    #[test]
    fn extra_whitespace_separates_nothing_more() {
        assert_eq!(parse(b"  CHECK   abc  \r\n"), Ok(check("abc")));
        assert_eq!(
            parse(b"UPDATE\tabc \t pw\r\n"),
            Ok(Request::Update { hash: "abc".into(), passphrase: "pw".into() })
        );
    }

    #[test]
    fn crlf_lf_and_no_line_end_are_the_same_request() {
        assert_eq!(parse(b"CHECK abc\r\n"), Ok(check("abc")));
        assert_eq!(parse(b"CHECK abc\n"), Ok(check("abc")));
        assert_eq!(parse(b"CHECK abc"), Ok(check("abc")));
    }

    #[test]
    fn wrong_argument_counts_are_refused() {
        for line in [
            &b"CHECK\r\n"[..],
            b"CHECK a b\r\n",
            b"UPDATE a\r\n",
            b"UPDATE a b c\r\n",
            b"DELETE\r\n",
            b"DELETE a b\r\n",
            b"CHANGEPHRASE a\r\n",
            b"TEST 2 3\r\n",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::ArgumentCount { .. })),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn unknown_empty_non_utf8_and_nul_lines_are_refused() {
        assert_eq!(parse(b"HELLO x\r\n"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"CHECKX a\r\n"), Err(ParseError::UnknownCommand));
        assert_eq!(parse(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   \r\n"), Err(ParseError::Empty));
        assert_eq!(parse(b"CHECK \xff\xfe\r\n"), Err(ParseError::NotUtf8));
        assert_eq!(parse(b"CHECK a\0b\r\n"), Err(ParseError::ControlCharacter(0)));
        assert_eq!(parse(b"\0\r\n"), Err(ParseError::ControlCharacter(0)));
        assert_eq!(parse(b"CHECK a\x1b\r\n"), Err(ParseError::ControlCharacter(0x1b)));
    }

    #[test]
    fn test_revision_other_than_2_is_an_invalid_client() {
        assert_eq!(Request::test_reply(Some("2")), Reply::Ok);
        assert_eq!(Request::test_reply(None), Reply::Ok);
        assert_eq!(Request::test_reply(Some("1")), Reply::InvalidClient);
        assert_eq!(Request::test_reply(Some("3")), Reply::InvalidClient);
    }

    #[test]
    fn requests_round_trip_through_their_line() {
        let requests = [
            Request::Test { revision: Some("2".into()) },
            Request::Test { revision: None },
            check("ab"),
            Request::Update { hash: "ab".into(), passphrase: "p".into() },
            Request::Delete { passphrase: "p".into() },
            Request::ChangePhrase { old: "a".into(), new: "b".into() },
        ];
        for request in requests {
            assert!(request.to_line().ends_with("\r\n"));
            assert_eq!(parse(request.to_line().as_bytes()), Ok(request));
        }
    }

    #[test]
    fn replies_are_the_exact_protocol_lines() {
        let wire: Vec<&[u8]> = Reply::ALL.iter().map(|r| r.wire()).collect();
        assert_eq!(
            wire,
            [
                &b"20 OK\r\n"[..],
                b"30 MISMATCH\r\n",
                b"31 NOT FOUND\r\n",
                b"40 INVALID CLIENT\r\n",
                b"41 INVALID COMMAND\r\n",
                b"42 INVALID PASSPHRASE\r\n"
            ]
        );
        for reply in Reply::ALL {
            assert_eq!(Reply::parse(std::str::from_utf8(reply.wire()).unwrap()), Some(reply));
        }
        assert_eq!(Reply::parse("20 OKAY"), None);
    }

    /// A real loopback connection: what the server side reads for each way a client may send.
    async fn read_from(sent: &'static [u8], close: bool, max_line: usize, timeout: Duration) -> ReadOutcome {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.write_all(sent).await.unwrap();
            if close {
                stream.shutdown().await.unwrap();
            }
            // Keep the connection open until the server has read.
            tokio::time::sleep(timeout + Duration::from_millis(200)).await;
            drop(stream);
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let outcome = read_line(&mut stream, max_line, timeout).await.unwrap();
        client.abort();
        outcome
    }

    #[tokio::test]
    async fn line_reader_stops_at_the_line_end() {
        let second = Duration::from_secs(1);
        assert_eq!(
            read_from(b"CHECK a\r\nextra", false, 8192, second).await,
            ReadOutcome::Line(b"CHECK a\r\n".to_vec())
        );
        assert_eq!(read_from(b"CHECK a\n", false, 8192, second).await, ReadOutcome::Line(b"CHECK a\n".to_vec()));
    }

    #[tokio::test]
    async fn line_without_end_is_taken_when_the_client_closes_its_side() {
        let outcome = read_from(b"CHECK a", true, 8192, Duration::from_secs(1)).await;
        assert_eq!(outcome, ReadOutcome::Line(b"CHECK a".to_vec()));
        assert_eq!(read_from(b"", true, 8192, Duration::from_secs(1)).await, ReadOutcome::Closed);
    }

    #[tokio::test]
    async fn over_long_line_is_refused_without_reading_on() {
        static LONG: [u8; 9000] = [b'A'; 9000];
        assert_eq!(read_from(&LONG, false, 8192, Duration::from_secs(1)).await, ReadOutcome::TooLong);
        // Exactly the limit, line end included, is accepted.
        let mut exact = vec![b'A'; 8190];
        exact.extend_from_slice(b"\r\n");
        let exact: &'static [u8] = Box::leak(exact.into_boxed_slice());
        assert!(
            matches!(read_from(exact, false, 8192, Duration::from_secs(1)).await, ReadOutcome::Line(l) if l.len() == 8192)
        );
    }

    #[tokio::test]
    async fn client_that_sends_nothing_and_waits_times_out() {
        let started = std::time::Instant::now();
        assert_eq!(read_from(b"", false, 8192, Duration::from_millis(300)).await, ReadOutcome::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A partial line without end, and no close, times out too.
        assert_eq!(read_from(b"CHECK a", false, 8192, Duration::from_millis(300)).await, ReadOutcome::TimedOut);
    }
}
