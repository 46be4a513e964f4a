//! Five-field cron expressions (`minute hour day-of-month month day-of-week`), the format of a
//! CronJob's `schedule` without the `@hourly` style macros.
//!
//! Each field is a comma-separated list of `*`, `N`, `N-M`, each optionally followed by `/STEP`
//! (`N/STEP` runs from `N` to the field's maximum). Months accept `JAN`..`DEC`, days of the week
//! `SUN`..`SAT` (case-insensitive); day of week 0 and 7 are both Sunday. As in Vixie cron, when
//! both day of month and day of week are restricted, a day matches when either matches.
//!
//! [`CronSchedule::parse`] validates; [`CronSchedule::next_after`] finds the next run in civil
//! (wall-clock) time, so the caller converts from and to the policy's time zone.

use k8s_openapi::jiff::civil::{Date, DateTime, Time};

/// The schema's pattern for a cron expression: five single-space-separated fields.
pub const CRON_PATTERN: &str = r"^[0-9A-Za-z*,/-]+( [0-9A-Za-z*,/-]+){4}$";

/// Longest cron expression the schema accepts.
pub const CRON_MAX_LEN: usize = 128;

/// Why a cron expression is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields separated by single spaces.
    #[error("expected 5 fields separated by single spaces, found {found}")]
    FieldCount {
        /// Fields found.
        found: usize,
    },
    /// Fields separated by something other than one space, or leading/trailing space.
    #[error("fields must be separated by single spaces")]
    Spacing,
    /// An empty list item (`1,,2`) or field.
    #[error("{field} has an empty item")]
    EmptyItem {
        /// The field's name.
        field: &'static str,
    },
    /// A value that is neither a number nor a name the field accepts.
    #[error("{field} has {value:?}, which is not a number or a name")]
    InvalidValue {
        /// The field's name.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A value outside the field's range.
    #[error("{field} has {value}, outside {min}-{max}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: u32,
        /// Smallest value of the field.
        min: u32,
        /// Largest value of the field.
        max: u32,
    },
    /// A range whose start is after its end.
    #[error("{field} has the range {start}-{end}, whose start is after its end")]
    ReversedRange {
        /// The field's name.
        field: &'static str,
        /// Start of the range.
        start: u32,
        /// End of the range.
        end: u32,
    },
    /// A step that is not a positive number.
    #[error("{field} has the step {step:?}, which is not a positive number")]
    InvalidStep {
        /// The field's name.
        field: &'static str,
        /// The text found.
        step: String,
    },
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// A parsed, valid cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    /// Bit 0 is Sunday (7 is folded into 0).
    days_of_week: u8,
    day_of_month_restricted: bool,
    day_of_week_restricted: bool,
}

impl CronSchedule {
    /// Parses and validates `expression`.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(CronError::FieldCount {
                found: fields.len(),
            });
        };
        if fields.join(" ") != expression {
            return Err(CronError::Spacing);
        }
        let days_of_week = parse_field(dow, &DAY_OF_WEEK)?;
        let days_of_week = ((days_of_week | (days_of_week >> 7)) & 0x7f) as u8;
        Ok(Self {
            minutes: parse_field(minute, &MINUTE)?,
            hours: parse_field(hour, &HOUR)? as u32,
            days_of_month: parse_field(dom, &DAY_OF_MONTH)? as u32,
            months: parse_field(month, &MONTH)? as u16,
            days_of_week,
            day_of_month_restricted: !dom.starts_with('*'),
            day_of_week_restricted: !dow.starts_with('*'),
        })
    }

    /// Whether the schedule fires on `date` (any time of day).
    pub fn matches_date(&self, date: Date) -> bool {
        let month_ok = self.months & (1 << date.month()) != 0;
        let dom_ok = self.days_of_month & (1 << date.day()) != 0;
        let dow_ok = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let day_ok = match (self.day_of_month_restricted, self.day_of_week_restricted) {
            (true, true) => dom_ok || dow_ok,
            _ => dom_ok && dow_ok,
        };
        month_ok && day_ok
    }

    /// Whether the schedule fires at `at` (seconds ignored).
    pub fn matches(&self, at: DateTime) -> bool {
        self.matches_date(at.date())
            && self.hours & (1 << at.hour()) != 0
            && self.minutes & (1 << at.minute()) != 0
    }

    /// The first wall-clock minute strictly after `after` at which the schedule fires, searching
    /// up to eight years ahead (enough for `0 0 29 2 *` across a century's missing leap day);
    /// `None` when there is none (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after: DateTime) -> Option<DateTime> {
        let start_date = after.date();
        let mut date = start_date;
        for _ in 0..(8 * 366) {
            if self.matches_date(date) {
                let first_minute = if date == start_date {
                    after.hour() as u32 * 60 + after.minute() as u32 + 1
                } else {
                    0
                };
                for minute_of_day in first_minute..24 * 60 {
                    let (hour, minute) = (minute_of_day / 60, minute_of_day % 60);
                    if self.hours & (1 << hour) != 0 && self.minutes & (1 << minute) != 0 {
                        let time = Time::new(hour as i8, minute as i8, 0, 0).ok()?;
                        return Some(date.to_datetime(time));
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, CronError> {
    let value = if let Ok(number) = text.parse::<u32>() {
        number
    } else if let Some(index) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        // Month names start at 1, weekday names at 0 (Sunday).
        index as u32 + spec.min
    } else {
        return Err(CronError::InvalidValue {
            field: spec.name,
            value: text.to_owned(),
        });
    };
    if (spec.min..=spec.max).contains(&value) {
        Ok(value)
    } else {
        Err(CronError::OutOfRange {
            field: spec.name,
            value,
            min: spec.min,
            max: spec.max,
        })
    }
}

fn parse_field(field: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let mut bits = 0u64;
    for item in field.split(',') {
        if item.is_empty() {
            return Err(CronError::EmptyItem { field: spec.name });
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let parsed = step.parse::<u32>().ok().filter(|s| *s > 0);
                let Some(step) = parsed else {
                    return Err(CronError::InvalidStep {
                        field: spec.name,
                        step: step.to_owned(),
                    });
                };
                (range, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((start, end)) = range.split_once('-') {
            let (start, end) = (parse_value(start, spec)?, parse_value(end, spec)?);
            if start > end {
                return Err(CronError::ReversedRange {
                    field: spec.name,
                    start,
                    end,
                });
            }
            (start, end)
        } else {
            let value = parse_value(range, spec)?;
            // `N/STEP` runs to the end of the field; a bare `N` is just N.
            (value, if step.is_some() { spec.max } else { value })
        };
        let step = step.unwrap_or(1);
        let mut value = start;
        while value <= end {
            bits |= 1 << value;
            value += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use k8s_openapi::jiff::civil::date;

    fn at(y: i16, m: i8, d: i8, h: i8, min: i8) -> DateTime {
        date(y, m, d).at(h, min, 0, 0)
    }

    #[test]
    fn accepts_common_schedules() {
        for expr in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 1 * *",
            "30 2 * * MON-FRI",
            "0 0 * JAN,jul sun",
            "5/10 0-6,22-23 1-7 */3 0,7",
        ] {
            CronSchedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_schedules_with_specific_errors() {
        let cases = [
            ("0 3 * *", CronError::FieldCount { found: 4 }),
            ("0 3 * * * *", CronError::FieldCount { found: 6 }),
            (
                "60 3 * * *",
                CronError::OutOfRange {
                    field: "minute",
                    value: 60,
                    min: 0,
                    max: 59,
                },
            ),
            (
                "0 24 * * *",
                CronError::OutOfRange {
                    field: "hour",
                    value: 24,
                    min: 0,
                    max: 23,
                },
            ),
            (
                "0 0 0 * *",
                CronError::OutOfRange {
                    field: "day of month",
                    value: 0,
                    min: 1,
                    max: 31,
                },
            ),
            (
                "0 0 * 13 *",
                CronError::OutOfRange {
                    field: "month",
                    value: 13,
                    min: 1,
                    max: 12,
                },
            ),
            (
                "0 0 * * 8",
                CronError::OutOfRange {
                    field: "day of week",
                    value: 8,
                    min: 0,
                    max: 7,
                },
            ),
            (
                "0 5-1 * * *",
                CronError::ReversedRange {
                    field: "hour",
                    start: 5,
                    end: 1,
                },
            ),
            (
                "*/0 * * * *",
                CronError::InvalidStep {
                    field: "minute",
                    step: "0".into(),
                },
            ),
            ("1,,2 * * * *", CronError::EmptyItem { field: "minute" }),
            (
                "0 0 * * FUNDAY",
                CronError::InvalidValue {
                    field: "day of week",
                    value: "FUNDAY".into(),
                },
            ),
            ("@daily", CronError::FieldCount { found: 1 }),
            ("0  3 * * *", CronError::Spacing),
            (" 0 3 * * *", CronError::Spacing),
        ];
        for (expr, expected) in cases {
            assert_eq!(CronSchedule::parse(expr), Err(expected), "{expr}");
        }
    }

    #[test]
    fn daily_schedule_fires_next_day_when_today_has_passed() {
        let s = CronSchedule::parse("0 3 * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 3, 1, 2, 59)),
            Some(at(2026, 3, 1, 3, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 3, 1, 3, 0)),
            Some(at(2026, 3, 2, 3, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 31, 23, 59)),
            Some(at(2027, 1, 1, 3, 0))
        );
    }

    #[test]
    fn restricted_day_of_month_and_week_match_either() {
        // The 13th, or any Friday.
        let s = CronSchedule::parse("0 0 13 * FRI").unwrap();
        assert!(s.matches_date(date(2026, 3, 13)));
        assert!(s.matches_date(date(2026, 3, 6))); // a Friday
        assert!(!s.matches_date(date(2026, 3, 7)));
        // Only weekdays restricted: day of month is `*`, so only Fridays.
        let s = CronSchedule::parse("0 0 * * 5").unwrap();
        assert!(!s.matches_date(date(2026, 3, 13 - 1)));
    }

    #[test]
    fn sunday_is_both_zero_and_seven() {
        let zero = CronSchedule::parse("0 0 * * 0").unwrap();
        let seven = CronSchedule::parse("0 0 * * 7").unwrap();
        assert_eq!(zero, seven);
        assert!(zero.matches(at(2026, 3, 1, 0, 0))); // 2026-03-01 is a Sunday
    }

    #[test]
    fn impossible_date_has_no_next_run_and_leap_day_has_one() {
        assert_eq!(
            CronSchedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at(2026, 1, 1, 0, 0)),
            None
        );
        assert_eq!(
            CronSchedule::parse("0 0 29 2 *")
                .unwrap()
                .next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
    }

    #[test]
    fn step_from_a_single_value_runs_to_the_end_of_the_field() {
        let s = CronSchedule::parse("50/5 * * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 1, 1, 0, 51)),
            Some(at(2026, 1, 1, 0, 55))
        );
        assert_eq!(
            s.next_after(at(2026, 1, 1, 0, 55)),
            Some(at(2026, 1, 1, 1, 50))
        );
    }
}
