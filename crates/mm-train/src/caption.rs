//! `mm-train caption`: a CoCa checkpoint describes images, or continues a text prompt about
//! each (`--prompt "question: what colour is the star? answer:"`, VQA by prompting).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::Tensor;
use clap::Args;

use crate::captioner::{GenerationArgs, describe, images_per_call, prompt_ids};
use crate::checkpoint;
use crate::device::DeviceArg;

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// A CoCa checkpoint (an `objective = "coca"` run's, its run directory, or an open_clip
    /// CoCa directory).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue for every image, e.g. "question: what colour is the star? answer:"
    /// (default: a caption from the start token).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A question to answer about every image: the prompt `question: Q answer:`, as models
    /// fine-tuned with `data.text_format = "question_answer"` learnt it.
    #[arg(long, conflicts_with = "prompt")]
    pub question: Option<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Compute in fp32, or bf16 / fp16 (bf16 GEMMs with f32 sums on Flex; a half-precision
    /// copy of the towers and decoder otherwise).
    #[arg(long, value_enum, default_value_t = crate::precision::Precision::Fp32)]
    pub precision: crate::precision::Precision,
    /// Images (any format the `image` crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(args: CaptionArgs) -> Result<()> {
    let device = args.device.device()?;
    let mut ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let _precision = ckpt.enter_inference(args.precision, &device);
    let (image_size, context) = (
        ckpt.model_config.vision.image_size,
        ckpt.model_config.text.context_length,
    );
    let tokenizer = ckpt.tokenizer.clone();
    let model = ckpt.coca()?;
    let text = match (&args.prompt, &args.question) {
        (_, Some(q)) if q.trim().is_empty() => bail!("--question is empty"),
        (_, Some(q)) => Some(mm_data::TextFormat::question_prompt(q.trim())),
        (prompt, None) => prompt.clone(),
    };
    let prompt = prompt_ids(&tokenizer, text.as_deref(), context)?;
    let generation = args
        .generation
        .generation(tokenizer.eot_id(), prompt.len(), context)?;
    // A chunk of images read and described at a time: memory holds one chunk, however many
    // images are named.
    let mut unreadable = Vec::new();
    for paths in args.images.chunks(images_per_call(&generation)) {
        let mut readable = Vec::new();
        for path in paths {
            match mm_data::image_file_tensor(path, image_size, &device) {
                Ok(pixels) => readable.push((path, pixels)),
                Err(e) => unreadable.push(anyhow::Error::from(e)),
            }
        }
        if readable.is_empty() {
            continue;
        }
        let pixels = Tensor::cat(readable.iter().map(|(_, p)| p.clone()).collect(), 0);
        let prompts = vec![prompt.clone(); readable.len()];
        let texts = describe(&model, &tokenizer, pixels, &prompts, (&generation, context))?;
        for ((path, _), text) in readable.iter().zip(texts) {
            println!("{}: {text}", path.display());
        }
    }
    crate::predict::unreadable_images(unreadable, args.images.len())
}
