//! Who did it: the process table, fed by the kernel (forks, execs, exits) and filled from `/proc`
//! at start, and the [`ProcessView`] every event and alert carries: the process, its user and
//! login, its cgroup and container, its ancestors, and the sshd login it descends from.
//!
//! The table lives in the events writer, which enriches each event once for every consumer of the
//! bus. It is bounded: exited processes are kept [`KEEP_EXITED`] (at most [`MAX_EXITED`] of them)
//! so events that arrive late still resolve, live ones are capped at [`MAX_PROCESSES`], and a
//! sweep drops the entries of processes whose exit record was lost.
//!
//! A view is built once per process and shared by its events until the process execs, changes
//! uid, or is reparented; the ancestors it names are as they were when it was built.
mod cgroup;
pub(crate) mod exe_hash;
pub(crate) mod login;
pub(crate) mod procfs;
mod users;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ids_common::{LoginIds, NO_LOGIN};
use serde::Serialize;

pub(crate) use self::cgroup::container_of;
pub(crate) use self::exe_hash::{ExeDigest, ExeHashes};
pub(crate) use self::login::{Login, Logins};
use self::users::UserNames;

/// How long an exited process stays in the table.
pub(crate) const KEEP_EXITED: Duration = Duration::from_secs(30);
/// Exited processes kept at most (a fork storm must not grow the table).
pub(crate) const MAX_EXITED: usize = 8192;
/// Live processes tracked at most; past it the oldest exited, then any, make room.
pub(crate) const MAX_PROCESSES: usize = 65_536;
/// Ancestors a view names.
pub(crate) const MAX_ANCESTORS: usize = 8;
/// Arguments a view keeps, and bytes of them.
const MAX_ARGS: usize = 32;
const MAX_ARG_BYTES: usize = 1024;
/// How often live entries are checked against `/proc` (their exit record may have been lost).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Program paths whose resolved form is remembered at most.
const MAX_REAL_PATHS: usize = 4096;

/// A process as events and alerts name it (docs/events.md, "The process object").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ProcessView {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<String>,
    /// The audit login uid: who logged in, whatever the process became since (sudo, su).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) login_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sessionid: Option<u32>,
    pub(crate) comm: String,
    /// The program; absent when neither an exec nor `/proc` told it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exe: Option<Arc<str>>,
    pub(crate) argv: Arc<[String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) argv_truncated: bool,
    /// The cgroup v2 path (`/system.slice/ssh.service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<Arc<str>>,
    /// The container id when the cgroup path names one (docker, containerd/Kubernetes, CRI-O, podman).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) container: Option<String>,
    /// Parent first, up to [`MAX_ANCESTORS`].
    pub(crate) ancestors: Vec<Ancestor>,
    /// The sshd login this process descends from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) login: Option<Login>,
    /// The object as JSON, made at its first use and copied into every event that names it.
    #[serde(skip)]
    pub(crate) rendered: Rendered,
}

/// A view's JSON, rendered once: an event's process object costs a copy, not a serialisation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rendered(std::sync::OnceLock<Box<serde_json::value::RawValue>>);

impl PartialEq for Rendered {
    /// A cache: equal whatever it holds.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ProcessView {
    pub(crate) fn json(&self) -> &serde_json::value::RawValue {
        self.rendered.0.get_or_init(|| {
            serde_json::value::to_raw_value(self)
                .unwrap_or_else(|_| serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"))
        })
    }
}

/// Serialises an event's process object from its rendered JSON.
pub(crate) fn serialize_rendered<S: serde::Serializer>(
    view: &Option<Arc<ProcessView>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match view {
        Some(view) => view.json().serialize(serializer),
        None => serializer.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Ancestor {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exe: Option<Arc<str>>,
}

/// `vim (pid 812) ← bash ← sshd: alice from 198.18.0.2`: a process object (as JSON: the CLI
/// reads it back from the store), its ancestors up to the login (or the first three), the login.
pub(crate) fn one_line(process: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_string();
    let mut line = format!("{} (pid {})", text(&process["comm"]), process["pid"]);
    let login = process.get("login").filter(|login| login.is_object());
    let ancestors = process["ancestors"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (shown, ancestor) in ancestors.iter().enumerate() {
        if shown == 3 && login.is_none() {
            line += " ← …";
            break;
        }
        line += " ← ";
        line += &text(&ancestor["comm"]);
        if login.is_some_and(|login| login["pid"] == ancestor["pid"]) {
            break;
        }
    }
    if let Some(login) = login {
        line += &format!(": {} from {}", text(&login["user"]), text(&login["from"]));
    }
    line
}

/// What the table knows of one process.
#[derive(Debug, Clone)]
struct Entry {
    ppid: u32,
    uid: u32,
    login: LoginIds,
    comm: String,
    exe: Option<Arc<str>>,
    argv: Arc<[String]>,
    argv_truncated: bool,
    /// When a cgroup id is not known (a kernel without the helper), the path `/proc` gave.
    cgroup_path: Option<Arc<str>>,
    exited: Option<Instant>,
    /// Forked and not seen exec yet: a record under another name means an exec record is on
    /// its way (execs and file changes come on different rings).
    exec_pending: bool,
    /// The view, and the login generation it was built at (a view without a login is rebuilt
    /// once a new login is known: the sshd line may arrive after the session's first events).
    view: Option<(Arc<ProcessView>, u64)>,
}

/// Counters `ids status` shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct TableStats {
    pub(crate) live: usize,
    pub(crate) exited: usize,
    /// Processes first seen through `/proc` rather than a fork record.
    pub(crate) from_proc: u64,
    /// Entries dropped to stay within `MAX_PROCESSES`.
    pub(crate) evicted: u64,
}

pub(crate) struct ProcessTable {
    entries: HashMap<u32, Entry>,
    /// Exited pids in the order they exited.
    exited: VecDeque<(Instant, u32)>,
    cgroups: cgroup::CgroupNames,
    users: UserNames,
    logins: Arc<Logins>,
    /// Program paths as execs name them → with links resolved (forgotten at each sweep, so a
    /// link that changes is followed again).
    real_paths: HashMap<String, Arc<str>>,
    /// Digests of programs, for exec events (`None`: not hashed).
    exe_hashes: Option<ExeHashes>,
    last_sweep: Instant,
    stats: TableStats,
}

impl ProcessTable {
    /// A table filled from `/proc`.
    pub(crate) fn new(logins: Arc<Logins>, exe_hashes: Option<ExeHashes>) -> Self {
        let mut table = Self::empty(logins);
        table.exe_hashes = exe_hashes;
        for pid in procfs::pids() {
            if let Some(entry) = table.read_proc(pid) {
                table.entries.insert(pid, entry);
            }
        }
        table
    }

    fn empty(logins: Arc<Logins>) -> Self {
        Self {
            entries: HashMap::new(),
            exited: VecDeque::new(),
            cgroups: cgroup::CgroupNames::new(),
            users: UserNames::new(),
            logins,
            real_paths: HashMap::new(),
            exe_hashes: None,
            last_sweep: Instant::now(),
            stats: TableStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> TableStats {
        TableStats { live: self.entries.len() - self.exited.len(), exited: self.exited.len(), ..self.stats }
    }

    /// A new process: the child of `parent` (the header's process), which it copies.
    pub(crate) fn fork(&mut self, parent: &ids_common::EventHeader, child: u32, login: LoginIds) {
        self.touch(parent);
        let mut entry = match self.entries.get(&parent.pid) {
            Some(parent) => parent.clone(),
            None => return,
        };
        entry.ppid = parent.pid;
        entry.login = login;
        entry.exited = None;
        entry.exec_pending = true;
        entry.view = None;
        self.insert(child, entry);
    }

    /// The header's process ran a new program.
    pub(crate) fn exec(&mut self, header: &ids_common::EventHeader, exe: &str, argv: &[String], login: LoginIds) {
        self.touch(header);
        let exe: Arc<str> = if exe.starts_with('/') {
            self.real_path(exe)
        } else {
            // A relative name as the caller passed it: the kernel's link is absolute.
            procfs::exe(header.pid).map_or_else(|| exe.into(), Into::into)
        };
        let (argv, argv_truncated) = bounded_argv(argv);
        if let Some(entry) = self.entries.get_mut(&header.pid) {
            entry.exe = Some(exe);
            entry.argv = argv;
            entry.argv_truncated = argv_truncated;
            entry.comm = c_string(&header.comm);
            entry.login = login;
            entry.exec_pending = false;
            entry.view = None;
        }
    }

    /// Whether a record of the header's process must wait for a record of the exec ring, which is
    /// read apart from the other rings and may come later than the process's own records: the
    /// process was forked, not seen exec, and now goes by another name (its exec record has not
    /// been read yet), or it is not in the table at all (its fork record has not been read yet;
    /// every process older than the table was read from `/proc` when it was made). Records of no
    /// process (pid 0, SYNs seen by XDP) never wait.
    pub(crate) fn awaits_exec(&self, header: &ids_common::EventHeader) -> bool {
        match self.entries.get(&header.pid) {
            Some(entry) => entry.exec_pending && entry.comm.as_bytes() != c_bytes(&header.comm),
            None => header.pid != 0,
        }
    }

    /// The exec record of the header's process did not come in time (it was lost): learn the
    /// program from `/proc` while the process lives, else say only its name.
    pub(crate) fn exec_missed(&mut self, header: &ids_common::EventHeader) {
        let found = self.read_proc(header.pid);
        if let Some(entry) = self.entries.get_mut(&header.pid) {
            match found {
                Some(found) => {
                    entry.exe = found.exe;
                    entry.argv = found.argv;
                    entry.argv_truncated = found.argv_truncated;
                    entry.comm = found.comm;
                }
                None => {
                    entry.exe = None;
                    entry.argv = Arc::from(Vec::new());
                    entry.argv_truncated = false;
                    entry.comm = c_string(&header.comm);
                }
            }
            entry.exec_pending = false;
            entry.view = None;
        }
    }

    /// The header's process ended.
    pub(crate) fn exit(&mut self, header: &ids_common::EventHeader) {
        let now = Instant::now();
        if let Some(entry) = self.entries.get_mut(&header.pid)
            && entry.exited.is_none()
        {
            entry.exited = Some(now);
            self.exited.push_back((now, header.pid));
        }
        self.expire(now);
    }

    /// The view of the header's process, learning it first if the table does not know it.
    pub(crate) fn view(&mut self, header: &ids_common::EventHeader) -> Option<Arc<ProcessView>> {
        self.touch(header);
        self.view_of(header.pid)
    }

    /// Makes sure the header's process is in the table and agrees with what the kernel says of
    /// it now (uid, parent, name).
    fn touch(&mut self, header: &ids_common::EventHeader) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
        match self.entries.get_mut(&header.pid) {
            Some(entry) => {
                if entry.uid != header.uid || entry.ppid != header.ppid {
                    entry.uid = header.uid;
                    entry.ppid = header.ppid;
                    entry.view = None;
                }
            }
            None => {
                let entry = self.read_proc(header.pid).unwrap_or_else(|| Entry {
                    ppid: header.ppid,
                    uid: header.uid,
                    login: LoginIds { auid: NO_LOGIN, sessionid: NO_LOGIN, cgroup_id: 0 },
                    comm: c_string(&header.comm),
                    exe: None,
                    argv: Arc::from(Vec::new()),
                    argv_truncated: false,
                    cgroup_path: None,
                    exited: None,
                    exec_pending: false,
                    view: None,
                });
                self.insert(header.pid, entry);
            }
        }
    }

    fn view_of(&mut self, pid: u32) -> Option<Arc<ProcessView>> {
        let generation = self.logins.generation();
        let entry = self.entries.get(&pid)?;
        if let Some((view, built_at)) = &entry.view
            && (view.login.is_some() || *built_at == generation)
        {
            return Some(view.clone());
        }
        // Once per process (and per exec): the clone costs less than splitting the borrows.
        let entry = entry.clone();
        let view = Arc::new(self.build_view(pid, &entry));
        if let Some(entry) = self.entries.get_mut(&pid) {
            entry.view = Some((view.clone(), generation));
        }
        Some(view)
    }

    fn build_view(&mut self, pid: u32, entry: &Entry) -> ProcessView {
        let mut ancestors = Vec::new();
        let mut next = entry.ppid;
        while next != 0 && ancestors.len() < MAX_ANCESTORS && next != pid {
            let Some(parent) = self.entries.get(&next) else { break };
            ancestors.push(Ancestor { pid: next, comm: parent.comm.clone(), exe: parent.exe.clone() });
            next = parent.ppid;
        }
        let login = login_of(&self.logins, pid, &entry.comm, &ancestors);
        let cgroup = entry.cgroup_path.clone().or_else(|| self.cgroups.path_of(entry.login.cgroup_id));
        let known = |id: u32| (id != NO_LOGIN).then_some(id);
        let auid = known(entry.login.auid);
        ProcessView {
            pid,
            ppid: entry.ppid,
            uid: entry.uid,
            user: self.users.name(entry.uid),
            auid,
            login_user: auid.and_then(|auid| self.users.name(auid)),
            sessionid: known(entry.login.sessionid),
            comm: entry.comm.clone(),
            exe: entry.exe.clone(),
            argv: entry.argv.clone(),
            argv_truncated: entry.argv_truncated,
            container: cgroup.as_deref().and_then(container_of),
            cgroup,
            ancestors,
            login,
            rendered: Rendered::default(),
        }
    }

    /// The digest of the program an exec names (an absolute path; other names are not hashed).
    pub(crate) fn exe_digest(&mut self, filename: &str) -> ExeDigest {
        if !filename.starts_with('/') {
            return ExeDigest::Known(None);
        }
        let real = self.real_path(filename);
        match &mut self.exe_hashes {
            Some(hashes) => hashes.digest(&real),
            None => ExeDigest::Known(None),
        }
    }

    /// The program's path with its links resolved (`/bin/sh` → `/usr/bin/dash`), as
    /// `/proc/PID/exe` names it; remembered, since most execs run the same few programs.
    fn real_path(&mut self, exe: &str) -> Arc<str> {
        if let Some(real) = self.real_paths.get(exe) {
            return real.clone();
        }
        let real: Arc<str> = match std::fs::canonicalize(exe) {
            Ok(path) => path.to_str().map_or_else(|| exe.into(), Into::into),
            Err(_) => exe.into(),
        };
        if self.real_paths.len() >= MAX_REAL_PATHS {
            self.real_paths.clear();
        }
        self.real_paths.insert(exe.to_string(), real.clone());
        real
    }

    fn read_proc(&mut self, pid: u32) -> Option<Entry> {
        let found = procfs::read(pid)?;
        self.stats.from_proc += 1;
        let cgroup_id = found.cgroup.as_deref().and_then(|path| self.cgroups.learn(path)).unwrap_or(0);
        let (argv, argv_truncated) = bounded_argv(&found.argv);
        Some(Entry {
            ppid: found.ppid,
            uid: found.uid,
            login: LoginIds { auid: found.auid, sessionid: found.sessionid, cgroup_id },
            comm: found.comm,
            exe: found.exe.map(Into::into),
            argv,
            argv_truncated,
            cgroup_path: if cgroup_id == 0 { found.cgroup.map(Into::into) } else { None },
            exited: None,
            exec_pending: false,
            view: None,
        })
    }

    fn insert(&mut self, pid: u32, entry: Entry) {
        if self.entries.len() >= MAX_PROCESSES && !self.entries.contains_key(&pid) {
            self.make_room();
        }
        if let Some(old) = self.entries.insert(pid, entry)
            && old.exited.is_some()
        {
            // A reused pid: its old exit leaves the queue when it reaches the front.
            self.exited.retain(|(_, p)| *p != pid);
        }
    }

    fn make_room(&mut self) {
        if let Some((_, pid)) = self.exited.pop_front() {
            self.entries.remove(&pid);
        } else if let Some(&pid) = self.entries.keys().next() {
            self.entries.remove(&pid);
        }
        self.stats.evicted += 1;
    }

    /// Drops exited processes past their time or over the cap.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, pid)) = self.exited.front() {
            if now.duration_since(at) < KEEP_EXITED && self.exited.len() <= MAX_EXITED {
                break;
            }
            self.exited.pop_front();
            if self.entries.get(&pid).is_some_and(|e| e.exited.is_some()) {
                self.entries.remove(&pid);
            }
        }
    }

    /// Marks exited the live entries whose process is gone (their exit record was lost).
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.real_paths.clear();
        let gone: Vec<u32> = self
            .entries
            .iter()
            .filter(|(pid, e)| e.exited.is_none() && !procfs::alive(**pid))
            .map(|(p, _)| *p)
            .collect();
        for pid in gone {
            if let Some(entry) = self.entries.get_mut(&pid) {
                entry.exited = Some(now);
                self.exited.push_back((now, pid));
            }
        }
        self.expire(now);
    }
}

/// The login a process with these ancestors came in by: the nearest sshd among them (itself
/// included) that logged an `Accepted` line. A login's pid must name an sshd: a line read again
/// after a restart must not name a process that reused the pid.
fn login_of(logins: &Logins, pid: u32, comm: &str, ancestors: &[Ancestor]) -> Option<Login> {
    std::iter::once((pid, comm))
        .chain(ancestors.iter().map(|a| (a.pid, a.comm.as_str())))
        .filter(|(_, comm)| comm.starts_with("sshd"))
        .find_map(|(pid, _)| logins.get(pid))
}

/// `view` with its login, if it had none when it was made and one is known now (sshd's line is
/// read from a log, which may come after the session's first events).
pub(crate) fn with_late_login(view: &Arc<ProcessView>, logins: &Logins) -> Arc<ProcessView> {
    if view.login.is_some() {
        return view.clone();
    }
    match login_of(logins, view.pid, &view.comm, &view.ancestors) {
        Some(login) => Arc::new(ProcessView { login: Some(login), rendered: Rendered::default(), ..(**view).clone() }),
        None => view.clone(),
    }
}

fn bounded_argv(argv: &[String]) -> (Arc<[String]>, bool) {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for arg in argv.iter().take(MAX_ARGS) {
        if bytes + arg.len() > MAX_ARG_BYTES {
            break;
        }
        bytes += arg.len();
        kept.push(arg.clone());
    }
    let truncated = kept.len() < argv.len();
    (kept.into(), truncated)
}

/// The bytes of a NUL-terminated name, lossily as UTF-8.
fn c_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_bytes(bytes)).into_owned()
}

fn c_bytes(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ids_common::EventHeader;

    fn header(pid: u32, ppid: u32, comm: &str) -> EventHeader {
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        EventHeader { pid, tid: pid, ppid, uid: 0, comm: name, ..EventHeader::default() }
    }

    fn login() -> LoginIds {
        LoginIds { auid: 1000, sessionid: 7, cgroup_id: 0 }
    }

    /// Pids far above any real one, so `/proc` never answers for them.
    const BASE: u32 = 4_000_000_000;

    #[test]
    fn a_forked_child_inherits_then_execs_and_names_its_ancestors_in_order() {
        let mut table = ProcessTable::empty(Arc::new(Logins::default()));
        let shell = header(BASE, 1, "bash");
        table.exec(&shell, "/nonexistent/bash", &["bash".into()], login());
        table.fork(&shell, BASE + 1, login());
        // The exec record's header carries the new program's name.
        let vim = header(BASE + 1, BASE, "vim");
        table.exec(&vim, "/nonexistent/vim", &["vim".into(), "/etc/hosts".into()], login());
        let view = table.view(&vim).unwrap();
        assert_eq!(view.exe.as_deref(), Some("/nonexistent/vim"));
        assert_eq!(&*view.argv, &["vim".to_string(), "/etc/hosts".into()]);
        assert_eq!(view.auid, Some(1000));
        assert_eq!(view.sessionid, Some(7));
        assert_eq!(view.ancestors[0].pid, BASE);
        assert_eq!(view.ancestors[0].exe.as_deref(), Some("/nonexistent/bash"));
        assert_eq!(view.ancestors.len(), 1, "pid 1 is not in this table: {view:?}");
        assert_eq!(one_line(&serde_json::to_value(&*view).unwrap()), format!("vim (pid {}) ← bash", BASE + 1));
    }

    #[test]
    fn a_login_found_later_reaches_views_built_before_it() {
        let logins = Arc::new(Logins::default());
        let mut table = ProcessTable::empty(logins.clone());
        let sshd = header(BASE + 10, 1, "sshd");
        table.exec(&sshd, "/nonexistent/sshd", &[], login());
        table.fork(&sshd, BASE + 11, login());
        let shell = header(BASE + 11, BASE + 10, "bash");
        table.exec(&shell, "/nonexistent/bash", &[], login());
        assert_eq!(table.view(&shell).unwrap().login, None);
        logins.accepted(BASE + 10, "alice", "198.18.0.2".parse().unwrap(), 50000);
        let view = table.view(&shell).unwrap();
        assert_eq!(view.login.as_ref().map(|l| l.user.as_str()), Some("alice"));
        assert_eq!(
            one_line(&serde_json::to_value(&*view).unwrap()),
            format!("bash (pid {}) ← sshd: alice from 198.18.0.2", BASE + 11)
        );
    }

    #[test]
    fn exited_processes_are_kept_a_while_and_bounded() {
        let mut table = ProcessTable::empty(Arc::new(Logins::default()));
        let parent = header(BASE + 20, 1, "sh");
        table.exec(&parent, "/nonexistent/sh", &[], login());
        for n in 0..(MAX_EXITED as u32 + 100) {
            let pid = BASE + 100 + n;
            table.fork(&parent, pid, login());
            table.exit(&header(pid, BASE + 20, "sh"));
        }
        let stats = table.stats();
        assert_eq!(stats.exited, MAX_EXITED);
        assert!(table.entries.len() <= MAX_EXITED + 1, "{}", table.entries.len());
        // The latest exited child still resolves.
        let last = header(BASE + 100 + MAX_EXITED as u32 + 99, BASE + 20, "sh");
        assert_eq!(table.view_of(last.pid).unwrap().ancestors[0].pid, BASE + 20);
    }

    #[test]
    fn the_rendered_json_is_the_object_and_a_late_login_renders_anew() {
        let logins = Arc::new(Logins::default());
        let mut table = ProcessTable::empty(logins.clone());
        let sshd = header(BASE + 30, 1, "sshd");
        table.exec(&sshd, "/nonexistent/sshd", &[], login());
        table.fork(&sshd, BASE + 31, login());
        let shell = header(BASE + 31, BASE + 30, "bash");
        table.exec(&shell, "/nonexistent/bash", &["-bash".into()], login());
        let view = table.view(&shell).unwrap();
        let rendered: serde_json::Value = serde_json::from_str(view.json().get()).unwrap();
        assert_eq!(rendered, serde_json::to_value(&*view).unwrap());
        assert!(rendered.get("rendered").is_none());
        logins.accepted(BASE + 30, "bob", "192.0.2.5".parse().unwrap(), 2222);
        let late = with_late_login(&view, &logins);
        let rendered: serde_json::Value = serde_json::from_str(late.json().get()).unwrap();
        assert_eq!(rendered["login"]["user"], "bob");
    }

    #[test]
    fn argv_is_bounded() {
        let long: Vec<String> = (0..100).map(|n| format!("argument-{n}")).collect();
        let (kept, truncated) = bounded_argv(&long);
        assert_eq!(kept.len(), MAX_ARGS);
        assert!(truncated);
    }
}
