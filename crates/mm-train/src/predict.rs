//! `mm-train predict`: a fusion classifier's class probabilities for (image, text) inputs.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use clap::Args;

use crate::checkpoint;
use crate::device::DeviceArg;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint of an `objective = "classify"` run, or its run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text: one for every image, or one per image (repeat, in the images' order).
    #[arg(long = "text", required = true)]
    pub texts: Vec<String>,
    /// Classes printed per input.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Compute in fp32, or bf16 / fp16 (bf16 GEMMs with f32 sums on Flex; a half-precision
    /// copy of the classifier otherwise).
    #[arg(long, value_enum, default_value_t = crate::precision::Precision::Fp32)]
    pub precision: crate::precision::Precision,
    /// Images (any format the `image` crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.texts.len() != 1 && args.texts.len() != args.images.len() {
        bail!(
            "{} texts for {} images: give one --text for all of them, or one per image",
            args.texts.len(),
            args.images.len()
        );
    }
    let device = args.device.device()?;
    let ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let Some(mut model) = crate::checkpoint::load_fusion(&ckpt.dir, ckpt.model, &device)? else {
        bail!(
            "{} holds no classifier (no {}; an objective = \"classify\" run writes one): for a CLIP model use `mm-train zero-shot`",
            ckpt.dir.display(),
            crate::checkpoint::FUSION_CONFIG_FILE
        );
    };
    let _precision = args.precision.enter_inference(&mut model, &device);
    let classes = &model.fusion.config.class_names;
    let ctx = ckpt.model_config.text.context_length;
    print_top_classes(
        &args.images,
        (ckpt.model_config.vision.image_size, &device),
        classes,
        args.top_k as usize,
        &format!("{}: the classifier", ckpt.dir.display()),
        |i, pixels| {
            let text = &args.texts[if args.texts.len() == 1 { 0 } else { i }];
            let ids = ckpt
                .tokenizer
                .encode_batch(std::slice::from_ref(text), ctx)?;
            let ids = mm_data::token_ids_tensor(&ids, ctx, &device);
            Ok(softmax(model.forward(pixels, ids), 1))
        },
        |i, path| {
            let text = &args.texts[if args.texts.len() == 1 { 0 } else { i }];
            format!("{}  {text:?}", path.display())
        },
    )
}

/// Scores each image file with `probabilities(index, pixels)` and prints its `top_k` classes,
/// most likely first, under `header(index, path)`. An unreadable image is reported and skipped
/// (the others are still scored); scores that are not finite are an error naming `model` and
/// the image.
pub(crate) fn print_top_classes(
    images: &[PathBuf],
    (image_size, device): (usize, &Device),
    classes: &[String],
    top_k: usize,
    model: &str,
    mut probabilities: impl FnMut(usize, Tensor<4>) -> Result<Tensor<2>>,
    header: impl Fn(usize, &Path) -> String,
) -> Result<()> {
    let mut unreadable = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let pixels = match mm_data::image_file_tensor(path, image_size, device) {
            Ok(pixels) => pixels,
            Err(e) => {
                unreadable.push(anyhow::Error::from(e));
                continue;
            }
        };
        let probs = probabilities(i, pixels)?
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading probabilities: {e:?}"))?;
        if probs.iter().any(|p| !p.is_finite()) {
            bail!(
                "{model} gives NaN or infinite scores for {} (diverged weights?)",
                path.display()
            );
        }
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{}", header(i, path));
        for (class, p) in ranked.into_iter().take(top_k) {
            let name = classes.get(class).map_or("?", String::as_str);
            println!("  {:6.2}%  {name}", 100.0 * p);
        }
    }
    unreadable_images(unreadable, images.len())
}

/// The end of a command that skipped the images it could not read: fine if none, that image's
/// error if one, else each as a warning and a count of `total`.
pub(crate) fn unreadable_images(mut unreadable: Vec<anyhow::Error>, total: usize) -> Result<()> {
    match unreadable.len() {
        0 => Ok(()),
        1 => Err(unreadable.remove(0)),
        n => {
            for e in &unreadable {
                eprintln!("warning: {e:#}");
            }
            bail!("{n} of {total} images could not be read")
        }
    }
}
