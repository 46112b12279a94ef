//! Image sets through the eval transform a chunk at a time: what encoding them (eval suites)
//! and describing them (captions) both read.

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};
use mm_data::{ImageInput, ImageLimits, SampleError, decode_input, pixels_tensor, preprocess_into};

/// What [`map_image_chunks`] gives: one output per chunk of readable images.
pub struct ImageChunks<T> {
    pub outputs: Vec<T>,
    /// The inputs that were read (indices, in order).
    pub kept: Vec<usize>,
    pub skipped: Vec<SampleError>,
}

impl<T> ImageChunks<T> {
    /// `values[i]` for every kept input `i`: what belongs to the images that were read.
    pub fn select<V: Clone>(&self, values: &[V]) -> Vec<V> {
        self.kept.iter().map(|&i| values[i].clone()).collect()
    }
}

/// `f` on every `chunk` readable images of `images` through the eval transform (`[n, 3, H,
/// W]`, with their indices). An unreadable image is skipped and reported (with its path), not
/// fatal; a set with no readable image is an error.
pub fn map_image_chunks<T>(
    images: &[ImageInput],
    image_size: usize,
    device: &Device,
    chunk: usize,
    mut f: impl FnMut(Tensor<4>, &[usize]) -> Result<T>,
) -> Result<ImageChunks<T>> {
    let plane = 3 * image_size * image_size;
    let (mut outputs, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (first, inputs) in images.chunks(chunk.max(1)).enumerate() {
        let mut pixels = Vec::with_capacity(inputs.len() * plane);
        let from = kept.len();
        for (offset, input) in inputs.iter().enumerate() {
            let index = first * chunk.max(1) + offset;
            let location = match input {
                ImageInput::File(path) => path.display().to_string(),
                _ => format!("image {index}"),
            };
            match decode_input(input, &location, ImageLimits::default()) {
                Ok(image) => {
                    let start = pixels.len();
                    pixels.resize(start + plane, 0.0);
                    preprocess_into(&image, image_size, &mut pixels[start..]);
                    kept.push(index);
                }
                Err(e) => skipped.push(e),
            }
        }
        if !pixels.is_empty() {
            outputs.push(f(pixels_tensor(pixels, image_size, device), &kept[from..])?);
        }
    }
    if outputs.is_empty() {
        match skipped.first() {
            Some(first) => bail!(
                "none of the {} images could be read; the first: {first}",
                images.len()
            ),
            None => bail!("no images to evaluate"),
        }
    }
    Ok(ImageChunks {
        outputs,
        kept,
        skipped,
    })
}
