//! SIGHUP: the configuration read again. What the daemon can take up while it runs (detectors,
//! rules, trusted addresses, ban durations, TinyIDS servers) is applied; what it cannot (the
//! sensor's hooks and watch set, paths, the fleet, the metrics endpoint) is named in the log and
//! waits for a restart. A configuration that does not load changes nothing.
use std::fmt::Debug;

use crate::config::Config;

/// Whether a section's change is taken up by the running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Live,
    AtRestart,
}

/// Debug renders every field of these settings (not all of their types compare with `==`).
fn rendered<T: Debug>(value: &T) -> String {
    format!("{value:?}")
}

/// The configuration's sections as the daemon uses them, with how each one's change is applied.
#[expect(clippy::type_complexity, reason = "a table of accessors reads better than a trait here")]
const SECTIONS: &[(&str, Applied, fn(&Config) -> String)] = &[
    ("detectors ([[logs]], [[journal]], web_roots, rules)", Applied::Live, |c| {
        rendered(&(&c.detect.logs, &c.detect.journal, &c.detect.web_roots, &c.detect.rules, c.detect.rules_mode))
    }),
    ("[xdp] trusted", Applied::Live, |c| rendered(&c.xdp.trusted)),
    ("[bans]", Applied::Live, |c| rendered(&c.bans)),
    ("[[servers]], remote_check_interval", Applied::Live, |c| rendered(&(&c.servers, c.remote_check_interval))),
    ("watch", Applied::AtRestart, |c| rendered(&c.watch)),
    ("[[collectors]]", Applied::AtRestart, |c| rendered(&c.collectors)),
    ("integrity_interval, verify_interval", Applied::AtRestart, |c| {
        rendered(&(c.integrity_interval, c.verify_interval))
    }),
    ("[xdp] (but trusted)", Applied::AtRestart, |c| {
        let mut xdp = c.xdp.clone();
        xdp.trusted.clear();
        rendered(&xdp)
    }),
    ("state_dir", Applied::AtRestart, |c| rendered(&c.state_dir)),
    ("events_log", Applied::AtRestart, |c| rendered(&c.events_log)),
    ("max_watched_inodes, channel_capacity", Applied::AtRestart, |c| {
        rendered(&(c.max_watched_inodes, c.channel_capacity))
    }),
    ("process_context", Applied::AtRestart, |c| rendered(&c.process_context)),
    ("exclude_hooks", Applied::AtRestart, |c| rendered(&c.exclude_hooks)),
    ("[fleet]", Applied::AtRestart, |c| rendered(&c.fleet)),
    ("[metrics]", Applied::AtRestart, |c| rendered(&c.metrics)),
];

/// The sections that differ between `running` and `read`, in table order.
pub(super) fn changed_sections(running: &Config, read: &Config) -> Vec<(&'static str, Applied)> {
    SECTIONS
        .iter()
        .filter(|(_, _, section)| section(running) != section(read))
        .map(|(name, applied, _)| (*name, *applied))
        .collect()
}

/// The configuration in force after a reload: `read`'s live sections, `running`'s others (they
/// still describe what runs, for the next comparison and for what reads them, such as the events
/// log's path).
pub(super) fn in_force(running: &Config, read: Config) -> Config {
    let mut config = running.clone();
    config.detect = read.detect;
    config.xdp.trusted = read.xdp.trusted;
    config.bans = read.bans;
    config.servers = read.servers;
    config.remote_check_interval = read.remote_check_interval;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test").unwrap()
    }

    #[test]
    fn an_unchanged_configuration_changes_nothing() {
        let config = parse("");
        assert!(changed_sections(&config, &parse("")).is_empty());
    }

    #[test]
    fn live_and_restart_sections_are_told_apart() {
        let running = parse("");
        let read = parse(
            "watch = [\"/srv\"]\n[bans]\nmax_duration = \"2d\"\n[xdp]\ntrusted = [\"192.0.2.1\"]\n\
             [[logs]]\nkind = \"sshd\"\npath = \"/var/log/x.log\"\n",
        );
        let changed = changed_sections(&running, &read);
        assert_eq!(
            changed,
            [
                ("detectors ([[logs]], [[journal]], web_roots, rules)", Applied::Live),
                ("[xdp] trusted", Applied::Live),
                ("[bans]", Applied::Live),
                ("watch", Applied::AtRestart),
            ]
        );
        let config = in_force(&running, read);
        // The live sections are taken up, the watch set stays what the sensor runs with.
        assert_eq!(config.watch, running.watch);
        assert_eq!(config.xdp.trusted.len(), 1);
        assert_eq!(config.detect.logs.len(), 1);
        assert!(changed_sections(&config, &config.clone()).is_empty());
    }
}
