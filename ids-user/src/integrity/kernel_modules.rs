//! `kernel_modules`: the loaded modules as `/proc/modules` lists them, keeping only what does not
//! change while the module stays loaded: its name and size (use count, users, state and load
//! address are dropped). Item id `module:<name>`; the digest is that of the detail's JSON.
//! A kernel built without module support has no `/proc/modules` (while `/proc` exists): that is
//! no items, not an error.
use std::path::PathBuf;

use serde::Serialize;

use super::{Collector, CollectorError, Item, KindSpec};
use crate::integrity::config::CollectorConfig;

pub const SPEC: KindSpec = KindSpec { kind: "kernel_modules", settings: &[], construct };

fn construct(config: &CollectorConfig) -> Result<Box<dyn Collector>, CollectorError> {
    Ok(Box::new(KernelModules { name: config.name.clone(), source: PathBuf::from("/proc/modules") }))
}

#[derive(Debug, Clone)]
pub struct KernelModules {
    name: String,
    /// `/proc/modules`, or a fixture in tests.
    source: PathBuf,
}

#[derive(Debug, Serialize)]
struct ModuleDetail<'a> {
    name: &'a str,
    size: u64,
}

impl KernelModules {
    #[cfg(test)]
    pub fn from_file(name: &str, source: impl Into<PathBuf>) -> Self {
        Self { name: name.to_string(), source: source.into() }
    }
}

impl Collector for KernelModules {
    fn follows(&self, trigger: super::Trigger) -> bool {
        trigger == super::Trigger::KernelModules
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> Result<Vec<Item>, CollectorError> {
        match std::fs::read_to_string(&self.source) {
            Ok(text) => Ok(parse_modules(&text)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && self.source.parent().is_some_and(|proc_root| proc_root.is_dir()) =>
            {
                Ok(Vec::new())
            }
            Err(source) => Err(CollectorError::Read {
                collector: self.name.clone(),
                path: self.source.display().to_string(),
                source,
            }),
        }
    }
}

/// One item per line `name size use_count users state address [taint]`; a line whose size is
/// not a number becomes an error item rather than being dropped.
fn parse_modules(text: &str) -> Vec<Item> {
    let mut items = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let id = format!("module:{name}");
        items.push(match fields.next().map(str::parse::<u64>) {
            Some(Ok(size)) => Item::of_detail(id, ModuleDetail { name, size }),
            _ => Item::error(id, format!("unparsable /proc/modules line {line:?}")),
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::collector_digest;
    use crate::integrity::test_support::ids;

    const FIXTURE: &str = "\
ext4 1007616 1 - Live 0xffffffffc0a00000
mbcache 16384 1 ext4, Live 0xffffffffc09f0000
jbd2 196608 1 ext4, Live 0xffffffffc09b0000 (E)
";

    #[test]
    fn keeps_name_and_size_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modules");
        std::fs::write(&path, FIXTURE).unwrap();
        let items = KernelModules::from_file("kernel_modules", &path).collect().unwrap();
        assert_eq!(ids(&items), ["module:ext4", "module:jbd2", "module:mbcache"]);
        assert_eq!(items[0].detail, serde_json::json!({"name": "ext4", "size": 1007616}));

        // Volatile fields (use count, users, state, address) do not change the digest.
        let moved = FIXTURE.replace("1 - Live 0xffffffffc0a00000", "3 - Loading 0xffffffffc1200000");
        std::fs::write(&path, &moved).unwrap();
        let moved_items = KernelModules::from_file("kernel_modules", &path).collect().unwrap();
        assert_eq!(collector_digest(&items), collector_digest(&moved_items));

        std::fs::write(&path, FIXTURE.replace("16384", "16385")).unwrap();
        let resized = KernelModules::from_file("kernel_modules", &path).collect().unwrap();
        assert_ne!(collector_digest(&items), collector_digest(&resized));
    }

    #[test]
    fn kernel_without_modules_has_no_items() {
        let dir = tempfile::tempdir().unwrap();
        let items = KernelModules::from_file("kernel_modules", dir.path().join("modules")).collect().unwrap();
        assert!(items.is_empty());
    }

    #[test]
    fn unreadable_source_is_an_error_naming_it_and_bad_line_an_error_item() {
        let err = KernelModules::from_file("kernel_modules", "/nonexistent/modules").collect().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/modules"), "{err}");
        let items = parse_modules("broken notanumber\n");
        assert!(items[0].error_text().is_some());
    }

    #[test]
    fn reads_this_machine() {
        // Kernels without module support have no /proc/modules: no items then.
        KernelModules::from_file("kernel_modules", "/proc/modules").collect().unwrap();
    }
}
