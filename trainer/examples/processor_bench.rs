//! Prints how long the Qwen2.5-VL image processor takes on a 2048×1365 RGB image (the size of
//! the largest STVQA/Visual Genome images after EasyR1's pre-resize), with the published pixel
//! limits and with a smaller RL budget.
//!
//! `cargo run --release -p trainer --example processor_bench` (take numbers on an idle machine).

use std::time::Instant;

use image::{DynamicImage, RgbImage};
use trainer::processor::ImageProcessor;

fn main() -> anyhow::Result<()> {
    tch::set_num_threads(1);
    let (w, h) = (2048u32, 1365u32);
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x % 251) as u8,
            (y % 241) as u8,
            ((x * 7 + y * 3) % 256) as u8,
        ])
    }));
    for (label, proc) in [
        ("published limits", ImageProcessor::default_qwen25vl()),
        (
            "max_pixels 1003520",
            ImageProcessor::default_qwen25vl().with_pixel_limits(3136, 1_003_520)?,
        ),
    ] {
        let (th, tw) = proc.target_size(h as usize, w as usize)?;
        let runs = 5;
        let start = Instant::now();
        let mut rows = 0;
        for _ in 0..runs {
            rows = proc
                .preprocess(std::slice::from_ref(&img))?
                .pixel_values
                .size()[0];
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
        println!("{w}x{h} -> {tw}x{th} ({label}): {rows} patch rows, {ms:.1} ms per image");
    }
    Ok(())
}
