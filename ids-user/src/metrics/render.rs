//! A [`StatusAnswer`] as Prometheus text exposition (format 0.0.4): one `# HELP` and `# TYPE`
//! line per metric family, then its samples.
use std::fmt::Write as _;

use crate::control::StatusAnswer;

/// The `Content-Type` of what [`render`] returns.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// The exposition being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// A family without labels: its header and its one sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.header(name, kind, help);
        self.sample(name, None, value);
    }

    /// A family with one label: its header and a sample per `(label value, value)`. The header is
    /// written even without samples, so that the family is known before anything is counted.
    fn labelled<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, kind, help);
        for (label_value, value) in samples {
            self.sample(name, Some((label, label_value)), value);
        }
    }

    /// A family whose samples carry several labels each (`(labels, value)`).
    fn multi_labelled<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
    ) {
        self.header(name, kind, help);
        for (labels, value) in samples {
            let labels: Vec<String> =
                labels.iter().map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value))).collect();
            let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        // HELP text escapes backslash and newline; the texts here are constants, escaped anyway
        // so that a later edit cannot break the format.
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    fn sample(&mut self, name: &str, label: Option<(&str, &str)>, value: u64) {
        match label {
            Some((label, label_value)) => {
                let _ = writeln!(self.text, "{name}{{{label}=\"{}\"}} {value}", escape_label_value(label_value));
            }
            None => {
                let _ = writeln!(self.text, "{name} {value}");
            }
        }
    }
}

/// Label values escape backslash, double quote and newline. Program names, signal names and
/// alert kinds are the daemon's own, but a label value must never be able to end its sample.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str(r"\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Every metric of the endpoint, from one status answer (the list is in docs/metrics.md).
pub(crate) fn render(status: &StatusAnswer) -> String {
    use Kind::{Counter, Gauge};
    let mut out = Exposition::default();
    out.single("ids_up", Gauge, "1 while the daemon answers.", 1);
    out.single("ids_uptime_seconds", Gauge, "Seconds since the daemon started.", status.uptime_s);

    let signals = &status.signals;
    out.labelled(
        "ids_events_received_total",
        Counter,
        "Events read from the kernel's ring buffers, per signal.",
        "signal",
        signals.iter().map(|s| (s.signal.as_str(), s.received)),
    );
    out.labelled(
        "ids_events_lost_total",
        Counter,
        "Events lost, per signal: the kernel found its ring buffer full, or the writer's queue was full.",
        "signal",
        signals.iter().map(|s| (s.signal.as_str(), s.lost)),
    );
    out.labelled(
        "ids_events_malformed_total",
        Counter,
        "Ring-buffer records that did not decode, per signal.",
        "signal",
        signals.iter().map(|s| (s.signal.as_str(), s.malformed)),
    );
    out.single("ids_events_written_total", Counter, "Events written to the events log.", status.events_written);
    out.single(
        "ids_events_log_write_failures_total",
        Counter,
        "Writes to the events log that failed (a full disk, say).",
        status.events_log_errors,
    );
    out.single(
        "ids_events_log_lines_lost_total",
        Counter,
        "Lines that did not reach the events log because a write failed.",
        status.events_log_lines_lost,
    );
    out.labelled(
        "ids_program_errors_total",
        Counter,
        "Failed runs of each eBPF program, summed over CPUs.",
        "program",
        status.errors.iter().map(|(program, count)| (program.as_str(), *count)),
    );
    out.single("ids_watched_inodes", Gauge, "Inodes in the kernel's watch set.", status.watch.inodes);
    out.single("ids_processes", Gauge, "Live processes in the process table.", status.processes.live);
    out.single(
        "ids_watch_unresolved",
        Gauge,
        "Watched paths that could not be resolved to an inode.",
        status.watch.unresolved,
    );

    out.labelled(
        "ids_alerts_total",
        Counter,
        "Alerts raised since the daemon started, per kind.",
        "kind",
        status.alerts.iter().map(|(kind, count)| (kind.as_str(), *count)),
    );
    let store = &status.alert_store;
    out.single(
        "ids_alert_store_failures_total",
        Counter,
        "Attempts to store alerts that failed (a retry that fails counts again).",
        store.store_failures,
    );
    out.single("ids_alert_store_unstored", Gauge, "Alerts kept in memory for a retry of the store.", store.unstored);
    out.single(
        "ids_alert_store_lost_total",
        Counter,
        "Alerts the store never got: refused while the retry buffer was full.",
        store.lost,
    );

    let integrity = &status.integrity;
    out.single("ids_integrity_items", Gauge, "Items the integrity worker holds digests of.", integrity.items);
    out.single(
        "ids_integrity_dirty",
        Gauge,
        "Integrity work pending: events queued, paths waiting to be rehashed, a pending rescan.",
        integrity.dirty,
    );
    out.single(
        "ids_integrity_aggregate_ready",
        Gauge,
        "1 once the first integrity scan is done and the aggregate digest exists, else 0.",
        u64::from(status.aggregate.is_some()),
    );

    let xdp = &status.xdp;
    out.single("ids_bans_active", Gauge, "Addresses and prefixes banned now.", xdp.bans as u64);
    out.single("ids_xdp_interfaces", Gauge, "Interfaces the XDP program is attached to.", xdp.interfaces.len() as u64);
    out.single("ids_scan_reports_total", Counter, "SYN reports read from the XDP program.", xdp.scan_reports);
    out.single(
        "ids_scan_reports_dropped_total",
        Counter,
        "SYN reports the XDP program could not queue.",
        xdp.scan_reports_dropped,
    );

    let detect = &status.detect;
    out.single("ids_detect_log_lines_total", Counter, "Log lines the detectors read.", detect.lines);
    out.single(
        "ids_detect_log_lines_cut_total",
        Counter,
        "Log lines over the length limit, cut before matching.",
        detect.lines_cut,
    );
    out.single("ids_detect_alerts_total", Counter, "Alerts raised by the detectors.", detect.alerts);
    out.single(
        "ids_detect_bans_requested_total",
        Counter,
        "Detector requests the ban path turned into a ban.",
        detect.bans_requested,
    );
    out.single(
        "ids_detect_files_scanned_total",
        Counter,
        "Files under web roots scanned for webshells.",
        detect.files_scanned,
    );
    out.single(
        "ids_detect_events_dropped_total",
        Counter,
        "Events the detect worker's queue had no room for.",
        detect.dropped,
    );
    out.single(
        "ids_detect_windows_evicted_total",
        Counter,
        "Detection windows that still held hits when a flood of addresses needed their room.",
        detect.windows_evicted,
    );

    let outputs = &status.outputs;
    out.multi_labelled(
        "ids_output_alerts_total",
        Counter,
        "Alerts of each [[outputs]] table: sent, failed (refused for good, not retried), dropped (no room in its queue).",
        outputs.iter().flat_map(|o| {
            [("sent", o.sent), ("failed", o.failed), ("dropped", o.dropped)]
                .map(|(result, value)| (vec![("output", o.name.as_str()), ("result", result)], value))
        }),
    );
    out.labelled(
        "ids_output_queued",
        Gauge,
        "Alerts waiting in each output's queue, the one being delivered included.",
        "output",
        outputs.iter().map(|o| (o.name.as_str(), o.queued)),
    );
    out.labelled(
        "ids_output_retries_total",
        Counter,
        "Delivery attempts of each output that failed and were retried.",
        "output",
        outputs.iter().map(|o| (o.name.as_str(), o.retries)),
    );

    // Only with `[fleet]`: without it there is no link whose state a 0 could be taken for.
    if let Some(fleet) = &status.fleet {
        out.single(
            "ids_fleet_connected",
            Gauge,
            "1 while the fleet link to the broker is up, else 0.",
            fleet.connected.into(),
        );
        out.single("ids_fleet_backlog", Gauge, "Alerts stored and not yet confirmed by the broker.", fleet.backlog);
        out.single(
            "ids_fleet_alerts_sent_total",
            Counter,
            "Alerts the broker confirmed since the daemon started.",
            fleet.sent,
        );
        out.single(
            "ids_fleet_alerts_dropped_total",
            Counter,
            "Alerts dropped unsent because the backlog was over max_backlog.",
            fleet.dropped,
        );
        out.single(
            "ids_fleet_ban_decisions_total",
            Counter,
            "Fleet ban decisions applied since the daemon started.",
            fleet.ban_decisions,
        );
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as the daemon answers it, with a fleet link or without.
    fn status(fleet: Option<serde_json::Value>) -> StatusAnswer {
        serde_json::from_value(serde_json::json!({
            "pid": 1, "uptime_s": 42,
            "signals": [{"signal": "file", "hook": "lsm", "received": 7, "lost": 3, "lost_in_kernel": 1,
                         "dropped": 2, "malformed": 0}],
            "errors": {"file_open": 4},
            "incoming": {"hook": "xdp:x", "interfaces": []},
            "watch": {"roots": ["/etc"], "inodes": 10, "unresolved": 0},
            "events_written": 7, "events_log_errors": 0, "events_log_lines_lost": 0,
            "alert_store": {"store_failures": 0, "unstored": 0, "lost": 0},
            "alerts": {"integrity": 2, "ban": 1},
            "aggregate": "ab",
            "integrity": {"ready": true, "dirty": 0, "items": 9, "alerts": 2},
            "xdp": {"interfaces": [{"name": "lo", "mode": "generic"}], "pin_dir": "/p", "bans": 5,
                    "scan_reports": 0, "scan_reports_dropped": 0},
            "detect": {"lines": 11, "lines_cut": 0, "alerts": 0, "bans_requested": 0, "files_scanned": 0,
                       "dropped": 0, "windows_evicted": 0},
            "fleet": fleet,
        }))
        .unwrap()
    }

    #[test]
    fn the_status_figures_become_their_samples() {
        let text = render(&status(None));
        for line in [
            "ids_up 1",
            "ids_uptime_seconds 42",
            "ids_events_received_total{signal=\"file\"} 7",
            "ids_events_lost_total{signal=\"file\"} 3",
            "ids_program_errors_total{program=\"file_open\"} 4",
            "ids_alerts_total{kind=\"ban\"} 1",
            "ids_alerts_total{kind=\"integrity\"} 2",
            "ids_bans_active 5",
            "ids_xdp_interfaces 1",
            "ids_integrity_items 9",
            "ids_integrity_aggregate_ready 1",
            "ids_detect_log_lines_total 11",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("ids_fleet_"), "fleet metrics without a fleet:\n{text}");
    }

    #[test]
    fn each_output_has_its_results_queue_and_retries() {
        let mut with_outputs = status(None);
        with_outputs.outputs = vec![crate::output::OutputStatus {
            name: "siem".into(),
            kind: "webhook".into(),
            sent: 4,
            failed: 1,
            dropped: 2,
            queued: 3,
            retries: 5,
            last_error: None,
        }];
        let text = render(&with_outputs);
        for line in [
            "ids_output_alerts_total{output=\"siem\",result=\"sent\"} 4",
            "ids_output_alerts_total{output=\"siem\",result=\"failed\"} 1",
            "ids_output_alerts_total{output=\"siem\",result=\"dropped\"} 2",
            "ids_output_queued{output=\"siem\"} 3",
            "ids_output_retries_total{output=\"siem\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn fleet_metrics_come_with_a_fleet_link() {
        let fleet = serde_json::json!({"connected": true, "backlog": 3, "last_confirmed_seq": 0, "last_error": null,
            "host": "h", "epoch": 1, "sent": 8, "dropped": 1, "ban_decisions": 0});
        let text = render(&status(Some(fleet)));
        for line in [
            "ids_fleet_connected 1",
            "ids_fleet_backlog 3",
            "ids_fleet_alerts_sent_total 8",
            "ids_fleet_alerts_dropped_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_cannot_end_their_sample() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn a_labelled_family_has_its_header_and_one_line_per_sample() {
        let mut out = Exposition::default();
        out.labelled("x_total", Kind::Counter, "Help.", "signal", [("file", 3), ("exec", 0)]);
        assert_eq!(
            out.text,
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total{signal=\"file\"} 3\nx_total{signal=\"exec\"} 0\n"
        );
    }

    #[test]
    fn a_family_without_samples_still_has_its_header() {
        let mut out = Exposition::default();
        out.labelled("y_total", Kind::Counter, "Help.", "program", []);
        assert_eq!(out.text, "# HELP y_total Help.\n# TYPE y_total counter\n");
    }
}
