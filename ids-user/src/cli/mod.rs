//! Command line: `ids run`, `ids status`, `ids hash`, `ids baseline`, `ids diff`, `ids config`,
//! the ban commands of `crate::bans::cli` (`ids ban`, `unban`, `bans`, `xdp detach`), `ids alerts`
//! (`cli/alerts.rs`; tables and times for people in `cli/render.rs`),
//! the TinyIDS commands `ids serve`, `ids client`, `ids server` (in `crate::tinyids::cli`), and the
//! fleet's central commands `ids collect`, `ids fleet ...` (`cli/fleet.rs`).
mod alerts;
mod bans;
mod fleet;
mod reference;
mod render;
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
    #[command(flatten)]
    verbosity: Verbosity,
}

/// How much the commands that log (`run`, `serve`, `collect`) log; `IDS_LOG` (a tracing filter,
/// `IDS_LOG=debug`) wins when it is set.
#[derive(Debug, Args)]
struct Verbosity {
    /// Log more: -v debug, -vv trace (`IDS_LOG`, when set, wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    verbose: u8,
    /// Log less: -q warnings and errors, -qq errors only (`IDS_LOG`, when set, wins).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
}

impl Verbosity {
    /// The tracing level these flags ask for (`info` without either).
    fn level(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (2.., _) => "trace",
            (_, 1) => "warn",
            (_, _) => "error",
        }
    }
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
    #[command(after_help = RUN_EXAMPLES)]
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// Show the running daemon's health, hooks and counters.
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        #[command(flatten)]
        common: Common,
        /// Print the daemon's status object as JSON (docs/cli.md, "The status object"), or
        /// {"ok": false, "error"} when no daemon answers.
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
    #[command(after_help = BASELINE_EXAMPLES)]
    Baseline {
        #[command(flatten)]
        common: Common,
        /// Print JSON: {"ok", "items", "aggregate", "source": "daemon"|"scan"}.
        #[arg(long)]
        json: bool,
    },
    /// Items added, removed and changed since the baseline (and which attributes changed):
    /// the running daemon's state, or, when no daemon answers, a scan made now. Exits 0 when
    /// nothing changed, 1 when something did, 2 on trouble (no baseline yet, no database), as
    /// diff(1) does.
    #[command(after_help = DIFF_EXAMPLES)]
    Diff {
        #[command(flatten)]
        common: Common,
        /// Print JSON: {"added": [{"collector", "id"}], "removed": [...], "changed": [{..., "attributes"}],
        /// "baseline_items"}; the exit status is the same.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix (dropped in XDP); through the daemon, or in the store when it is down.
    #[command(after_help = BAN_EXAMPLES)]
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
        /// ADDR or ADDR/PREFIX, as banned (several allowed).
        #[arg(required = true)]
        nets: Vec<String>,
        /// Print {"ok", "data": [{"net", "removed", "ban"}]} or {"ok": false, "error"}.
        #[arg(long)]
        json: bool,
    },
    /// List bans with their hit counters.
    #[command(after_help = BANS_EXAMPLES)]
    Bans {
        #[command(flatten)]
        common: Common,
        /// Print {"ok", "data": [{"id", "net", "reason", "source", "created", "expires", "packets", "bytes"}]}
        /// (times in RFC 3339 UTC, `expires` null when permanent).
        #[arg(long)]
        json: bool,
    },
    /// Show the alerts: the most recent, those of some kinds or severity, new ones as they come
    /// (--follow), or one whole (`ids alerts show ID`).
    Alerts(self::alerts::AlertsArgs),
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
    /// Print the completion script for a shell: bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Attach empty eBPF programs wherever `ids run` would attach its tracepoint programs, print
    /// `attached` and the hook sets, and keep them until SIGTERM or SIGINT: the floor that
    /// `cargo xtask bench sensor` measures the sensor against.
    #[command(hide = true)]
    SensorFloor {
        #[command(flatten)]
        common: Common,
    },
    /// Write the man pages (section 8) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Directory the pages are written to (made if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Remove the pinned attachments and maps (every ban stops being enforced); the daemon must be stopped.
    Detach {
        #[command(flatten)]
        common: Common,
        /// Print {"ok", "data": {"pin_dir", "removed": [...]}} or {"ok": false, "error"}.
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
        /// The log file to run through the rules.
        file: PathBuf,
        /// Print {"path", "kind", "lines", "lines_cut", "matched_lines", "rules": [[rule, lines]], "seconds"}.
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

const RUN_EXAMPLES: &str = "\
Examples:
  ids run                            with /etc/ids/ids.toml, or the embedded default
  ids run -c /etc/ids/ids.toml -v    with debug logs (IDS_LOG=debug is the same, and wins)";

const STATUS_EXAMPLES: &str = "\
Examples:
  ids status                         health line, hooks, counters
  ids status --json | jq .signals    the same for a script";

const BASELINE_EXAMPLES: &str = "\
Examples:
  ids baseline                       accept the current state (then `ids diff` is empty)
  ids baseline --json";

const DIFF_EXAMPLES: &str = "\
Examples:
  ids diff                           what changed since `ids baseline`
  ids diff --json | jq '.changed[].id'
  ids diff >/dev/null || echo changed   exit status: 0 same, 1 changed, 2 trouble";

const BAN_EXAMPLES: &str = "\
Examples:
  ids ban 192.0.2.7 --for 1h --reason 'ssh scan'
  ids ban 2001:db8::/48 198.51.100.0/24 --for 7d
  ids ban --file blocklist.txt --for permanent
  ids unban 192.0.2.7";

const BANS_EXAMPLES: &str = "\
Examples:
  ids bans                           every ban, its expiry and what it dropped
  ids bans --json | jq '.data[].net'";

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
    LOG_LEVEL.get_or_init(|| cli.verbosity.level());
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
            let result = runtime.block_on(crate::daemon::run(config, config_file));
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
                (Ok(status), false) => print!("{}", human_status(&status, self::render::stdout_colour())),
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
        Command::Diff { common, json } => return Ok(diff(&common, json)),
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
        Command::Alerts(args) => return self::alerts::run(args),
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
        Command::SensorFloor { common } => {
            anyhow::ensure!(can_load_bpf(), "ids sensor-floor needs root to load and attach eBPF programs");
            let config = common.load_config()?;
            let floor = crate::sensor::floor::attach(&config.exclude_hooks)?;
            println!("attached: {}", floor.hooks.join(", "));
            use std::io::Write as _;
            std::io::stdout().flush()?;
            runtime()?.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })?;
            drop(floor);
        }
        Command::Completions { shell } => self::reference::completions(shell)?,
        Command::Manpages { dir } => self::reference::manpages(&dir)?,
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

/// What `ids diff` says when no baseline was ever accepted.
const NO_BASELINE: &str = "no baseline yet: run `ids baseline`";

/// `ids diff`: exits 0 when nothing changed, 1 when something did, 2 on trouble, as diff(1).
fn diff(common: &Common, json: bool) -> ExitCode {
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let config = common.load_config()?;
        let answer = runtime()?
            .block_on(control::try_call::<DiffAnswer>(&config.control_socket(), &Request::Diff))
            .map_err(with_root_hint)?;
        let diff = match answer {
            Some(answer) => answer.diff,
            None => offline_diff(&config)?,
        };
        // A daemon older than this CLI does not tell; its diff is shown as it is.
        if diff["baseline_items"] == 0 {
            anyhow::bail!("{NO_BASELINE}");
        }
        Ok(diff)
    })();
    let printed = match &result {
        Ok(diff) if json => {
            serde_json::to_string_pretty(diff).map(|text| println!("{text}")).map_err(|e| e.to_string())
        }
        Ok(diff) => {
            print!("{}", crate::integrity::diff::human(diff));
            Ok(())
        }
        Err(e) if json => {
            println!("{}", control::refusal(format!("{e:#}")));
            Ok(())
        }
        Err(e) => Err(format!("{e:#}")),
    };
    if let Err(e) = printed {
        eprintln!("ids: {e}");
    }
    match result {
        Ok(diff) => {
            let changed =
                ["added", "removed", "changed"].iter().any(|key| diff[*key].as_array().is_some_and(|a| !a.is_empty()));
            ExitCode::from(u8::from(changed))
        }
        Err(_) => ExitCode::from(2),
    }
}

/// `ids diff` with no daemon: the baseline against a scan made now (the database is not changed).
fn offline_diff(config: &Config) -> anyhow::Result<serde_json::Value> {
    let database = config.database();
    if !database.exists() {
        anyhow::bail!("{NO_BASELINE} (there is no database at {} yet)", database.display());
    }
    let baseline = Store::open(&database)?.baseline()?;
    let (_, items) = scan_items(config)?;
    Ok(crate::integrity::diff::diff(&baseline, &items).to_json())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The level `-v`/`-q` asked for, set once the command line is read.
static LOG_LEVEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn init_logging() {
    let level = LOG_LEVEL.get().copied().unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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

/// What is wrong with the daemon, in words (none: healthy): hooks in fallback, events lost,
/// bans not enforced, no baseline, outputs that fail (the events log, the alert store, the fleet).
fn health(status: &StatusAnswer) -> Vec<String> {
    let mut problems = Vec::new();
    for signal in &status.signals {
        // These signals have LSM hooks on stock kernels; anything else is the costlier fallback.
        if ["exec", "file", "connect"].contains(&signal.signal.as_str()) && !signal.hook.starts_with("lsm:") {
            problems.push(format!("{} hook in fallback ({})", signal.signal, signal.hook));
        }
    }
    let lost: Vec<String> =
        status.signals.iter().filter(|s| s.lost > 0).map(|s| format!("{} {}", s.signal, s.lost)).collect();
    if !lost.is_empty() {
        let total: u64 = status.signals.iter().map(|s| s.lost).sum();
        problems.push(format!("{total} events lost ({})", lost.join(", ")));
    }
    if status.detect.dropped > 0 {
        problems.push(format!("{} events dropped by the detectors (queue full)", status.detect.dropped));
    }
    if status.xdp.scan_reports_dropped > 0 {
        problems.push(format!("{} XDP scan reports dropped", status.xdp.scan_reports_dropped));
    }
    if status.xdp.interfaces.is_empty() {
        problems.push("no XDP interface: bans are not enforced (see [xdp] interfaces)".into());
    }
    if status.integrity.baseline_items == Some(0) {
        problems.push("no integrity baseline (run `ids baseline`)".into());
    }
    if status.events_log_errors > 0 {
        problems.push(format!(
            "events log failing: {} writes failed, {} lines lost",
            status.events_log_errors, status.events_log_lines_lost
        ));
    }
    let store = &status.alert_store;
    if store.unstored > 0 || store.lost > 0 {
        problems.push(format!("alert store failing: {} alerts waiting, {} lost", store.unstored, store.lost));
    }
    if let Some(fleet) = &status.fleet {
        if !fleet.connected {
            problems.push(format!("fleet not connected (backlog {})", fleet.backlog));
        } else if fleet.backlog >= FLEET_BACKLOG_WORRY {
            problems.push(format!("fleet backlog {}", fleet.backlog));
        }
        if fleet.dropped > 0 {
            problems.push(format!("{} fleet alerts dropped unsent", fleet.dropped));
        }
    }
    for output in &status.outputs {
        if let Some(error) = &output.last_error {
            problems.push(format!("output {} failing ({} queued): {error}", output.name, output.queued));
        }
        if output.failed > 0 || output.dropped > 0 {
            problems
                .push(format!("output {}: {} alerts refused, {} dropped", output.name, output.failed, output.dropped));
        }
    }
    problems
}

/// A fleet backlog this long while connected means the broker is not keeping up.
const FLEET_BACKLOG_WORRY: u64 = 1000;

fn human_status(status: &StatusAnswer, colour: bool) -> String {
    use self::render::{Cell, Style, Table};
    let problems = health(status);
    let mut out = if problems.is_empty() {
        format!("{}\n", Style::Green.paint("healthy", colour))
    } else {
        format!("{} {}\n", Style::Red.paint("problems:", colour), problems.join("; "))
    };
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(status.uptime_s);
    out += &format!(
        "ids daemon pid {}, up {} (since {})\n\n",
        status.pid,
        self::render::span(std::time::Duration::from_secs(status.uptime_s)),
        self::render::local(started, false)
    );
    let mut signals = Table::new(&["signal", "hook", "received", "lost"]).right(&["received", "lost"]);
    for signal in &status.signals {
        let lost = Cell::styled(signal.lost.to_string(), if signal.lost > 0 { Style::Red } else { Style::Plain });
        signals.row(vec![
            signal.signal.as_str().into(),
            signal.hook.as_str().into(),
            signal.received.to_string().into(),
            lost,
        ]);
    }
    out += &signals.render(colour);
    out.push('\n');

    let mut facts = Table::new(&["", ""]).without_header();
    let mut fact = |name: &str, text: String| facts.row(vec![name.into(), text.into()]);
    let incoming = &status.incoming;
    fact(
        "incoming",
        match incoming.interfaces.is_empty() {
            true => format!("{} on no interface", incoming.hook),
            false => format!("{} on {}", incoming.hook, incoming.interfaces.join(", ")),
        },
    );
    let modes: Vec<String> = status
        .xdp
        .interfaces
        .iter()
        .map(|i| match (i.program.as_str(), i.mode.as_str()) {
            ("tc_guard", "tc") => format!("{} (tc)", i.name),
            ("tc_guard", mode) => format!("{} (tc, {mode})", i.name),
            (_, mode) => format!("{} (xdp {mode})", i.name),
        })
        .collect();
    if modes.is_empty() {
        fact(
            "bans",
            format!(
                "{} recorded, NOT enforced: the ban filter is on no interface (see [xdp] interfaces)",
                status.xdp.bans
            ),
        );
    } else {
        fact("bans", format!("{} enforced on {}", status.xdp.bans, modes.join(", ")));
    }
    let errors: Vec<String> = status
        .errors
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(program, count)| format!("{program} {count}"))
        .collect();
    fact("eBPF errors", if errors.is_empty() { "none".to_string() } else { errors.join(", ") });
    fact(
        "watch",
        format!(
            "{} roots, {} inodes, {} unresolved records",
            status.watch.roots.len(),
            status.watch.inodes,
            status.watch.unresolved
        ),
    );
    fact("events", format!("{} written", status.events_written));
    fact("processes", format!("{} live, {} exited kept", status.processes.live, status.processes.exited));
    fact(
        "events log",
        format!("{} failed writes, {} lines lost", status.events_log_errors, status.events_log_lines_lost),
    );
    fact(
        "alert store",
        format!(
            "{} failed attempts, {} alerts waiting, {} lost",
            status.alert_store.store_failures, status.alert_store.unstored, status.alert_store.lost
        ),
    );
    let integrity = &status.integrity;
    fact(
        "integrity",
        format!(
            "aggregate {}, {} items, {} dirty, {} alerts{}{}",
            status.aggregate.as_deref().unwrap_or("(not yet computed)"),
            integrity.items,
            integrity.dirty,
            integrity.alerts,
            match integrity.baseline_items {
                Some(0) => ", no baseline".to_string(),
                Some(n) => format!(", baseline of {n} items"),
                None => String::new(),
            },
            if integrity.ready { "" } else { " (first scan running)" },
        ),
    );
    if let Some(fleet) = &status.fleet {
        fact(
            "fleet",
            format!(
                "host {} {}, backlog {}, last confirmed alert {}, {} sent, {} dropped unsent{}",
                fleet.host,
                if fleet.connected { "connected" } else { "NOT connected" },
                fleet.backlog,
                fleet.last_confirmed_seq,
                fleet.sent,
                fleet.dropped,
                fleet.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default(),
            ),
        );
    }
    out += &facts.render(colour);
    for output in &status.outputs {
        out += &format!(
            "output    {} ({}): {} sent, {} failed, {} dropped, {} queued, {} retries{}\n",
            output.name,
            output.kind,
            output.sent,
            output.failed,
            output.dropped,
            output.queued,
            output.retries,
            output.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default(),
        );
    }
    out
}

/// `--since`: a duration as `ids ban --for` takes it, `permanent` excepted.
fn since_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::bans::config::parse_duration(text)?.ok_or_else(|| format!("--since {text:?}: give a duration (10m, 2h, 1d)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every `--json` and every positional argument of every command says what it is.
    #[test]
    fn help_describes_every_json_flag_and_positional_argument() {
        fn walk(command: &clap::Command, path: &str, undescribed: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if (arg.get_id() == "json" || arg.is_positional()) && arg.get_help().is_none() {
                    undescribed.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), undescribed);
            }
        }
        let mut undescribed = Vec::new();
        walk(&Cli::command(), "ids", &mut undescribed);
        assert!(undescribed.is_empty(), "arguments without help: {undescribed:?}");
    }

    #[test]
    fn the_main_commands_have_examples() {
        let cli = Cli::command();
        for name in ["alerts", "ban", "bans", "status", "diff", "baseline", "run"] {
            let command = cli.find_subcommand(name).unwrap_or_else(|| panic!("no `ids {name}`"));
            let examples = command.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(examples.starts_with("Examples:"), "`ids {name} --help` has no examples");
            assert!(examples.contains(&format!("ids {name}")), "`ids {name}` examples do not use it: {examples}");
        }
    }

    #[test]
    fn verbosity_flags_map_to_levels_and_do_not_combine() {
        let level = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.verbosity.level());
        assert_eq!(level(&["ids", "status"]).unwrap(), "info");
        assert_eq!(level(&["ids", "-v", "status"]).unwrap(), "debug");
        assert_eq!(level(&["ids", "status", "-vv"]).unwrap(), "trace");
        assert_eq!(level(&["ids", "-q", "run"]).unwrap(), "warn");
        assert_eq!(level(&["ids", "-qq", "run"]).unwrap(), "error");
        assert!(level(&["ids", "-v", "-q", "run"]).is_err());
    }

    #[test]
    fn alerts_take_their_filters_and_show_takes_an_id() {
        assert!(Cli::try_parse_from(["ids", "alerts", "--severity", "high", "--follow", "-n", "5"]).is_ok());
        assert!(Cli::try_parse_from(["ids", "alerts", "--severity", "urgent"]).is_err());
        assert!(Cli::try_parse_from(["ids", "alerts", "show", "42", "--json", "--config", "/x.toml"]).is_ok());
        assert!(Cli::try_parse_from(["ids", "alerts", "show", "forty-two"]).is_err());
        assert!(Cli::try_parse_from(["ids", "alerts", "--limit", "3", "--since", "1h", "--kind", "ban"]).is_ok());
    }

    fn status() -> StatusAnswer {
        serde_json::from_value(serde_json::json!({
            "pid": 1, "uptime_s": 5,
            "signals": [
                {"signal": "exec", "hook": "lsm:bprm_committed_creds", "received": 10, "lost": 0,
                 "lost_in_kernel": 0, "dropped": 0, "malformed": 0},
                {"signal": "file", "hook": "lsm:file_open,inode_*,mmap_file+fentry:vfs_write", "received": 12345,
                 "lost": 0, "lost_in_kernel": 0, "dropped": 0, "malformed": 0}],
            "errors": {}, "incoming": {"hook": "xdp:xdp_guard", "interfaces": ["lo"]},
            "watch": {"roots": [], "inodes": 0, "unresolved": 0}, "events_written": 0,
            "events_log_errors": 0, "events_log_lines_lost": 0,
            "alert_store": {"store_failures": 0, "unstored": 0, "lost": 0}, "alerts": {},
            "aggregate": null, "integrity": {"ready": true, "dirty": 0, "items": 3, "alerts": 0, "baseline_items": 3},
            "xdp": {"interfaces": [{"name": "lo", "mode": "generic"}], "pin_dir": "/sys/fs/bpf/ids", "bans": 0,
                    "scan_reports": 0, "scan_reports_dropped": 0},
            "detect": {"lines": 0, "lines_cut": 0, "alerts": 0, "bans_requested": 0, "files_scanned": 0,
                       "dropped": 0, "windows_evicted": 0},
            "fleet": null
        }))
        .unwrap()
    }

    #[test]
    fn health_is_healthy_or_names_each_problem() {
        let good = status();
        assert!(health(&good).is_empty(), "{:?}", health(&good));
        assert!(human_status(&good, false).starts_with("healthy\n"));
        let mut bad = good.clone();
        bad.signals[0].hook = "tracepoint:sched_process_exec".into();
        bad.signals[1].lost = 7;
        bad.xdp.interfaces.clear();
        bad.integrity.baseline_items = Some(0);
        bad.alert_store.unstored = 2;
        bad.events_log_errors = 1;
        assert_eq!(
            health(&bad),
            [
                "exec hook in fallback (tracepoint:sched_process_exec)",
                "7 events lost (file 7)",
                "no XDP interface: bans are not enforced (see [xdp] interfaces)",
                "no integrity baseline (run `ids baseline`)",
                "events log failing: 1 writes failed, 0 lines lost",
                "alert store failing: 2 alerts waiting, 0 lost",
            ]
        );
        assert!(human_status(&bad, false).starts_with("problems: exec hook in fallback"));
        // An older daemon does not tell about its baseline: no problem is made up.
        bad.integrity.baseline_items = None;
        assert!(!health(&bad).iter().any(|p| p.contains("baseline")));
    }
}
