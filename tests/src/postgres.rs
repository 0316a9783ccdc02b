//! A real PostgreSQL server run as a plain process for one test: initdb'd into a directory of its
//! own, listening on 127.0.0.1 and a free port only, with a database `ids`, stopped and removed on
//! drop.
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::service_process::{free_loopback_ports, stop_group, tail_of};

/// Debian's `postgresql` package of bookworm; initdb and postgres are not on PATH there.
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Postgres {
    dir: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl Postgres {
    /// initdb (as the `postgres` user, which PostgreSQL requires instead of root), starts the
    /// server, waits until it accepts queries and creates database `ids`.
    pub fn start(name: &str) -> Postgres {
        let dir = PathBuf::from(format!("/tmp/ids-test-{}-postgres-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (uid, gid) = postgres_user();
        // Data and socket directories belong to the server's user; the data directory must be 0700.
        for sub in ["data", "socket"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        let [port] = free_loopback_ports(1)[..] else { unreachable!() };
        let mut postgres = Postgres { dir, port, server: None };
        let initdb = postgres
            .as_postgres_user(&format!("{POSTGRES_BIN}/initdb"))
            // trust: a throwaway instance on loopback, nobody else to keep out.
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(postgres.data_dir())
            .output()
            .unwrap_or_else(|e| panic!("running initdb: {e}"));
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        postgres.spawn_and_wait_ready();
        postgres.psql_in("postgres", "create database ids");
        postgres
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/ids", self.port)
    }

    /// Runs `sql` in database `ids` with psql (unaligned, tuples only, stop on the first error) and
    /// returns its output; panics with psql's errors if it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("ids", sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = Command::new(format!("{POSTGRES_BIN}/psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail_of(&self.log_path(), 2000)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn as_postgres_user(&self, program: &str) -> Command {
        let (uid, gid) = postgres_user();
        let mut command = Command::new(program);
        // The user's own cwd would be root's, which postgres cannot enter.
        command.uid(uid).gid(gid).current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    fn spawn_and_wait_ready(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut command = self.as_postgres_user(&format!("{POSTGRES_BIN}/postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(self.dir.join("socket"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so a final SIGKILL reaches any backend left behind.
            .process_group(0);
        self.server = Some(command.spawn().unwrap_or_else(|e| panic!("starting postgres: {e}")));
        let started = Instant::now();
        loop {
            let ready = Command::new(format!("{POSTGRES_BIN}/pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self.server.as_mut().and_then(|s| s.try_wait().ok().flatten()) {
                panic!("postgres exited ({status}) while starting\n{}", tail_of(&self.log_path(), 3000));
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "postgres on 127.0.0.1:{} not ready within {READY_TIMEOUT:?}\n{}",
                self.port,
                tail_of(&self.log_path(), 3000)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT is PostgreSQL's fast shutdown: sessions are cut, no waiting for clients.
            stop_group(&mut server, libc::SIGINT, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// uid and gid of the `postgres` account the Debian package creates.
fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to static storage (or
    // null), read at once before any other getpw* call.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!entry.is_null(), "no postgres user: is the postgresql package installed?");
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}
