//! Fleet ban decisions applied on this host, through the one ban path (source `fleet`).
//!
//! Decisions are numbered (`rev`) by the collector's database; the host remembers the last it
//! applied (`fleet_outbox.ban_rev`) and skips older ones, so a redelivered decision changes
//! nothing. A snapshot (the active fleet bans, asked for at every connect) bans what it lists and
//! lifts this host's fleet bans that it does not list.
use std::collections::HashSet;
use std::time::SystemTime;

use tracing::{info, warn};

use super::agent::BanCommand;
use super::message::{BanAction, BanDecision};
use crate::alert::{Alert, AlertBody, DetectAction, DetectAlert, Detector, Severity};
use crate::bans::{BanDuration, BanError, BanNet, BanRequest, Bans};

/// The `source` of every ban a fleet decision makes.
pub(crate) const SOURCE: &str = "fleet";

pub(crate) fn apply(bans: &mut Bans, command: BanCommand) {
    let applied = match bans.store().fleet_ban_rev() {
        Ok(rev) => rev,
        Err(e) => {
            warn!(error = %e, "fleet: reading the last ban decision applied");
            0
        }
    };
    let rev = match command {
        BanCommand::Decision(decision) => {
            if decision.rev <= applied {
                return;
            }
            apply_one(bans, &decision);
            decision.rev
        }
        BanCommand::Snapshot(snapshot) => {
            // A decision newer than the snapshot was applied already (it overtook the snapshot
            // from another collector): the snapshot is stale, the next connect asks again.
            if snapshot.rev < applied {
                return;
            }
            for decision in &snapshot.bans {
                apply_one(bans, decision);
            }
            let listed: HashSet<BanNet> = snapshot.bans.iter().filter_map(|d| BanNet::parse(&d.net).ok()).collect();
            match bans.store().bans() {
                Ok(rows) => {
                    let stale: Vec<BanNet> = rows
                        .iter()
                        .filter(|row| row.source == SOURCE)
                        .filter_map(|row| BanNet::parse(&row.net).ok())
                        .filter(|net| !listed.contains(net))
                        .collect();
                    for net in stale {
                        if let Err(e) = bans.unban(&net) {
                            warn!(%net, error = %e, "fleet: lifting a fleet ban the fleet no longer has");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "fleet: listing bans to reconcile with the fleet's"),
            }
            info!(rev = snapshot.rev, bans = snapshot.bans.len(), "fleet: ban snapshot applied");
            snapshot.rev
        }
    };
    if let Err(e) = bans.store().set_ban_rev(rev) {
        warn!(error = %e, rev, "fleet: recording the last ban decision applied");
    }
}

fn apply_one(bans: &mut Bans, decision: &BanDecision) {
    match decision.action {
        BanAction::Unban => lift(bans, &decision.net),
        BanAction::Ban => ban(bans, decision),
    }
}

fn lift(bans: &mut Bans, net: &str) {
    let Ok(net) = BanNet::parse(net) else {
        warn!(net, "fleet: an unban of something that is not an address or prefix; ignored");
        return;
    };
    // Only a fleet ban is lifted: a ban this host made itself stays.
    // Stored nets are canonical (`BanNet`'s text), so the parsed net's text finds its row.
    let canonical = net.to_string();
    let is_fleet_ban = bans.store().bans().map(|rows| rows.iter().any(|r| r.source == SOURCE && r.net == canonical));
    if let Ok(true) = is_fleet_ban
        && let Err(e) = bans.unban(&net)
    {
        warn!(%net, error = %e, "fleet: lifting a fleet ban");
    }
}

fn ban(bans: &mut Bans, decision: &BanDecision) {
    let net = match BanNet::parse(&decision.net) {
        Ok(net) => net,
        Err(e) => return refused(bans, decision, DetectAction::BanNotDelivered { reason: e.to_string() }),
    };
    let duration = match &decision.expires {
        None => BanDuration::Permanent,
        Some(text) => match humantime::parse_rfc3339_weak(text) {
            // Expired while this host was away: nothing to do.
            Ok(until) if until <= SystemTime::now() => return,
            Ok(until) => BanDuration::Until(until),
            Err(e) => {
                let reason = format!("expiry {text:?}: {e}");
                return refused(bans, decision, DetectAction::BanNotDelivered { reason });
            }
        },
    };
    let mut request = BanRequest::new(net, decision.reason.clone(), SOURCE, duration);
    // The fleet decided it: a broad prefix was a deliberate choice there.
    request.force = true;
    match bans.check(&request) {
        Err(BanError::Trusted { .. }) => refused(bans, decision, DetectAction::NotBannedTrusted),
        _ => bans.apply(request),
    }
}

/// Reports a decision this host did not apply, as an alert (which reaches the collector).
fn refused(bans: &mut Bans, decision: &BanDecision, action: DetectAction) {
    warn!(net = decision.net, rev = decision.rev, ?action, "fleet: ban decision not applied on this host");
    let alert = Alert::now(AlertBody::Detect(DetectAlert {
        rule: "fleet-ban".into(),
        severity: Severity::Medium,
        detector: Detector::Fleet,
        description: format!("fleet ban of {} (decision {}) not applied on this host", decision.net, decision.rev),
        source: decision.net.parse().ok(),
        path: None,
        count: None,
        window_s: None,
        process: None,
        evidence: vec![format!("reason: {}", decision.reason), format!("origin: {}", decision.origin)],
        action,
    }));
    bans.sink().emit(alert);
}
