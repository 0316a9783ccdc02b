//! A real RabbitMQ broker run as a plain process for one test: its own node name, ports, data,
//! logs, Erlang cookie and epmd, a test CA for its TLS listener and client certificates, users
//! created from a definitions file. Everything listens on 127.0.0.1 only and everything it started
//! (epmd included) is stopped on drop.
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::service_process::{
    children_of, free_loopback_ports, hex, port_is_free, processes_with_env, random_bytes, signal, stop_group, tail_of,
    wait_bounded,
};

/// The scripts under /usr/lib/rabbitmq/bin run the broker as the calling user in the calling
/// directory; /usr/sbin/rabbitmq-server would switch to the rabbitmq user and its home.
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// A fresh node starts in ~6 s here; this leaves room for a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What RabbitMQ 3.10 logs at the end of its boot ("Server startup complete; 1 plugins started.").
const BOOT_COMPLETE: &[u8] = b"Server startup complete";
/// The AMQP 0-9-1 protocol header a client opens with.
const AMQP_PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

pub struct Broker {
    node: String,
    dir: PathBuf,
    amqp_port: u16,
    tls_port: u16,
    dist_port: u16,
    epmd_port: u16,
    passwords: BTreeMap<String, String>,
    ca: (rcgen::Certificate, rcgen::KeyPair),
    /// The `rabbitmq-server` script; the Erlang VM (beam.smp) is its child.
    server: Option<Child>,
}

impl Broker {
    /// Starts a broker whose node is `ids-test-<name>-<pid>@localhost` with `users` (each with a
    /// random password and full permissions on vhost "/") and waits until its boot is complete and
    /// it speaks AMQP. `name` must be unique among the brokers of one test process.
    pub fn start(name: &str, users: &[&str]) -> Broker {
        let node = format!("ids-test-{name}-{}@localhost", std::process::id());
        let dir = PathBuf::from(format!("/tmp/ids-test-{}-broker-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mnesia", "log", "home", "pki"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        let [amqp_port, tls_port, dist_port, epmd_port] = free_loopback_ports(4)[..] else { unreachable!() };
        let passwords: BTreeMap<String, String> =
            users.iter().map(|user| (user.to_string(), hex(&random_bytes::<16>()))).collect();
        let ca = make_ca(&dir.join("pki"));
        let mut broker = Broker { node, dir, amqp_port, tls_port, dist_port, epmd_port, passwords, ca, server: None };
        broker.write_files();
        broker.spawn_and_wait_ready();
        broker
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The Erlang distribution port the node listens on (for rabbitmqctl).
    pub fn dist_port(&self) -> u16 {
        self.dist_port
    }

    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }

    /// The password `user` was created with; panics for a user not given to `start`.
    pub fn password(&self, user: &str) -> &str {
        self.passwords.get(user).unwrap_or_else(|| panic!("broker user {user:?} was not created"))
    }

    pub fn url(&self, user: &str) -> String {
        format!("amqp://{user}:{}@127.0.0.1:{}/%2f", self.password(user), self.amqp_port)
    }

    /// The TLS listener without credentials: a client authenticates with its certificate (EXTERNAL).
    pub fn tls_url(&self) -> String {
        format!("amqps://127.0.0.1:{}/%2f", self.tls_port)
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// A client certificate and key (PEM files) for `common_name`, signed by the broker's CA; the
    /// broker maps its common name to the user name for EXTERNAL logins.
    pub fn client_cert(&self, common_name: &str) -> (PathBuf, PathBuf) {
        let file_stem = format!("client-{common_name}");
        issue(&self.dir.join("pki"), &file_stem, common_name, &self.ca, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The pid of the Erlang VM running the broker, if it runs.
    pub fn beam_pid(&self) -> Option<u32> {
        let script = self.server.as_ref()?.id();
        children_of(script).into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "beam.smp")
        })
    }

    /// SIGKILLs the Erlang VM, as a crash would, and waits until the broker is gone. The
    /// `rabbitmq-server` script forks the VM and waits for it, so the VM is the one to kill; the
    /// script then exits by itself.
    pub fn kill9(&mut self) {
        let beam = self.beam_pid().unwrap_or_else(|| panic!("no beam.smp under the broker of node {}", self.node));
        signal(beam as i32, libc::SIGKILL);
        let server = self.server.as_mut().expect("a running broker has its script");
        if !wait_bounded(server, Duration::from_secs(10)) {
            stop_group(server, libc::SIGKILL, Duration::ZERO);
        }
        // erl_child_setup leaves with its VM; killing the group makes sure nothing of it lingers.
        signal(-(server.id() as i32), libc::SIGKILL);
        self.server = None;
    }

    /// Starts the broker again with the same node name, ports and data (stopping it cleanly first if
    /// it still runs) and waits until it is ready again.
    pub fn restart(&mut self) {
        self.stop_server();
        self.spawn_and_wait_ready();
    }

    /// Stops the broker and everything it started, and removes its directory.
    pub fn stop(self) {
        // Drop does the work, the same whether a test stops its broker or panics.
    }

    /// Runs `rabbitmqctl -n NODE ARGS` against this broker; panics with its output if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rabbitmqctl -n NODE ARGS` whatever its outcome, for commands expected to fail.
    pub fn ctl_output(&self, args: &[&str]) -> Output {
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmqctl"));
        self.set_env(&mut command);
        command.arg("-n").arg(&self.node).args(args).stdin(Stdio::null());
        command.output().unwrap_or_else(|e| panic!("running rabbitmqctl: {e}"))
    }

    /// Messages ready plus unacknowledged in `queue`, or None if there is no such queue.
    pub fn queue_messages(&self, queue: &str) -> Option<u64> {
        // --silent drops the banner and the table header: one "name<TAB>messages" line per queue.
        let listing = self.ctl(&["--silent", "list_queues", "name", "messages"]);
        listing.lines().find_map(|line| {
            let (name, count) = line.rsplit_once('\t')?;
            (name == queue).then(|| count.trim().parse().ok())?
        })
    }

    /// The directory with the broker's configuration, data, logs and certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("rabbitmq.conf")
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir.join("rabbitmq-server.out")
    }

    fn node_log(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    fn write_files(&self) {
        let pki = self.dir.join("pki");
        let (server_cert, server_key) =
            issue(&pki, "server", "localhost", &self.ca, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let definitions = self.dir.join("definitions.json");
        std::fs::write(&definitions, self.definitions().to_string()).unwrap();
        let config = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             listeners.ssl.default = 127.0.0.1:{tls}\n\
             # Test users log in over loopback; RabbitMQ refuses that for listed users (guest by default).\n\
             loopback_users = none\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             # Ask for a client certificate and check it against the CA, but let password clients in too.\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n\
             load_definitions = {definitions}\n",
            amqp = self.amqp_port,
            tls = self.tls_port,
            ca = self.ca_pem_path().display(),
            cert = server_cert.display(),
            key = server_key.display(),
            definitions = definitions.display(),
        );
        std::fs::write(self.config_path(), config).unwrap();
        // EXTERNAL (certificate) logins come from this plugin.
        std::fs::write(self.dir.join("enabled_plugins"), "[rabbitmq_auth_mechanism_ssl].\n").unwrap();
        // Its own cookie: the CLI and the node must agree, and no other node may share it.
        let cookie = self.dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, hex(&random_bytes::<20>())).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    }

    fn definitions(&self) -> serde_json::Value {
        let users: Vec<_> = self
            .passwords
            .iter()
            .map(|(user, password)| {
                serde_json::json!({
                    "name": user,
                    "password_hash": rabbit_sha256_password_hash(password, random_bytes::<4>()),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": "",
                })
            })
            .collect();
        let permissions: Vec<_> = self
            .passwords
            .keys()
            .map(|user| serde_json::json!({"user": user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}))
            .collect();
        serde_json::json!({"vhosts": [{"name": "/"}], "users": users, "permissions": permissions})
    }

    /// The environment that makes the scripts (server and CLI alike) talk about this node only.
    fn set_env(&self, command: &mut Command) {
        // 127.0.0.1 only: epmd binds 0.0.0.0 unless told, so does Erlang distribution.
        let loopback_distribution = "-kernel inet_dist_use_interface {127,0,0,1}";
        command
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.config_path())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", loopback_distribution)
            .env("RABBITMQ_CTL_ERL_ARGS", loopback_distribution)
            // A system /etc/rabbitmq/rabbitmq-env.conf must not redirect this node elsewhere.
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .current_dir(&self.dir);
    }

    fn spawn_and_wait_ready(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.stdout_log()).unwrap();
        let mut command = Command::new(format!("{RABBITMQ_BIN}/rabbitmq-server"));
        self.set_env(&mut command);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so erl_child_setup goes with the VM (inet_gethost, which makes a
            // session of its own, is found by its environment on drop).
            .process_group(0);
        // A restart appends to the same node log: only what this boot writes counts.
        let log_start = std::fs::metadata(self.node_log()).map_or(0, |m| m.len());
        let started = Instant::now();
        self.server = Some(command.spawn().unwrap_or_else(|e| panic!("starting rabbitmq-server: {e}")));
        while !self.speaks_amqp() || !self.tls_accepts() || !self.boot_complete_since(log_start) {
            if let Some(status) = self.server.as_mut().and_then(|s| s.try_wait().ok().flatten()) {
                panic!("rabbitmq node {} exited ({status}) while starting\n{}", self.node, self.log_tails());
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "rabbitmq node {} did not answer AMQP on 127.0.0.1:{} within {READY_TIMEOUT:?}\n{}",
                    self.node,
                    self.amqp_port,
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The broker answers the AMQP protocol header with a Connection.Start method frame (frame type
    /// 1). An accepted TCP connection alone is not enough: it proves a listener, not a broker ready
    /// to authenticate.
    fn speaks_amqp(&self) -> bool {
        let Ok(mut stream) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.amqp_port).into(), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut frame_type = [0u8; 1];
        stream.write_all(AMQP_PROTOCOL_HEADER).is_ok()
            && stream.read_exact(&mut frame_type).is_ok()
            && frame_type[0] == 1
    }

    /// The listeners open before the plugins start, and EXTERNAL comes from a plugin: a client that
    /// connects the moment AMQP answers may not be offered it yet. The node logs this line once its
    /// boot, plugins included, is complete (`rabbitmqctl await_startup` says the same but costs
    /// 2–3 s of CLI start-up on this machine).
    fn boot_complete_since(&self, log_start: u64) -> bool {
        let log = std::fs::read(self.node_log()).unwrap_or_default();
        let this_boot = log.get(log_start as usize..).unwrap_or_default();
        this_boot.windows(BOOT_COMPLETE.len()).any(|w| w == BOOT_COMPLETE)
    }

    fn tls_accepts(&self) -> bool {
        TcpStream::connect_timeout(&([127, 0, 0, 1], self.tls_port).into(), Duration::from_secs(1)).is_ok()
    }

    fn log_tails(&self) -> String {
        format!("{}\n{}", tail_of(&self.stdout_log(), 3000), tail_of(&self.node_log(), 3000))
    }

    /// SIGTERM lets the script stop the VM cleanly; SIGKILL for the whole group after a bounded wait.
    fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            stop_group(&mut server, libc::SIGTERM, Duration::from_secs(15));
        }
    }

    /// epmd daemonizes out of the broker's process group and outlives the broker: ask it to stop on
    /// its own port, then kill whatever still carries this broker's ERL_EPMD_PORT in its environment:
    /// an epmd a CLI call started while the node was down, or an inet_gethost, which erl_child_setup
    /// runs in a session of its own.
    fn stop_epmd_and_strays(&self) {
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let marker = format!("ERL_EPMD_PORT={}", self.epmd_port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with_env(&marker).is_empty() || !port_is_free(self.epmd_port) {
            for pid in processes_with_env(&marker) {
                signal(pid as i32, libc::SIGKILL);
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_server();
        self.stop_epmd_and_strays();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256` hash: base64(salt ++ sha256(salt ++ password)) with
/// a 4-byte salt.
pub fn rabbit_sha256_password_hash(password: &str, salt: [u8; 4]) -> String {
    let digest = sha2::Sha256::new_with_prefix(salt).chain_update(password.as_bytes()).finalize();
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&digest);
    base64(&salted)
}

/// Standard base64 with padding; the only encoding the definitions file needs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(ALPHABET[(group >> (18 - 6 * position) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn make_ca(dir: &Path) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "ids test broker CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    (cert, key)
}

/// A certificate for `common_name` (plus localhost and 127.0.0.1 as subject alternative names, so
/// it also serves as the broker's server certificate) signed by `ca`, written to
/// `dir/FILE_STEM.pem` and its key to `dir/FILE_STEM.key`.
fn issue(
    dir: &Path,
    file_stem: &str,
    common_name: &str,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{file_stem}.pem")), dir.join(format!("{file_stem}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn password_hash_is_salt_then_digest_of_salt_and_password() {
        // Worked example from RabbitMQ's password hashing documentation (salt 908D C60A).
        let hash = rabbit_sha256_password_hash("test12", [0x90, 0x8d, 0xc6, 0x0a]);
        assert_eq!(hash, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
    }
}
