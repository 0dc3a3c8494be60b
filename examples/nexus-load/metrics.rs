//! A small, tolerant parser for the Prometheus text exposition format that the daemon's
//! `GET /metrics` serves.
//!
//! It reads what the load generator needs and nothing more: `# HELP`/`# TYPE` and other
//! comment lines are ignored, each sample line is `name{label="value",…} value [timestamp]`
//! (labels optional), values are read as `f64` (`NaN`, `+Inf`, `-Inf` included). A line it
//! cannot read is skipped and counted, never an error: a daemon that adds a metric the
//! parser does not understand must not break a measurement.

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Every sample read, in order.
    pub samples: Vec<Sample>,
    /// Non-comment lines that could not be read and were skipped.
    pub skipped: usize,
}

impl Metrics {
    /// Parses a scrape in the text exposition format.
    pub fn parse(text: &str) -> Self {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => metrics.samples.push(sample),
                None => {
                    log::debug!("skipping unreadable metrics line: {line}");
                    metrics.skipped += 1;
                }
            }
        }
        metrics
    }

    /// The sum of the samples named `name` that carry every label in `labels` with the
    /// value given (other labels may be present). `None` when no sample matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matched = false;
        let mut total = 0.0;
        for sample in self.samples.iter().filter(|s| s.name == name) {
            if labels.iter().all(|(k, v)| sample.label(k) == Some(*v)) {
                matched = true;
                total += sample.value;
            }
        }
        matched.then_some(total)
    }
}

/// Reads one sample line, or `None` when it is not one.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp that is ignored.
    let value = rest.split_whitespace().next()?;
    let value = value.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads `label="value",…}` (the opening brace already consumed) and returns the labels
/// and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP nexus_vmm_resident_bytes Resident memory of the daemon.
# TYPE nexus_vmm_resident_bytes gauge
nexus_vmm_resident_bytes 123456789
nexus_backend_resident_bytes 2.5e7
nexus_vmm_cpu_seconds_total 12.75 1700000000000
nexus_vms{function="wordcount",state="idle"} 40
nexus_vms{function="wordcount",state="busy"} 2
nexus_vms{function="compress",state="idle"} 7
nexus_invocations_total{function="wordcount",outcome="success",start="cold"} 10
nexus_invocations_total{function="wordcount",outcome="success",start="warm"} 990
nexus_invocations_total{function="wordcount",outcome="FunctionError",start="warm"} 3
odd_label{msg="a \"quoted\", {braced} \\ value\n",x="1",} +Inf
not a sample line
broken{function="x" 1
"#;

    #[test]
    fn reads_samples_and_skips_junk() {
        let m = Metrics::parse(SCRAPE);
        assert_eq!(m.skipped, 2);
        assert_eq!(m.sum("nexus_vmm_resident_bytes", &[]), Some(123456789.0));
        assert_eq!(m.sum("nexus_backend_resident_bytes", &[]), Some(2.5e7));
        // The timestamp is not the value.
        assert_eq!(m.sum("nexus_vmm_cpu_seconds_total", &[]), Some(12.75));
        assert_eq!(m.sum("nexus_backend_cpu_seconds_total", &[]), None);
    }

    #[test]
    fn sums_by_labels() {
        let m = Metrics::parse(SCRAPE);
        let idle = [("function", "wordcount"), ("state", "idle")];
        assert_eq!(m.sum("nexus_vms", &idle), Some(40.0));
        assert_eq!(m.sum("nexus_vms", &[("state", "idle")]), Some(47.0));
        assert_eq!(m.sum("nexus_vms", &[("function", "wordcount")]), Some(42.0));
        assert_eq!(m.sum("nexus_vms", &[("function", "nope")]), None);
        let cold = [("function", "wordcount"), ("start", "cold")];
        assert_eq!(m.sum("nexus_invocations_total", &cold), Some(10.0));
        assert_eq!(
            m.sum("nexus_invocations_total", &[("outcome", "success")]),
            Some(1000.0)
        );
    }

    #[test]
    fn reads_escaped_labels_and_special_values() {
        let m = Metrics::parse(SCRAPE);
        let odd = m.samples.iter().find(|s| s.name == "odd_label").unwrap();
        assert_eq!(odd.label("msg"), Some("a \"quoted\", {braced} \\ value\n"));
        assert_eq!(odd.label("x"), Some("1"));
        assert_eq!(odd.value, f64::INFINITY);
        let nan = Metrics::parse("m NaN\nn{} -Inf\n");
        assert!(nan.samples[0].value.is_nan());
        assert_eq!(nan.samples[1].value, f64::NEG_INFINITY);
        assert_eq!(nan.skipped, 0);
    }

    #[test]
    fn empty_and_comment_only_scrapes() {
        assert_eq!(Metrics::parse(""), Metrics::default());
        assert_eq!(
            Metrics::parse("# only\n\n   \n# comments"),
            Metrics::default()
        );
    }
}
