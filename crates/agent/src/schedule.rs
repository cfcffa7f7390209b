//! Schedules as pure functions of time: parsing calendar expressions, the
//! next and previous fire times in a time zone, jitter, catch-up after
//! downtime and the precedence of backup kinds.
//!
//! Expressions: `every 15m` (epoch-aligned intervals, `s`/`m`/`h`/`d`),
//! `hourly`, `daily 02:00`, `weekly sat 03:00`, `sun 01:00` (a weekday, or
//! `mon-fri`, `sat,sun`), `monthly 1 04:00`, and 5-field cron
//! (`minute hour day-of-month month day-of-week`, with lists, ranges,
//! steps and names; as in cron, when both day fields are restricted a day
//! matching either fires). Calendar times are wall-clock times of the
//! configured zone: a time skipped by a DST jump fires at the same distance
//! after the jump (02:30 on a spring-forward night fires at 03:30), and a
//! time repeated by a fall-back fires once, at its first occurrence.
//!
//! Jitter is a fixed offset per (host, source) in `[0, jitter)`, derived by
//! hashing, added to every slot: a thousand agents with one schedule spread
//! over the jitter window, while each agent's fire times stay stable across
//! restarts (so catch-up and "already ran" decisions do not move).
//!
//! The invariants (property-tested): `next_fire(t) > t`; no slot lies
//! strictly between `t` and `next_fire(t)`; `prev_fire(t) <= t`; catch-up
//! after any downtime asks for exactly one run; the kind run is the largest
//! of those that fired.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use coffer_types::BackupKind;

/// How far a calendar search looks before giving up (covers `29 2 *` and a
/// leap-day-only Sunday, which repeats every 28 years).
const SEARCH_DAYS: i64 = 366 * 29;

/// A parsed schedule expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Every `secs` seconds, aligned to the Unix epoch (so independent of
    /// when the agent started).
    Every {
        secs: i64,
    },
    Calendar(Calendar),
}

/// The sets of a cron expression as bit masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// A schedule expression that cannot be parsed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{expr:?}: {reason}")]
pub struct ParseError {
    pub expr: String,
    pub reason: String,
}

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// Parses a duration such as `500ms`, `15s`, `10m`, `2h`, `7d` (a bare
/// number is seconds) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 500ms, 15s, 10m, 2h, 7d)"))?;
    let per = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m, h or d)")),
    };
    n.checked_mul(per).ok_or_else(|| format!("{s:?} is too long"))
}

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let err = |reason: String| ParseError { expr: text.to_string(), reason };
        let lower = text.trim().to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        match words.as_slice() {
            ["every", d] => {
                let ms = parse_duration_ms(d).map_err(err)?;
                if ms < 1000 || ms % 1000 != 0 {
                    return Err(err("an interval is whole seconds, at least 1s".into()));
                }
                Ok(Expr::Every { secs: (ms / 1000) as i64 })
            }
            ["hourly"] => cron("0 * * * *").map_err(err),
            ["daily", t] => {
                let (h, m) = time_of_day(t).map_err(err)?;
                cron(&format!("{m} {h} * * *")).map_err(err)
            }
            ["weekly", d, t] => {
                let (h, m) = time_of_day(t).map_err(err)?;
                cron(&format!("{m} {h} * * {d}")).map_err(err)
            }
            ["monthly", d, t] => {
                let (h, m) = time_of_day(t).map_err(err)?;
                cron(&format!("{m} {h} {d} * *")).map_err(err)
            }
            [d, t] if d.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) => {
                let (h, m) = time_of_day(t).map_err(err)?;
                cron(&format!("{m} {h} * * {d}")).map_err(err)
            }
            [_, _, _, _, _] => cron(&lower).map_err(err),
            _ => Err(err("expected `every 15m`, `hourly`, `daily HH:MM`, `weekly DAY HH:MM`, `DAY HH:MM`, \
                 `monthly D HH:MM` or a 5-field cron expression"
                .into())),
        }
    }
}

fn time_of_day(t: &str) -> Result<(u32, u32), String> {
    let (h, m) = t.split_once(':').ok_or_else(|| format!("{t:?} is not a time HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{t:?}: bad hour"))?;
    let m: u32 = m.parse().map_err(|_| format!("{t:?}: bad minute"))?;
    if h > 23 || m > 59 {
        return Err(format!("{t:?} is not a time of day"));
    }
    Ok((h, m))
}

fn cron(text: &str) -> Result<Expr, String> {
    let f: Vec<&str> = text.split_whitespace().collect();
    let [mi, h, dom, mon, dow] = f.as_slice() else { return Err("a cron expression has 5 fields".into()) };
    let minutes = field(mi, 0, 59, &[], "minute")?;
    let hours = field(h, 0, 23, &[], "hour")? as u32;
    let days = field(dom, 1, 31, &[], "day of month")? as u32;
    let months = field(mon, 1, 12, &MONTHS, "month")? as u16;
    // Day of week 7 is Sunday too.
    let mut weekdays = field(dow, 0, 7, &WEEKDAYS, "day of week")?;
    if weekdays & (1 << 7) != 0 {
        weekdays = (weekdays & !(1 << 7)) | 1;
    }
    Ok(Expr::Calendar(Calendar {
        minutes,
        hours,
        days,
        months,
        weekdays: weekdays as u8,
        days_restricted: *dom != "*",
        weekdays_restricted: *dow != "*",
    }))
}

/// One cron field as a bit mask over `lo..=hi`; `names[i]` stands for `i`
/// (weekdays from 0) or `i + 1` (months).
fn field(text: &str, lo: u32, hi: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| *n == s) {
            return Ok(i as u32 + if lo == 1 { 1 } else { 0 });
        }
        let v: u32 = s.parse().map_err(|_| format!("{what} {s:?} is not a number or name"))?;
        if v < lo || v > hi {
            return Err(format!("{what} {v} is outside {lo}..{hi}"));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("{what} step {s:?} is not a number"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("{what} step is 0"));
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a > b {
            return Err(format!("{what} range {range:?} is backwards"));
        }
        let mut v = a;
        while v <= b {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok(mask)
}

impl Calendar {
    fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// Every slot of local day `d`, as Unix seconds (unsorted around a DST
    /// jump).
    fn slots_of_day(&self, d: NaiveDate, tz: Tz) -> Vec<i64> {
        let mut out = Vec::new();
        if !self.day_matches(d) {
            return out;
        }
        for h in (0..24).filter(|h| self.hours & (1 << h) != 0) {
            for m in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                if let Some(local) = d.and_hms_opt(h, m, 0) {
                    out.push(resolve_local(local, tz));
                }
            }
        }
        out
    }
}

/// The instant of wall-clock time `local` in `tz`: the first of two in a
/// fall-back hour; for a time a spring-forward skips, the instant that
/// far past the jump (the offset in force before it).
fn resolve_local(local: NaiveDateTime, tz: Tz) -> i64 {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => t.timestamp(),
        chrono::LocalResult::Ambiguous(a, b) => a.timestamp().min(b.timestamp()),
        chrono::LocalResult::None => {
            let before = local - ChronoDuration::hours(3);
            let offset = tz
                .from_local_datetime(&before)
                .earliest()
                .map(|t| t.offset().fix().local_minus_utc() as i64)
                .unwrap_or(0);
            local.and_utc().timestamp() - offset
        }
    }
}

fn local_date(t: i64, tz: Tz) -> NaiveDate {
    let utc = DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default();
    utc.with_timezone(&tz).date_naive()
}

/// A schedule as evaluated: the expression, its zone and the jitter offset.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub expr: Expr,
    pub tz: Tz,
    /// Seconds added to every slot, in `[0, jitter)`.
    pub offset: i64,
}

/// The jitter offset of (host, source, kind) in `[0, jitter_secs)`, and for
/// an interval also below the interval.
pub fn jitter_offset(host: &str, source: &str, jitter_secs: i64, expr: &Expr) -> i64 {
    let bound = match expr {
        Expr::Every { secs } => jitter_secs.min(*secs),
        Expr::Calendar(_) => jitter_secs,
    };
    if bound <= 0 {
        return 0;
    }
    let h = blake3::hash(format!("coffer agent jitter\0{host}\0{source}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % bound as u64) as i64
}

impl Schedule {
    /// The first fire time strictly after `t` (Unix seconds); `None` for a
    /// calendar that never fires (`31 2 *`).
    pub fn next_fire(&self, t: i64) -> Option<i64> {
        let base = t - self.offset;
        let slot = match &self.expr {
            Expr::Every { secs } => Some((base.div_euclid(*secs) + 1) * secs),
            Expr::Calendar(c) => {
                let start = local_date(base, self.tz) - ChronoDuration::days(1);
                (0..SEARCH_DAYS).find_map(|i| {
                    let day = start + ChronoDuration::days(i);
                    c.slots_of_day(day, self.tz).into_iter().filter(|s| *s > base).min()
                })
            }
        }?;
        Some(slot + self.offset)
    }

    /// The last fire time at or before `t`.
    pub fn prev_fire(&self, t: i64) -> Option<i64> {
        let base = t - self.offset;
        let slot = match &self.expr {
            Expr::Every { secs } => Some(base.div_euclid(*secs) * secs),
            Expr::Calendar(c) => {
                let start = local_date(base, self.tz) + ChronoDuration::days(1);
                (0..SEARCH_DAYS).find_map(|i| {
                    let day = start - ChronoDuration::days(i);
                    c.slots_of_day(day, self.tz).into_iter().filter(|s| *s <= base).max()
                })
            }
        }?;
        Some(slot + self.offset)
    }

    /// Catch-up: when the schedule fired after `since` and at or before
    /// `now`, the latest such fire time (one run, however many were missed).
    pub fn fired(&self, since: i64, now: i64) -> Option<i64> {
        self.prev_fire(now).filter(|p| *p > since)
    }
}

/// What the scheduler decided for one source at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The kind to run now, if any schedule fired: the largest that did.
    pub kind: Option<BackupKind>,
    /// Every kind that fired, with the slot it fired for: all are consumed by
    /// this one run.
    pub fired: BTreeMap<KindKey, i64>,
    /// The earliest next fire time of any kind after `now`.
    pub next: Option<i64>,
}

/// A `BackupKind` ordered by size: incremental < differential < full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KindKey {
    Incremental,
    Differential,
    Full,
}

impl KindKey {
    pub fn kind(self) -> BackupKind {
        match self {
            KindKey::Incremental => BackupKind::Incremental,
            KindKey::Differential => BackupKind::Differential,
            KindKey::Full => BackupKind::Full,
        }
    }

    pub fn of(kind: BackupKind) -> KindKey {
        match kind {
            BackupKind::Incremental => KindKey::Incremental,
            BackupKind::Differential => KindKey::Differential,
            BackupKind::Full => KindKey::Full,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }
}

impl fmt::Display for KindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Evaluates every kind's schedule: `last` holds, per kind, the slot it last
/// consumed (a kind absent from it counts from `now`: a new schedule does not
/// fire for the past).
pub fn due(schedules: &BTreeMap<KindKey, Schedule>, last: &BTreeMap<KindKey, i64>, now: i64) -> Due {
    let mut fired = BTreeMap::new();
    let mut next: Option<i64> = None;
    for (k, s) in schedules {
        let since = last.get(k).copied().unwrap_or(now);
        if let Some(slot) = s.fired(since, now) {
            fired.insert(*k, slot);
        }
        if let Some(n) = s.next_fire(now) {
            next = Some(next.map_or(n, |m| m.min(n)));
        }
    }
    Due { kind: fired.keys().next_back().map(|k| k.kind()), fired, next }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sched(expr: &str, tz: Tz, offset: i64) -> Schedule {
        Schedule { expr: Expr::parse(expr).unwrap(), tz, offset }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp()
    }

    #[test]
    fn expressions_parse_or_name_the_problem() {
        for ok in [
            "every 15m",
            "every 2s",
            "hourly",
            "daily 02:00",
            "sun 01:00",
            "weekly sat 03:00",
            "mon-fri 06:30",
            "monthly 1 04:00",
            "*/5 * * * *",
            "0 3 * * 1-5",
            "30 2 1,15 jan-mar *",
            "0 0 * * 7",
        ] {
            Expr::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "every",
            "every 0s",
            "every 1500ms",
            "daily 25:00",
            "daily 2pm",
            "funday 01:00",
            "61 * * * *",
            "* * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "every 10y",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Expr::parse("0 0 * * 7"), Expr::parse("0 0 * * 0"));
    }

    #[test]
    fn calendar_examples_in_utc() {
        let t = utc(2026, 12, 1, 15, 0); // a Tuesday
        assert_eq!(sched("daily 02:00", Tz::UTC, 0).next_fire(t), Some(utc(2026, 12, 2, 2, 0)));
        assert_eq!(sched("sun 01:00", Tz::UTC, 0).next_fire(t), Some(utc(2026, 12, 6, 1, 0)));
        assert_eq!(sched("weekly sat 03:00", Tz::UTC, 0).next_fire(t), Some(utc(2026, 12, 5, 3, 0)));
        assert_eq!(sched("every 15m", Tz::UTC, 0).next_fire(t), Some(utc(2026, 12, 1, 15, 15)));
        assert_eq!(sched("0 0 29 2 *", Tz::UTC, 0).next_fire(t), Some(utc(2028, 2, 29, 0, 0)));
        assert_eq!(sched("0 0 31 2 *", Tz::UTC, 0).next_fire(t), None);
        // Either day field matches when both are restricted, as in cron.
        assert_eq!(sched("0 0 13 * fri", Tz::UTC, 0).next_fire(t), Some(utc(2026, 12, 4, 0, 0)));
    }

    #[test]
    fn dst_gaps_and_repeats_in_a_named_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let s = sched("daily 02:30", berlin, 0);
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 fires at 03:30 CEST = 01:30Z.
        assert_eq!(s.next_fire(utc(2026, 3, 28, 12, 0)), Some(utc(2026, 3, 29, 1, 30)));
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 fires once, at 00:30Z.
        let first = s.next_fire(utc(2026, 10, 24, 12, 0)).unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30));
        assert_eq!(s.next_fire(first), Some(utc(2026, 10, 26, 1, 30)));
        // Hourly slots on the fall-back night: 02:00 local fires once.
        let h = sched("0 * * * *", berlin, 0);
        let mut t = utc(2026, 10, 24, 22, 0);
        let mut fires = Vec::new();
        while t < utc(2026, 10, 25, 4, 0) {
            t = h.next_fire(t).unwrap();
            fires.push(t);
        }
        assert!(fires.windows(2).all(|w| w[1] - w[0] >= 3600), "{fires:?}");
    }

    #[test]
    fn kinds_fire_together_and_the_largest_wins() {
        let mut schedules = BTreeMap::new();
        schedules.insert(KindKey::Full, sched("sun 01:00", Tz::UTC, 0));
        schedules.insert(KindKey::Incremental, sched("every 1h", Tz::UTC, 0));
        let sunday = utc(2026, 12, 6, 1, 0);
        let last: BTreeMap<_, _> = [(KindKey::Full, sunday - 60), (KindKey::Incremental, sunday - 60)].into();
        let d = due(&schedules, &last, sunday);
        assert_eq!(d.kind, Some(BackupKind::Full));
        assert_eq!(d.fired.len(), 2);
        assert_eq!(d.next, Some(sunday + 3600));
        // A kind never run before does not fire for the past.
        let d = due(&schedules, &BTreeMap::new(), sunday + 10);
        assert_eq!(d.kind, None);
    }

    fn any_expr() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u32..200_000).prop_map(|s| format!("every {s}s")),
            (0u32..24, 0u32..60).prop_map(|(h, m)| format!("daily {h:02}:{m:02}")),
            (0usize..7, 0u32..24, 0u32..60).prop_map(|(d, h, m)| format!("{} {h:02}:{m:02}", WEEKDAYS[d])),
            (1u32..29, 0u32..24).prop_map(|(d, h)| format!("0 {h} {d} * *")),
            (1u32..30, 1u32..13).prop_map(|(step, h)| format!("*/{step} */{h} * * *")),
        ]
    }

    fn any_zone() -> impl Strategy<Value = Tz> {
        prop_oneof![
            Just(Tz::UTC),
            Just(chrono_tz::Europe::Berlin),
            Just(chrono_tz::America::New_York),
            Just(chrono_tz::Australia::Lord_Howe),
        ]
    }

    /// 2000-01-01 .. 2040-01-01.
    fn any_time() -> impl Strategy<Value = i64> {
        946_684_800i64..2_208_988_800
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn next_fire_is_later_and_nothing_fires_in_between(expr in any_expr(), tz in any_zone(), t in any_time(),
            jitter in 0i64..600, probe in 0.0f64..1.0)
        {
            let s = sched(&expr, tz, 0);
            let s = Schedule { offset: jitter_offset("host", "src", jitter, &s.expr), ..s };
            let n = s.next_fire(t).unwrap();
            prop_assert!(n > t);
            // prev/next agree: the last fire at or before n is n, and the one
            // before n is at or before t.
            prop_assert_eq!(s.prev_fire(n), Some(n));
            prop_assert!(s.prev_fire(n - 1).is_none_or(|p| p <= t));
            // A probe between t and n has n as its next fire too.
            let mid = t + ((n - t - 1) as f64 * probe) as i64;
            prop_assert_eq!(s.next_fire(mid), Some(n));
        }

        #[test]
        fn catch_up_after_downtime_runs_once(expr in any_expr(), tz in any_zone(), down_at in any_time(),
            down_for in 0i64..(90 * 86_400))
        {
            let s = sched(&expr, tz, 0);
            let up_at = down_at + down_for;
            let missed = s.fired(down_at, up_at);
            // Something fired while down exactly when the next fire after the
            // outage began lies within it.
            let first_missed = s.next_fire(down_at).unwrap();
            prop_assert_eq!(missed.is_some(), first_missed <= up_at);
            if let Some(slot) = missed {
                prop_assert!(slot > down_at && slot <= up_at);
                // The run consumes the slot: asking again right after finds nothing.
                prop_assert_eq!(s.fired(slot, up_at), None);
                prop_assert!(s.next_fire(up_at).unwrap() > up_at);
            }
        }

        #[test]
        fn jitter_stays_within_bounds(host in "[a-z]{1,12}", src in "[a-z-]{1,12}", jitter in 0i64..3600,
            every in 1i64..7200)
        {
            let e = Expr::Every { secs: every };
            let o = jitter_offset(&host, &src, jitter, &e);
            prop_assert!(o >= 0 && (o < jitter.min(every) || jitter == 0 && o == 0));
            let c = Expr::parse("daily 02:00").unwrap();
            let o = jitter_offset(&host, &src, jitter, &c);
            prop_assert!(o >= 0 && (o < jitter || o == 0));
            // Fire times with jitter are the plain ones shifted by the offset.
            let plain = Schedule { expr: c.clone(), tz: Tz::UTC, offset: 0 };
            let jittered = Schedule { expr: c, tz: Tz::UTC, offset: o };
            let t = 1_800_000_000;
            prop_assert_eq!(jittered.next_fire(t + o), plain.next_fire(t).map(|n| n + o));
        }

        #[test]
        fn the_largest_fired_kind_wins(fired in proptest::collection::btree_set(0u8..3, 0..=3)) {
            let key = |i: u8| [KindKey::Incremental, KindKey::Differential, KindKey::Full][i as usize];
            let mut schedules = BTreeMap::new();
            let mut last = BTreeMap::new();
            let now = 1_800_000_000;
            for i in 0..3u8 {
                schedules.insert(key(i), sched("every 60s", Tz::UTC, 0));
                // A kind fires when its last slot is before the one at `now`.
                last.insert(key(i), if fired.contains(&i) { now - 120 } else { now });
            }
            let d = due(&schedules, &last, now);
            prop_assert_eq!(d.kind, fired.iter().max().map(|i| key(*i).kind()));
            prop_assert_eq!(d.fired.len(), fired.len());
        }
    }
}
