//! `mm-train predict`: a fusion classifier's class probabilities for (image, text) inputs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::activation::softmax;
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
    let Some(model) = crate::checkpoint::load_fusion(&ckpt.dir, ckpt.model, &device)? else {
        bail!(
            "{} holds no classifier (no {}; an objective = \"classify\" run writes one): for a CLIP model use `mm-train zero-shot`",
            ckpt.dir.display(),
            crate::checkpoint::FUSION_CONFIG_FILE
        );
    };
    let classes = model.fusion.config.class_names.clone();
    let size = ckpt.model_config.vision.image_size;
    let ctx = ckpt.model_config.text.context_length;
    let mut unreadable = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let text = &args.texts[if args.texts.len() == 1 { 0 } else { i }];
        let pixels = match mm_data::image_file_tensor(path, size, &device) {
            Ok(pixels) => pixels,
            Err(e) => {
                unreadable.push(anyhow::Error::from(e));
                continue;
            }
        };
        let ids = ckpt
            .tokenizer
            .encode_batch(std::slice::from_ref(text), ctx)?;
        let ids = mm_data::token_ids_tensor(&ids, ctx, &device);
        let probs = softmax(model.forward(pixels, ids), 1)
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading probabilities: {e:?}"))?;
        if probs.iter().any(|p| !p.is_finite()) {
            bail!(
                "{}: the classifier gives NaN or infinite scores (diverged weights?)",
                ckpt.dir.display()
            );
        }
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{}  {text:?}", path.display());
        for (class, p) in ranked.into_iter().take(args.top_k as usize) {
            let name = classes.get(class).map_or("?", String::as_str);
            println!("  {:6.2}%  {name}", 100.0 * p);
        }
    }
    match unreadable.len() {
        0 => Ok(()),
        1 => Err(unreadable.remove(0)),
        n => {
            for e in &unreadable {
                eprintln!("warning: {e:#}");
            }
            bail!("{n} of {} images could not be read", args.images.len())
        }
    }
}
