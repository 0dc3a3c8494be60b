//! The comparison's plots, as SVG files drawn with `plotters` (its SVG backend only): warm
//! latency CDFs per case, host CPU per invocation, and p99 against parked VMs.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::results::{Comparison, IoPath};

const SIZE: (u32, u32) = (760, 440);
const NEXUS: RGBColor = RGBColor(31, 119, 180);
const NET: RGBColor = RGBColor(214, 39, 40);
const SLO: RGBColor = RGBColor(255, 127, 14);

fn colour(path: IoPath) -> RGBColor {
    match path {
        IoPath::Nexus => NEXUS,
        IoPath::Net => NET,
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw a plot: {e:?}")
}

/// The empirical CDF of `samples` as (value, fraction ≤ value) points.
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, v)| (*v, (i + 1) as f64 / n))
        .collect()
}

/// Draws every plot into `dir`; returns (title, file name) of each.
pub fn draw_all(c: &Comparison, dir: &Path) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut drawn = Vec::new();
    for case in &c.cases {
        if case.samples.iter().all(|(_, s)| s.is_empty()) {
            continue;
        }
        let slug: String = format!("{}-{}", case.function, case.input)
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() {
                    ch.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let file = format!("latency-{slug}.svg");
        let title = format!("Warm latency CDF: {}, {}", case.function, case.input);
        latency_cdf(&dir.join(&file), &title, &case.samples)?;
        drawn.push((title, file));
    }
    if !c.cases.is_empty() {
        let file = "cpu-per-invocation.svg".to_string();
        cpu_bars(&dir.join(&file), c)?;
        drawn.push(("Host CPU per warm invocation".to_string(), file));
    }
    if !c.density.is_empty() {
        let file = "p99-vs-parked-vms.svg".to_string();
        density_lines(&dir.join(&file), c)?;
        drawn.push(("Warm p99 against parked VMs".to_string(), file));
    }
    Ok(drawn)
}

fn latency_cdf(file: &Path, title: &str, samples: &[(IoPath, Vec<f64>)]) -> Result<()> {
    let all = samples.iter().flat_map(|(_, s)| s.iter().copied());
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = (lo * 0.8).max(0.001);
    let hi = (hi * 1.2).max(lo * 2.0);
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("latency, ms (client side, log scale)")
        .y_desc("fraction of invocations")
        .draw()
        .map_err(plot_error)?;
    for (path, values) in samples {
        if values.is_empty() {
            continue;
        }
        let style = colour(*path);
        chart
            .draw_series(LineSeries::new(cdf(values), style.stroke_width(2)))
            .map_err(plot_error)?
            .label(format!(
                "{} (1 client, {} samples)",
                path.label(),
                values.len()
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], style.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

fn cpu_bars(file: &Path, c: &Comparison) -> Result<()> {
    let labels: Vec<String> = c
        .cases
        .iter()
        .map(|case| format!("{} {}", case.function, case.input.replace(" object", "")))
        .collect();
    let value = |i: usize, path: IoPath| {
        c.cases
            .get(i)
            .and_then(|case| case.path(path))
            .and_then(|p| p.cpu_ms_per_invocation)
            .filter(|v| *v > 0.0)
    };
    let values: Vec<f64> = (0..labels.len())
        .flat_map(|i| IoPath::BOTH.map(|p| value(i, p)))
        .flatten()
        .collect();
    // A log scale: the 1 KiB cases cost a hundredth of the 1 MiB ones.
    let bottom = values.iter().copied().fold(f64::MAX, f64::min).min(1.0) * 0.5;
    let top = values
        .iter()
        .copied()
        .fold(0.0f64, f64::max)
        .max(bottom * 4.0)
        * 1.5;
    let n = i32::try_from(labels.len()).unwrap_or(i32::MAX);
    let width = SIZE.0.max(130 * u32::try_from(labels.len()).unwrap_or(1));
    let root = SVGBackend::new(file, (width, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Host CPU per warm invocation (4 clients)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n).into_segmented(), (bottom..top).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(labels.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .y_desc("CPU ms per invocation, log scale (node processes + irq + softirq)")
        .draw()
        .map_err(plot_error)?;
    for path in IoPath::BOTH {
        let style = colour(path);
        let bars = (0..n).filter_map(|i| {
            let v = value(usize::try_from(i).ok()?, path)?;
            let (from, to) = match path {
                IoPath::Nexus => (SegmentValue::Exact(i), SegmentValue::CenterOf(i)),
                IoPath::Net => (SegmentValue::CenterOf(i), SegmentValue::Exact(i + 1)),
            };
            Some(Rectangle::new([(from, bottom), (to, v)], style.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(plot_error)?
            .label(path.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], style.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

fn density_lines(file: &Path, c: &Comparison) -> Result<()> {
    let max_vms = c
        .density
        .iter()
        .flat_map(|d| d.probes.iter().map(|p| p.vms))
        .max()
        .unwrap_or(1) as f64;
    let mut slos = vec![c.slo_ms];
    slos.extend(c.other_slos_ms.iter().copied());
    let worst = c
        .density
        .iter()
        .flat_map(|d| d.probes.iter().filter_map(|p| p.latency.p99_ms))
        .fold(0.0f64, f64::max);
    let top = worst
        .min(slos.iter().copied().fold(0.0, f64::max) * 2.0)
        .max(1.0)
        * 1.1;
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let rate = c.density.first().map_or(0.0, |d| d.rate);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Warm p99 against parked VMs (Poisson, {rate:.0}/s in aggregate)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_vms * 1.05, 0f64..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("parked VMs")
        .y_desc("warm p99, ms (client side)")
        .draw()
        .map_err(plot_error)?;
    let slo_label = slos
        .iter()
        .map(|s| super::document::slo_label(*s))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, slo) in slos.iter().enumerate() {
        let line = chart
            .draw_series(LineSeries::new(
                [(0.0, *slo), (max_vms * 1.05, *slo)],
                SLO.stroke_width(1),
            ))
            .map_err(plot_error)?;
        if i == 0 {
            line.label(format!("p99 SLOs: {slo_label} ms"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], SLO.stroke_width(1)));
        }
    }
    for d in &c.density {
        let style = colour(d.path);
        let mut points: Vec<(f64, f64)> = d
            .probes
            .iter()
            .filter_map(|p| Some((p.vms as f64, p.latency.p99_ms?.min(top))))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), style.stroke_width(2)))
            .map_err(plot_error)?
            .label(format!("{} ({})", d.function, d.path.label()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], style.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, style.filled())),
            )
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points() {
        assert_eq!(
            cdf(&[3.0, 1.0, f64::NAN, 2.0]),
            [(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]
        );
        assert!(cdf(&[]).is_empty());
    }
}
