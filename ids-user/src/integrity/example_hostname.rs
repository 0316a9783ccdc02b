//! `example_hostname`: a deliberately small custom backend, the model for new ones (see the
//! module documentation of [`super`]). It hashes `/etc/hostname` (item `hostname:/etc/hostname`)
//! and the running kernel's release (item `kernel:release`, from `/proc/sys/kernel/osrelease`).
//! It takes no settings. Either file missing becomes an error item.
use std::path::PathBuf;

use serde::Serialize;

use super::{Collector, CollectorError, Item, KindSpec, sha256};
use crate::integrity::config::CollectorConfig;

/// The registration: kind string, accepted settings, constructor.
pub const SPEC: KindSpec = KindSpec { kind: "example_hostname", settings: &[], construct };

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(ExampleHostname {
        name: config.name.clone(),
        hostname_file: PathBuf::from("/etc/hostname"),
        release_file: PathBuf::from("/proc/sys/kernel/osrelease"),
    }))
}

pub struct ExampleHostname {
    name: String,
    hostname_file: PathBuf,
    release_file: PathBuf,
}

#[derive(Serialize)]
struct TextDetail {
    text: String,
}

impl Collector for ExampleHostname {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> Result<Vec<Item>, CollectorError> {
        let item = |id: String, path: &PathBuf| match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = text.trim().to_string();
                Item::new(id, sha256(text.as_bytes()), TextDetail { text })
            }
            Err(e) => Item::error(id, format!("{}: {e}", path.display())),
        };
        Ok(vec![
            item(format!("hostname:{}", self.hostname_file.display()), &self.hostname_file),
            item("kernel:release".to_string(), &self.release_file),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_trimmed_text_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hostname"), "box\n").unwrap();
        let collector = ExampleHostname {
            name: "example".into(),
            hostname_file: dir.path().join("hostname"),
            release_file: dir.path().join("missing"),
        };
        let items = collector.collect().unwrap();
        assert_eq!(items[0].digest, sha256(b"box"));
        assert_eq!(items[0].detail["text"], "box");
        assert_eq!(items[1].id, "kernel:release");
        assert!(items[1].error_text().unwrap().contains("missing"));
    }
}
