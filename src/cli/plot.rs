//! PNG plots of a run (plotters): loss and accuracy per epoch, ε per epoch, and the ε sweep
//! (test accuracy against ε, with the non-private accuracy as a reference line).
//!
//! Text needs a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core`
//! (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`) or the file named by `DPSGD_FONT`.
//! Without one, plotting fails with an `Error::Format` that says so and names the package.
//!
//! Part of the `cli` feature (plotters is a CLI-only dependency).

use dpsgd::train::EpochMetrics;
use dpsgd::{Error, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn font_ready() -> std::result::Result<(), String> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("DPSGD_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{} is not a usable TrueType font", p.display()));
            }
        }
        Err("no TrueType font found for plot labels: install fonts-dejavu-core (apt) or set DPSGD_FONT to a .ttf file".into())
    })
    .clone()
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: format!("plotting failed: {e}"),
    }
}

/// One line of a chart: a label and (x, y) points.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
}

/// Draws line series (with markers) to a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<()> {
    line_chart_with_bars(path, title, x_label, y_label, series, &[])
}

/// One point of an accuracy-against-ε sweep: the mean accuracy (in [0, 1]) over `runs` runs
/// and its standard deviation.
pub struct SweepPoint {
    /// ε.
    pub epsilon: f64,
    /// Mean accuracy.
    pub mean: f64,
    /// Standard deviation over the runs.
    pub std: f64,
    /// Number of runs.
    pub runs: usize,
}

/// An error bar: at `x`, from `lo` to `hi`, in `color`.
pub struct ErrorBar {
    /// Position.
    pub x: f64,
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Colour.
    pub color: RGBColor,
}

/// [`line_chart`] with vertical error bars.
pub fn line_chart_with_bars(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    bars: &[ErrorBar],
) -> Result<()> {
    font_ready().map_err(|e| err(path, e))?;
    let ends: Vec<(f64, f64)> = bars
        .iter()
        .flat_map(|b| [(b.x, b.lo), (b.x, b.hi)])
        .collect();
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .chain(ends.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Err(err(path, "no finite points to plot"));
    }
    let pad = |a: f64, b: f64| {
        if b - a < 1e-12 {
            0.5f64.max(a.abs() * 0.05)
        } else {
            (b - a) * 0.05
        }
    };
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(path, e))?;
    for s in series {
        let c = s.color;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(path, e))?;
    }
    let cap = 0.006 * (x1 - x0 + 2.0 * px);
    for b in bars {
        let c = b.color.stroke_width(2);
        for seg in [
            vec![(b.x, b.lo), (b.x, b.hi)],
            vec![(b.x - cap, b.lo), (b.x + cap, b.lo)],
            vec![(b.x - cap, b.hi), (b.x + cap, b.hi)],
        ] {
            chart
                .draw_series(std::iter::once(PathElement::new(seg, c)))
                .map_err(|e| err(path, e))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}

/// `loss.png`, `accuracy.png` and (for private runs) `epsilon.png` in `dir`. `loss.png` shows
/// the training loss only where the metrics have it (non-private runs); validation figures are
/// labelled "not covered by ε".
pub fn plot_run(dir: &Path, m: &[EpochMetrics]) -> Result<Vec<PathBuf>> {
    let xs = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        m.iter()
            .filter_map(|e| f(e).map(|y| (e.epoch as f64, y)))
            .collect()
    };
    let mut out = Vec::new();
    let split = m.first().map_or("test", |e| e.eval_split.as_str());
    let private_eval = m.iter().any(|e| e.eval_private_data);
    let split_label = if private_eval {
        format!("{split} (not covered by ε)")
    } else {
        split.to_string()
    };
    let p = dir.join("loss.png");
    // The training loss exists only in non-private runs (a private run never computes it).
    let train = xs(&|e| e.train_loss);
    let mut series = Vec::with_capacity(2);
    if !train.is_empty() {
        series.push(Series {
            label: "train",
            points: train,
            color: BLUE,
        });
    }
    series.push(Series {
        label: &split_label,
        points: xs(&|e| Some(e.eval_loss)),
        color: RED,
    });
    line_chart(&p, "Loss per epoch", "epoch", "cross-entropy", &series)?;
    out.push(p);
    let p = dir.join("accuracy.png");
    line_chart(
        &p,
        &format!(
            "{split} accuracy per epoch{}",
            if private_eval {
                " (not covered by ε)"
            } else {
                ""
            }
        ),
        "epoch",
        "accuracy (%)",
        &[Series {
            label: &split_label,
            points: xs(&|e| Some(100.0 * e.eval_accuracy)),
            color: BLUE,
        }],
    )?;
    out.push(p);
    if m.iter().any(|e| e.epsilon_rdp.is_some()) {
        let p = dir.join("epsilon.png");
        line_chart(
            &p,
            "Privacy spent (ε) per epoch",
            "epoch",
            "ε",
            &[
                Series {
                    label: "RDP",
                    points: xs(&|e| e.epsilon_rdp),
                    color: RED,
                },
                Series {
                    label: "PRV (upper bound)",
                    points: xs(&|e| e.epsilon_prv),
                    color: BLUE,
                },
            ],
        )?;
        out.push(p);
    }
    Ok(out)
}

/// The sweep plot: accuracy (%) against ε, with a flat line at the non-private accuracy.
/// `split` names the evaluation set (`"test"`, or `"validation"`: then labelled as held-out
/// training data, not covered by ε).
pub fn plot_sweep(
    path: &Path,
    points: &[SweepPoint],
    non_private: Option<f64>,
    split: &str,
) -> Result<()> {
    // The line joins the points in ε order, whatever order `--epsilons` listed them in.
    let mut line: Vec<(f64, f64)> = points.iter().map(|p| (p.epsilon, 100.0 * p.mean)).collect();
    line.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series = vec![Series {
        label: "DP-SGD",
        points: line,
        color: BLUE,
    }];
    // Error bars: ± one standard deviation over the repeats (none for a single run).
    let bars: Vec<ErrorBar> = points
        .iter()
        .filter(|p| p.runs > 1)
        .map(|p| ErrorBar {
            x: p.epsilon,
            lo: 100.0 * (p.mean - p.std),
            hi: 100.0 * (p.mean + p.std),
            color: BLUE,
        })
        .collect();
    if let Some(a) = non_private {
        let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(l, h), p| {
            (l.min(p.epsilon), h.max(p.epsilon))
        });
        series.push(Series {
            label: "non-private",
            points: vec![(lo, 100.0 * a), (hi, 100.0 * a)],
            color: RED,
        });
    }
    let (title, y) = if split == "test" {
        ("Test accuracy against ε".to_string(), "test accuracy (%)")
    } else {
        (
            format!("{split} accuracy against ε (not covered by ε)"),
            "accuracy (%)",
        )
    };
    let title = if points.iter().any(|p| p.runs > 1) {
        format!("{title} (mean ± std over {} seeds)", points[0].runs)
    } else {
        title
    };
    line_chart_with_bars(path, &title, "ε (δ = 1e-5)", y, &series, &bars)
}

/// A bar chart (a histogram): one bar per `(x, height)`, each `width` wide, centred on x.
pub fn bar_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    bars: &[(f64, f64)],
    width: f64,
) -> Result<()> {
    font_ready().map_err(|e| err(path, e))?;
    if bars.is_empty() || !(width.is_finite() && width > 0.0) {
        return Err(err(path, "no bars to plot"));
    }
    let x0 = bars.iter().map(|b| b.0).fold(f64::MAX, f64::min) - width;
    let x1 = bars.iter().map(|b| b.0).fold(f64::MIN, f64::max) + width;
    let y1 = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.08;
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(path, e))?;
    let c = RGBColor(31, 119, 180);
    chart
        .draw_series(bars.iter().map(|&(x, h)| {
            Rectangle::new([(x - 0.45 * width, 0.0), (x + 0.45 * width, h)], c.filled())
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))?;
    Ok(())
}
