//! Host CPU spent on invocations: the node's processes (`utime + stime` from
//! `/proc/PID/stat`, every thread included, the vCPU threads' guest time too) plus the
//! system's interrupt and softirq time (`irq + softirq` of `/proc/stat`'s `cpu` line: the
//! taps' and the loopback's packet work, which no process is charged with). The load
//! generator's own process is never counted.
//!
//! The parsers are pure functions over the files' text, tested without a host.

use std::path::PathBuf;

/// Errors reading the CPU counters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (the process ended, for one).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not what the kernel writes.
    #[error("{what} is not readable: {why}")]
    Parse {
        /// Which file.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// `utime + stime` of a process, in clock ticks, from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may hold spaces and parentheses itself,
/// so the fields are counted from the last `)`: `utime` and `stime` are fields 14 and 15.
pub fn process_ticks(stat: &str) -> Result<u64, Error> {
    let bad = |why| Error::Parse {
        what: "/proc/PID/stat",
        why,
    };
    let rest = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or(bad("no `)` after the command name"))?;
    // After the name: field 3 (state) is the first; utime is field 14, the 12th after it.
    let mut fields = rest.split_whitespace().skip(11);
    let mut tick = || -> Result<u64, Error> {
        fields
            .next()
            .ok_or(bad("fewer than 15 fields"))?
            .parse::<u64>()
            .map_err(|_| bad("utime or stime is not a number"))
    };
    let utime = tick()?;
    let stime = tick()?;
    Ok(utime.saturating_add(stime))
}

/// `irq + softirq` of all CPUs, in clock ticks, from the text of `/proc/stat` (its first
/// line: `cpu user nice system idle iowait irq softirq steal …`).
pub fn interrupt_ticks(stat: &str) -> Result<u64, Error> {
    let bad = |why| Error::Parse {
        what: "/proc/stat",
        why,
    };
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .ok_or(bad("no `cpu` line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad("a `cpu` field is not a number"))?;
    match (fields.get(5), fields.get(6)) {
        (Some(irq), Some(softirq)) => Ok(irq.saturating_add(*softirq)),
        _ => Err(bad("the `cpu` line has no irq and softirq fields")),
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux when unknown).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system; it has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU counters at one instant, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Each watched process's `utime + stime`, summed.
    pub processes: u64,
    /// The system's `irq + softirq`.
    pub interrupts: u64,
}

/// CPU seconds between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuUsage {
    /// The watched processes.
    pub process_seconds: f64,
    /// The system's interrupt and softirq time.
    pub interrupt_seconds: f64,
}

impl CpuUsage {
    /// The use from `before` to `after`, with `ticks_per_second`.
    pub fn between(before: CpuSample, after: CpuSample, ticks_per_second: f64) -> Self {
        let seconds = |a: u64, b: u64| b.saturating_sub(a) as f64 / ticks_per_second;
        CpuUsage {
            process_seconds: seconds(before.processes, after.processes),
            interrupt_seconds: seconds(before.interrupts, after.interrupts),
        }
    }

    /// Both together.
    pub fn total_seconds(&self) -> f64 {
        self.process_seconds + self.interrupt_seconds
    }

    /// Milliseconds of CPU per invocation, over `invocations`.
    pub fn ms_per_invocation(&self, invocations: u64) -> Option<f64> {
        (invocations > 0).then(|| self.total_seconds() * 1000.0 / invocations as f64)
    }
}

/// Reads the counters of the node's processes.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<u32>,
}

impl CpuMeter {
    /// A meter over the processes `pids` (the daemon, the backend, the S3 server).
    pub fn new(pids: Vec<u32>) -> Self {
        CpuMeter { pids }
    }

    /// Reads the counters now.
    pub fn sample(&self) -> Result<CpuSample, Error> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
        };
        let mut processes = 0u64;
        for pid in &self.pids {
            let text = read(PathBuf::from(format!("/proc/{pid}/stat")))?;
            processes = processes.saturating_add(process_ticks(&text)?);
        }
        let interrupts = interrupt_ticks(&read(PathBuf::from("/proc/stat"))?)?;
        Ok(CpuSample {
            processes,
            interrupts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_count_from_the_last_parenthesis() {
        let stat = "4242 (nexus-vmm) S 1 4242 4242 0 -1 4194560 2811 0 0 0 \
                    1234 567 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(process_ticks(stat).unwrap(), 1234 + 567);
        // A name with spaces and parentheses does not shift the fields.
        let odd = "7 (a) b (c) d) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 1 1 1";
        assert_eq!(process_ticks(odd).unwrap(), 30);
    }

    #[test]
    fn process_stat_errors_say_what() {
        assert!(
            process_ticks("12 nexus S 1 2")
                .unwrap_err()
                .to_string()
                .contains("no `)`")
        );
        assert!(
            process_ticks("12 (x) S 1 2 3")
                .unwrap_err()
                .to_string()
                .contains("fewer than 15")
        );
        assert!(process_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 u 2").is_err());
    }

    #[test]
    fn interrupt_ticks_are_irq_plus_softirq() {
        let stat = "cpu  10132153 290696 3084719 46828483 16683 7 25195 0 0 0\n\
                    cpu0 1393280 32966 572056 13343292 6130 3 17875 0 0 0\n\
                    intr 1462898 0 0\n";
        assert_eq!(interrupt_ticks(stat).unwrap(), 7 + 25195);
        assert!(interrupt_ticks("cpu0 1 2 3 4 5 6 7\n").is_err());
        assert!(interrupt_ticks("cpu 1 2 3 4 5\n").is_err());
        assert!(interrupt_ticks("cpu 1 2 3 4 5 x 7\n").is_err());
    }

    #[test]
    fn usage_per_invocation() {
        let before = CpuSample {
            processes: 1000,
            interrupts: 50,
        };
        let after = CpuSample {
            processes: 1300,
            interrupts: 70,
        };
        let usage = CpuUsage::between(before, after, 100.0);
        assert_eq!(usage.process_seconds, 3.0);
        assert_eq!(usage.interrupt_seconds, 0.2);
        assert!((usage.ms_per_invocation(1600).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(usage.ms_per_invocation(0), None);
        // Counters never run backwards; a restarted process must not give negative time.
        assert_eq!(CpuUsage::between(after, before, 100.0).total_seconds(), 0.0);
    }

    #[test]
    fn this_process_and_host_are_readable() {
        let meter = CpuMeter::new(vec![std::process::id()]);
        let before = meter.sample().unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(60) {
            std::hint::black_box(spin.elapsed());
        }
        let after = meter.sample().unwrap();
        assert!(after.processes > before.processes, "{before:?} {after:?}");
        assert!(after.interrupts >= before.interrupts);
        assert!(
            CpuMeter::new(vec![u32::MAX])
                .sample()
                .unwrap_err()
                .to_string()
                .contains("cannot read /proc/")
        );
    }
}
