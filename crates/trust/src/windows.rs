//! Maintenance windows: when a device may install. A window is a set of weekdays and a span of
//! local time in an IANA time zone; daylight-saving changes follow the bundled time-zone
//! database (jiff), so a window means the same on every device.
//!
//! A window's span belongs to the day it starts on: `sat 23:00-02:00` is open from Saturday
//! 23:00 to Sunday 02:00 local time. Local times a daylight-saving change skips do not exist,
//! so a window that starts in the gap opens when the clocks resume (one that lies wholly in the
//! gap does not open that day); a window over a repeated hour is open through both passes.

use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use ringfence_proto::tuf::Window;

/// Most windows on one group.
pub const MAX_WINDOWS: usize = 16;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// A window checked and ready to evaluate.
#[derive(Debug, Clone)]
pub struct Checked {
    days: Vec<Weekday>,
    start: Time,
    end: Time,
    tz: TimeZone,
}

fn time_of(what: &str, s: &str) -> Result<Time, String> {
    let (h, m) = s.split_once(':').ok_or_else(|| format!("{what}: HH:MM"))?;
    let ok = h.len() == 2 && m.len() == 2 && h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit());
    let (h, m) = (h.parse::<i8>().ok().filter(|_| ok), m.parse::<i8>().ok().filter(|_| ok));
    match (h, m) {
        (Some(h), Some(m)) if h < 24 && m < 60 => Time::new(h, m, 0, 0).map_err(|e| format!("{what}: {e}")),
        _ => Err(format!("{what}: HH:MM, 00:00 to 23:59")),
    }
}

/// Check a window: known weekdays, `HH:MM` times that differ, a time zone the database knows.
pub fn check(w: &Window) -> Result<Checked, String> {
    if w.days.is_empty() || w.days.len() > 7 {
        return Err("days: 1 to 7 of mon, tue, wed, thu, fri, sat, sun".into());
    }
    let mut days = Vec::new();
    for d in &w.days {
        let day = DAYS.iter().find(|(name, _)| name == d).map(|(_, day)| *day);
        days.push(day.ok_or_else(|| format!("days: {d:?} is not one of mon … sun"))?);
    }
    let (start, end) = (time_of("start", &w.start)?, time_of("end", &w.end)?);
    if start == end {
        return Err("start and end: a window needs a length".into());
    }
    if w.tz.len() > 64 {
        return Err("tz: at most 64 characters".into());
    }
    let tz = jiff::tz::db().get(&w.tz).map_err(|_| format!("tz: {:?} is not an IANA time zone", w.tz))?;
    Ok(Checked { days, start, end, tz })
}

/// Check every window of a group.
pub fn check_all(windows: &[Window]) -> Result<Vec<Checked>, String> {
    if windows.len() > MAX_WINDOWS {
        return Err(format!("windows: at most {MAX_WINDOWS}"));
    }
    windows.iter().map(check).collect()
}

impl Checked {
    /// Whether the window is open at `now` (Unix seconds).
    pub fn is_open(&self, now: i64) -> bool {
        let Ok(instant) = Timestamp::from_second(now) else { return false };
        let local = instant.to_zoned(self.tz.clone()).datetime();
        let (day, time) = (local.date(), local.time());
        if self.start < self.end {
            return self.days.contains(&day.weekday()) && time >= self.start && time < self.end;
        }
        // Past midnight: open from start to the end of the day it starts on, and from midnight
        // to end on the next day.
        let yesterday = day.yesterday().map(|d| d.weekday());
        (self.days.contains(&day.weekday()) && time >= self.start)
            || (yesterday.is_ok_and(|y| self.days.contains(&y)) && time < self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[&str], start: &str, end: &str, tz: &str) -> Checked {
        let w = Window {
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            start: start.into(),
            end: end.into(),
            tz: tz.into(),
        };
        check(&w).unwrap()
    }

    /// Unix seconds of a UTC civil time.
    fn utc(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn a_saturday_night_window_in_berlin() {
        let w = window(&["sat"], "01:00", "05:00", "Europe/Berlin");
        // 2026-11-28 is a Saturday; Berlin is UTC+1 in November.
        assert!(!w.is_open(utc("2026-11-27T23:59:00Z")), "00:59 local");
        assert!(w.is_open(utc("2026-11-28T00:00:00Z")), "01:00 local");
        assert!(w.is_open(utc("2026-11-28T03:59:00Z")), "04:59 local");
        assert!(!w.is_open(utc("2026-11-28T04:00:00Z")), "05:00 local: closed");
        assert!(!w.is_open(utc("2026-11-29T01:00:00Z")), "Sunday");
        // In summer (UTC+2) the same window is an hour earlier in UTC.
        assert!(w.is_open(utc("2026-07-03T23:30:00Z")), "01:30 local on Saturday 2026-07-04");
        assert!(!w.is_open(utc("2026-07-04T03:30:00Z")), "05:30 local");
    }

    #[test]
    fn daylight_saving_changes_follow_the_time_zone() {
        // 2026-03-29 (a Sunday): Berlin skips 02:00-03:00 (01:00 UTC becomes 03:00 local).
        let w = window(&["sun"], "02:00", "04:00", "Europe/Berlin");
        assert!(!w.is_open(utc("2026-03-29T00:59:00Z")), "01:59 local, before the window");
        assert!(w.is_open(utc("2026-03-29T01:00:00Z")), "03:00 local, just after the gap");
        assert!(w.is_open(utc("2026-03-29T01:59:00Z")), "03:59 local");
        assert!(!w.is_open(utc("2026-03-29T02:00:00Z")), "04:00 local: closed; the window was one hour long");
        // 2026-10-25 (a Sunday): Berlin repeats 02:00-03:00 (00:00 and 01:00 UTC are both 02:xx).
        assert!(w.is_open(utc("2026-10-25T00:30:00Z")), "02:30 local, first pass");
        assert!(w.is_open(utc("2026-10-25T01:30:00Z")), "02:30 local, second pass");
        assert!(w.is_open(utc("2026-10-25T02:30:00Z")), "03:30 local");
        assert!(!w.is_open(utc("2026-10-25T03:00:00Z")), "04:00 local: closed; three hours long");
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let w = window(&["fri"], "23:00", "02:00", "UTC");
        // 2026-11-27 is a Friday.
        assert!(w.is_open(utc("2026-11-27T23:30:00Z")));
        assert!(w.is_open(utc("2026-11-28T01:59:00Z")), "Saturday 01:59, still Friday's window");
        assert!(!w.is_open(utc("2026-11-28T23:30:00Z")), "Saturday 23:30 is not a Friday");
        assert!(!w.is_open(utc("2026-11-27T01:00:00Z")), "Friday 01:00 belongs to Thursday");
    }

    #[test]
    fn bad_windows_are_refused_with_the_field() {
        let bad = |days: &[&str], start: &str, end: &str, tz: &str| {
            let w = Window {
                days: days.iter().map(|d| (*d).to_owned()).collect(),
                start: start.into(),
                end: end.into(),
                tz: tz.into(),
            };
            check(&w).unwrap_err()
        };
        assert!(bad(&[], "01:00", "02:00", "UTC").starts_with("days"));
        assert!(bad(&["saturday"], "01:00", "02:00", "UTC").starts_with("days"));
        assert!(bad(&["sat"], "1:00", "02:00", "UTC").starts_with("start"));
        assert!(bad(&["sat"], "01:00", "24:00", "UTC").starts_with("end"));
        assert!(bad(&["sat"], "01:00", "01:00", "UTC").contains("length"));
        assert!(bad(&["sat"], "01:00", "02:00", "Mars/Olympus").starts_with("tz"));
    }
}
