//! Ranges of the numeric settings. Every number and duration a config file gives is checked
//! against its range when the file is parsed, so that `ids config check` refuses what would
//! later overflow (a channel too large to allocate, a deadline past the end of `Instant`).
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `value` if it lies in `range`; otherwise an error naming both (the caller names the key).
pub(crate) fn check<T: PartialOrd + Display + Copy>(value: T, range: RangeInclusive<T>) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside {}..={}", range.start(), range.end()))
    }
}

/// The longest duration a setting may have, and how the error writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxDuration {
    pub(crate) max: Duration,
    pub(crate) text: &'static str,
}

/// `[xdp] scan_window`: the kernel counts ports and SYNs per source within one window.
pub(crate) const SCAN_WINDOW: MaxDuration = MaxDuration { max: Duration::from_secs(86_400), text: "1day" };

/// Intervals and windows of up to a year (a deadline that far is still far from `Instant`'s end).
pub(crate) const YEAR: MaxDuration = MaxDuration { max: Duration::from_secs(31_536_000), text: "365days" };

/// Ban durations: longer than ten years is a permanent ban, which is written `permanent`.
pub(crate) const BAN: MaxDuration = MaxDuration { max: Duration::from_secs(3650 * 86_400), text: "3650days" };

/// `value` if it is from 1 s to `limit.max`.
pub(crate) fn check_duration(value: Duration, limit: MaxDuration) -> Result<Duration, String> {
    if value >= Duration::from_secs(1) && value <= limit.max {
        Ok(value)
    } else {
        Err(format!("{} is outside 1s..={}", humantime::format_duration(value), limit.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ends_of_a_range_are_inside_and_the_error_names_value_and_range() {
        assert_eq!(check(1u64, 1..=5), Ok(1));
        assert_eq!(check(5u64, 1..=5), Ok(5));
        assert_eq!(check(6u64, 1..=5), Err("6 is outside 1..=5".to_string()));
        assert_eq!(check_duration(BAN.max, BAN), Ok(BAN.max));
        let error = check_duration(BAN.max + Duration::from_secs(1), BAN).unwrap_err();
        assert!(error.ends_with("is outside 1s..=3650days"), "{error}");
    }
}
