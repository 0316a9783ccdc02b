//! How the CLI shows things to people: tables whose columns line up under their headers, times in
//! local time and relative to now, and colour only where a terminal shows it. `--json` output
//! never goes through here: it keeps RFC 3339 UTC times and no colour.
// Times for people live in `crate::time` (the console shows them too); the tables use them from here.
pub(crate) use crate::time::{expiry, local, parse_time, relative, span, when};

/// How a column's cells sit in its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A colour for a cell; drawn only when [`Table::render`] is told colour is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Bold,
    Green,
    Yellow,
    Red,
    BoldRed,
}

impl Style {
    fn code(self) -> Option<&'static str> {
        match self {
            Style::Plain => None,
            Style::Bold => Some("1"),
            Style::Green => Some("32"),
            Style::Yellow => Some("33"),
            Style::Red => Some("31"),
            Style::BoldRed => Some("1;31"),
        }
    }

    /// `text` in this style when `colour`, else `text` as is.
    pub(crate) fn paint(self, text: &str, colour: bool) -> String {
        match self.code() {
            Some(code) if colour && !text.is_empty() => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_string(),
        }
    }

    /// The colour of a severity: the higher, the louder.
    pub(crate) fn of_severity(severity: &str) -> Style {
        match severity {
            "critical" => Style::BoldRed,
            "high" => Style::Red,
            "medium" => Style::Yellow,
            _ => Style::Plain,
        }
    }
}

/// One cell: its text (what its width is measured on) and its style.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    pub(crate) fn styled(text: impl Into<String>, style: Style) -> Self {
        Self { text: text.into(), style }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, style: Style::Plain }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

/// A table printed with each column as wide as its widest cell (header included), two spaces
/// apart; the last column is not padded, so lines carry no trailing blanks.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<Cell>>,
    header: bool,
}

impl Table {
    /// Columns named `headers`, all left-aligned until [`Table::right`] says otherwise.
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), align: vec![Align::Left; headers.len()], rows: Vec::new(), header: true }
    }

    /// Rows only, no header line (a list of `name  value` facts).
    pub(crate) fn without_header(mut self) -> Self {
        self.header = false;
        self
    }

    /// Right-aligns the columns named (numbers read better that way).
    pub(crate) fn right(mut self, columns: &[&str]) -> Self {
        for (header, align) in self.headers.iter().zip(&mut self.align) {
            if columns.contains(header) {
                *align = Align::Right;
            }
        }
        self
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        let mut cells = cells;
        cells.resize_with(self.headers.len(), || Cell::from(""));
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, colour: bool) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| if self.header { width(h) } else { 0 }).collect();
        for row in &self.rows {
            for (cell, column) in row.iter().zip(&mut widths) {
                *column = (*column).max(width(&cell.text));
            }
        }
        let headers: Vec<Cell> = self.headers.iter().map(|h| Cell::styled(*h, Style::Bold)).collect();
        let mut out = String::new();
        let header = self.header.then_some(&headers);
        for row in header.into_iter().chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[i] - width(&cell.text));
                let text = cell.style.paint(&cell.text, colour);
                match self.align[i] {
                    Align::Right => line += &format!("{pad}{text}"),
                    Align::Left if i == last => line += &text,
                    Align::Left => line += &format!("{text}{pad}"),
                }
                if i != last {
                    line += "  ";
                }
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

/// Columns a text takes on a terminal: one per character (the CLI prints no wide characters of
/// its own; a wide one from outside only shifts its own line).
fn width(text: &str) -> usize {
    text.chars().count()
}

/// Whether to colour what goes to a stream: only a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
pub(crate) fn colour_wanted(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|value| value.is_empty())
}

/// [`colour_wanted`] for standard output.
pub(crate) fn stdout_colour() -> bool {
    use std::io::IsTerminal as _;
    colour_wanted(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::time::ban_length;

    #[test]
    fn columns_line_up_under_their_headers_whatever_the_cell_widths() {
        let mut table = Table::new(&["address", "packets", "reason"]).right(&["packets"]);
        table.row(vec!["10.0.0.1".into(), "5".into(), "scan".into()]);
        table.row(vec!["2001:db8::/32".into(), "123456".into(), "manual ban".into()]);
        table.row(vec!["1.2.3.4 ← ok".into()]);
        assert_eq!(
            table.render(false),
            "address        packets  reason\n\
             10.0.0.1             5  scan\n\
             2001:db8::/32   123456  manual ban\n\
             1.2.3.4 ← ok\n"
        );
    }

    #[test]
    fn colour_codes_take_no_width() {
        let mut table = Table::new(&["sev", "what"]);
        table.row(vec![Cell::styled("high", Style::Red), "x".into()]);
        table.row(vec![Cell::styled("low", Style::of_severity("low")), "y".into()]);
        let coloured = table.render(true);
        assert_eq!(coloured, "\x1b[1msev\x1b[0m   \x1b[1mwhat\x1b[0m\n\x1b[31mhigh\x1b[0m  x\nlow   y\n");
        assert!(!table.render(false).contains('\x1b'));
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour_wanted(true, None));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(true, Some("1".into())));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(colour_wanted(true, Some("".into())));
    }

    #[test]
    fn relative_times_round_down_to_their_largest_unit() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative(now - Duration::from_secs(12), now), "12 s ago");
        assert_eq!(relative(now - Duration::from_secs(3 * 60 + 29), now), "3 min ago");
        assert_eq!(relative(now - Duration::from_secs(3 * 60 + 30), now), "4 min ago");
        assert_eq!(relative(now + Duration::from_secs(2 * 3600 - 1), now), "in 2 h");
        assert_eq!(relative(now + Duration::from_secs(3599), now), "in 1 h");
        assert_eq!(relative(now - Duration::from_secs(59 * 60 + 10), now), "59 min ago");
        assert_eq!(relative(now - Duration::from_secs(4 * 86_400), now), "4 d ago");
        assert_eq!(relative(now + Duration::from_millis(300), now), "now");
        assert_eq!(ban_length(3600), "1 h");
        assert_eq!(ban_length(0), "permanently");
    }

    #[test]
    fn stored_times_read_in_local_time_with_their_distance() {
        let now = parse_time("2026-12-05T10:00:00Z").unwrap();
        let said = when("2026-12-05T09:56:47.123456Z", now);
        assert!(said.ends_with(" (3 min ago)"), "{said}");
        // Whatever this host's zone, its offset is a whole number of quarter hours.
        let local = &said[..19];
        assert_eq!(local.len(), "2026-12-05 09:56:47".len(), "{said}");
        assert!(local.ends_with(":47"), "{said}");
        let minute: u32 = local[14..16].parse().unwrap();
        assert_eq!(minute % 15, 56 % 15, "{said}");
        assert!(expiry(Some("2026-12-05T12:00:00.000000Z"), now).ends_with(" (in 2 h)"));
        assert_eq!(expiry(None, now), "permanent");
        assert_eq!(when("not a time", now), "not a time");
        assert!(local_with_zone_has_a_name(now));
    }

    fn local_with_zone_has_a_name(time: SystemTime) -> bool {
        let text = local(time, true);
        text.len() > 20 && text.as_bytes()[19] == b' '
    }
}
