//! `cargo xtask lint`'s module check: no import cycle between the top-level modules of ids-user.
//! A module's dependencies are the `crate::NAME` paths in its files, test modules and comments
//! left out.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Top-level module → the top-level modules it uses.
fn dependencies(src: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
        if path.is_dir() {
            let mut found = Vec::new();
            collect_rs(&path, &mut found)?;
            files.insert(stem, found);
        } else if path.extension().is_some_and(|e| e == "rs") && stem != "lib" && stem != "main" {
            files.insert(stem, vec![path]);
        }
    }
    let mut deps = BTreeMap::new();
    for (module, paths) in &files {
        let mut uses = BTreeSet::new();
        for path in paths {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            for name in crate_paths(&without_tests_and_comments(&text)) {
                if name != *module && files.contains_key(&name) {
                    uses.insert(name);
                }
            }
        }
        deps.insert(module.clone(), uses);
    }
    Ok(deps)
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn without_tests_and_comments(text: &str) -> String {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    code.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The NAME of every `crate::NAME` in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, m)| {
            code[at + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>()
        })
        .collect()
}

/// A cycle among `deps`, as the modules along it, if there is one.
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in deps.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, deps, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|node| visit(node, deps, &mut done, &mut Vec::new()))
}

pub fn check(root: &Path) -> Result<()> {
    let deps = dependencies(&root.join("ids-user/src"))?;
    if let Some(cycle) = find_cycle(&deps) {
        bail!("import cycle between top-level modules of ids-user: {}", cycle.join(" → "));
    }
    eprintln!("xtask: {} top-level modules of ids-user, no import cycle", deps.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_found_and_comments_and_tests_do_not_count() {
        let text = "use crate::b::X; // crate::c\nfn f() { let _ = mycrate::d::Y; }\n#[cfg(test)]\nmod tests { use crate::e; }";
        assert_eq!(crate_paths(&without_tests_and_comments(text)), ["b"]);
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        deps.insert("a".into(), ["b".to_string()].into());
        deps.insert("b".into(), ["c".to_string()].into());
        deps.insert("c".into(), BTreeSet::new());
        assert_eq!(find_cycle(&deps), None);
        deps.get_mut("c").unwrap().insert("a".into());
        assert_eq!(find_cycle(&deps).unwrap(), ["a", "b", "c", "a"]);
    }
}
