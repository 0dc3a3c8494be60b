// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend's figures for a node daemon's metrics: [`BackendStats`] (control `stats`,
//! [`Backend::stats`](crate::Backend::stats)), and the process's own resident memory and CPU
//! time read from `/proc/self`.

pub use nexus_ring::control::{BackendStats, TenantStats};

/// The process's resident set and CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ProcessUsage {
    /// Resident set, bytes.
    pub(crate) rss_bytes: u64,
    /// User + system CPU time, seconds.
    pub(crate) cpu_seconds: f64,
}

impl ProcessUsage {
    /// Reads `/proc/self/statm` and `/proc/self/stat`; what cannot be read is 0.
    pub(crate) fn read() -> Self {
        let rss_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| resident_pages(&statm))
            .map_or(0, |pages| pages.saturating_mul(page_size()));
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| cpu_ticks(&stat))
            .map_or(0.0, |ticks| ticks as f64 / clock_ticks_per_second() as f64);
        Self {
            rss_bytes,
            cpu_seconds,
        }
    }
}

/// The resident set, in pages: the second field of `/proc/<pid>/statm`.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime`, in clock ticks: fields 14 and 15 of `/proc/<pid>/stat`. The command name
/// (field 2, in parentheses) may hold spaces and parentheses, so fields are counted from the
/// last `)`: field 3 is the first after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The page size (4096 if the system will not say).
pub(crate) fn page_size() -> u64 {
    sysconf(libc::_SC_PAGESIZE).unwrap_or(4096)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times (100 if the system will not
/// say, as on every Linux configuration in use).
fn clock_ticks_per_second() -> u64 {
    sysconf(libc::_SC_CLK_TCK).unwrap_or(100)
}

/// A positive `sysconf` value.
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: `sysconf` takes an integer and returns one; it touches no memory of ours and is
    // thread-safe. An unknown name returns -1, handled below.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statm() {
        assert_eq!(resident_pages("10817 2532 1846 211 0 3114 0\n"), Some(2532));
        assert_eq!(resident_pages("10817"), None);
        assert_eq!(resident_pages("10817 x 1"), None);
    }

    #[test]
    fn parses_stat() {
        // The kernel's format, with a command name that holds a space and a parenthesis.
        let line = "4242 (nexus) back(end) S 1 4242 4242 34816 4242 4194304 1189 9528 0 1 \
                    25 17 12 8 20 0 1 0 3310 9158656 842 18446744073709551615 1 1 0 0 0 0 \
                    65536 3686404 1266761467 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(cpu_ticks(line), Some(25 + 17));
        assert_eq!(cpu_ticks("4242 (x) S 1 2 3"), None);
        assert_eq!(cpu_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn reads_this_process() {
        let usage = ProcessUsage::read();
        assert!(usage.rss_bytes > 0, "{usage:?}");
        assert!(usage.cpu_seconds >= 0.0, "{usage:?}");
        assert!(page_size() >= 4096);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn stats_round_trip() {
        let stats = BackendStats {
            pid: 7,
            vms: 2,
            cpu_seconds: 1.5,
            ..BackendStats::default()
        };
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(serde_json::from_str::<BackendStats>(&json).unwrap(), stats);
    }
}
