//! A CoCa describing images: generation options, prompts, the texts it generates for a set of
//! images (prompts of different lengths decoded in groups), and those captions scored. What
//! `mm-train caption`, the caption and answer suites, `eval` and the report share.

use anyhow::{Context, Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use mm_data::{ClipTokenizer, ImageInput};
use mm_encoders::CocaModel;
use mm_encoders::generate::{CachedCaptioner, Decoding, Generation, generate};

use crate::caption_metrics::CaptionScores;
use crate::image_chunks::{ImageChunks, map_image_chunks};

/// The widest beam search (HF and open_clip captioners use 3-10): each beam is a row decoded
/// for every image, so width multiplies the time of captioning.
pub const MAX_BEAMS: usize = 16;

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
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=MAX_BEAMS as u64))]
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
    /// Beam search of `width` (1: greedy decoding), other options at their defaults: how
    /// eval suites decode.
    pub fn beams(width: usize, length_penalty: f32) -> Self {
        Self {
            strategy: match width {
                1 => Strategy::Greedy,
                _ => Strategy::Beam,
            },
            beams: width as u64,
            length_penalty,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_tokens: None,
            min_tokens: 0,
            repetition_penalty: 1.0,
        }
    }

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

/// The text `model` generates for each image of `pixels` (`[n, 3, H, W]`) after its prompt
/// (`prompts[i]`, ids from [`prompt_ids`]), decoded. Prompts of one length are decoded
/// together, each group at most to the `context` positions the model reads.
pub fn describe(
    model: &CocaModel,
    tokenizer: &ClipTokenizer,
    pixels: Tensor<4>,
    prompts: &[Vec<u32>],
    (generation, context): (&Generation, usize),
) -> Result<Vec<String>> {
    let (_, tokens) = model.encode_image(pixels);
    let mut lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut texts = vec![String::new(); prompts.len()];
    for length in lengths {
        let rows: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].len() == length)
            .collect();
        let group_tokens = match rows.len() == prompts.len() {
            true => tokens.clone(),
            false => {
                let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                let index = Tensor::<1, Int>::from_data(
                    TensorData::new(index, [rows.len()]),
                    &tokens.device(),
                );
                tokens.clone().select(0, index)
            }
        };
        let group: Vec<Vec<u32>> = rows.iter().map(|&r| prompts[r].clone()).collect();
        let generation = Generation {
            max_new_tokens: generation
                .max_new_tokens
                .min(context.saturating_sub(length)),
            ..generation.clone()
        };
        let mut next = CachedCaptioner::new(model, group_tokens);
        for (row, generated) in rows
            .into_iter()
            .zip(generate(&mut next, &group, &generation))
        {
            texts[row] = tokenizer.decode(&generated.ids)?;
        }
    }
    Ok(texts)
}

/// Rows (images x beams) decoded together: one step's logits over a CLIP vocabulary are
/// then about 50 MB, whatever the beam width.
const ROWS_PER_CALL: usize = 256;

/// Images described per generation call: beams multiply the rows decoded together, so wider
/// beams take fewer images at a time.
pub fn images_per_call(generation: &Generation) -> usize {
    let rows_per_image = match generation.decoding {
        Decoding::Beam { width, .. } => width.max(1),
        _ => 1,
    };
    (ROWS_PER_CALL / rows_per_image).max(1)
}

/// [`describe`] over a set of images (read through the eval transform, [`CHUNK`] at a
/// time; unreadable ones skipped and reported): the texts of the images in `kept`.
pub fn describe_images(
    model: &CocaModel,
    tokenizer: &ClipTokenizer,
    (images, image_size): (&[ImageInput], usize),
    prompts: &[Vec<u32>],
    generation: (&Generation, usize),
) -> Result<ImageChunks<Vec<String>>> {
    let device = model.clip.logit_scale.val().device();
    let chunk = images_per_call(generation.0);
    map_image_chunks(images, image_size, &device, chunk, |pixels, kept| {
        let prompts: Vec<Vec<u32>> = kept.iter().map(|&i| prompts[i].clone()).collect();
        describe(model, tokenizer, pixels, &prompts, generation)
    })
}

/// Captions generated for a set and scored against its references.
pub struct ScoredCaptions {
    pub scores: CaptionScores,
    /// The captions of the readable images, in order.
    pub texts: Vec<String>,
    /// Unreadable images, left out.
    pub skipped: usize,
}

/// Captions of `images` from the start token (`beams` 1: greedy; else beam search with
/// `length_penalty`), scored against `references[i]` and, where given, built-in `classes[i]`.
pub fn score_captions(
    model: &CocaModel,
    tokenizer: &ClipTokenizer,
    images: (&[ImageInput], usize),
    (references, classes): (&[Vec<String>], Option<&[usize]>),
    (beams, length_penalty): (usize, f32),
    context: usize,
) -> Result<ScoredCaptions> {
    let generation =
        GenerationArgs::beams(beams, length_penalty).generation(tokenizer.eot_id(), 1, context)?;
    let prompts = vec![vec![tokenizer.sot_id()]; images.0.len()];
    let described = describe_images(model, tokenizer, images, &prompts, (&generation, context))?;
    let classes = classes.map(|c| described.select(c));
    let texts = described.outputs.concat();
    Ok(ScoredCaptions {
        scores: CaptionScores::new(&texts, &described.select(references), classes.as_deref()),
        texts,
        skipped: described.skipped.len(),
    })
}
