//! Webshell signatures, scanned in files created or written under a web root.
//!
//! Every regular file is scanned (attackers hide PHP in `.jpg` and `.phtml`), up to
//! [`MAX_SCAN`] bytes. The signatures are byte regexes in one `RegexSet`, so a scan is one
//! linear pass whatever the file holds.
use std::io::Read as _;
use std::path::Path;

use regex::bytes::{Regex, RegexSet};

/// Bytes of a file that are scanned; the rest of a larger file is not.
pub const MAX_SCAN: u64 = 1 << 20;

/// (id, description, pattern).
const SIGNATURES: &[(&str, &str, &str)] = &[
    (
        "webshell-php-eval-decoded",
        "PHP eval/assert of decoded data",
        r"(?i)\b(?:eval|assert)\s*\(\s*(?:@\s*)?(?:base64_decode|gzinflate|gzuncompress|gzdecode|str_rot13|hex2bin|strrev|rawurldecode|convert_uudecode)\s*\(",
    ),
    (
        "webshell-php-eval-request",
        "PHP eval/assert/create_function of request input",
        r"(?i)\b(?:eval|assert|create_function)\s*\(\s*[^;]{0,100}?\$_(?:GET|POST|REQUEST|COOKIE|SERVER|FILES)\b",
    ),
    (
        "webshell-php-exec-request",
        "PHP command execution of request input",
        r"(?i)\b(?:system|passthru|shell_exec|exec|popen|proc_open|pcntl_exec)\s*\(\s*[^;]{0,100}?\$_(?:GET|POST|REQUEST|COOKIE|SERVER)\b",
    ),
    (
        "webshell-php-request-call",
        "PHP call of a function named by the request ($_POST[...](...))",
        r"(?i)\$_(?:GET|POST|REQUEST|COOKIE)\s*\[[^\]]{0,64}\]\s*\(",
    ),
    (
        "webshell-php-backtick-request",
        "PHP backtick execution of request input",
        r"(?i)`[^`]{0,100}?\$_(?:GET|POST|REQUEST|COOKIE)\b",
    ),
    (
        "webshell-php-preg-replace-e",
        "PHP preg_replace with the /e (evaluate) modifier",
        r#"(?i)preg_replace\s*\(\s*['"]([/#~|!@%]).{0,200}?[/#~|!@%][imsxuADSUXJ]*e[imsxuADSUXJ]*['"]"#,
    ),
    (
        "webshell-php-decode-request",
        "PHP decoding of request input (payload smuggling)",
        r"(?i)\b(?:base64_decode|gzinflate|str_rot13)\s*\(\s*\$_(?:GET|POST|REQUEST|COOKIE)\b",
    ),
    (
        "webshell-jsp-exec-request",
        "JSP command execution of request input",
        r"(?s)(?:Runtime\s*\.\s*getRuntime\s*\(\s*\)\s*\.\s*exec|new\s+ProcessBuilder)\s*\(.{0,200}?request\s*\.\s*getParameter",
    ),
    (
        "webshell-asp-eval-request",
        "ASP/ASPX eval or execute of request input",
        r#"(?i)\b(?:eval|execute(?:global)?)\s*[\( ]\s*request\s*(?:\.\s*(?:form|querystring|item))?\s*[\(\[]"#,
    ),
    (
        "webshell-known-shell",
        "Marker of a known webshell kit",
        r"(?i)(?:c99shell|r57shell|b374k|\bwso\s?shell|FilesMan|weevely|p0wny|china\s?chopper)",
    ),
];

pub struct Scanner {
    set: RegexSet,
    each: Vec<Regex>,
}

/// A signature found in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub id: &'static str,
    pub description: &'static str,
    /// The matched text (lossy UTF-8, not yet escaped).
    pub excerpt: String,
}

/// What a scan saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub findings: Vec<Finding>,
    pub size: u64,
    /// The file was larger than [`MAX_SCAN`]; only its start was scanned.
    pub truncated: bool,
    /// SHA-256 of the scanned bytes (hex): the same contents are not alerted twice.
    pub digest: String,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        let patterns: Vec<&str> = SIGNATURES.iter().map(|s| s.2).collect();
        Self {
            set: RegexSet::new(&patterns).expect("shipped webshell signatures compile"),
            each: patterns.iter().map(|p| Regex::new(p).expect("shipped webshell signature compiles")).collect(),
        }
    }

    pub fn scan_bytes(&self, bytes: &[u8]) -> Vec<Finding> {
        self.set
            .matches(bytes)
            .iter()
            .map(|i| {
                let excerpt = self.each[i]
                    .find(bytes)
                    .map(|m| String::from_utf8_lossy(&bytes[m.start()..m.end().min(m.start() + 200)]).into_owned())
                    .unwrap_or_default();
                Finding { id: SIGNATURES[i].0, description: SIGNATURES[i].1, excerpt }
            })
            .collect()
    }

    /// Scans a regular file (not following a symlink at `path`); `Ok(None)` if it is not one.
    pub fn scan_file(&self, path: &Path) -> std::io::Result<Option<Scan>> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let file = std::fs::File::open(path)?;
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_SCAN) as usize);
        file.take(MAX_SCAN + 1).read_to_end(&mut bytes)?;
        let truncated = bytes.len() as u64 > MAX_SCAN;
        bytes.truncate(MAX_SCAN as usize);
        let digest = crate::integrity::hex(&crate::integrity::sha256(&bytes));
        Ok(Some(Scan { findings: self.scan_bytes(&bytes), size: meta.len(), truncated, digest }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Vec<&'static str> {
        Scanner::new().scan_bytes(text.as_bytes()).into_iter().map(|f| f.id).collect()
    }

    #[test]
    fn webshells_are_found() {
        let cases = [
            ("<?php eval(base64_decode('ZWNobyAxOw==')); ?>", "webshell-php-eval-decoded"),
            ("<?php @eval(gzinflate(base64_decode($x))); ?>", "webshell-php-eval-decoded"),
            ("<?php eval($_POST['cmd']); ?>", "webshell-php-eval-request"),
            ("<?php assert(stripslashes($_REQUEST[\"a\"])); ?>", "webshell-php-eval-request"),
            ("<?php system($_GET['c']); ?>", "webshell-php-exec-request"),
            ("<?php echo shell_exec('ls ' . $_GET['d']); ?>", "webshell-php-exec-request"),
            ("<?php $p = proc_open($_POST['x'], $d, $pipes); ?>", "webshell-php-exec-request"),
            ("<?php $_POST['f']($_POST['a']); ?>", "webshell-php-request-call"),
            ("<?php echo `$_GET[c]`; ?>", "webshell-php-backtick-request"),
            ("<?php preg_replace('/.*/e', $_POST['code'], ''); ?>", "webshell-php-preg-replace-e"),
            ("<% Runtime.getRuntime().exec(request.getParameter(\"cmd\")); %>", "webshell-jsp-exec-request"),
            ("<%@ Page Language=\"Jscript\"%><% eval(Request.Item[\"x\"],\"unsafe\"); %>", "webshell-asp-eval-request"),
            ("<?php /* b374k shell */ ?>", "webshell-known-shell"),
        ];
        for (text, expected) in cases {
            assert!(ids(text).contains(&expected), "{text:?} gave {:?}, expected {expected}", ids(text));
        }
    }

    #[test]
    fn ordinary_web_code_is_not_a_webshell() {
        let benign = [
            "<?php echo htmlspecialchars($_GET['q'], ENT_QUOTES); ?>",
            "<?php $out = shell_exec('uptime'); echo $out; ?>",
            "<?php $data = base64_decode($row['avatar']); file_put_contents($path, $data); ?>",
            "<?php $name = $_POST['name']; $stmt->execute([$name]); ?>",
            "<?php echo preg_replace('/\\s+/', ' ', $text); ?>",
            "<html><body><script>function evaluate(x) { return x; }</script></body></html>",
            "<% String name = request.getParameter(\"name\"); out.println(name); %>",
        ];
        for text in benign {
            assert!(ids(text).is_empty(), "{text:?} flagged as {:?}", ids(text));
        }
    }

    #[test]
    fn large_files_are_scanned_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.php");
        let mut text = vec![b' '; (MAX_SCAN + 100) as usize];
        text.extend_from_slice(b"<?php eval($_POST['x']); ?>");
        std::fs::write(&path, &text).unwrap();
        let scan = Scanner::new().scan_file(&path).unwrap().unwrap();
        assert!(scan.truncated && scan.findings.is_empty());
        assert_eq!(scan.size, text.len() as u64);
        std::os::unix::fs::symlink(&path, dir.path().join("link.php")).unwrap();
        assert_eq!(Scanner::new().scan_file(&dir.path().join("link.php")).unwrap(), None);
    }
}
