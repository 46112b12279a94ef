//! `mm-train caption`: a CoCa checkpoint describes images, or continues a text prompt about
//! each (`--prompt "question: what colour is the star? answer:"`, VQA by prompting).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use clap::{Args, ValueEnum};
use mm_data::ClipTokenizer;
use mm_encoders::CocaModel;
use mm_encoders::generate::{CachedCaptioner, Decoding, Generation, generate};

use crate::checkpoint;
use crate::device::DeviceArg;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    Greedy,
    Beam,
    Sample,
}

/// Generation options shared by `caption` and the caption eval suite.
#[derive(Args, Debug, Clone)]
pub struct GenerationArgs {
    #[arg(long, value_enum, default_value_t = Strategy::Beam)]
    pub strategy: Strategy,
    /// Beam width (`--strategy beam`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub beams: u64,
    /// Beam search scores a finished text by log p / length^this (above 0: longer texts).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// Sampling temperature (`--strategy sample`).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding this share of the probability (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// New tokens at most (the end token counted; default: what the context leaves).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// The end token is barred before this many new tokens.
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    /// Penalty on tokens already in the text (1: none).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
}

impl GenerationArgs {
    /// The generation these options ask for, after a prompt of `prompt_len` ids in a model
    /// that reads `context` positions; the error names the option.
    pub fn generation(&self, end_id: u32, prompt_len: usize, context: usize) -> Result<Generation> {
        let room = context.saturating_sub(prompt_len);
        let max_new_tokens = self.max_tokens.unwrap_or(room);
        if max_new_tokens > room {
            bail!(
                "--max-tokens {max_new_tokens}: the model reads {context} positions and the prompt takes {prompt_len}, leaving {room}"
            );
        }
        let decoding = match self.strategy {
            Strategy::Greedy => Decoding::Greedy,
            Strategy::Beam => Decoding::Beam {
                width: self.beams as usize,
                length_penalty: self.length_penalty,
            },
            Strategy::Sample => Decoding::Sample {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        };
        let generation = Generation {
            decoding,
            max_new_tokens,
            min_new_tokens: self.min_tokens,
            repetition_penalty: self.repetition_penalty,
            end_id,
        };
        generation.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(generation)
    }
}

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
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Images (any format the `image` crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Images captioned per generation call.
const CHUNK: usize = 16;

pub fn run(args: CaptionArgs) -> Result<()> {
    let device = args.device.device()?;
    let ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let (image_size, context) = (
        ckpt.model_config.vision.image_size,
        ckpt.model_config.text.context_length,
    );
    let tokenizer = ckpt.tokenizer.clone();
    let model = ckpt.coca()?;
    let prompt = prompt_ids(&tokenizer, args.prompt.as_deref(), context)?;
    let generation = args
        .generation
        .generation(tokenizer.eot_id(), prompt.len(), context)?;
    let mut unreadable = Vec::new();
    let mut readable = Vec::new();
    for path in &args.images {
        match mm_data::image_file_tensor(path, image_size, &device) {
            Ok(pixels) => readable.push((path, pixels)),
            Err(e) => unreadable.push(anyhow::Error::from(e)),
        }
    }
    for chunk in readable.chunks(CHUNK) {
        let pixels = Tensor::cat(chunk.iter().map(|(_, p)| p.clone()).collect(), 0);
        let texts = describe(&model, &tokenizer, pixels, &prompt, &generation)?;
        for ((path, _), text) in chunk.iter().zip(texts) {
            println!("{}: {text}", path.display());
        }
    }
    crate::predict::unreadable_images(unreadable, args.images.len())
}

/// The ids generation starts from: the start token, then the prompt's tokens (no end token).
pub fn prompt_ids(
    tokenizer: &ClipTokenizer,
    prompt: Option<&str>,
    context: usize,
) -> Result<Vec<u32>> {
    match prompt {
        None => Ok(vec![tokenizer.sot_id()]),
        Some(text) if text.trim().is_empty() => {
            bail!("--prompt is empty: leave it out to caption from the start token")
        }
        Some(text) => tokenizer
            .encode_prompt(text, context)
            .with_context(|| format!("--prompt {text:?}")),
    }
}

/// The text `model` generates after `prompt` for each image of `pixels` (`[n, 3, H, W]`),
/// decoded.
pub fn describe(
    model: &CocaModel,
    tokenizer: &ClipTokenizer,
    pixels: Tensor<4>,
    prompt: &[u32],
    generation: &Generation,
) -> Result<Vec<String>> {
    let (_, tokens) = model.encode_image(pixels);
    let prompts = vec![prompt.to_vec(); tokens.dims()[0]];
    let mut next = CachedCaptioner::new(model, tokens);
    generate(&mut next, &prompts, generation)
        .into_iter()
        .map(|g| tokenizer.decode(&g.ids).map_err(anyhow::Error::from))
        .collect()
}
