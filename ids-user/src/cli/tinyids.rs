//! Command lines of `ids serve`, `ids client ...` and `ids server ...` (local administration of
//! a server's records), and where passphrases come from: `--passphrase-arg` (only when asked
//! for explicitly), `--passphrase-file`, the `IDS_PASSPHRASE` environment variable, or a prompt.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::tinyids::client::{self, Outcome, Revision};
use crate::tinyids::codec::{Request, valid_token};
use crate::tinyids::settings::{AuditLog, RawClientTls, ServerEntry, TlsOrigin};

/// Longest passphrase accepted (the request line is at most 8192 bytes).
const MAX_PASSPHRASE: usize = 1024;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (overrides serve.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The records database, created if missing (overrides serve.db).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Audit log: a file, "-" for standard output, "" for none (overrides serve.audit_log).
    #[arg(long)]
    audit_log: Option<String>,
    /// Configuration file: its [serve] table gives TLS and limits (without it: $IDS_CONFIG, else
    /// /etc/ids/ids.toml if it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

/// Where the passphrase comes from: flattened only into the subcommands that send or set one, so
/// that no other command's `--help` offers it.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// Read the passphrase from the first line of this file.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The passphrase itself (visible to other users in the process list: prefer a file).
    #[arg(long)]
    passphrase_arg: Option<String>,
}

/// Where CHANGEPHRASE's new passphrase comes from.
#[derive(Debug, Args)]
pub struct NewPassphraseArgs {
    /// Read the new passphrase from the first line of this file.
    #[arg(long)]
    new_passphrase_file: Option<PathBuf>,
    /// The new passphrase itself (visible to other users in the process list: prefer a file).
    #[arg(long)]
    new_passphrase_arg: Option<String>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    command: ClientCommand,
    /// Talk to this server (HOST:PORT) instead of the configured [[servers]]: plain TCP, or TLS 1.3
    /// with --tls-ca and/or --tls-fingerprint.
    #[arg(long, global = true)]
    server: Vec<String>,
    #[command(flatten)]
    tls: ServerTlsArgs,
    /// Print JSON: {"command", "results": [{"server", "address", "ok", "code", "reply", "result", "revision" (TEST), "error"}]}.
    #[arg(long, global = true)]
    json: bool,
    /// Configuration file ([[servers]], [[collectors]]); without it, $IDS_CONFIG, else
    /// /etc/ids/ids.toml if it exists, else the embedded default.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Seconds to wait for each server.
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,
}

/// TLS for the `--server` servers: the settings of a `[servers.tls]` table, as flags.
#[derive(Debug, Args)]
pub struct ServerTlsArgs {
    /// With --server: TLS 1.3, the server's chain and name verified against this PEM CA file.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// With --server: TLS 1.3, the server certificate pinned by the SHA-256 of its DER (64 hex digits, colons allowed).
    #[arg(long, global = true, value_name = "HEX")]
    tls_fingerprint: Option<String>,
    /// With --server and TLS: client certificate chain (PEM) for a server that requires one (mTLS).
    #[arg(long, global = true, value_name = "FILE")]
    tls_client_cert: Option<PathBuf>,
    /// With --server and TLS: the key of --tls-client-cert (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    tls_client_key: Option<PathBuf>,
    /// With --server and TLS: the name the server certificate must carry (the HOST of --server by default).
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl ServerTlsArgs {
    /// The names of the flags given.
    fn given(&self) -> Vec<String> {
        let given = [
            ("ca", self.tls_ca.is_some()),
            ("fingerprint", self.tls_fingerprint.is_some()),
            ("client_cert", self.tls_client_cert.is_some()),
            ("client_key", self.tls_client_key.is_some()),
            ("server_name", self.tls_server_name.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, is_given)| *is_given)
            .map(|(key, _)| TlsOrigin::CommandLine.setting(key))
            .collect()
    }

    /// The flags given, as a `[servers.tls]` table; `None` when none is.
    fn raw(&self) -> Option<RawClientTls> {
        let raw = RawClientTls {
            ca: self.tls_ca.clone(),
            fingerprint: self.tls_fingerprint.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        (!self.given().is_empty()).then_some(raw)
    }
}

/// The servers of `ids client`: the `--server` ones (with the `--tls-*` settings, validated as a
/// `[servers.tls]` table is), or the configured `[[servers]]`.
fn chosen_servers(args: &ClientArgs, config: &Config) -> anyhow::Result<Vec<ServerEntry>> {
    let tls = args.tls.raw();
    if args.server.is_empty() {
        if tls.is_some() {
            anyhow::bail!(
                "{}: only with --server (a [[servers]] entry has its TLS settings in [servers.tls])",
                args.tls.given().join(", ")
            );
        }
        return Ok(config.servers.clone());
    }
    let tls = tls
        .map(|raw| crate::tinyids::settings::validate_client_tls(&raw, TlsOrigin::CommandLine))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    args.server
        .iter()
        .map(|address| {
            let entry = ServerEntry::from_address(address).map_err(|e| anyhow::anyhow!("--server {e}"))?;
            Ok(ServerEntry { tls: tls.clone(), ..entry })
        })
        .collect()
}

/// The text line of one outcome: server, address, reply (and the revision a TEST showed).
fn outcome_line(outcome: &Outcome) -> String {
    let head = format!("{:<16} {:<24}", outcome.server, outcome.address);
    match (&outcome.result, outcome.revision) {
        (Ok(reply), None) => format!("{head} {}", reply.text()),
        (Ok(reply), Some(Revision::Two)) => format!("{head} {} (revision 2)", reply.text()),
        (Ok(reply), Some(Revision::One)) => {
            let why = "as TinyIDS 0.1.0-0.1.3: TEST 2 refused with 41, a bare TEST accepted";
            format!("{head} {} (older revision 1, {why})", reply.text())
        }
        (Err(error), _) => format!("{head} unreachable: {error}"),
    }
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// TEST 2: is the server there and does it speak revision 2? (On 41: a bare TEST, revision 1, TinyIDS 0.1.0-0.1.3.)
    Test,
    /// CHECK the aggregate hash of the configured collectors.
    Check {
        /// Send this hash instead of scanning.
        #[arg(long)]
        hash: Option<String>,
    },
    /// UPDATE the stored hash (the first UPDATE also sets the passphrase).
    Update {
        /// Send this hash instead of scanning.
        #[arg(long)]
        hash: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// DELETE this host's record.
    Delete {
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// CHANGEPHRASE: replace the passphrase.
    Changephrase {
        #[command(flatten)]
        passphrase: PassphraseArgs,
        #[command(flatten)]
        new_passphrase: NewPassphraseArgs,
    },
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    /// The server's records database (overrides serve.db).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Configuration file whose serve.db names the database (without it: $IDS_CONFIG, else
    /// /etc/ids/ids.toml if it exists).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// List every client's record.
    List,
    /// Show one client's record.
    Show {
        /// The client's name, as `ids server list` shows it.
        client: String,
    },
    /// Delete one client's record.
    Delete {
        /// The client's name, as `ids server list` shows it.
        client: String,
    },
    /// Set a new passphrase for a client (the passphrase from --passphrase-file, IDS_PASSPHRASE or a prompt).
    ResetPassphrase {
        /// The client's name, as `ids server list` shows it.
        client: String,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut serve = match Config::locate(args.config.as_deref()) {
        Some(path) => Config::load(Some(&path))?.serve,
        None => crate::tinyids::settings::ServeConfig::default(),
    };
    if let Some(listen) = args.listen {
        serve.listen = Some(listen);
    }
    if let Some(db) = args.db {
        serve.db = Some(db);
    }
    if let Some(audit) = args.audit_log {
        serve.audit_log = match audit.as_str() {
            "-" => AuditLog::Stdout,
            "" => AuditLog::Off,
            path => AuditLog::File(path.into()),
        };
    }
    runtime()?.block_on(crate::tinyids::server::run(serve))?;
    Ok(ExitCode::SUCCESS)
}

/// One passphrase from the first source given: argument, file, environment, prompt.
fn passphrase(
    arg: Option<&str>,
    file: Option<&Path>,
    env: &str,
    prompt: &str,
    confirm: bool,
) -> anyhow::Result<String> {
    let (value, origin) = if let Some(arg) = arg {
        (arg.to_string(), "the command line".to_string())
    } else if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading passphrase file {}", file.display()))?;
        (text.lines().next().unwrap_or("").to_string(), format!("passphrase file {}", file.display()))
    } else if let Ok(value) = std::env::var(env) {
        (value, format!("environment variable {env}"))
    } else {
        let value =
            rpassword::prompt_password(format!("{prompt}: ")).context("reading a passphrase from the terminal")?;
        if confirm {
            let again = rpassword::prompt_password(format!("{prompt} (again): "))
                .context("reading a passphrase from the terminal")?;
            if again != value {
                anyhow::bail!("the passphrases typed do not match");
            }
        }
        (value, "the prompt".to_string())
    };
    if value.is_empty() {
        anyhow::bail!("empty passphrase from {origin}");
    }
    if value.len() > MAX_PASSPHRASE || !valid_token(&value) {
        anyhow::bail!(
            "passphrase from {origin}: must be 1-{MAX_PASSPHRASE} bytes without spaces or control characters (the protocol splits on whitespace)"
        );
    }
    Ok(value)
}

fn old_passphrase(args: &PassphraseArgs, confirm: bool) -> anyhow::Result<String> {
    passphrase(args.passphrase_arg.as_deref(), args.passphrase_file.as_deref(), "IDS_PASSPHRASE", "Passphrase", confirm)
}

fn new_passphrase(args: &NewPassphraseArgs) -> anyhow::Result<String> {
    passphrase(
        args.new_passphrase_arg.as_deref(),
        args.new_passphrase_file.as_deref(),
        "IDS_NEW_PASSPHRASE",
        "New passphrase",
        true,
    )
}

/// The aggregate hash: given, or computed by scanning the configured collectors.
fn aggregate(config: &Config, given: Option<String>) -> anyhow::Result<String> {
    if let Some(hash) = given {
        if !valid_token(&hash) || hash.len() > 512 {
            anyhow::bail!("--hash {hash:?}: must be 1-512 bytes without spaces or control characters");
        }
        return Ok(hash);
    }
    let report = crate::integrity::scan(&crate::integrity::Registry::with_builtin(), &config.collectors)?;
    Ok(crate::integrity::hex(&report.aggregate))
}

pub fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(Config::locate(args.config.as_deref()).as_deref())?;
    let servers = chosen_servers(&args, &config)?;
    let targets = client::targets(&servers)?;
    if targets.is_empty() {
        anyhow::bail!("no enabled server: give --server HOST:PORT or [[servers]] in the configuration");
    }
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        anyhow::bail!("--timeout {}: must be in (0, 3600] seconds", args.timeout);
    }
    let request = match args.command {
        ClientCommand::Test => Request::Test { revision: Some(crate::tinyids::REVISION.into()) },
        ClientCommand::Check { hash } => Request::Check { hash: aggregate(&config, hash)? },
        ClientCommand::Update { hash, passphrase } => {
            let hash = aggregate(&config, hash)?;
            Request::Update { hash, passphrase: old_passphrase(&passphrase, false)? }
        }
        ClientCommand::Delete { passphrase } => Request::Delete { passphrase: old_passphrase(&passphrase, false)? },
        ClientCommand::Changephrase { passphrase, new_passphrase: new } => {
            let old = old_passphrase(&passphrase, false)?;
            Request::ChangePhrase { old, new: new_passphrase(&new)? }
        }
    };
    let outcomes = runtime()?.block_on(client::send_all(&targets, &request, Duration::from_secs_f64(args.timeout)));
    if args.json {
        let results: Vec<serde_json::Value> = outcomes.iter().map(Outcome::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"command": request.command(), "results": results}))?
        );
    } else {
        for outcome in &outcomes {
            println!("{}", outcome_line(outcome));
        }
    }
    let worst = outcomes.iter().map(Outcome::severity).max().unwrap_or(0);
    Ok(ExitCode::from(worst))
}

pub fn admin(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let db = match (&args.db, Config::locate(args.config.as_deref())) {
        (Some(db), _) => db.clone(),
        (None, Some(path)) => {
            Config::load(Some(&path))?.serve.db.context("the configuration has no serve.db; give --db")?
        }
        (None, None) => anyhow::bail!("give --db PATH (or --config with serve.db)"),
    };
    if !db.exists() {
        anyhow::bail!("server database {} does not exist", db.display());
    }
    let store = crate::tinyids::store::RecordStore::open(&db)?;
    match args.command {
        AdminCommand::List => {
            let records = store.list()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", crate::tinyids::admin::table(&records));
            }
        }
        AdminCommand::Show { client } => {
            let record =
                store.get(&client)?.with_context(|| format!("no record for client {client:?} in {}", db.display()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print!("{}", crate::tinyids::admin::details(&record));
            }
        }
        AdminCommand::Delete { client } => {
            if !store.delete(&client)? {
                anyhow::bail!("no record for client {client:?} in {}", db.display());
            }
            crate::tinyids::admin::log_action("delete", &client, &db);
            println!("deleted the record of {client}");
        }
        AdminCommand::ResetPassphrase { client, passphrase } => {
            if store.get(&client)?.is_none() {
                anyhow::bail!("no record for client {client:?} in {}", db.display());
            }
            let new = old_passphrase(&passphrase, true)?;
            let phc = crate::tinyids::store::hash_passphrase(&new)?;
            if !store.reset_passphrase(&client, &phc)? {
                anyhow::bail!("the record of {client:?} was deleted meanwhile");
            }
            crate::tinyids::admin::log_action("reset_passphrase", &client, &db);
            println!("passphrase of {client} reset");
        }
    }
    Ok(ExitCode::SUCCESS)
}
