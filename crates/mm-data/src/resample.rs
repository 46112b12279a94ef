//! Pillow's bicubic resize, bit for bit.
//!
//! CLIP's reference preprocessing (OpenAI's, open_clip's eval, HF's `CLIPImageProcessorPil`)
//! resizes with PIL. Crates that resemble it (the `image` crate's Catmull-Rom keeps a float
//! intermediate; `fast_image_resize` runs the passes in the other order with 16-bit
//! coefficients) differ from it by up to ~6/255 on noisy images, so this is a port of
//! Pillow's `Resample.c` 8-bit path: separable convolution, horizontal pass first, coefficients
//! in 22-bit fixed point, each pass rounded and clamped to 8 bits.

use image::RgbImage;

/// Fixed-point precision of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (Keys, a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and its fixed-point weights.
struct Coefficients {
    taps: Vec<(usize, Vec<i32>)>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size -> out_size`.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = 2.0 * filter_scale;
        let taps = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C's (int) truncates toward zero.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let weights: Vec<f64> = (xmin..xmax)
                    .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                    .collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|w| {
                        let w = if total != 0.0 { w / total } else { *w };
                        let v = w * (1u32 << PRECISION_BITS) as f64;
                        (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Self { taps }
    }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width`×`height` exactly as `PIL.Image.resize(..., BICUBIC)` does.
pub fn resize_bicubic_pil(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    let src = image.as_raw();
    let round = 1i64 << (PRECISION_BITS - 1);

    // Horizontal pass: [in_h, out_w, 3].
    let horizontal = if out_w == in_w {
        src.clone()
    } else {
        let coeffs = Coefficients::new(in_w, out_w);
        let mut out = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, (xmin, weights)) in coeffs.taps.iter().enumerate() {
                let mut acc = [round; 3];
                for (i, &w) in weights.iter().enumerate() {
                    let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i64 * w as i64;
                    }
                }
                for c in 0..3 {
                    out[(y * out_w + x) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        out
    };

    // Vertical pass: [out_h, out_w, 3].
    let pixels = if out_h == in_h {
        horizontal
    } else {
        let coeffs = Coefficients::new(in_h, out_h);
        let stride = out_w * 3;
        let mut out = vec![0u8; out_h * stride];
        for (y, (ymin, weights)) in coeffs.taps.iter().enumerate() {
            let dst = &mut out[y * stride..(y + 1) * stride];
            for (i, value) in dst.iter_mut().enumerate() {
                let mut acc = round;
                for (k, &w) in weights.iter().enumerate() {
                    acc += horizontal[(ymin + k) * stride + i] as i64 * w as i64;
                }
                *value = clip8(acc);
            }
        }
        out
    };
    RgbImage::from_raw(width, height, pixels).expect("buffer sized width * height * 3")
}
