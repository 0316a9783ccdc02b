//! Wall-clock times as the daemon records them: serialised as RFC 3339 in UTC with microseconds,
//! the form of every `time` field in events, alerts and the store. Durations as people write them
//! (`90s`, `10m`, `1h`, `1d`), on the command line and in the config file ([`ConfigDuration`]).
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a duration that does not parse is told: short, with the units that matter.
const DURATION_FORM: &str = "expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h";

/// A duration as people write it: a number and a unit (`90s`, `10m`, `1h`, `1d`, `1h 30m`; `ms`
/// and `w` work too). Negative, zero and unitless texts are refused, the text named once.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("invalid duration {text:?}: negative"));
    }
    let duration =
        humantime::parse_duration(text).map_err(|_| format!("invalid duration {text:?}: {DURATION_FORM}"))?;
    if duration.is_zero() {
        return Err(format!("invalid duration {text:?}: zero"));
    }
    Ok(duration)
}

/// `"permanent"`/`"forever"` (`None`), or a duration as [`parse_duration`] reads it.
pub(crate) fn parse_duration_or_permanent(text: &str) -> Result<Option<Duration>, String> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("permanent") || trimmed.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    parse_duration(trimmed).map(Some)
}

/// A duration setting of the config file: a string with a unit (`"90s"`, `"10m"`, `"1h"`, `"1d"`)
/// or, where a setting allows it, `"permanent"`; an integer (or a fraction) is a number of seconds,
/// the form older configs used for some settings and still accepted for every one.
///
/// A string or number that is no duration is kept as its error, so that validation, which knows
/// the setting's full key (`bans.detect_duration`), names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigDuration(Result<Option<Duration>, String>);

impl ConfigDuration {
    pub(crate) const fn secs(secs: u64) -> Self {
        Self(Ok(Some(Duration::from_secs(secs))))
    }

    /// The duration; `None`: permanent.
    pub(crate) fn value(&self) -> Result<Option<Duration>, String> {
        self.0.clone()
    }

    /// The duration of a setting that cannot be permanent.
    pub(crate) fn finite(&self) -> Result<Duration, String> {
        self.value()?.ok_or_else(|| "must be a finite duration (\"permanent\" is not allowed here)".to_string())
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"10m\", \"1h\", \"1d\", or a number of seconds")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(ConfigDuration(parse_duration_or_permanent(text)))
            }

            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration::secs(secs))
            }

            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                Ok(match u64::try_from(secs) {
                    Ok(secs) => ConfigDuration::secs(secs),
                    Err(_) => ConfigDuration(Err(format!("invalid duration {secs}: negative"))),
                })
            }

            fn visit_f64<E: serde::de::Error>(self, secs: f64) -> Result<Self::Value, E> {
                if secs.is_nan() || secs < 0.0 {
                    return Ok(ConfigDuration(Err(format!(
                        "invalid duration {secs}: not a number of seconds from 0 on"
                    ))));
                }
                // Too long for a `Duration` is too long for any setting: its range check says so.
                Ok(ConfigDuration(Ok(Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)))))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

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

// ---------------------------------------------------------------- times for people

/// A time as the store and the daemon write it (RFC 3339); `None` when it is not one.
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// A span for people in its largest unit, rounded to the nearest: `12 s`, `3 min`, `2 h`, `4 d`
/// (an expiry 1 h 59 min away reads `2 h`).
pub(crate) fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let nearest = |unit: u64| (seconds + unit / 2) / unit;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3570 => format!("{} min", nearest(60)),
        3570..84_600 => format!("{} h", nearest(3600)),
        _ => format!("{} d", nearest(86_400)),
    }
}

/// `time` seen from `now`: `3 min ago`, `in 2 h`, `now` (within a second either way).
pub(crate) fn relative(time: SystemTime, now: SystemTime) -> String {
    match now.duration_since(time) {
        Ok(ago) if ago >= Duration::from_secs(1) => format!("{} ago", span(ago)),
        Ok(_) => "now".to_string(),
        Err(ahead) if ahead.duration() >= Duration::from_secs(1) => format!("in {}", span(ahead.duration())),
        Err(_) => "now".to_string(),
    }
}

/// A moment in this host's local time zone, to the second: `2026-12-05 09:41:03`; with `zone`,
/// the zone's abbreviation follows (`2026-12-05 09:41:03 CET`).
pub(crate) fn local(time: SystemTime, zone: bool) -> String {
    let seconds = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_secs() as libc::time_t,
        Err(before) => -(before.duration().as_secs() as libc::time_t),
    };
    // SAFETY: localtime_r writes only into `tm`, which lives for the call; a zeroed tm is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&seconds, &mut tm) }.is_null() {
        return humantime::format_rfc3339_seconds(time).to_string();
    }
    let mut text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    if zone && !tm.tm_zone.is_null() {
        // SAFETY: tm_zone points at a NUL-terminated abbreviation owned by the C library.
        let name = unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) };
        text += &format!(" {}", name.to_string_lossy());
    }
    text
}

/// A stored time for people: local, and how long ago or ahead (`2026-12-05 09:41:03 (3 min ago)`);
/// a text that is no time is shown as it is.
pub(crate) fn when(text: &str, now: SystemTime) -> String {
    match parse_time(text) {
        Some(time) => format!("{} ({})", local(time, false), relative(time, now)),
        None => text.to_string(),
    }
}

/// An expiry for people: `permanent` when there is none, else as [`when`] puts it (`in 2 h`).
pub(crate) fn expiry(text: Option<&str>, now: SystemTime) -> String {
    match text {
        None => "permanent".to_string(),
        Some(text) => when(text, now),
    }
}

/// A number of seconds as a ban lasts: `permanently` for 0, else `1 h`, `10 min`.
pub(crate) fn ban_length(seconds: u64) -> String {
    if seconds == 0 { "permanently".to_string() } else { span(Duration::from_secs(seconds)) }
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
    fn a_bad_duration_is_named_once_with_the_form_expected() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("5x").unwrap_err(),
            r#"invalid duration "5x": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h"#
        );
        assert_eq!(
            parse_duration("90").unwrap_err(),
            r#"invalid duration "90": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h"#
        );
        assert_eq!(parse_duration("-5m").unwrap_err(), r#"invalid duration "-5m": negative"#);
        assert_eq!(parse_duration("0s").unwrap_err(), r#"invalid duration "0s": zero"#);
    }

    #[test]
    fn config_durations_are_strings_with_a_unit_or_seconds() {
        #[derive(Deserialize)]
        struct Table {
            d: ConfigDuration,
        }
        let read = |text: &str| toml::from_str::<Table>(text).map(|t| t.d.value()).map_err(|e| e.to_string());
        assert_eq!(read("d = \"10m\""), Ok(Ok(Some(Duration::from_secs(600)))));
        assert_eq!(read("d = 600"), Ok(Ok(Some(Duration::from_secs(600)))));
        assert_eq!(read("d = 2.5"), Ok(Ok(Some(Duration::from_millis(2500)))));
        assert_eq!(read("d = \"permanent\""), Ok(Ok(None)));
        let expected = r#"invalid duration "5x": expected a number and a unit (s, m, h, d), e.g. 90s, 10m, 1h"#;
        assert_eq!(read("d = \"5x\""), Ok(Err(expected.to_string())));
        assert_eq!(read("d = -5"), Ok(Err("invalid duration -5: negative".to_string())));
        assert!(read("d = true").unwrap_err().contains("a duration such as"));
        let permanent = toml::from_str::<Table>("d = \"forever\"").unwrap().d;
        assert_eq!(permanent.finite().unwrap_err(), "must be a finite duration (\"permanent\" is not allowed here)");
    }

    #[test]
    fn serialises_as_rfc3339_with_microseconds() {
        let time = Timestamp::at(SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000));
        assert_eq!(serde_json::to_value(time).unwrap(), "1970-01-01T00:00:01.500000Z");
        assert_eq!(time.rfc3339(), "1970-01-01T00:00:01.500000Z");
    }
}
