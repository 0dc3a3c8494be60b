// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a VM's LOG op may cost the backend's own log.
//!
//! Every VM has a token bucket ([`VmLimits::log_records_per_second`](crate::VmLimits) tokens a
//! second, at most [`log_burst`](crate::VmLimits::log_burst)); each LOG takes one token and
//! becomes one log record. A LOG that finds no token is answered `THROTTLED` and counted, and
//! the counts are summarised in at most one backend log line per VM every
//! [`DROP_REPORT_INTERVAL`]: a flood costs a few lines, not one per record.
//!
//! The record's text is escaped ([`escape_log_text`]) so that it stays one line whatever the
//! guest sends.
//!
//! Time is tokio's clock ([`tokio::time::Instant`]): the system's monotonic clock in the
//! backend, a paused clock that only moves when told to under the operation-layer harness.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// Least time between two "records dropped" lines of one VM.
pub(crate) const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// One VM's LOG rate limit.
#[derive(Debug)]
pub(crate) struct LogRateLimit {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Records dropped and not yet reported.
    dropped: u64,
    /// When drops were last reported (`None`: never).
    reported: Option<Instant>,
}

impl LogRateLimit {
    /// A full bucket of `burst` records, refilled at `per_second`.
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: per_second.into(),
            burst: burst.into(),
            state: Mutex::new(Bucket {
                tokens: burst.into(),
                refilled: now,
                dropped: 0,
                reported: None,
            }),
        }
    }

    /// Takes a token for one record; `false` (and the record is counted as dropped) if there
    /// is none.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let mut bucket = lock(&self.state);
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            bucket.dropped += 1;
            false
        }
    }

    /// The records dropped since the last report, if there are some and a report is due (the
    /// first one at once, then at most one per [`DROP_REPORT_INTERVAL`]).
    pub(crate) fn report_due(&self, now: Instant) -> Option<u64> {
        let mut bucket = lock(&self.state);
        let due = bucket
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= DROP_REPORT_INTERVAL);
        if bucket.dropped == 0 || !due {
            return None;
        }
        bucket.reported = Some(now);
        Some(std::mem::take(&mut bucket.dropped))
    }

    /// The records dropped and not yet reported (the VM goes away).
    pub(crate) fn take_unreported(&self) -> u64 {
        std::mem::take(&mut lock(&self.state).dropped)
    }
}

/// `text` as one line of at most `max` bytes: control characters (C0 including newline and
/// ESC, DEL, C1), line and paragraph separators and bidirectional overrides become `\n`, `\r`,
/// `\t` or `\u{..}` escapes, a backslash becomes `\\`, and a text cut short ends in `…`
/// (within `max`). One trailing line break is dropped first: a guest's "line\n" is one line.
pub(crate) fn escape_log_text(text: &str, max: usize) -> String {
    const CUT: &str = "…";
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    let mut out = String::with_capacity(text.len().min(max));
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            '\\' => piece.push_str("\\\\"),
            c if needs_escape(c) => {
                let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
            }
            c => piece.push(c),
        }
        if out.len() + piece.len() > max {
            // Make room for the mark, at a character boundary.
            let mut end = max.saturating_sub(CUT.len()).min(out.len());
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            if CUT.len() <= max {
                out.push_str(CUT);
            }
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// Characters that could break a log line or change how the following text displays.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let limit = LogRateLimit::new(2, 3, start);
        assert!((0..3).all(|_| limit.admit(start)));
        assert!(!limit.admit(start));
        assert!(!limit.admit(start + Duration::from_millis(100)));
        // Half a second refills one token (2 a second).
        assert!(limit.admit(start + Duration::from_millis(600)));
        assert!(!limit.admit(start + Duration::from_millis(600)));
        // A long pause refills at most the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| limit.admit(later)));
        assert!(!limit.admit(later));
        // Zero burst: nothing gets through.
        let closed = LogRateLimit::new(100, 0, start);
        assert!(!closed.admit(start + Duration::from_secs(5)));
    }

    #[test]
    fn drops_are_reported_at_most_every_ten_seconds() {
        let start = Instant::now();
        let limit = LogRateLimit::new(0, 1, start);
        assert_eq!(limit.report_due(start), None, "nothing dropped yet");
        assert!(limit.admit(start));
        assert!(!limit.admit(start));
        // The first drop is reported at once.
        assert_eq!(limit.report_due(start), Some(1));
        for i in 0..1000 {
            assert!(!limit.admit(start + Duration::from_millis(i)));
        }
        assert_eq!(limit.report_due(start + Duration::from_secs(9)), None);
        assert_eq!(
            limit.report_due(start + Duration::from_secs(10)),
            Some(1000)
        );
        assert_eq!(limit.report_due(start + Duration::from_secs(30)), None);
        assert!(!limit.admit(start + Duration::from_secs(31)));
        assert_eq!(limit.take_unreported(), 1);
        assert_eq!(limit.take_unreported(), 0);
    }

    #[test]
    fn log_text_stays_one_line() {
        assert_eq!(escape_log_text("plain text", 100), "plain text");
        assert_eq!(escape_log_text("one line\n", 100), "one line");
        assert_eq!(escape_log_text("win\r\n", 100), "win");
        assert_eq!(
            escape_log_text("a\nINFO forged: root login\n", 100),
            "a\\nINFO forged: root login"
        );
        assert_eq!(
            escape_log_text("\x1b[31mred\x1b[0m", 100),
            "\\u{1b}[31mred\\u{1b}[0m"
        );
        assert_eq!(
            escape_log_text("del\x7f tab\t cr\r", 100),
            "del\\u{7f} tab\\t cr\\r"
        );
        assert_eq!(
            escape_log_text("c1\u{85} ls\u{2028} rlo\u{202e}", 100),
            "c1\\u{85} ls\\u{2028} rlo\\u{202e}"
        );
        assert_eq!(escape_log_text("back\\slash", 100), "back\\\\slash");
        assert_eq!(escape_log_text("ünïcödé ✓", 100), "ünïcödé ✓");
        for text in ["x\ny", "\u{0}", "\n\n\n", "é\u{1b}"] {
            let escaped = escape_log_text(text, 1000);
            assert!(
                !escaped.chars().any(needs_escape),
                "{text:?} -> {escaped:?}"
            );
        }
    }

    #[test]
    fn log_text_is_cut_to_the_limit() {
        let long = "é".repeat(100);
        let cut = escape_log_text(&long, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
        // Escapes count: ten newlines take twenty bytes.
        let cut = escape_log_text(&"\n".repeat(10).replace('\n', "\na"), 12);
        assert!(cut.len() <= 12 && cut.ends_with('…'), "{cut:?}");
        assert!(!cut.contains('\n'));
        assert_eq!(escape_log_text("exact", 5), "exact");
        assert_eq!(escape_log_text("exact!", 5), "ex…");
        assert_eq!(escape_log_text("abc", 2), "", "no room even for the mark");
    }
}
