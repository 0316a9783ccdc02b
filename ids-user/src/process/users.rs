//! User names from `/etc/passwd`, read again when it changes (checked at most every few seconds).
//! Accounts only a directory service knows (LDAP, sssd) have no name here: the uid stands alone.
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

const CHECK_EVERY: Duration = Duration::from_secs(5);
const PASSWD: &str = "/etc/passwd";

pub(super) struct UserNames {
    names: HashMap<u32, String>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl UserNames {
    pub(super) fn new() -> Self {
        Self { names: HashMap::new(), modified: None, checked: None }
    }

    pub(super) fn name(&mut self, uid: u32) -> Option<String> {
        let now = Instant::now();
        if self.checked.is_none_or(|at| now.duration_since(at) >= CHECK_EVERY) {
            self.checked = Some(now);
            let modified = std::fs::metadata(PASSWD).and_then(|m| m.modified()).ok();
            if modified != self.modified {
                self.modified = modified;
                self.names = parse_passwd(&std::fs::read_to_string(PASSWD).unwrap_or_default());
            }
        }
        self.names.get(&uid).cloned()
    }
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        if let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next())
            && let Ok(uid) = uid.parse()
        {
            // The first entry for a uid wins, as getpwuid(3) answers.
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_give_names_and_bad_lines_are_skipped() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\ntoor:x:0:0::/:/bin/sh\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn root_is_named_on_this_host() {
        assert_eq!(UserNames::new().name(0).as_deref(), Some("root"));
    }
}
