//! CLIP's image preprocessing: resize the shortest side (bicubic), centre-crop, scale to
//! [0, 1], normalise with CLIP's channel mean and std, lay out as CHW.

use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

use crate::DataError;

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

/// Resizes so the shorter side is `size` (Catmull-Rom, i.e. PIL's bicubic) and crops the
/// centre `size`×`size` square, as CLIP's eval transform does. Any colour type becomes RGB8.
pub fn resize_center_crop(image: &DynamicImage, size: u32) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    if width == size && height == size {
        return image.to_rgb8();
    }
    let short = width.min(height) as u64;
    let scale = |side: u32| ((side as u64 * size as u64) / short).max(size as u64) as u32;
    let (new_w, new_h) = (scale(width), scale(height));
    let resized = image.resize_exact(new_w, new_h, FilterType::CatmullRom);
    let (left, top) = ((new_w - size) / 2, (new_h - size) / 2);
    resized.crop_imm(left, top, size, size).to_rgb8()
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
