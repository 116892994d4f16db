//! Image side of the Qwen2.5-VL processor: RGB conversion, `smart_resize`, Pillow-exact bicubic
//! resize, rescale + normalise, and patchify into `pixel_values [N, C·T·P·P]`.
//!
//! Reference: transformers 5.23 `Qwen2VLImageProcessorPil` with Pillow 13.0.0 (the slow/PIL
//! processor the SpatialThinker authors trained with); docs/numerical-traps.md, "The processor".

use std::path::Path;

use image::{DynamicImage, RgbImage};
use tch::Tensor;

use super::config::PreprocessorConfig;
use super::resize::resize_bicubic;
use super::ProcessorError;

/// Largest aspect ratio `smart_resize` accepts.
pub const MAX_ASPECT_RATIO: f64 = 200.0;
/// Number of colour channels of every processed image.
pub const CHANNELS: usize = 3;

/// Pillow's `alpha_composite` of one 8-bit channel `src` with alpha `alpha` onto an opaque
/// white background (`AlphaComposite.c`, 7 extra bits of precision, rounded divisions by 255).
fn composite_on_white(src: u8, alpha: u8) -> u8 {
    const BITS: u32 = 7;
    const WHITE: u32 = 255;
    if alpha == 0 {
        return WHITE as u8;
    }
    let a = u32::from(alpha);
    let blend = WHITE * (255 - a);
    let out_a255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / out_a255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let tmp = u32::from(src) * coef1 + WHITE * coef2 + (0x80 << BITS);
    ((((tmp >> 8) + tmp) >> 8) >> BITS) as u8
}

/// Converts any decoded image to 8-bit RGB the way transformers 5.23 `convert_to_rgb` does:
/// images with an alpha channel (RGBA, LA, and palette/grey/RGB images with a `tRNS` entry,
/// which the `image` crate decodes with alpha) are alpha-composited onto opaque white; grey is
/// replicated into three channels; palettes arrive already expanded by the decoder.
///
/// 16-bit images keep their high byte (what Pillow's PNG decoder does for 16-bit RGB); float
/// images go through the `image` crate's conversion. Neither is covered by the Pillow parity
/// fixtures.
pub fn convert_to_rgb(img: &DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        DynamicImage::ImageLuma8(l) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb([l.get_pixel(x, y).0[0]; 3]))
        }
        DynamicImage::ImageLumaA8(la) => RgbImage::from_fn(w, h, |x, y| {
            let [v, a] = la.get_pixel(x, y).0;
            image::Rgb([composite_on_white(v, a); 3])
        }),
        DynamicImage::ImageRgba8(rgba) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            image::Rgb([
                composite_on_white(r, a),
                composite_on_white(g, a),
                composite_on_white(b, a),
            ])
        }),
        DynamicImage::ImageRgb16(rgb) => RgbImage::from_fn(w, h, |x, y| {
            image::Rgb(rgb.get_pixel(x, y).0.map(|v| (v >> 8) as u8))
        }),
        DynamicImage::ImageRgba16(rgba) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0.map(|v| (v >> 8) as u8);
            image::Rgb([
                composite_on_white(r, a),
                composite_on_white(g, a),
                composite_on_white(b, a),
            ])
        }),
        other if other.color().has_alpha() => {
            convert_to_rgb(&DynamicImage::ImageRgba8(other.to_rgba8()))
        }
        other => other.to_rgb8(),
    }
}

/// Target `(height, width)` of transformers 5.23 `smart_resize`: both sides multiples of
/// `factor`, area within `[min_pixels, max_pixels]`, aspect ratio kept as far as possible.
///
/// Python's `round` (ties to even) is reproduced; sides under `factor` are scaled up rather than
/// rejected (current transformers); an aspect ratio above 200 is an error.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), ProcessorError> {
    if height == 0 || width == 0 {
        return Err(ProcessorError::EmptyImage { height, width });
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > MAX_ASPECT_RATIO {
        return Err(ProcessorError::AspectRatio {
            height,
            width,
            ratio,
        });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let area = (height as u64 * width as u64) as f64;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (area / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / area).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Resizes an RGB image to `width × height` exactly like Pillow 13.0.0's BICUBIC
/// (see [`super::resize`]); identical sizes return a copy.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let data = resize_bicubic::<CHANNELS>(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        width as usize,
        height as usize,
    );
    RgbImage::from_raw(width, height, data).expect("resize_bicubic returns width·height·3 bytes")
}

/// The pre-resize EasyR1 applies to training images before the HF processor
/// (`ImageProcessMixin.process_image`; docs/recipe.md, "Training prompt"): if the area exceeds
/// `max_pixels` both sides are scaled by `sqrt(max/area)`, then if it is below `min_pixels`
/// by `sqrt(min/area)`, each side `int()`-truncated, with `PIL.Image.resize`'s default filter
/// (BICUBIC for RGB and L images); the result is converted to RGB.
///
/// Exact for RGB and greyscale sources (every JPEG). EasyR1 resizes palette images with
/// NEAREST, alpha images premultiplied, and then drops alpha instead of compositing on white;
/// this function instead converts such images to RGB first (transformers' way) and resizes
/// that, so for them it is close but not identical. Truncation to 0 is clamped to 1 px.
pub fn easyr1_pre_resize(img: &DynamicImage, min_pixels: u64, max_pixels: u64) -> RgbImage {
    let mut rgb = convert_to_rgb(img);
    let rescale = |rgb: &RgbImage, target: u64| {
        let (w, h) = (rgb.width(), rgb.height());
        let factor = (target as f64 / (f64::from(w) * f64::from(h))).sqrt();
        let nw = ((f64::from(w) * factor) as u32).max(1);
        let nh = ((f64::from(h) * factor) as u32).max(1);
        resize_rgb(rgb, nw, nh)
    };
    if u64::from(rgb.width()) * u64::from(rgb.height()) > max_pixels {
        rgb = rescale(&rgb, max_pixels);
    }
    if u64::from(rgb.width()) * u64::from(rgb.height()) < min_pixels {
        rgb = rescale(&rgb, min_pixels);
    }
    rgb
}

/// Processed images of one batch, in the layout the vision tower consumes.
#[derive(Debug)]
pub struct PixelBatch {
    /// `[Σ grid_t·grid_h·grid_w, C·temporal_patch_size·patch_size²]` f32 on the CPU: every
    /// image's patch rows, concatenated in input order.
    pub pixel_values: Tensor,
    /// `[grid_t, grid_h, grid_w]` per image (in patches, before merging).
    pub image_grid_thw: Vec<[i64; 3]>,
}

/// The Qwen2-VL/Qwen2.5-VL image processor (`Qwen2VLImageProcessorPil` semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Settings from `preprocessor_config.json`.
    pub config: PreprocessorConfig,
    /// Effective minimum pixel count after overrides.
    pub min_pixels: u64,
    /// Effective maximum pixel count after overrides.
    pub max_pixels: u64,
}

impl ImageProcessor {
    /// Builds a processor from a parsed config (validated here).
    pub fn new(config: PreprocessorConfig) -> Result<Self, ProcessorError> {
        config.validate("preprocessor config")?;
        let (min_pixels, max_pixels) = config
            .pixel_limits()
            .expect("validate checked the pixel limits");
        Ok(Self {
            config,
            min_pixels,
            max_pixels,
        })
    }

    /// Reads `preprocessor_config.json` (a file, or a checkpoint folder containing it).
    pub fn from_preprocessor_config(path: &Path) -> Result<Self, ProcessorError> {
        let file = if path.is_dir() {
            path.join("preprocessor_config.json")
        } else {
            path.to_path_buf()
        };
        Self::new(PreprocessorConfig::from_file(&file)?)
    }

    /// The processor of the published Qwen2.5-VL-3B/7B checkpoints.
    pub fn default_qwen25vl() -> Self {
        Self::new(PreprocessorConfig::qwen25vl()).expect("built-in config is valid")
    }

    /// Overrides the pixel limits (e.g. a smaller `max_pixels` to bound RL token counts).
    pub fn with_pixel_limits(
        mut self,
        min_pixels: u64,
        max_pixels: u64,
    ) -> Result<Self, ProcessorError> {
        if min_pixels == 0 || max_pixels < min_pixels {
            return Err(ProcessorError::Config {
                path: "pixel limit override".into(),
                message: format!("min {min_pixels} / max {max_pixels} are not 0 < min <= max"),
            });
        }
        self.min_pixels = min_pixels;
        self.max_pixels = max_pixels;
        Ok(self)
    }

    /// Side length multiple of every resized image (`patch_size · merge_size`, 28).
    pub fn factor(&self) -> usize {
        self.config.patch_size * self.config.merge_size
    }

    /// Values per patch row: `3 · temporal_patch_size · patch_size²` (1176).
    pub fn patch_dim(&self) -> usize {
        CHANNELS * self.config.temporal_patch_size * self.config.patch_size * self.config.patch_size
    }

    /// `(height, width)` an image of the given size is resized to.
    pub fn target_size(
        &self,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), ProcessorError> {
        if !self.config.do_resize {
            return Ok((height, width));
        }
        smart_resize(
            height,
            width,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )
    }

    /// Patch grid `[1, h/patch, w/patch]` of an image of the given size.
    pub fn grid_thw(&self, height: usize, width: usize) -> Result<[i64; 3], ProcessorError> {
        let (h, w) = self.target_size(height, width)?;
        let p = self.config.patch_size;
        Ok([1, (h / p) as i64, (w / p) as i64])
    }

    /// Number of `<|image_pad|>` tokens an image of the given size expands to.
    pub fn num_image_tokens(&self, height: usize, width: usize) -> Result<usize, ProcessorError> {
        let [t, h, w] = self.grid_thw(height, width)?;
        Ok((t * h * w) as usize / (self.config.merge_size * self.config.merge_size))
    }

    /// Per-channel lookup table from a byte to its rescaled, normalised f32 value, computed in
    /// transformers' order: `f32(f64(v) · rescale_factor)`, then `(x − mean) / std` in f32.
    fn value_table(&self) -> [[f32; 256]; CHANNELS] {
        let c = &self.config;
        let mut lut = [[0f32; 256]; CHANNELS];
        for (ch, table) in lut.iter_mut().enumerate() {
            let mean = c.image_mean[ch] as f32;
            let std = c.image_std[ch] as f32;
            for (v, out) in table.iter_mut().enumerate() {
                let x = if c.do_rescale {
                    (v as f64 * c.rescale_factor) as f32
                } else {
                    v as f32
                };
                *out = if c.do_normalize { (x - mean) / std } else { x };
            }
        }
        lut
    }

    /// Converts, resizes and patchifies one image; returns its rows (appended to `out`) and grid.
    pub fn process_into(
        &self,
        img: &DynamicImage,
        out: &mut Vec<f32>,
    ) -> Result<[i64; 3], ProcessorError> {
        let rgb = if self.config.do_convert_rgb {
            convert_to_rgb(img)
        } else {
            img.to_rgb8()
        };
        let (h, w) = self.target_size(rgb.height() as usize, rgb.width() as usize)?;
        let rgb = resize_rgb(&rgb, w as u32, h as u32);
        self.patchify(&rgb, &self.value_table(), out)
    }

    /// Patchify in the row order of `Qwen2VLImageProcessorPil.patchify`: raster over
    /// `merge × merge` blocks, the patches of a block in raster order; inside a row the values
    /// are ordered `(channel, temporal, y, x)`, the frame repeated `temporal_patch_size` times.
    fn patchify(
        &self,
        rgb: &RgbImage,
        lut: &[[f32; 256]; CHANNELS],
        out: &mut Vec<f32>,
    ) -> Result<[i64; 3], ProcessorError> {
        let (p, m, t) = (
            self.config.patch_size,
            self.config.merge_size,
            self.config.temporal_patch_size,
        );
        let (height, width) = (rgb.height() as usize, rgb.width() as usize);
        if height % (p * m) != 0 || width % (p * m) != 0 {
            return Err(ProcessorError::NotPatchable {
                height,
                width,
                factor: p * m,
            });
        }
        let (gh, gw) = (height / p, width / p);
        let pix = rgb.as_raw();
        out.reserve(gh * gw * self.patch_dim());
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let y0 = (bh * m + mh) * p;
                        let x0 = (bw * m + mw) * p;
                        for (c, table) in lut.iter().enumerate() {
                            for _ in 0..t {
                                for y in y0..y0 + p {
                                    let row = &pix[(y * width + x0) * CHANNELS..];
                                    out.extend(
                                        (0..p).map(|x| table[row[x * CHANNELS + c] as usize]),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok([1, gh as i64, gw as i64])
    }

    /// Processes a batch of images as plain rows: `(values, grids)` with `values.len() ==
    /// Σ rows · patch_dim`.
    pub fn preprocess_raw(
        &self,
        images: &[DynamicImage],
    ) -> Result<(Vec<f32>, Vec<[i64; 3]>), ProcessorError> {
        let mut values = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            let grid = self
                .process_into(img, &mut values)
                .map_err(|e| ProcessorError::Image {
                    index: i,
                    source: Box::new(e),
                })?;
            grids.push(grid);
        }
        Ok((values, grids))
    }

    /// Processes a batch of images into `pixel_values [Σ N_i, 1176]` (f32, CPU) and the grids.
    pub fn preprocess(&self, images: &[DynamicImage]) -> Result<PixelBatch, ProcessorError> {
        let (values, grids) = self.preprocess_raw(images)?;
        let rows = (values.len() / self.patch_dim()) as i64;
        let pixel_values =
            Tensor::f_from_slice(&values)?.f_view([rows, self.patch_dim() as i64])?;
        Ok(PixelBatch {
            pixel_values,
            image_grid_thw: grids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_spec_examples() {
        let (min, max) = (3136, 12_845_056);
        assert_eq!(smart_resize(448, 448, 28, min, max).unwrap(), (448, 448));
        assert_eq!(smart_resize(1000, 700, 28, min, max).unwrap(), (1008, 700));
        // Sides under 28 are scaled up (transformers 5.23), not rejected.
        assert_eq!(smart_resize(20, 90, 28, min, max).unwrap(), (28, 140));
        // 42 / 28 = 1.5 rounds to even (2), 70 / 28 = 2.5 rounds to even (2).
        assert_eq!(smart_resize(42, 70, 28, min, max).unwrap(), (56, 56));
        assert!(matches!(
            smart_resize(10, 2010, 28, min, max),
            Err(ProcessorError::AspectRatio { .. })
        ));
    }

    #[test]
    fn smart_resize_respects_max_pixels() {
        // 2048 x 1365 with max 1003520: beta = sqrt(2795520 / 1003520), floors to 1204 x 812.
        let (h, w) = smart_resize(1365, 2048, 28, 3136, 1_003_520).unwrap();
        assert_eq!((h, w), (812, 1204));
        assert!(h * w <= 1_003_520);
    }

    #[test]
    fn composite_matches_pillow_endpoints() {
        assert_eq!(composite_on_white(0, 0), 255);
        assert_eq!(composite_on_white(17, 255), 17);
        // Half-transparent black on white: 255 · 127/255 ≈ 127.
        assert_eq!(composite_on_white(0, 128), 127);
    }
}
