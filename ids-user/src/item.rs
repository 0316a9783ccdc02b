//! What integrity hashes and the store keeps: an [`Item`] (an id, its SHA-256 [`Digest`], a small
//! description), the digest's hex form, and the escaping of paths that are not UTF-8 (module
//! documentation of `crate::integrity`, *Paths in ids*), shared by events, items and the store.
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// One hashed thing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// What was hashed, prefixed by its kind (`file:/etc/passwd`); unique within a collector.
    pub id: String,
    /// SHA-256 of the thing (contents, canonical metadata, error text, ...).
    #[serde(serialize_with = "serialize_hex")]
    pub digest: Digest,
    /// A small description of what was hashed (mode, size, ...), or `{"error": ...}`.
    pub detail: serde_json::Value,
}

impl Item {
    /// An item whose digest was computed by the caller.
    pub fn new(id: impl Into<String>, digest: Digest, detail: impl Serialize) -> Self {
        Self { id: id.into(), digest, detail: to_json(&detail) }
    }

    /// An item whose digest is the SHA-256 of `detail`'s canonical JSON (struct field order).
    pub fn of_detail(id: impl Into<String>, detail: impl Serialize) -> Self {
        let detail = to_json(&detail);
        let digest = sha256(detail.to_string().as_bytes());
        Self { id: id.into(), digest, detail }
    }

    /// An error item: the digest is that of the error text, the detail `{"error": text}`.
    pub fn error(id: impl Into<String>, error: impl std::fmt::Display) -> Self {
        let error = error.to_string();
        Self { id: id.into(), digest: sha256(error.as_bytes()), detail: serde_json::json!({ "error": error }) }
    }

    /// The error text of an error item.
    pub fn error_text(&self) -> Option<&str> {
        self.detail.get("error").and_then(|e| e.as_str())
    }
}

fn to_json(detail: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(detail)
        .unwrap_or_else(|e| serde_json::json!({ "error": format!("detail not serialisable: {e}") }))
}

/// `(false, path)` for a UTF-8 path, `(true, percent-encoded path)` otherwise (module
/// documentation, *Paths in ids*).
pub fn escape_path(path: &std::path::Path) -> (bool, String) {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_os_str().as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return (false, text.to_string());
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    (true, out)
}

pub(crate) fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// SHA-256 of a byte string.
pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Lower-case hex.
pub fn hex(digest: &Digest) -> String {
    use std::fmt::Write as _;
    digest.iter().fold(String::with_capacity(64), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

pub(crate) fn serialize_hex<S: serde::Serializer>(digest: &Digest, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex(digest))
}
