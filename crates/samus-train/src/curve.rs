//! The training curve of a run: the loss of every step (with its moving average)
//! and the validation Dice of every evaluation, drawn from `metrics.csv` into a PNG
//! (`curve.png` in the run folder) with plotters.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::TrainError;

/// Width and height of the curve image in pixels.
pub const CURVE_SIZE: (u32, u32) = (960, 420);
/// Steps averaged by the smoothed loss line.
const SMOOTHING: usize = 20;
/// The ASCII subset of DejaVu Sans (licence in `assets/DejaVu-LICENSE.txt`), so that
/// labels render without system fonts (the CLI's overlays use it too).
pub const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");
/// The family name plotters knows [`FONT`] by, once [`register_font`] ran.
pub const FONT_NAME: &str = "sans-serif";

/// The rows of a run's `metrics.csv`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// `(step, loss)` for every step.
    pub losses: Vec<(usize, f64)>,
    /// `(step, validation Dice)` for every evaluation (of the weight average, when
    /// the run keeps one).
    pub dice: Vec<(usize, f64)>,
    /// `(step, validation Dice of the weights themselves)` for every evaluation of
    /// a run that keeps a weight average; empty otherwise.
    pub dice_raw: Vec<(usize, f64)>,
}

impl Metrics {
    /// Parses `metrics.csv` text (`step,epoch,elapsed_s,loss,lr,val_dice,val_dice_raw`;
    /// files of older runs without `elapsed_s` or `val_dice_raw` are read too).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| format!("no `{name}` column in the header"))
        };
        let (step_col, loss_col, dice_col) =
            (column("step")?, column("loss")?, column("val_dice")?);
        let raw_col = column("val_dice_raw").ok();
        let mut metrics = Self::default();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            let field = |c: usize| fields.get(c).map(|f| f.trim()).unwrap_or("");
            let line_no = i + 2;
            let step: usize = field(step_col)
                .parse()
                .map_err(|_| format!("line {line_no}: bad step `{}`", field(step_col)))?;
            let number = |c: usize| -> Result<Option<f64>, String> {
                match field(c) {
                    "" => Ok(None),
                    v => v
                        .parse()
                        .map(Some)
                        .map_err(|_| format!("line {line_no}: bad number `{v}`")),
                }
            };
            if let Some(loss) = number(loss_col)? {
                metrics.losses.push((step, loss));
            }
            if let Some(dice) = number(dice_col)? {
                metrics.dice.push((step, dice));
            }
            if let Some(raw) = raw_col.map(number).transpose()?.flatten() {
                metrics.dice_raw.push((step, raw));
            }
        }
        Ok(metrics)
    }

    /// Reads and parses a `metrics.csv` file.
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| TrainError::Curve(format!("{}: {e}", path.display())))
    }
}

/// Mean of each window of `n` consecutive losses, placed at the window's last step.
fn moving_average(points: &[(usize, f64)], n: usize) -> Vec<(usize, f64)> {
    points
        .windows(n.max(1))
        .map(|w| {
            (
                w[w.len() - 1].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect()
}

/// Registers [`FONT`] with plotters as [`FONT_NAME`] (once per process), for any
/// chart drawn without system fonts.
pub fn register_font() -> Result<(), TrainError> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .map_err(|_| TrainError::Curve("the embedded font does not load".into()));
    });
    result
}

fn plot_error<E: std::fmt::Debug>(e: E) -> TrainError {
    TrainError::Curve(format!("{e:?}"))
}

/// Draws the loss (left) and the validation Dice (right) against the step into an
/// RGB buffer of [`CURVE_SIZE`].
pub fn render_curve(metrics: &Metrics) -> Result<Vec<u8>, TrainError> {
    register_font()?;
    let (w, h) = CURVE_SIZE;
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, CURVE_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(w / 2);
        let last_step = metrics
            .losses
            .iter()
            .chain(&metrics.dice)
            .map(|p| p.0)
            .max()
            .unwrap_or(1)
            .max(1);
        let max_loss = metrics
            .losses
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0f64, f64::max)
            .max(1e-3);
        let mut loss_chart = ChartBuilder::on(&left)
            .caption("training loss", (FONT_NAME, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0..last_step, 0f64..max_loss * 1.05)
            .map_err(plot_error)?;
        loss_chart
            .configure_mesh()
            .x_desc("step")
            .label_style((FONT_NAME, 12))
            .draw()
            .map_err(plot_error)?;
        loss_chart
            .draw_series(LineSeries::new(
                metrics.losses.iter().copied(),
                RGBColor(160, 190, 230),
            ))
            .map_err(plot_error)?;
        loss_chart
            .draw_series(LineSeries::new(
                moving_average(&metrics.losses, SMOOTHING),
                RGBColor(20, 70, 160).stroke_width(2),
            ))
            .map_err(plot_error)?;
        let mut dice_chart = ChartBuilder::on(&right)
            .caption("validation Dice", (FONT_NAME, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0..last_step, 0f64..1f64)
            .map_err(plot_error)?;
        dice_chart
            .configure_mesh()
            .x_desc("step")
            .label_style((FONT_NAME, 12))
            .draw()
            .map_err(plot_error)?;
        // The weights themselves, under the average's line, where the run keeps one.
        dice_chart
            .draw_series(LineSeries::new(
                metrics.dice_raw.iter().copied(),
                RGBColor(230, 170, 150).stroke_width(2),
            ))
            .map_err(plot_error)?;
        dice_chart
            .draw_series(LineSeries::new(
                metrics.dice.iter().copied(),
                RGBColor(190, 60, 40).stroke_width(2),
            ))
            .map_err(plot_error)?;
        dice_chart
            .draw_series(
                metrics
                    .dice
                    .iter()
                    .map(|&p| Circle::new(p, 3, RGBColor(190, 60, 40).filled())),
            )
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(pixels)
}

/// Draws `metrics` into the PNG at `path`, written atomically
/// ([`samus_core::atomic_write`]: a temporary file in the same folder, then a rename).
pub fn write_curve_png(metrics: &Metrics, path: &Path) -> Result<(), TrainError> {
    let pixels = render_curve(metrics)?;
    let (w, h) = CURVE_SIZE;
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| TrainError::Curve("curve buffer has the wrong size".into()))?;
    let mut encoded = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut encoded),
            image::ImageFormat::Png,
        )
        .map_err(|e| TrainError::Curve(format!("{}: {e}", path.display())))?;
    samus_core::atomic_write::write_atomic(path, &encoded)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "step,epoch,elapsed_s,loss,lr,val_dice\n\
        1,0,4.0,0.9,0.0005,\n2,0,8.0,0.7,0.0005,\n2,0,10.0,,,0.25\n3,1,14.0,0.5,0.0005,\n3,1,16.0,,,0.5\n";

    #[test]
    fn parses_steps_losses_and_evaluations() {
        let m = Metrics::parse(CSV).unwrap();
        assert_eq!(m.losses, vec![(1, 0.9), (2, 0.7), (3, 0.5)]);
        assert_eq!(m.dice, vec![(2, 0.25), (3, 0.5)]);
        assert!(m.dice_raw.is_empty());
        let averaged = "step,epoch,elapsed_s,loss,lr,val_dice,val_dice_raw\n\
            1,0,4.0,0.9,0.0005,\n1,0,6.0,,,0.3,0.2\n";
        let m = Metrics::parse(averaged).unwrap();
        assert_eq!((m.dice, m.dice_raw), (vec![(1, 0.3)], vec![(1, 0.2)]));
        let old = "step,epoch,loss,lr,val_dice\n1,0,0.8,0.1,\n";
        assert_eq!(Metrics::parse(old).unwrap().losses, vec![(1, 0.8)]);
    }

    #[test]
    fn bad_rows_are_named() {
        let err =
            Metrics::parse("step,epoch,elapsed_s,loss,lr,val_dice\n1,0,1,abc,0.1,\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("abc"), "{err}");
        assert!(Metrics::parse("a,b\n").unwrap_err().contains("step"));
    }

    #[test]
    fn moving_average_smooths_windows() {
        let pts = [(1, 1.0), (2, 3.0), (3, 5.0)];
        assert_eq!(moving_average(&pts, 2), vec![(2, 2.0), (3, 4.0)]);
    }

    #[test]
    fn curve_png_is_written_and_has_ink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        write_curve_png(&Metrics::parse(CSV).unwrap(), &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), CURVE_SIZE);
        // The Dice line's colour and dark label text are both drawn.
        assert!(img.pixels().any(|p| p.0 == [190, 60, 40]));
        assert!(
            img.pixels()
                .filter(|p| p.0[0] < 80 && p.0[1] < 80 && p.0[2] < 80)
                .count()
                > 200
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["curve.png"], "no temporary file is left behind");
    }
}
