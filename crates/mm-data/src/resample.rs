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

/// Pillow's `clip8`: drop the fixed-point fraction and clamp to a byte. Pillow accumulates in
/// a C `int` starting from a rounding half; so does this.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width`×`height` exactly as `PIL.Image.resize(..., BICUBIC)` does.
pub fn resize_bicubic_pil(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_window_pil(image, width, height, (0, 0, width, height))
}

/// The `(x, y, w, h)` window of `image` resized to `width`×`height` by Pillow's bicubic:
/// identical to resizing everything and cropping, but only the window's pixels are computed
/// (a centre crop of a 4:3 photo skips a quarter of the work).
pub fn resize_window_pil(
    image: &RgbImage,
    width: u32,
    height: u32,
    window: (u32, u32, u32, u32),
) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (x0, y0, win_w, win_h) = (
        window.0 as usize,
        window.1 as usize,
        window.2 as usize,
        window.3 as usize,
    );
    assert!(x0 + win_w <= width as usize && y0 + win_h <= height as usize);
    let src = image.as_raw();
    let round = 1i32 << (PRECISION_BITS - 1);

    // Rows the vertical pass will read, then the horizontal pass over just those rows:
    // [rows, win_w, 3].
    let vertical = (height as usize != in_h).then(|| Coefficients::new(in_h, height as usize));
    let rows = match &vertical {
        Some(v) => {
            let taps = &v.taps[y0..y0 + win_h];
            let first = taps.iter().map(|(start, _)| *start).min().unwrap_or(0);
            let last = taps
                .iter()
                .map(|(start, w)| start + w.len())
                .max()
                .unwrap_or(0);
            first..last
        }
        None => y0..y0 + win_h,
    };
    let stride = win_w * 3;
    let horizontal: Vec<u8> = if width as usize == in_w {
        rows.clone()
            .flat_map(|y| &src[(y * in_w + x0) * 3..(y * in_w + x0 + win_w) * 3])
            .copied()
            .collect()
    } else {
        let coeffs = Coefficients::new(in_w, width as usize);
        let taps = &coeffs.taps[x0..x0 + win_w];
        let mut out = vec![0u8; rows.len() * stride];
        for (row_out, y) in out.chunks_exact_mut(stride).zip(rows.clone()) {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (pixel, (start, weights)) in row_out.chunks_exact_mut(3).zip(taps) {
                let (mut r, mut g, mut b) = (round, round, round);
                for (p, &w) in row[start * 3..].chunks_exact(3).zip(weights) {
                    r += p[0] as i32 * w;
                    g += p[1] as i32 * w;
                    b += p[2] as i32 * w;
                }
                pixel.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
            }
        }
        out
    };

    // Vertical pass, row by row with a whole-row accumulator (vectorises).
    let pixels = match &vertical {
        None => horizontal,
        Some(coeffs) => {
            let mut out = vec![0u8; win_h * stride];
            let mut acc = vec![0i32; stride];
            for (row_out, (start, weights)) in out
                .chunks_exact_mut(stride)
                .zip(&coeffs.taps[y0..y0 + win_h])
            {
                acc.fill(round);
                for (k, &w) in weights.iter().enumerate() {
                    let row = &horizontal[(start + k - rows.start) * stride..][..stride];
                    for (a, &p) in acc.iter_mut().zip(row) {
                        *a += p as i32 * w;
                    }
                }
                for (o, &a) in row_out.iter_mut().zip(&acc) {
                    *o = clip8(a);
                }
            }
            out
        }
    };
    RgbImage::from_raw(win_w as u32, win_h as u32, pixels).expect("buffer sized w * h * 3")
}
