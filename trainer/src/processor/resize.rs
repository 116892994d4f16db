//! Pillow's BICUBIC resampling on 8-bit RGB, reproduced bit for bit.
//!
//! `transformers`' PIL image processor (the one SpatialThinker was trained with) resizes with
//! `PIL.Image.resize(..., BICUBIC)`. Pillow resamples separably: one convolution pass per axis
//! whose size changes, each pass producing an 8-bit image. Its filter weights are computed in
//! f64, normalised to sum 1, then turned into 22-bit fixed point; the accumulator starts at half
//! an output unit and is shifted back and clamped to 0..=255. Any other bicubic (torch, `image`,
//! `fast_image_resize`) differs in a few percent of the bytes, which moves log-probs measurably
//! (docs/numerical-traps.md, "The processor"), so this module reproduces the Pillow 13.0.0 behaviour exactly:
//!
//! * kernel: cubic convolution with a = −0.5 and support 2, stretched by `max(in/out, 1)`;
//! * per output index `i`: `center = (i + 0.5) · in/out`, window
//!   `[trunc(center − support + 0.5), trunc(center + support + 0.5))` clamped to the input, weight
//!   of input `x` = `K((x − center + 0.5) / filterscale)`;
//! * pass order: the vertical pass runs first when the height shrinks by more than twice as many
//!   pixels as the width does (`in_h − out_h > 0 && in_h − out_h > 2·(in_w − out_w)`), otherwise
//!   the horizontal pass runs first and only on the source rows the vertical pass reads.

/// Output bits of the 8-bit fixed-point filter weights (Pillow: 32 − 8 − 2).
const PRECISION_BITS: u32 = 22;
/// Support radius of the cubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;
/// The cubic convolution parameter `a` used by Pillow.
const BICUBIC_A: f64 = -0.5;

/// Cubic convolution kernel, evaluated in the same operation order as Pillow.
fn bicubic_kernel(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of one resampling pass along one axis.
#[derive(Debug, Clone)]
struct Coefficients {
    /// Taps per output index (row stride of `weights`).
    ksize: usize,
    /// First input index read by each output index.
    start: Vec<usize>,
    /// Number of input indices read by each output index.
    len: Vec<usize>,
    /// `out_size × ksize` weights in 22-bit fixed point.
    weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the whole axis.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut taps = vec![0f64; ksize];
        for (i, row) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = (i as f64 + 0.5) * scale;
            // `as i64` truncates toward zero like C's `(int)` cast.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut total = 0.0f64;
            for (x, tap) in taps.iter_mut().take(n).enumerate() {
                let w = bicubic_kernel(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                *tap = w;
                total += w;
            }
            for (tap, out) in taps.iter().take(n).zip(row.iter_mut()) {
                let w = if total != 0.0 { tap / total } else { *tap };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                // Round half away from zero, then truncate like `(int)`.
                *out = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            start.push(xmin);
            len.push(n);
        }
        Self {
            ksize,
            start,
            len,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let row = &self.weights[i * self.ksize..];
        (self.start[i], &row[..self.len[i]])
    }
}

/// Shifts a fixed-point accumulator back to 8 bits and clamps it (Pillow's `clip8`).
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Initial accumulator value: one half of an output unit, so the final shift rounds.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `row0..row0 + rows` of a packed `width × C` image.
fn resample_horizontal<const C: usize>(
    src: &[u8],
    src_width: usize,
    row0: usize,
    rows: usize,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let out_width = coeffs.start.len();
    let mut out = vec![0u8; out_width * rows * C];
    for (y, out_row) in out.chunks_exact_mut(out_width * C).enumerate() {
        let in_row = &src[(row0 + y) * src_width * C..(row0 + y + 1) * src_width * C];
        for (xx, px) in out_row.chunks_exact_mut(C).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let mut acc = [ROUNDING; C];
            for (j, &w) in k.iter().enumerate() {
                let p = &in_row[(xmin + j) * C..(xmin + j + 1) * C];
                for c in 0..C {
                    acc[c] += i32::from(p[c]) * w;
                }
            }
            for c in 0..C {
                px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass of a packed `width × C` image; `row_offset` is subtracted from every window
/// start (the horizontal pass may have kept only a band of the source rows).
fn resample_vertical<const C: usize>(
    src: &[u8],
    width: usize,
    row_offset: usize,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let out_height = coeffs.start.len();
    let stride = width * C;
    let mut out = vec![0u8; stride * out_height];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        acc.fill(ROUNDING);
        for (j, &w) in k.iter().enumerate() {
            let r = ymin - row_offset + j;
            let in_row = &src[r * stride..(r + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resizes a packed 8-bit image with `C` interleaved channels (row-major, `width × height`)
/// exactly as Pillow 13.0.0's `Image.resize((out_width, out_height), BICUBIC)` does.
///
/// Sizes must be non-zero and `src.len() == width · height · C`; the callers in this module
/// guarantee both.
pub fn resize_bicubic<const C: usize>(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * C);
    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    let shrink_h = height as i64 - out_height as i64;
    let shrink_w = width as i64 - out_width as i64;
    let horizontal_first = !(shrink_h > 0 && shrink_h > shrink_w * 2);

    match (need_horizontal, need_vertical) {
        (false, false) => src.to_vec(),
        (true, false) => {
            let h = Coefficients::new(width, out_width);
            resample_horizontal::<C>(src, width, 0, height, &h)
        }
        (false, true) => {
            let v = Coefficients::new(height, out_height);
            resample_vertical::<C>(src, width, 0, &v)
        }
        (true, true) => {
            let h = Coefficients::new(width, out_width);
            let v = Coefficients::new(height, out_height);
            if horizontal_first {
                let first = v.start[0];
                let last = v.start[out_height - 1] + v.len[out_height - 1];
                let band = resample_horizontal::<C>(src, width, first, last - first, &h);
                resample_vertical::<C>(&band, out_width, first, &v)
            } else {
                let tall = resample_vertical::<C>(src, width, 0, &v);
                resample_horizontal::<C>(&tall, width, 0, out_height, &h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_interpolating() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(-2.0), 0.0);
        // a = -0.5 at x = 1.5: (((1.5-5)*1.5+8)*1.5-4)*(-0.5) = -0.0625
        assert_eq!(bicubic_kernel(1.5), -0.0625);
    }

    #[test]
    fn identity_size_copies() {
        let src: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        assert_eq!(resize_bicubic::<3>(&src, 4, 3, 4, 3), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 37 * 23 * 3];
        for (w, h) in [(5, 9), (80, 11), (37, 100), (1, 1)] {
            let out = resize_bicubic::<3>(&src, 37, 23, w, h);
            assert!(out.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(10, 3), (3, 10), (1365, 1372), (7, 1)] {
            let c = Coefficients::new(i, o);
            for k in 0..o {
                let s: i32 = c.taps(k).1.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= 4,
                    "{i}->{o} idx {k}: {s}"
                );
            }
        }
    }
}
