//! Wall-clock times as the daemon records them: serialised as RFC 3339 in UTC with microseconds,
//! the form of every `time` field in events, alerts and the store.
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::{Serialize, Serializer};

/// A moment in wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp(SystemTime);

impl Timestamp {
    pub(crate) fn now() -> Self {
        Self(SystemTime::now())
    }

    pub(crate) fn at(time: SystemTime) -> Self {
        Self(time)
    }

    /// RFC 3339, UTC, microseconds (`2026-12-04T22:29:18.123456Z`).
    pub(crate) fn rfc3339(self) -> String {
        humantime::format_rfc3339_micros(self.0).to_string()
    }
}

/// `start + wait`, or as far as `Instant` reaches when that overflows: a wait that comes from a
/// config file must never panic the worker that waits.
pub(crate) fn deadline_after(start: Instant, wait: Duration) -> Instant {
    start.checked_add(wait).or_else(|| start.checked_add(CENTURY)).unwrap_or(start)
}

/// Further away than any wait the daemon means: a deadline this far is never reached.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_micros(self.0), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_past_what_instant_holds_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert!(deadline_after(now, Duration::MAX) >= now + CENTURY);
    }

    #[test]
    fn serialises_as_rfc3339_with_microseconds() {
        let time = Timestamp::at(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000));
        assert_eq!(serde_json::to_value(time).unwrap(), "1970-01-01T00:00:01.500000Z");
        assert_eq!(time.rfc3339(), "1970-01-01T00:00:01.500000Z");
    }
}
