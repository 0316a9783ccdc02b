//! Decoding ring-buffer records: the header first, its length checked against the kind, then the
//! payload, copied out unaligned. Never trusts a length it has not measured.
use ids_common::{ConnectEvent, EventHeader, ExecEvent, FileEvent, FileOp, ModuleEvent, ProcessEvent, kind};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than a header ({need} bytes)")]
    ShortHeader { len: usize, need: usize },
    #[error("record kind {kind} is unknown")]
    UnknownKind { kind: u32 },
    #[error("record of kind {kind} has {len} bytes, expected {need}")]
    WrongSize { kind: u32, len: usize, need: usize },
    #[error("record header says {said} bytes but {len} arrived")]
    SizeDisagrees { said: u32, len: usize },
    #[error("file record has unknown operation {op}")]
    UnknownFileOp { op: u32 },
    #[error("module record has unknown operation {op}")]
    UnknownModuleOp { op: u32 },
    #[error("process record has unknown operation {op}")]
    UnknownProcessOp { op: u32 },
}

/// A record as the kernel sent it.
// Decoded into a stack value and consumed at once by the reader: boxing the large variants
// would cost an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEvent {
    Exec(ExecEvent),
    File(FileEvent),
    Connect(ConnectEvent),
    Module(ModuleEvent),
    Process(ProcessEvent),
}

impl RawEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            RawEvent::Exec(e) => &e.header,
            RawEvent::File(e) => &e.header,
            RawEvent::Connect(e) => &e.header,
            RawEvent::Module(e) => &e.header,
            RawEvent::Process(e) => &e.header,
        }
    }
}

/// Reads a `T` from the first `size_of::<T>()` bytes; the caller checked the length.
fn read_record<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked above; T is a repr(C) struct of integers, valid for any bit pattern.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header_len = std::mem::size_of::<EventHeader>();
    if bytes.len() < header_len {
        return Err(DecodeError::ShortHeader { len: bytes.len(), need: header_len });
    }
    let header: EventHeader = read_record(bytes);
    let need = match header.kind {
        kind::EXEC => std::mem::size_of::<ExecEvent>(),
        kind::FILE_CHANGE => std::mem::size_of::<FileEvent>(),
        kind::CONNECT => std::mem::size_of::<ConnectEvent>(),
        kind::MODULE => std::mem::size_of::<ModuleEvent>(),
        kind::PROCESS => std::mem::size_of::<ProcessEvent>(),
        other => return Err(DecodeError::UnknownKind { kind: other }),
    };
    // Ring-buffer records are padded to 8 bytes; anything else is a mismatch.
    if bytes.len() < need || bytes.len() > need.next_multiple_of(8) {
        return Err(DecodeError::WrongSize { kind: header.kind, len: bytes.len(), need });
    }
    if header.size as usize != need {
        return Err(DecodeError::SizeDisagrees { said: header.size, len: need });
    }
    Ok(match header.kind {
        kind::EXEC => {
            let mut event: ExecEvent = read_record(bytes);
            event.args_len = event.args_len.min(ids_common::ARGS_LEN as u32);
            RawEvent::Exec(event)
        }
        kind::FILE_CHANGE => {
            let event: FileEvent = read_record(bytes);
            if FileOp::from_u32(event.op).is_none() {
                return Err(DecodeError::UnknownFileOp { op: event.op });
            }
            RawEvent::File(event)
        }
        kind::MODULE => {
            let event: ModuleEvent = read_record(bytes);
            if event.op != ids_common::MODULE_LOAD && event.op != ids_common::MODULE_FREE {
                return Err(DecodeError::UnknownModuleOp { op: event.op });
            }
            RawEvent::Module(event)
        }
        kind::PROCESS => {
            let event: ProcessEvent = read_record(bytes);
            if event.op != ids_common::PROCESS_FORK && event.op != ids_common::PROCESS_EXIT {
                return Err(DecodeError::UnknownProcessOp { op: event.op });
            }
            RawEvent::Process(event)
        }
        _ => RawEvent::Connect(read_record(bytes)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{arguments, c_string};
    use ids_common::{ARGS_LEN, PATH_LEN, path_source};

    pub fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) record of integers.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    pub fn header(kind: u32, size: usize) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        EventHeader {
            kind,
            size: size as u32,
            time_ns: 42,
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 1000,
            gid: 100,
            _pad: 0,
            comm,
        }
    }

    pub fn exec_event(filename: &str, args: &[&str]) -> ExecEvent {
        let mut event = ExecEvent {
            header: header(kind::EXEC, std::mem::size_of::<ExecEvent>()),
            args_len: 0,
            truncated: 0,
            argc: 0,
            _pad: 0,
            login: ids_common::LoginIds::default(),
            filename: [0; PATH_LEN],
            args: [0; ARGS_LEN],
        };
        event.filename[..filename.len()].copy_from_slice(filename.as_bytes());
        let joined: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
        event.args[..joined.len()].copy_from_slice(&joined);
        event.args_len = joined.len() as u32;
        event
    }

    pub fn file_event(op: FileOp, name: &str) -> FileEvent {
        let mut event = FileEvent {
            header: header(kind::FILE_CHANGE, std::mem::size_of::<FileEvent>()),
            op: op as u32,
            source: path_source::ABSOLUTE,
            dev: 8,
            mode: 0o100644,
            ino: 1234,
            dir_dev: 0,
            new_source: 0,
            dir_ino: 0,
            new_dir_dev: 0,
            truncated: 0,
            new_dir_ino: 0,
            name: [0; PATH_LEN],
            new_name: [0; PATH_LEN],
        };
        event.name[..name.len()].copy_from_slice(name.as_bytes());
        event
    }

    pub fn connect_event() -> ConnectEvent {
        ConnectEvent {
            header: header(kind::CONNECT, std::mem::size_of::<ConnectEvent>()),
            direction: ids_common::DIRECTION_OUT,
            protocol: ids_common::IPPROTO_TCP,
            family: ids_common::AF_INET,
            sport: 0,
            dport: 443,
            saddr: [0; 16],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ifindex: 0,
            _pad: 0,
        }
    }

    #[test]
    fn exec_round_trip() {
        let event = exec_event("/bin/ls", &["ls", "-l"]);
        let decoded = decode(&as_bytes(&event)).unwrap();
        assert_eq!(decoded, RawEvent::Exec(event));
        let RawEvent::Exec(e) = decoded else { unreachable!() };
        assert_eq!(arguments(&e.args[..e.args_len as usize]), ["ls", "-l"]);
        assert_eq!(c_string(&e.filename), "/bin/ls");
    }

    #[test]
    fn file_round_trip() {
        let event = file_event(FileOp::Rename, "/etc/passwd");
        assert_eq!(decode(&as_bytes(&event)).unwrap(), RawEvent::File(event));
    }

    #[test]
    fn connect_round_trip() {
        let event = connect_event();
        assert_eq!(decode(&as_bytes(&event)).unwrap(), RawEvent::Connect(event));
    }

    #[test]
    fn module_round_trip_and_bad_operation() {
        let mut event = ids_common::ModuleEvent {
            header: header(kind::MODULE, std::mem::size_of::<ids_common::ModuleEvent>()),
            op: ids_common::MODULE_FREE,
            _pad: 0,
            name: [0; ids_common::MODULE_NAME_LEN],
        };
        event.name[..5].copy_from_slice(b"dummy");
        assert_eq!(decode(&as_bytes(&event)).unwrap(), RawEvent::Module(event));
        let json = serde_json::to_value(crate::event::module(&crate::event::Clock::new(), &event)).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["op"].as_str(), json["module"].as_str()),
            (Some("module"), Some("unload"), Some("dummy"))
        );
        event.op = 7;
        assert_eq!(decode(&as_bytes(&event)), Err(DecodeError::UnknownModuleOp { op: 7 }));
    }

    #[test]
    fn truncated_records_are_errors() {
        let bytes = as_bytes(&exec_event("/bin/ls", &["ls"]));
        for len in [0, 10, 55, 56, 100, bytes.len() - 1] {
            assert!(decode(&bytes[..len]).is_err(), "{len} bytes decoded");
        }
    }

    #[test]
    fn oversized_record_is_an_error() {
        let mut bytes = as_bytes(&connect_event());
        bytes.extend_from_slice(&[0; 64]);
        assert!(matches!(decode(&bytes), Err(DecodeError::WrongSize { .. })));
    }

    #[test]
    fn unknown_kind_and_lying_header_are_errors() {
        let mut event = connect_event();
        event.header.kind = 999;
        assert_eq!(decode(&as_bytes(&event)), Err(DecodeError::UnknownKind { kind: 999 }));
        let mut event = connect_event();
        event.header.size = 9;
        assert!(matches!(decode(&as_bytes(&event)), Err(DecodeError::SizeDisagrees { .. })));
        let mut event = file_event(FileOp::Write, "/x");
        event.op = 77;
        assert_eq!(decode(&as_bytes(&event)), Err(DecodeError::UnknownFileOp { op: 77 }));
    }

    #[test]
    fn exec_args_len_beyond_buffer_is_clamped() {
        let mut event = exec_event("/bin/ls", &["ls"]);
        event.args_len = 10_000;
        let RawEvent::Exec(e) = decode(&as_bytes(&event)).unwrap() else { unreachable!() };
        assert_eq!(e.args_len as usize, ARGS_LEN);
    }
}
