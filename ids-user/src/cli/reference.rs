//! `ids completions SHELL` and the hidden `ids manpages DIR`: shell completions and section-8 man
//! pages generated from the command definition itself, so that they list exactly the commands and
//! options this binary takes. The Debian package (`cargo xtask package`) installs both.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::Cli;

/// Section 8: system administration commands and daemons (`ids run` needs root).
const MAN_SECTION: &str = "8";
const MANUAL: &str = "System Administration";

/// Writes the completion script for `shell` to standard output.
pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "ids", &mut out);
    out.flush().context("writing the completions to standard output")
}

/// Writes `ids.8` and one `ids-<command>[-<subcommand>].8` per visible command into `dir` (created
/// if missing) and prints the paths written.
pub(super) fn manpages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // `help` is no command of its own: `ids help X` is `ids X --help`.
    let mut command = Cli::command().disable_help_subcommand(true);
    // Gives every subcommand its display name (`ids-xdp-detach`), which names its page.
    command.build();
    let mut pages = Vec::new();
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, &mut pages)?;
    }
    let names: Vec<String> = pages.iter().map(|(name, _)| name.clone()).collect();
    let top = dir.join(format!("ids.{MAN_SECTION}"));
    write_page(&command, &top, |roff| top_sections(roff, &names))?;
    pages.insert(0, ("ids".to_string(), top));
    for (_, path) in &pages {
        println!("{}", path.display());
    }
    Ok(())
}

/// The page of `command` and, depth first, those of its visible subcommands.
fn write_pages(command: &clap::Command, dir: &Path, pages: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let name = command.get_display_name().unwrap_or_else(|| command.get_name()).to_string();
    let path = dir.join(format!("{name}.{MAN_SECTION}"));
    write_page(command, &path, |roff| {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([bold("ids"), roman(format!("({MAN_SECTION})"))]);
    })?;
    pages.push((name, path));
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, pages)?;
    }
    Ok(())
}

fn write_page(command: &clap::Command, path: &Path, extra: impl FnOnce(&mut Roff)) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(command.clone()).section(MAN_SECTION).manual(MANUAL);
    let mut text = Vec::new();
    page.render(&mut text).with_context(|| format!("rendering {}", path.display()))?;
    let mut roff = Roff::new();
    extra(&mut roff);
    roff.to_writer(&mut text).with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// FILES, ENVIRONMENT and SEE ALSO of `ids.8`: what a packaged install reads and writes.
fn top_sections(roff: &mut Roff, pages: &[String]) {
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (crate::config::SYSTEM_CONFIG, "The configuration read when neither --config nor IDS_CONFIG names one."),
        ("/var/lib/ids", "The state directory of the packaged configuration: the database and the control socket."),
        ("/var/log/ids/events.jsonl", "The events log of the packaged configuration, one JSON object per line."),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, what) in [
        (crate::config::CONFIG_ENV, "The configuration file, when --config is not given."),
        ("IDS_LOG", "The log filter of the daemon (tracing's syntax: info, debug, ids=debug)."),
    ] {
        roff.control("TP", []);
        roff.text([bold(name)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut references = Vec::new();
    for page in pages {
        references.push(bold(page.as_str()));
        references.push(roman(format!("({MAN_SECTION}), ")));
    }
    references.push(bold("systemctl"));
    references.push(roman("(1)"));
    roff.text(references);
}
