//! CLIP's image preprocessing: resize the shortest side (bicubic), centre-crop, scale to
//! [0, 1], normalise with CLIP's channel mean and std, lay out as CHW.

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::DataError;
use crate::resample::resize_bicubic_pil;

/// Per-channel mean of OpenAI CLIP's training images (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of OpenAI CLIP's training images (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Reads and decodes an image file of any format the `image` crate knows.
pub fn load_image(path: &Path) -> Result<DynamicImage, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader.decode().map_err(|e| DataError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Resizes so the shorter side is `size` and crops the centre `size`×`size` square, as
/// CLIP's eval transform (HF `CLIPImageProcessor`) does. Any colour type becomes RGB8;
/// transparent pixels are composited onto white first, as HF's `convert_rgb` does.
///
/// The resize is Pillow's own bicubic algorithm ([`resize_bicubic_pil`]), so the result equals
/// PIL-based pipelines' pixel for pixel.
pub fn resize_center_crop(image: &DynamicImage, size: u32) -> RgbImage {
    let rgb = to_rgb(image);
    let (width, height) = rgb.dimensions();
    if width == size && height == size {
        return rgb;
    }
    // HF: the short side becomes `size`, the long side `int(size * long / short)`.
    let short = width.min(height) as u64;
    let scale = |side: u32| ((side as u64 * size as u64) / short).max(size as u64) as u32;
    let (new_w, new_h) = (scale(width), scale(height));
    let resized = resize_bicubic_pil(&rgb, new_w, new_h);
    let (left, top) = ((new_w - size) / 2, (new_h - size) / 2);
    image::imageops::crop_imm(&resized, left, top, size, size).to_image()
}

/// RGB8 view of any image; alpha is composited onto white (HF `convert_rgb`), not dropped.
fn to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        // PIL's alpha_composite over opaque white, in 8-bit.
        let over = |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

/// Writes `image` as CLIP-normalised CHW floats into `out` (length `3 * w * h`).
pub fn normalize_into(image: &RgbImage, out: &mut [f32]) {
    let plane = (image.width() * image.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output buffer must hold 3 channels");
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (pixel[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
}

/// CLIP's eval transform of one image into `out` (`3 * size * size` CHW floats).
pub fn preprocess_into(image: &DynamicImage, size: usize, out: &mut [f32]) {
    normalize_into(&resize_center_crop(image, size as u32), out);
}
