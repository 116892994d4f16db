//! Line charts as PNG, drawn with the image crate and the overlay's bitmap font (no plotting
//! library, no font file): the run report's curves, for the HTML page and for terminals.

use image::{Rgb, RgbImage};

use crate::infer::overlay::{draw_text, PALETTE};

/// Chart size in pixels.
pub const WIDTH: u32 = 720;
/// See [`WIDTH`].
pub const HEIGHT: u32 = 340;
const LEFT: i64 = 64;
const RIGHT: i64 = 16;
const TOP: i64 = 34;
const BOTTOM: i64 = 40;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// One named series of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in x order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// Draw a square marker at every point (series with few points, such as validations).
    pub markers: bool,
}

impl Series {
    /// A line series.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            markers: false,
        }
    }

    /// A series drawn with markers as well.
    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` ticks over `span`.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let unit = raw / magnitude;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Tick labels without trailing noise (`0.25`, `1e-3`, `120`).
fn tick_label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() < 1e-3 || v.abs() >= 1e5 {
        return format!("{v:.0e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Fills `[x0, x1) × [y0, y1)`, clipped.
fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for y in y0.max(0)..y1.min(img.height() as i64) {
        for x in x0.max(0)..x1.min(img.width() as i64) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// A 2-pixel line from `a` to `b`.
fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: Rgb<u8>) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as i64;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (a.0 + (b.0 - a.0) * t).round() as i64;
        let y = (a.1 + (b.1 - a.1) * t).round() as i64;
        fill(img, x, y, x + 2, y + 2, c);
    }
}

/// A chart of `series` under `title`, x axis labelled `x_label`. The y range covers every
/// point (and 0 when `from_zero`); an empty chart says "no data".
pub fn line_chart(title: &str, x_label: &str, series: &[Series], from_zero: bool) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    draw_text(&mut img, title, LEFT, 8, 2, INK);
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (plot_w, plot_h) = (WIDTH as i64 - LEFT - RIGHT, HEIGHT as i64 - TOP - BOTTOM);
    if finite.is_empty() {
        draw_text(
            &mut img,
            "no data",
            LEFT + plot_w / 2 - 28,
            TOP + plot_h / 2,
            1,
            INK,
        );
        return img;
    }
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| {
        finite.iter().map(pick).fold(init, f)
    };
    let (mut x0, mut x1) = (
        fold(f64::min, f64::INFINITY, |p| p.0),
        fold(f64::max, f64::NEG_INFINITY, |p| p.0),
    );
    let (mut y0, mut y1) = (
        fold(f64::min, f64::INFINITY, |p| p.1),
        fold(f64::max, f64::NEG_INFINITY, |p| p.1),
    );
    if from_zero {
        y0 = y0.min(0.0);
        y1 = y1.max(0.0);
    }
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-12 {
        let pad = (y0.abs() * 0.1).max(1e-3);
        y0 -= pad;
        y1 += pad;
    }
    let y_step = tick_step(y1 - y0, 5.0);
    y0 = (y0 / y_step).floor() * y_step;
    y1 = (y1 / y_step).ceil() * y_step;
    let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * plot_w as f64;
    let py = |y: f64| (TOP + plot_h) as f64 - (y - y0) / (y1 - y0) * plot_h as f64;
    // grid and y ticks
    let mut y = y0;
    while y <= y1 + y_step * 1e-6 {
        let yy = py(y).round() as i64;
        fill(&mut img, LEFT, yy, LEFT + plot_w, yy + 1, GRID);
        let label = tick_label(y, y_step);
        let w = label.len() as i64 * 8;
        draw_text(&mut img, &label, LEFT - 6 - w, yy - 4, 1, INK);
        y += y_step;
    }
    // x ticks
    let x_step = tick_step(x1 - x0, 6.0).max(if x1 - x0 >= 1.0 { 1.0 } else { 0.0 });
    let mut x = (x0 / x_step).ceil() * x_step;
    while x <= x1 + x_step * 1e-6 {
        let xx = px(x).round() as i64;
        fill(&mut img, xx, TOP + plot_h, xx + 1, TOP + plot_h + 4, INK);
        let label = tick_label(x, x_step);
        draw_text(
            &mut img,
            &label,
            xx - label.len() as i64 * 4,
            TOP + plot_h + 6,
            1,
            INK,
        );
        x += x_step;
    }
    let label_w = x_label.len() as i64 * 8;
    draw_text(
        &mut img,
        x_label,
        LEFT + plot_w / 2 - label_w / 2,
        HEIGHT as i64 - 16,
        1,
        INK,
    );
    // axes
    fill(&mut img, LEFT, TOP, LEFT + 1, TOP + plot_h + 1, INK);
    fill(
        &mut img,
        LEFT,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h + 1,
        INK,
    );
    // series
    for (k, s) in series.iter().enumerate() {
        let c = Rgb(PALETTE[k % PALETTE.len()]);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        for w in pts.windows(2) {
            line(&mut img, w[0], w[1], c);
        }
        if s.markers || pts.len() == 1 {
            for &(x, y) in &pts {
                let (x, y) = (x.round() as i64, y.round() as i64);
                fill(&mut img, x - 3, y - 3, x + 4, y + 4, c);
            }
        }
        // legend, top right, one row per series
        let lx = WIDTH as i64 - RIGHT - 150;
        let ly = TOP + 4 + 12 * k as i64;
        fill(&mut img, lx, ly + 2, lx + 14, ly + 6, c);
        draw_text(&mut img, &s.name, lx + 18, ly - 1, 1, INK);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(1.0, 5.0), 0.2);
        assert_eq!(tick_step(40.0, 6.0), 10.0);
        assert_eq!(tick_step(0.03, 5.0), 0.01);
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(20.0, 10.0), "20");
    }

    #[test]
    fn a_series_is_drawn_in_its_palette_colour() {
        // y = x over 0..10: the point (5, 5) lies in the middle of the plot area.
        let s = Series::line("a", (0..=10).map(|i| (i as f64, i as f64)).collect());
        let img = line_chart("t", "step", &[s], true);
        let plot_w = (WIDTH as i64 - LEFT - RIGHT) as f64;
        let plot_h = (HEIGHT as i64 - TOP - BOTTOM) as f64;
        let (x, y) = (LEFT as f64 + plot_w / 2.0, TOP as f64 + plot_h / 2.0);
        let near = (-2..=2).any(|dx| {
            (-2..=2).any(|dy| {
                img.get_pixel((x as i64 + dx) as u32, (y as i64 + dy) as u32)
                    .0
                    == PALETTE[0]
            })
        });
        assert!(near, "the line passes the plot's centre");
        let empty = line_chart("t", "step", &[], true);
        assert_eq!(empty.dimensions(), (WIDTH, HEIGHT));
    }
}
