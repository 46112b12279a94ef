//! CLIP's image preprocessing: resize the shortest side (bicubic), centre-crop, scale to
//! [0, 1], normalise with CLIP's channel mean and std, lay out as CHW.

use std::borrow::Cow;
use std::path::Path;

use image::{DynamicImage, RgbImage};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::DataError;
use crate::regular_file::read_capped;
use crate::resample::{resize_bicubic_pil, resize_window_pil};
use crate::source::{ImageInput, SampleError, SampleErrorKind};

/// Per-channel mean of OpenAI CLIP's training images (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of OpenAI CLIP's training images (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// PIL's `Image.MAX_IMAGE_PIXELS`: larger images are refused as decompression bombs.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// Image files larger than this are not read (a real photo is a few MB; a 4-byte-per-pixel
/// image at PIL's pixel cap would be 358 MB).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 << 20;

/// Caps on one image, checked before it is read (file size) and before its pixels are
/// allocated (dimensions from the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_pixels: u64,
    pub max_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// Decodes an image from a source, refusing what would not be a usable training image: a
/// missing file, anything but a regular file, a file over `limits.max_bytes`, an empty file,
/// an unknown format, corrupt or truncated data, and declared dimensions above
/// `limits.max_pixels`, which are checked from the header before any pixel buffer is
/// allocated.
pub fn decode_input<'a>(
    input: &'a ImageInput,
    location: &str,
    limits: ImageLimits,
) -> Result<Cow<'a, DynamicImage>, SampleError> {
    let bad = |message: String| SampleError::new(SampleErrorKind::BadImage, location, message);
    let bytes: Cow<[u8]> = match input {
        ImageInput::Decoded(image) => return Ok(Cow::Borrowed(image)),
        ImageInput::Encoded(bytes) => bytes.into(),
        ImageInput::File(path) => match read_capped(path, limits.max_bytes) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::NotFound => SampleErrorKind::MissingImage,
                    std::io::ErrorKind::FileTooLarge => SampleErrorKind::ImageTooLarge,
                    _ => SampleErrorKind::BadImage,
                };
                let message = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    std::io::ErrorKind::FileTooLarge => format!("{e} (data.max_image_bytes)"),
                    _ => e.to_string(),
                };
                return Err(SampleError::new(
                    kind,
                    location,
                    format!("{}: {message}", path.display()),
                ));
            }
        },
    };
    if bytes.is_empty() {
        return Err(bad("empty image file".into()));
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))
    };
    let probe = reader()?;
    if probe.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        // The JPEG decoder fills a cut-off scan with grey and reports success; PIL refuses it.
        return Err(bad("truncated JPEG (no end-of-image marker)".into()));
    }
    let (width, height) = probe
        .into_dimensions()
        .map_err(|e| bad(format!("unreadable header: {e}")))?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(SampleError::new(
            SampleErrorKind::ImageTooLarge,
            location,
            format!(
                "{width}x{height} exceeds data.max_image_pixels ({})",
                limits.max_pixels
            ),
        ));
    }
    let mut reader = reader()?;
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(width);
    image_limits.max_image_height = Some(height);
    reader.limits(image_limits);
    reader
        .decode()
        .map(Cow::Owned)
        .map_err(|e| bad(e.to_string()))
}

/// Whether a JPEG's entropy-coded data is followed by its end-of-image marker (`FF D9`).
/// Inside the scan data `FF` is always stuffed (`FF 00`) or a restart marker, so the first
/// `FF D9` after the start of scan (`FF DA`) is the end; a file cut short has none.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(scan) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Reads and decodes an image file a user named, with the same checks and default caps as
/// training data ([`decode_input`]).
pub fn load_image(path: &Path) -> Result<DynamicImage, DataError> {
    let input = ImageInput::File(path.to_path_buf());
    let location = path.display().to_string();
    match decode_input(&input, &location, ImageLimits::default()) {
        Ok(image) => Ok(image.into_owned()),
        Err(e) => Err(DataError::Image {
            path: path.to_path_buf(),
            message: format!("{}: {}", e.kind, e.message),
        }),
    }
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
        return rgb.into_owned();
    }
    // HF: the short side becomes `size`, the long side `int(size * long / short)`.
    let short = width.min(height) as u64;
    let scale = |side: u32| ((side as u64 * size as u64) / short).max(size as u64) as u32;
    let (new_w, new_h) = (scale(width), scale(height));
    let (left, top) = ((new_w - size) / 2, (new_h - size) / 2);
    resize_window_pil(&rgb, new_w, new_h, (left, top, size, size))
}

/// RGB8 view of any image; alpha is composited onto white (HF `convert_rgb`), not dropped.
fn to_rgb(image: &DynamicImage) -> Cow<'_, RgbImage> {
    if let DynamicImage::ImageRgb8(rgb) = image {
        return Cow::Borrowed(rgb);
    }
    if !image.color().has_alpha() {
        return Cow::Owned(image.to_rgb8());
    }
    let rgba = image.to_rgba8();
    Cow::Owned(RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        // PIL's alpha_composite over opaque white, in 8-bit.
        let over = |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    }))
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

/// How a training image becomes a `size`×`size` square.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainTransform {
    /// open_clip's training default: torchvision `RandomResizedCrop(size, scale=(0.9, 1.0))`
    /// (aspect ratios 3/4 to 4/3), bicubic.
    #[default]
    RandomResizedCrop,
    /// The eval transform (resize the short side, centre-crop): no augmentation.
    CenterCrop,
}

/// Scale range of open_clip's training crop (fraction of the image area).
const CROP_SCALE: (f64, f64) = (0.9, 1.0);
/// Aspect-ratio range of the crop (torchvision's default).
const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

impl TrainTransform {
    /// Applies the transform, drawing the crop from `rng`, and normalises into `out`.
    pub fn apply_into(
        self,
        image: &DynamicImage,
        size: usize,
        rng: &mut impl Rng,
        out: &mut [f32],
    ) {
        match self {
            Self::CenterCrop => preprocess_into(image, size, out),
            Self::RandomResizedCrop => {
                let rgb = to_rgb(image);
                let (x, y, w, h) = random_resized_crop_box(rgb.width(), rgb.height(), rng);
                let crop = image::imageops::crop_imm(&*rgb, x, y, w, h).to_image();
                normalize_into(&resize_bicubic_pil(&crop, size as u32, size as u32), out);
            }
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a crop of random area and aspect
/// ratio that fits, else the centre crop at the nearest allowed ratio. Returns (x, y, w, h).
fn random_resized_crop_box(width: u32, height: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(CROP_SCALE.0..=CROP_SCALE.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return (x, y, w, h);
        }
    }
    let ratio = width as f64 / height as f64;
    let (w, h) = if ratio < CROP_RATIO.0 {
        (
            width,
            ((width as f64 / CROP_RATIO.0).round() as u32).min(height),
        )
    } else if ratio > CROP_RATIO.1 {
        (
            ((height as f64 * CROP_RATIO.1).round() as u32).min(width),
            height,
        )
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}
