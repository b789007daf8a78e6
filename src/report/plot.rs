//! `rlx plot`: metric curves of runs as an SVG or PNG — one panel per metric, one colour per
//! recipe, seeds as a mean line with a ±1 standard-error band, held-out evaluations as marked
//! points. The SVG is drawn once; a PNG is that SVG rasterised (resvg) with the system's fonts.

use std::path::Path;

use plotters::prelude::*;

use super::curves::{Curve, RunMetrics, group, mean_curve, mean_se};

/// What to draw.
pub struct PlotSpec<'a> {
    pub metrics: &'a [String],
    /// Trailing moving average over this many steps (1: raw).
    pub smooth: usize,
    pub title: &'a str,
    /// Seconds since the run began on the x axis, instead of steps.
    pub wall: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Writes the plot to `out`: SVG or, for a `.png` name, a PNG at twice the SVG's size.
pub fn write(runs: Vec<RunMetrics>, spec: &PlotSpec, out: &Path) -> Result<(), String> {
    let svg = draw(runs, spec)?;
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    match out.extension().and_then(|e| e.to_str()) {
        Some("svg") => std::fs::write(out, svg).map_err(io),
        Some("png") => std::fs::write(out, rasterise(&svg, 2.0)?).map_err(io),
        _ => Err(format!("`{}`: name the plot `.svg` or `.png`", out.display())),
    }
}

/// The SVG's text drawn into PNG bytes at `scale`. Text needs a system font: without one the
/// PNG would silently lose every label, so that is an error.
pub fn rasterise(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    let family = db
        .faces()
        .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
        .min_by_key(|name| (!name.contains("Sans"), name.contains("Mono"), name.len()))
        .ok_or("no system fonts found to draw the plot's text: write `.svg` instead")?;
    db.set_sans_serif_family(family);
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| format!("rasterising the plot: {e}"))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or("the plot is empty")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("the plot is too large")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("encoding the PNG: {e}"))
}

/// The plot as SVG text.
fn draw(runs: Vec<RunMetrics>, spec: &PlotSpec) -> Result<String, String> {
    let runs = if spec.wall { runs.iter().map(RunMetrics::against_wall).collect() } else { runs };
    let groups = group(runs);
    if groups.is_empty() {
        return Err("no runs to plot".into());
    }
    let panels = spec.metrics.len().max(1);
    let height = 60 + 260 * panels as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, height)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(spec.title, ("sans-serif", 20)).map_err(|e| err(&e))?;
        let areas = root.split_evenly((panels, 1));
        for (metric, area) in spec.metrics.iter().zip(&areas) {
            let curves: Vec<(String, Curve)> = groups
                .iter()
                .map(|(label, runs)| (label.clone(), mean_curve(runs, metric, spec.smooth)))
                .collect();
            // Held-out evaluations of this metric: mean over seeds at each evaluation point.
            let evals: Vec<(usize, Vec<(f64, f64)>)> = groups
                .iter()
                .enumerate()
                .map(|(i, (_, runs))| (i, eval_points(runs, metric)))
                .collect();
            let points = curves
                .iter()
                .flat_map(|(_, c)| c.iter().flat_map(|(x, y, se)| [(*x, y - se), (*x, y + se)]))
                .chain(evals.iter().flat_map(|(_, e)| e.iter().copied()));
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            if x0 > x1 {
                return Err(format!("no run has values of `{metric}`"));
            }
            let pad = ((y1 - y0) * 0.05).max(1e-6);
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .caption(
                    if spec.smooth > 1 {
                        format!("{metric} (moving average of {} steps)", spec.smooth)
                    } else {
                        metric.clone()
                    },
                    ("sans-serif", 16),
                )
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
                .map_err(|e| err(&e))?;
            let span = (y1 - y0).abs().max(f64::MIN_POSITIVE);
            chart
                .configure_mesh()
                .x_desc(if spec.wall {
                    "training seconds (step times summed)"
                } else {
                    "step (counted across stages)"
                })
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| tick(*y, span))
                .max_light_lines(0)
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (label, curve)) in curves.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                if curve.iter().any(|(_, _, se)| *se > 0.0) {
                    let band: Vec<(f64, f64)> = curve
                        .iter()
                        .map(|(x, y, se)| (*x, y + se))
                        .chain(curve.iter().rev().map(|(x, y, se)| (*x, y - se)))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(band, color.mix(0.18))))
                        .map_err(|e| err(&e))?;
                }
                chart
                    .draw_series(LineSeries::new(
                        curve.iter().map(|(x, y, _)| (*x, *y)),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            for (i, pts) in &evals {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// The held-out evaluations of `metric`: the k-th evaluation of every run, as the mean of
/// their positions (seeds share steps, not seconds) and values.
fn eval_points(runs: &[RunMetrics], metric: &str) -> Vec<(f64, f64)> {
    let mut at: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    for r in runs {
        for (k, (x, _, y)) in r.evals.iter().filter(|(_, name, _)| name == metric).enumerate() {
            if at.len() <= k {
                at.push((Vec::new(), Vec::new()));
            }
            at[k].0.push(*x);
            at[k].1.push(*y);
        }
    }
    at.into_iter().map(|(xs, ys)| (mean_se(&xs).0, mean_se(&ys).0)).collect()
}

/// A tick label with as many digits as the axis span needs: `0.25`, `1200`, `3.1e-5`.
fn tick(y: f64, span: f64) -> String {
    // A tick at zero may come out as −1e-17.
    if y.abs() < span * 1e-9 {
        return "0".into();
    }
    let magnitude = span.log10().floor();
    if magnitude < -3.0 || y.abs() >= 1e5 {
        return format!("{y:.1e}");
    }
    let digits = (1.0 - magnitude).clamp(0.0, 6.0) as usize;
    format!("{y:.digits$}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_show_the_digits_the_span_needs() {
        assert_eq!(super::tick(0.2, 1.0), "0.2");
        assert_eq!(super::tick(0.04, 0.08), "0.040");
        assert_eq!(super::tick(1200.0, 3000.0), "1200");
        assert_eq!(super::tick(3.1e-5, 6e-5), "3.1e-5");
        assert_eq!(super::tick(0.0, 6e-5), "0");
        assert_eq!(super::tick(-1e-17, 2.0), "0");
    }
}
