//! Command line: `ids run`, `ids status`, `ids hash`, `ids baseline`, `ids diff`, `ids config`,
//! the ban commands of `crate::bans::cli` (`ids ban`, `unban`, `bans`, `alerts`, `xdp detach`)
//! the TinyIDS commands `ids serve`, `ids client`, `ids server` (in `crate::tinyids::cli`), and the
//! fleet's central commands `ids collect`, `ids fleet ...` (`cli/fleet.rs`).
mod bans;
mod fleet;
mod tinyids;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::control::{self, Answer, BaselineAnswer, DiffAnswer, Request, StatusAnswer};
use crate::store::{Store, StoredItem};

#[derive(Debug, Parser)]
#[command(name = "ids", version, about = "eBPF host intrusion-detection sensor")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// Configuration file (TOML); without it, $IDS_CONFIG, else /etc/ids/ids.toml if it exists,
    /// else the embedded default.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
}

impl Common {
    /// The file this command reads (`Config::locate`); `None`: the embedded default.
    fn config_file(&self) -> Option<PathBuf> {
        Config::locate(self.config.as_deref())
    }

    fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        Config::load(self.config_file().as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sensor (root).
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// Show the running daemon's hooks and counters.
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hash the state the `[[collectors]]` describe, offline (no daemon needed).
    Hash {
        #[command(flatten)]
        common: Common,
        /// Print JSON: {"aggregate": hex, "collectors": {name: {"digest", "items", "errors"}}}.
        #[arg(long)]
        json: bool,
    },
    /// Accept the current state as the baseline: through the running daemon (its current
    /// items), or, when no daemon answers, by scanning now and storing the result.
    Baseline {
        #[command(flatten)]
        common: Common,
        /// Print JSON: {"ok", "items", "aggregate", "source": "daemon"|"scan"}.
        #[arg(long)]
        json: bool,
    },
    /// Items added, removed and changed since the baseline (and which attributes changed):
    /// the running daemon's state, or, when no daemon answers, a scan made now.
    Diff {
        #[command(flatten)]
        common: Common,
        /// Print JSON: {"added": [{"collector", "id"}], "removed": [...], "changed": [{..., "attributes"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix (dropped in XDP); through the daemon, or in the store when it is down.
    Ban {
        #[command(flatten)]
        common: Common,
        /// ADDR or ADDR/PREFIX, IPv4 or IPv6 (several allowed).
        nets: Vec<String>,
        /// Also ban every address or prefix listed in FILE (one per line, `#` comments).
        #[arg(long)]
        file: Option<PathBuf>,
        /// How long: 90s, 10m, 1h, 7d, permanent; default `[bans] default_duration`.
        #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
        duration: Option<String>,
        /// Why (shown by `ids bans`).
        #[arg(long)]
        reason: Option<String>,
        /// Allow prefixes broader than /8 (IPv4) or /16 (IPv6).
        #[arg(long)]
        force: bool,
        /// Print {"ok", "data": [ban...]} or {"ok": false, "error"}.
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban of an address or prefix.
    Unban {
        #[command(flatten)]
        common: Common,
        #[arg(required = true)]
        nets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List bans with their hit counters.
    Bans {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Show the most recent alerts.
    Alerts {
        #[command(flatten)]
        common: Common,
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// Only alerts of this kind (repeatable).
        #[arg(long, value_parser = ["integrity", "sensor_miss", "detect", "remote_check", "ban"])]
        kind: Vec<String>,
        /// Only alerts raised within this long (`10m`, `2h`, `1d`).
        #[arg(long, value_parser = since_duration)]
        since: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// The XDP program's pinned state.
    Xdp {
        #[command(subcommand)]
        command: XdpCommand,
    },
    /// Run a TinyIDS server (protocol revision 2).
    Serve(self::tinyids::ServeArgs),
    /// TinyIDS client: send TEST, CHECK, UPDATE, DELETE or CHANGEPHRASE to the servers.
    Client(self::tinyids::ClientArgs),
    /// Administer a TinyIDS server's records on its host: list, show, delete, reset-passphrase.
    Server(self::tinyids::AdminArgs),
    /// Detection rules: `ids rules test --kind sshd FILE` runs a log through them.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The state database: check it for damage, or recover what can be read from it.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// The fleet's collector: consume every agent's alerts into the `[collect] database`, track
    /// hosts, run the fleet rule, publish fleet bans (runs until SIGINT/SIGTERM).
    Collect {
        #[command(flatten)]
        common: Common,
    },
    /// The fleet as the collector stored it: hosts, alerts, fleet bans; ban and unban fleet-wide.
    Fleet {
        #[command(subcommand)]
        command: self::fleet::FleetCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Remove the pinned attachments and maps (every ban stops being enforced); the daemon must be stopped.
    Detach {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run every line of a log file through the rules of its kind (the configured `rules` and
    /// `rules_mode` apply) and count what each rule matched; no alert, no ban.
    Test {
        #[command(flatten)]
        common: Common,
        /// The log's format: sshd, nginx or apache.
        #[arg(long)]
        kind: String,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Run SQLite's integrity check on the database; prints `ok` or the problems (exit 1).
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Copy every readable row of a damaged database into a new one, keep the damaged file as
    /// `ids.db.damaged-<unix time>`, and put the new one in its place (the daemon must be stopped).
    Recover {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration.
    Default,
    /// Parse and validate a configuration file.
    Check {
        #[command(flatten)]
        common: Common,
    },
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // What ids creates holds the host's security record (alerts, bans, events, log cursors, the
    // control socket, the TinyIDS records): private to its owner, whatever umask it was started with.
    // SAFETY: umask only sets this process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    run_command(cli).map_err(with_root_hint)
}

/// Linux capabilities (`linux/capability.h`) the daemon cannot do without.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether this process may load eBPF programs: CAP_BPF or CAP_SYS_ADMIN in its effective set.
/// When that cannot be read, the answer is yes and the load itself reports what is missing.
fn can_load_bpf() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    effective.is_none_or(|caps| caps & (1 << CAP_SYS_ADMIN | 1 << CAP_BPF) != 0)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    (unsafe { libc::geteuid() }) == 0
}

/// Whether `error` comes from a lack of permission (a file, directory or socket that is root's),
/// for a user who is not root.
pub(crate) fn is_permission_error(error: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode;
    !running_as_root()
        && error.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
                || cause.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
                    matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly)
                    )
                })
                // Errors that carry the system's message as text only.
                || cause.to_string().contains("Permission denied")
        })
}

/// A permission error says that root is needed, once.
pub(crate) fn with_root_hint(error: anyhow::Error) -> anyhow::Error {
    if is_permission_error(&error) && !format!("{error:#}").contains("root is needed") {
        error.context("permission denied: root is needed")
    } else {
        error
    }
}

fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { common } => {
            anyhow::ensure!(
                can_load_bpf(),
                "ids run needs root (CAP_BPF and CAP_SYS_ADMIN) to load and attach its eBPF programs; \
                 start it as root (sudo ids run)"
            );
            let config_file = common.config_file();
            let config = Config::load(config_file.as_deref())?;
            init_logging();
            match &config_file {
                Some(path) => tracing::info!(config = %path.display(), "configuration read"),
                None => tracing::info!(
                    "configuration: the embedded default (`ids config default`); give --config, set {} or \
                     write {}",
                    crate::config::CONFIG_ENV,
                    crate::config::SYSTEM_CONFIG
                ),
            }
            let runtime = runtime()?;
            let result = runtime.block_on(crate::daemon::run(config));
            // The workers were drained (those that did not finish in time are logged by name):
            // what is still running, a blocking wait on one of them, must not hold the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
        }
        Command::Status { common, json } => {
            let config = common.load_config()?;
            let status = runtime()?
                .block_on(control::call::<StatusAnswer>(&config.control_socket(), &Request::Status))
                .map_err(with_root_hint);
            match (status, json) {
                (Ok(status), true) => println!("{}", serde_json::to_string_pretty(&Answer::ok(&status))?),
                (Ok(status), false) => print!("{}", human_status(&status)),
                // A script reading `--json` gets JSON, the failure included.
                (Err(e), true) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&control::refusal(crate::error_text::one_line(e.as_ref())))?
                    );
                    return Ok(ExitCode::FAILURE);
                }
                (Err(e), false) => return Err(e),
            }
        }
        Command::Hash { common, json } => {
            let config = common.load_config()?;
            if config.collectors.is_empty() {
                eprintln!("ids hash: no [[collectors]] configured; the aggregate covers the hostname only");
            }
            let progress = crate::integrity::progress::ProgressLine::start();
            let report = crate::integrity::scan(&crate::integrity::Registry::with_builtin(), &config.collectors)?;
            drop(progress);
            if json {
                println!("{}", serde_json::to_string_pretty(&hash_json(&report))?);
            } else {
                print!("{}", human_hash(&report));
            }
        }
        Command::Baseline { common, json } => {
            let config = common.load_config()?;
            let report = match runtime()?.block_on(control::try_call(&config.control_socket(), &Request::Baseline))? {
                Some(answer) => BaselineReport { answer, source: BaselineSource::Daemon },
                None => offline_baseline(&config)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&Answer::ok(&report))?);
            } else {
                println!(
                    "baseline of {} items accepted (aggregate {}, from the {})",
                    report.answer.items,
                    report.answer.aggregate,
                    match report.source {
                        BaselineSource::Daemon => "running daemon",
                        BaselineSource::Scan => "scan just made",
                    },
                );
            }
        }
        Command::Diff { common, json } => {
            let config = common.load_config()?;
            let diff =
                match runtime()?.block_on(control::try_call::<DiffAnswer>(&config.control_socket(), &Request::Diff))? {
                    Some(answer) => answer.diff,
                    None => offline_diff(&config)?,
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&diff)?);
            } else {
                print!("{}", crate::integrity::diff::human(&diff));
            }
        }
        Command::Ban { common, nets, file, duration, reason, force, json } => {
            let config = common.load_config()?;
            let args = self::bans::BanArgs { nets, file, duration, reason, force };
            return self::bans::ban(&config, args, json);
        }
        Command::Unban { common, nets, json } => {
            return self::bans::unban(&common.load_config()?, nets, json);
        }
        Command::Bans { common, json } => {
            return self::bans::list(&common.load_config()?, json);
        }
        Command::Alerts { common, n, kind, since, json } => {
            let since = since.map(|ago| crate::time::Timestamp::at(std::time::SystemTime::now() - ago).rfc3339());
            let filter = crate::store::AlertFilter { kinds: kind, since };
            return self::bans::alerts(&common.load_config()?, n, filter, json);
        }
        Command::Xdp { command: XdpCommand::Detach { common, json } } => {
            return self::bans::detach(&common.load_config()?, json);
        }
        Command::Serve(args) => {
            init_logging();
            return self::tinyids::serve(args);
        }
        Command::Client(args) => return self::tinyids::client(args),
        Command::Server(args) => return self::tinyids::admin(args),
        Command::Rules { command: RulesCommand::Test { common, kind, file, json } } => {
            let config = common.load_config()?;
            let kind = match kind.as_str() {
                "sshd" => crate::config::LogKind::Sshd,
                "nginx" => crate::config::LogKind::Nginx,
                "apache" => crate::config::LogKind::Apache,
                other => anyhow::bail!("--kind {other:?}: expected sshd, nginx or apache"),
            };
            let rules = crate::detect::rules::RuleSet::load(config.detect.rules.as_deref(), config.detect.rules_mode)?;
            let report = crate::detect::engine::test_file(rules, kind, &file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} lines ({} cut), {} matched, {:.3} s",
                    report.path, report.lines, report.lines_cut, report.matched_lines, report.seconds
                );
                for (rule, n) in &report.rules {
                    println!("  {rule}: {n}");
                }
            }
        }
        Command::Db { command: DbCommand::Check { common } } => {
            let path = common.load_config()?.database();
            anyhow::ensure!(path.exists(), "no database at {}", path.display());
            let problems = crate::store::repair::check(&path, crate::store::repair::Check::Full)
                .unwrap_or_else(|e| vec![e.to_string()]);
            if problems.is_empty() {
                println!("ok");
            } else {
                println!("database {} is damaged:", path.display());
                for problem in &problems {
                    println!("  {problem}");
                }
                println!("run `ids db recover` (with the daemon stopped) to copy what can be read into a new database");
                return Ok(ExitCode::from(1));
            }
        }
        Command::Db { command: DbCommand::Recover { common } } => {
            let config = common.load_config()?;
            let path = config.database();
            anyhow::ensure!(path.exists(), "no database at {}", path.display());
            if runtime()?.block_on(control::try_exchange(&config.control_socket(), &Request::Status))?.is_some() {
                anyhow::bail!("the daemon answers on {}; stop it before recovering", config.control_socket().display());
            }
            let recovery = crate::store::repair::recover(&path)?;
            for table in &recovery.tables {
                match &table.error {
                    None => println!("{:<16} {} rows copied", table.table, table.copied),
                    Some(error) => println!("{:<16} {} rows copied; rows lost: {error}", table.table, table.copied),
                }
            }
            println!("the damaged file is kept as {}", recovery.damaged.display());
            println!(
                "the next `ids run` rescans every item; changes since the items were last stored are reported against what was recovered"
            );
        }
        Command::Collect { common } => return self::fleet::collect(common),
        Command::Fleet { command } => return self::fleet::run(command),
        Command::Config { command: ConfigCommand::Default } => print!("{DEFAULT_CONFIG}"),
        Command::Config { command: ConfigCommand::Check { common } } => {
            let config = common.load_config()?;
            // The rules file is part of the configuration: check that it loads too.
            crate::detect::rules::RuleSet::load(config.detect.rules.as_deref(), config.detect.rules_mode)?;
            // The daemon would start and enforce nothing on an interface that is not there.
            let absent = config.xdp.interfaces.absent();
            if !absent.is_empty() {
                anyhow::bail!(
                    "[xdp] interfaces: no interface {} on this host (see `ip link`); no ban would be enforced on it",
                    absent.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
                );
            }
            println!("ok");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configured collectors' items, scanned now.
fn scan_items(config: &Config) -> anyhow::Result<(crate::integrity::ScanReport, Vec<StoredItem>)> {
    let report = crate::integrity::scan(&crate::integrity::Registry::with_builtin(), &config.collectors)?;
    let items = report
        .collectors
        .iter()
        .flat_map(|c| c.items.iter().map(|item| StoredItem { collector: c.name.clone(), item: item.clone() }))
        .collect();
    Ok((report, items))
}

/// What `ids baseline` accepted, and whose state it was.
#[derive(Debug, serde::Serialize)]
struct BaselineReport {
    #[serde(flatten)]
    answer: BaselineAnswer,
    source: BaselineSource,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum BaselineSource {
    /// The running daemon's current items.
    Daemon,
    /// A scan made by the command (no daemon answered).
    Scan,
}

/// `ids baseline` with no daemon: scan, and store the scan as both current state and baseline.
fn offline_baseline(config: &Config) -> anyhow::Result<BaselineReport> {
    let (report, items) = scan_items(config)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let mut store = Store::open(&config.database())?;
    store.replace_current(&items)?;
    store.replace_baseline(&items)?;
    Ok(BaselineReport {
        answer: BaselineAnswer { items: items.len(), aggregate: crate::integrity::hex(&report.aggregate) },
        source: BaselineSource::Scan,
    })
}

/// `ids diff` with no daemon: the baseline against a scan made now (the database is not changed).
fn offline_diff(config: &Config) -> anyhow::Result<serde_json::Value> {
    let database = config.database();
    if !database.exists() {
        anyhow::bail!("no baseline: {} does not exist; run `ids baseline` first", database.display());
    }
    let baseline = Store::open(&database)?.baseline()?;
    let (_, items) = scan_items(config)?;
    Ok(crate::integrity::diff::diff(&baseline, &items).to_json())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr so that `events_log = "-"` keeps stdout for events.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `{"hostname", "aggregate", "collectors": {name: {"digest", "items", "errors": [{"id", "error"}]}}}`.
fn hash_json(report: &crate::integrity::ScanReport) -> serde_json::Value {
    use crate::integrity::hex;
    let collectors: serde_json::Map<String, serde_json::Value> = report
        .collectors
        .iter()
        .map(|collector| {
            let errors: Vec<serde_json::Value> = collector
                .items
                .iter()
                .filter_map(|item| item.error_text().map(|error| serde_json::json!({"id": item.id, "error": error})))
                .collect();
            let entry = serde_json::json!({
                "digest": hex(&collector.digest),
                "items": collector.items.len(),
                "errors": errors,
            });
            (collector.name.clone(), entry)
        })
        .collect();
    serde_json::json!({
        "hostname": report.hostname,
        "aggregate": hex(&report.aggregate),
        "collectors": collectors,
    })
}

fn human_hash(report: &crate::integrity::ScanReport) -> String {
    use crate::integrity::hex;
    let mut out = format!("aggregate {}  (host {})\n", hex(&report.aggregate), report.hostname);
    out += &format!("{:<20} {:>8} {:>7}  {}\n", "collector", "items", "errors", "digest");
    for collector in &report.collectors {
        let errors = collector.items.iter().filter(|item| item.error_text().is_some()).count();
        out +=
            &format!("{:<20} {:>8} {:>7}  {}\n", collector.name, collector.items.len(), errors, hex(&collector.digest));
    }
    for collector in &report.collectors {
        for item in &collector.items {
            if let Some(error) = item.error_text() {
                out += &format!("error: {}: {}: {}\n", collector.name, item.id, error);
            }
        }
    }
    out
}

fn human_status(status: &StatusAnswer) -> String {
    let mut out = format!("ids daemon pid {}, up {} s\n", status.pid, status.uptime_s);
    out += &format!("{:<9} {:<52} {:>10} {:>8}\n", "signal", "hook", "received", "lost");
    for signal in &status.signals {
        out += &format!("{:<9} {:<52} {:>10} {:>8}\n", signal.signal, signal.hook, signal.received, signal.lost);
    }
    out += &format!("incoming  {} on {}\n", status.incoming.hook, status.incoming.interfaces.join(", "));
    let modes: Vec<String> = status.xdp.interfaces.iter().map(|i| format!("{} ({})", i.name, i.mode)).collect();
    if modes.is_empty() {
        out += &format!(
            "bans      {} recorded, NOT enforced: the XDP filter is on no interface (see [xdp] interfaces)\n",
            status.xdp.bans
        );
    } else {
        out += &format!("bans      {} enforced in XDP on {}\n", status.xdp.bans, modes.join(", "));
    }
    let errors: Vec<String> = status
        .errors
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(program, count)| format!("{program} {count}"))
        .collect();
    out +=
        &format!("eBPF program errors: {}\n", if errors.is_empty() { "none".to_string() } else { errors.join(", ") });
    out += &format!(
        "watch     {} roots, {} inodes, {} unresolved records\nevents written: {}\nprocesses {} live, {} exited kept\n",
        status.watch.roots.len(),
        status.watch.inodes,
        status.watch.unresolved,
        status.events_written,
        status.processes.live,
        status.processes.exited,
    );
    out += &format!(
        "events log: {} failed writes, {} lines lost\nalert store: {} failed attempts, {} alerts waiting, {} lost\n",
        status.events_log_errors,
        status.events_log_lines_lost,
        status.alert_store.store_failures,
        status.alert_store.unstored,
        status.alert_store.lost,
    );
    let integrity = &status.integrity;
    out += &format!(
        "integrity aggregate {}, {} items, {} dirty, {} alerts{}\n",
        status.aggregate.as_deref().unwrap_or("(not yet computed)"),
        integrity.items,
        integrity.dirty,
        integrity.alerts,
        if integrity.ready { "" } else { " (first scan running)" },
    );
    if let Some(fleet) = &status.fleet {
        out += &format!(
            "fleet     host {} {}, backlog {}, last confirmed alert {}, {} sent, {} dropped unsent{}\n",
            fleet.host,
            if fleet.connected { "connected" } else { "NOT connected" },
            fleet.backlog,
            fleet.last_confirmed_seq,
            fleet.sent,
            fleet.dropped,
            fleet.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default(),
        );
    }
    out
}

/// `--since`: a duration as `ids ban --for` takes it, `permanent` excepted.
fn since_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::bans::config::parse_duration(text)?.ok_or_else(|| format!("--since {text:?}: give a duration (10m, 2h, 1d)"))
}
