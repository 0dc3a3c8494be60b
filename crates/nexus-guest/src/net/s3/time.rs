// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dates as S3 speaks them: SigV4's `20240102T030405Z`, ISO 8601 in listings, IMF-fixdate
//! in HTTP headers (`Date`, `Last-Modified`). No `unsafe`: this parses the server's bytes.

use alloc::format;
use alloc::string::String;

const MS_PER_DAY: u64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Unix milliseconds of a UTC date and time, if every field is in range.
fn to_unix_ms(year: i64, month: u32, day: u32, h: u32, m: u32, s: u32, ms: u32) -> Option<u64> {
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || s > 60
        || ms > 999
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * MS_PER_DAY + u64::from(h * 3600 + m * 60 + s) * 1000 + u64::from(ms))
}

/// `(YYYYMMDD'T'HHMMSS'Z', YYYYMMDD)` of Unix milliseconds: SigV4's `x-amz-date` and the
/// scope's date.
pub fn amz_date(unix_ms: u64) -> (String, String) {
    let days = (unix_ms / MS_PER_DAY) as i64;
    let (year, month, day) = civil_from_days(days);
    let secs = (unix_ms % MS_PER_DAY) / 1000;
    let date = format!("{year:04}{month:02}{day:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    (stamp, date)
}

fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 9 {
        return None;
    }
    text.parse().ok()
}

/// Unix milliseconds of an ISO 8601 UTC time: `2009-10-12T17:50:30.000Z` (fraction
/// optional).
pub fn parse_iso8601(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year = digits(date_parts.next()?)?;
    let month = digits(date_parts.next()?)?;
    let day = digits(date_parts.next()?)?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (time, None),
    };
    let mut t = hms.splitn(3, ':');
    let (h, m, s) = (digits(t.next()?)?, digits(t.next()?)?, digits(t.next()?)?);
    let ms = match fraction {
        Some(f) => {
            let f = f.get(..f.len().min(3))?;
            digits(f)? * 10u32.pow(3 - f.len() as u32)
        }
        None => 0,
    };
    to_unix_ms(year.into(), month, day, h, m, s, ms)
}

/// Unix milliseconds of an HTTP date in IMF-fixdate form: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day = digits(parts.next()?)?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year = digits(parts.next()?)?;
    let mut t = parts.next()?.splitn(3, ':');
    let (h, m, s) = (digits(t.next()?)?, digits(t.next()?)?, digits(t.next()?)?);
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    to_unix_ms(year.into(), month, day, h, m, s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(
            amz_date(1_440_938_160_000),
            ("20150830T123600Z".into(), "20150830".into())
        );
        assert_eq!(amz_date(0).0, "19700101T000000Z");
        assert_eq!(amz_date(951_782_400_000).1, "20000229");
        assert_eq!(
            parse_iso8601("2015-08-30T12:36:00.250Z"),
            Some(1_440_938_160_250)
        );
        assert_eq!(
            parse_iso8601("2015-08-30T12:36:00Z"),
            Some(1_440_938_160_000)
        );
        assert_eq!(
            parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT"),
            Some(1_440_938_160_000)
        );
        for bad in [
            "",
            "2015-13-01T00:00:00Z",
            "2015-08-30 12:36:00Z",
            "2015-08-30T12:36:00",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        for bad in [
            "Sun, 30 Foo 2015 12:36:00 GMT",
            "30 Aug 2015 12:36:00 GMT",
            "Sun, 30 Aug 2015 12:36:00 UTC",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        for days in [-1000i64, 0, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
