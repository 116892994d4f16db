//! The PNG chart of [`super::compare::Comparison`]: one group of horizontal bars per headline
//! row (benchmark or average), one bar per column (run or paper model) on a 0–100 % axis, with
//! the value written after each bar and a legend on top. Drawn with `image` and the public-domain
//! 8×8 bitmap font of `font8x8`, so no font file or plotting backend is needed.

use image::{Rgb, RgbImage};

use super::compare::{Column, Comparison};

/// Bar colours per column, in order (runs first, then the paper's models).
pub const COLOURS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// Text scale (glyph cells of 16 × 16 pixels).
const SCALE: u32 = 2;
/// Glyph cell size in pixels.
const CELL: i64 = 8 * SCALE as i64;
/// Left margin, where row labels go.
pub const LEFT: i64 = 26 * CELL;
/// Width of the 0–100 % axis.
pub const AXIS: i64 = 600;
/// Height of one bar.
pub const BAR: i64 = 14;
/// Space between groups.
const GAP: i64 = 14;

fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }
}

/// Text with its top-left corner at (`x`, `y`), glyph cells of `8 × scale` pixels; non-ASCII
/// shows as `?` (the overlay's font, without its one-pixel label margin).
fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: u32, c: Rgb<u8>) {
    crate::infer::overlay::draw_text(img, text, x - 1, y - 1, scale, c);
}

/// Top of the first bar group (below title and legend) for `columns` columns.
pub fn plot_top(columns: usize) -> i64 {
    CELL * 2 + columns as i64 * (CELL + 6) + CELL * 2
}

/// Draw the chart.
pub fn draw(cmp: &Comparison) -> RgbImage {
    let rows: Vec<_> = cmp.rows.iter().filter(|r| r.headline).collect();
    let ncol = cmp.columns.len().max(1) as i64;
    let group = ncol * BAR + GAP;
    let top = plot_top(cmp.columns.len());
    let width = LEFT + AXIS + 8 * CELL;
    let height = top + rows.len() as i64 * group + 2 * CELL;
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    draw_text(&mut img, "Accuracy (%)", 4, 4, SCALE, black);
    // Legend.
    for (i, c) in cmp.columns.iter().enumerate() {
        let y = CELL * 2 + i as i64 * (CELL + 6);
        fill(
            &mut img,
            4,
            y + 2,
            4 + CELL - 4,
            y + CELL - 2,
            COLOURS[i % COLOURS.len()],
        );
        let label = match c {
            Column::Run(r) => format!("run: {}", r.label),
            Column::Paper(p) => format!("paper: {}", p.name),
        };
        draw_text(&mut img, &label, 4 + CELL + 4, y, SCALE, black);
    }
    // Grid lines and ticks every 25 %.
    let bottom = top + rows.len() as i64 * group;
    for t in 0..=4 {
        let x = LEFT + AXIS * t / 4;
        fill(&mut img, x, top - 4, x + 1, bottom, [200, 200, 200]);
        let label = (t * 25).to_string();
        draw_text(&mut img, &label, x - CELL / 2, bottom + 4, SCALE, black);
    }
    for (g, row) in rows.iter().enumerate() {
        let y0 = top + g as i64 * group;
        let label: String = row.short.chars().take(25).collect();
        draw_text(
            &mut img,
            &label,
            4,
            y0 + (ncol * BAR - CELL) / 2,
            SCALE,
            black,
        );
        for (i, v) in row.values.iter().enumerate() {
            let y = y0 + i as i64 * BAR;
            match v {
                Some(v) => {
                    let len = (v.percent.clamp(0.0, 100.0) / 100.0 * AXIS as f64).round() as i64;
                    fill(
                        &mut img,
                        LEFT,
                        y + 1,
                        LEFT + len,
                        y + BAR - 1,
                        COLOURS[i % COLOURS.len()],
                    );
                    let text = format!("{:.1}", v.percent);
                    draw_text(&mut img, &text, LEFT + len + 4, y - 1, 1, black);
                }
                None => draw_text(&mut img, "n/a", LEFT + 4, y + 2, 1, Rgb([150, 150, 150])),
            }
        }
    }
    img
}
