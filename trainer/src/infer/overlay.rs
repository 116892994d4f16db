//! Drawing a scene graph over its image: one coloured box per object labelled with its id, and an
//! arrow from subject to object for every relationship, labelled with the predicate. Boxes are in
//! the coordinate frame of the image size stated in the prompt and are scaled to the image drawn
//! on. Text uses the public-domain 8×8 bitmap font of `font8x8`, so no font file is needed.

use image::{Rgb, RgbImage};

use data::scene::SceneGraph;

/// Box and label colours, cycled over objects (high contrast on photos).
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];
/// Colour of relationship arrows and predicate labels.
pub const ARROW_COLOUR: [u8; 3] = [255, 255, 255];
/// Side of a font cell in font pixels.
const GLYPH: u32 = 8;

/// Line width and text scale for an image: thicker on large images.
fn stroke_for(img: &RgbImage) -> (u32, u32) {
    let side = img.width().min(img.height());
    let stroke = (side / 250).clamp(1, 6);
    let text_scale = (side / 300).clamp(1, 4);
    (stroke, text_scale)
}

/// A copy of `image` with `graph` drawn on it; `stated_size` is the (width, height) the boxes
/// refer to (the size written in the prompt).
pub fn draw_scene_graph(image: &RgbImage, graph: &SceneGraph, stated_size: (u32, u32)) -> RgbImage {
    let mut out = image.clone();
    let sx = out.width() as f64 / stated_size.0.max(1) as f64;
    let sy = out.height() as f64 / stated_size.1.max(1) as f64;
    let (stroke, scale) = stroke_for(&out);
    let scaled = |b: [f64; 4]| {
        [
            (b[0].min(b[2]) * sx),
            (b[1].min(b[3]) * sy),
            (b[0].max(b[2]) * sx),
            (b[1].max(b[3]) * sy),
        ]
    };
    for (i, obj) in graph.objects.iter().enumerate() {
        let colour = Rgb(PALETTE[i % PALETTE.len()]);
        let [x1, y1, x2, y2] = scaled(obj.bbox_f64());
        draw_rect(&mut out, x1, y1, x2, y2, stroke, colour);
        let label_y = if y1 >= (GLYPH * scale + 2) as f64 {
            y1 - (GLYPH * scale + 2) as f64
        } else {
            y1 + stroke as f64
        };
        draw_label(&mut out, &obj.id, x1, label_y, scale, colour);
    }
    for rel in &graph.relationships {
        let find = |id: &str| graph.objects.iter().find(|o| o.id == id);
        let (Some(s), Some(o)) = (find(&rel.subject), find(&rel.object)) else {
            continue;
        };
        let centre = |b: [f64; 4]| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        let (ax, ay) = centre(scaled(s.bbox_f64()));
        let (bx, by) = centre(scaled(o.bbox_f64()));
        draw_arrow(&mut out, (ax, ay), (bx, by), stroke, Rgb(ARROW_COLOUR));
        let (mx, my) = ((ax + bx) / 2.0, (ay + by) / 2.0);
        draw_label(&mut out, &rel.predicate, mx, my, scale, Rgb(ARROW_COLOUR));
    }
    out
}

/// Fill the axis-aligned rectangle `[x0, x1) × [y0, y1)`, clipped to the image.
fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for y in y0.max(0)..y1.min(img.height() as i64) {
        for x in x0.max(0)..x1.min(img.width() as i64) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Outline a rectangle with lines `stroke` pixels wide, drawn inside the box.
fn draw_rect(img: &mut RgbImage, x1: f64, y1: f64, x2: f64, y2: f64, stroke: u32, c: Rgb<u8>) {
    let (x1, y1, x2, y2) = (x1 as i64, y1 as i64, x2.ceil() as i64, y2.ceil() as i64);
    let s = stroke as i64;
    fill(img, x1, y1, x2, y1 + s, c);
    fill(img, x1, y2 - s, x2, y2, c);
    fill(img, x1, y1, x1 + s, y2, c);
    fill(img, x2 - s, y1, x2, y2, c);
}

/// A line of width `stroke` (square brush stepped along the segment).
fn draw_line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), stroke: u32, c: Rgb<u8>) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as i64;
    let half = stroke as i64 / 2;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (a.0 + (b.0 - a.0) * t).round() as i64;
        let y = (a.1 + (b.1 - a.1) * t).round() as i64;
        fill(
            img,
            x - half,
            y - half,
            x - half + stroke as i64,
            y - half + stroke as i64,
            c,
        );
    }
}

/// A line from `a` to `b` with a two-stroke arrow head at `b`.
fn draw_arrow(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), stroke: u32, c: Rgb<u8>) {
    draw_line(img, a, b, stroke, c);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    if len < 1.0 {
        return;
    }
    let head = (6.0 * stroke as f64).max(8.0).min(len / 2.0);
    let (ux, uy) = (dx / len, dy / len);
    for sign in [-1.0, 1.0] {
        // Rotate the reversed direction by ±30°.
        let (cos, sin) = (0.866_f64, 0.5_f64 * sign);
        let (rx, ry) = (-ux * cos + uy * sin, -ux * sin - uy * cos);
        draw_line(img, b, (b.0 + rx * head, b.1 + ry * head), stroke, c);
    }
}

/// Text on a dark backing box at (`x`, `y`), glyphs scaled by `scale`; non-ASCII shows as `?`.
fn draw_label(img: &mut RgbImage, text: &str, x: f64, y: f64, scale: u32, c: Rgb<u8>) {
    let (xi, yi, s) = (x as i64, y as i64, scale as i64);
    let cell = GLYPH as i64 * s;
    let n = text.chars().count() as i64;
    fill(
        img,
        xi,
        yi,
        xi + n * cell + 2,
        yi + cell + 2,
        Rgb([0, 0, 0]),
    );
    draw_text(img, text, xi, yi, scale, c);
}

/// Text without a backing box, its top-left corner at (`x`, `y`) (one pixel of margin, as a
/// label has), glyph cells of `8 × scale` pixels; non-ASCII shows as `?`. Clipped to the image.
pub fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: u32, c: Rgb<u8>) {
    let s = scale as i64;
    let cell = GLYPH as i64 * s;
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = x + 1 + i as i64 * cell + col * s;
                    let py = y + 1 + row as i64 * s;
                    fill(img, px, py, px + s, py + s, c);
                }
            }
        }
    }
}

/// Whether the pixel at (`x`, `y`) has colour `c` (tests).
#[cfg(test)]
fn is(img: &RgbImage, x: u32, y: u32, c: [u8; 3]) -> bool {
    img.get_pixel(x, y).0 == c
}

#[cfg(test)]
mod tests {
    use data::scene::{Relationship, SceneObject};

    use super::*;

    /// A float pixel box in the data crate's JSON-number form.
    fn float_box(b: [f64; 4]) -> [serde_json::Number; 4] {
        b.map(|x| serde_json::Number::from_f64(x).expect("finite"))
    }

    fn graph() -> SceneGraph {
        SceneGraph {
            objects: vec![
                SceneObject {
                    id: "a.1".into(),
                    bbox: float_box([20.0, 40.0, 100.0, 120.0]),
                },
                SceneObject {
                    id: "b.1".into(),
                    bbox: float_box([120.0, 40.0, 180.0, 100.0]),
                },
            ],
            relationships: vec![Relationship {
                subject: "a.1".into(),
                predicate: "left of".into(),
                object: "b.1".into(),
            }],
        }
    }

    #[test]
    fn boxes_scale_from_the_stated_size() {
        // Boxes are stated for 200x200 and drawn on a 400x300 image: x doubles, y × 1.5.
        let img = RgbImage::from_pixel(400, 300, Rgb([128, 128, 128]));
        let out = draw_scene_graph(&img, &graph(), (200, 200));
        // Left edge of a.1 at x = 40, spanning y 60..180; stroke 1 on a 300-px side.
        assert!(is(&out, 40, 150, PALETTE[0]));
        assert!(is(&out, 199, 150, PALETTE[0]), "right edge at x = 200 - 1");
        assert!(is(&out, 100, 179, PALETTE[0]), "bottom edge at y = 180 - 1");
        assert!(
            is(&out, 100, 150, [128, 128, 128]),
            "inside stays untouched"
        );
        // Second object in the second colour; the arrow passes the gap between the boxes.
        assert!(is(&out, 240, 100, PALETTE[1]));
        assert!(is(&out, 205, 113, ARROW_COLOUR));
        // The label sits above the box on a black backing.
        assert!(is(&out, 40, 50, [0, 0, 0]));
    }

    #[test]
    fn unknown_relation_ids_and_huge_boxes_do_not_panic() {
        let img = RgbImage::from_pixel(50, 40, Rgb([0, 0, 0]));
        let mut g = graph();
        g.objects[0].bbox = float_box([-1e9, -5.0, 1e9, 1e9]);
        g.relationships[0].object = "missing.9".into();
        let out = draw_scene_graph(&img, &g, (0, 0));
        assert_eq!(out.dimensions(), (50, 40));
    }
}
