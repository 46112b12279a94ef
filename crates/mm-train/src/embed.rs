//! `mm-train embed`: the embeddings of a whole dataset (image folder, CSV, WebDataset shards),
//! streamed in batches through the model and written as safetensors or `.npy`, with each
//! sample's key (its image file, or `shard:key`) in a `.keys.jsonl` beside them.
//!
//! Work in progress lives in `OUT.parts/`, which one embed at a time holds (a lock, as a run
//! holds its directory): every few thousand samples a part file (written atomically) and then
//! `state.json` (how far the source was read, and which checkpoint directory the run started
//! with: a resumed run uses that one, even when `--checkpoint RUN` now resolves to a newer
//! one). A run that is stopped and started again with the same command continues after the
//! last recorded part; another command on the same output is refused rather than mixed in. At
//! the end the parts are streamed into the output (never all in memory) through temporary
//! files inside `OUT.parts/`, so nothing beside the output is touched, and the folder is
//! removed.

use std::fs;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mm_contrastive::l2_normalize;
use mm_data::{Batcher, Captions, ClipBatch, Prefetcher, SkipCounts, SourceKind, TrainTransform};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, write_file_atomically};
use crate::data_check::SourceArgs;
use crate::device::DeviceArg;
use crate::precision::Precision;
use crate::run_dir::RunDirLock;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// An mm checkpoint, a run directory (its latest checkpoint), or an HF CLIP directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// WebDataset shard patterns, a .csv/.tsv file, or an image folder (read recursively).
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// The output: `NAME.safetensors` (tensors `image_embeds`, `text_embeds`) or `NAME.npy`
    /// (`NAME.npy` for one modality, `NAME.image.npy` and `NAME.text.npy` for both); keys go
    /// to `NAME.keys.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    /// What to embed: images (captions not needed), captions, or both.
    #[arg(long, value_enum, default_value_t = Modality::Image)]
    pub modality: Modality,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Keep the embeddings as the model outputs them (by default each is L2-normalised, as
    /// retrieval and zero-shot use them).
    #[arg(long)]
    pub no_normalize: bool,
    /// Compute in fp32, or bf16 (bf16 GEMMs with f32 sums on Flex).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Samples per part file: what a killed run loses at most.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub part_samples: u64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Image,
    Text,
    Both,
}

impl Modality {
    fn tensors(self) -> &'static [&'static str] {
        match self {
            Modality::Image => &["image_embeds"],
            Modality::Text => &["text_embeds"],
            Modality::Both => &["image_embeds", "text_embeds"],
        }
    }
}

/// What produced the parts: a run continues only under the same command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Command {
    /// As given (canonical): a run directory names whichever checkpoint is its latest.
    checkpoint: PathBuf,
    paths: Vec<String>,
    modality: Modality,
    normalize: bool,
    precision: Precision,
    source: SourceArgs,
}

/// How far a run got: `parts` part files cover the source's items before `position`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    command: Command,
    /// The checkpoint directory `command.checkpoint` resolved to when the run started: every
    /// row comes from this one model.
    weights: Option<PathBuf>,
    parts: usize,
    position: u64,
    samples: u64,
    width: usize,
    skipped: u64,
}

/// The output files for `out` and a modality.
struct Outputs {
    /// One file per tensor (`.npy`), or one for all (`.safetensors`).
    tensors: Vec<(PathBuf, Vec<&'static str>)>,
    /// What the tensor files are, by `out`'s extension in any case.
    format: Format,
    keys: PathBuf,
    parts: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Npy,
    Safetensors,
}

impl Outputs {
    fn new(out: &Path, modality: Modality) -> Result<Self> {
        let ext = out
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let stem = out.with_extension("");
        let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
        let names = modality.tensors();
        let (tensors, format) = match ext.as_deref() {
            Some("safetensors") => (
                vec![(out.to_path_buf(), names.to_vec())],
                Format::Safetensors,
            ),
            Some("npy") if names.len() == 1 => {
                (vec![(out.to_path_buf(), names.to_vec())], Format::Npy)
            }
            Some("npy") => (
                vec![
                    (with(".image.npy"), vec!["image_embeds"]),
                    (with(".text.npy"), vec!["text_embeds"]),
                ],
                Format::Npy,
            ),
            _ => bail!("--out {}: name a .safetensors or .npy file", out.display()),
        };
        Ok(Self {
            tensors,
            format,
            keys: with(".keys.jsonl"),
            parts: PathBuf::from(format!("{}.parts", out.display())),
        })
    }
}

pub fn run(args: &EmbedArgs) -> Result<()> {
    let outputs = Outputs::new(&args.out, args.modality)?;
    // Held until the parts are merged and removed: a second embed into the same output is
    // refused instead of interleaving its parts and outputs with this one's.
    let _lock = RunDirLock::acquire_for(
        &outputs.parts,
        "another mm-train embed",
        "choose another --out",
    )?;
    let written = outputs
        .tensors
        .iter()
        .map(|(path, _)| path)
        .chain([&outputs.keys]);
    for path in written {
        if path.exists() {
            bail!(
                "{} exists: embed never overwrites; remove it or choose another --out",
                path.display()
            );
        }
    }
    let device = args.device.device()?;
    let command = Command {
        checkpoint: fs::canonicalize(&args.checkpoint).unwrap_or(args.checkpoint.clone()),
        paths: args.paths.clone(),
        modality: args.modality,
        normalize: !args.no_normalize,
        precision: args.precision,
        source: args.source.clone(),
    };
    let mut state = resume_state(&outputs.parts, &command)?;
    let mut ckpt = match &state.weights {
        Some(pinned) => {
            if !pinned.is_dir() {
                bail!(
                    "{} was started with checkpoint {}, which no longer exists: its rows cannot be continued with another model; remove {} to start over",
                    outputs.parts.display(),
                    pinned.display(),
                    outputs.parts.display()
                );
            }
            checkpoint::load(pinned, &device)?
        }
        None => checkpoint::load(&args.checkpoint, &device)?,
    };
    state.weights = Some(fs::canonicalize(&ckpt.dir).unwrap_or(ckpt.dir.clone()));
    let _precision = ckpt.enter_inference(args.precision, &device);

    let mut data = args.source.data_config(&args.paths);
    if args.modality == Modality::Image {
        data.captions = Captions::Optional;
    }
    if let Err((key, message)) = data.check() {
        bail!("{key}: {message}");
    }
    if data.source == SourceKind::Shapes {
        bail!("embed reads a folder, a CSV file or shards");
    }
    let image_size = ckpt.model_config.vision.image_size;
    let context_length = ckpt.model_config.text.context_length;
    let mut source = data.open_epoch(0, 0, image_size)?;
    // Items before the recorded position are in parts already; sources skip without decoding.
    for _ in 0..state.position {
        if source.next().is_none() {
            bail!(
                "{} has fewer items than {} recorded in {}: the data changed since; remove the folder to start over",
                source.describe(),
                state.position,
                outputs.parts.display()
            );
        }
    }
    let batcher = Batcher::new(ckpt.tokenizer.clone(), image_size, context_length)
        .with_transform(TrainTransform::CenterCrop, 0)
        .with_image_limits(data.image_limits())
        .with_max_consecutive_skips(data.max_consecutive_skips);
    let description = source.describe();
    let batches = Prefetcher::one_pass(
        source,
        state.position,
        batcher,
        args.batch_size as usize,
        data.prefetch,
    );

    let progress = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos} embedded ({per_sec}), {elapsed} {msg}")
            .expect("a valid template"),
    );
    progress.set_position(state.samples);
    progress.reset_eta();
    let mut skipped = SkipCounts::new(3);
    let mut pending = Part::default();
    let write_part = |part: &mut Part, state: &mut State, position: u64| -> Result<()> {
        if part.keys.is_empty() && position == state.position {
            return Ok(());
        }
        let path = part_path(&outputs.parts, state.parts);
        part.write(&path, args.modality)?;
        state.parts += 1;
        state.position = position;
        state.samples += part.keys.len() as u64;
        state.width = part.width.max(state.width);
        write_file_atomically(
            &outputs.parts.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        *part = Part::default();
        Ok(())
    };
    let mut position = state.position;
    for batch in batches {
        let batch = batch.with_context(|| format!("reading {description}"))?;
        for error in &batch.errors {
            skipped.record(error.clone());
        }
        state.skipped += batch.errors.len() as u64;
        pending.push(
            &batch,
            &ckpt.model,
            args.modality,
            !args.no_normalize,
            &device,
        )?;
        position = batch.stream_position;
        progress.inc(batch.batch_size as u64);
        if pending.keys.len() as u64 >= args.part_samples {
            write_part(&mut pending, &mut state, position)?;
        }
    }
    write_part(&mut pending, &mut state, position)?;
    progress.finish_and_clear();
    if state.samples == 0 {
        let kinds: Vec<String> = skipped
            .counts()
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        bail!(
            "{description}: no usable samples ({} skipped: {})",
            state.skipped,
            kinds.join(", ")
        );
    }
    merge(&outputs, &state)?;
    fs::remove_dir_all(&outputs.parts)
        .with_context(|| format!("removing {}", outputs.parts.display()))?;
    let names: Vec<String> = outputs
        .tensors
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    println!(
        "{} samples x {} -> {} (keys: {}); {} skipped",
        state.samples,
        state.width,
        names.join(", "),
        outputs.keys.display(),
        state.skipped
    );
    for (kind, count) in skipped.counts() {
        println!("  {kind}: {count}");
        for example in skipped.examples(*kind) {
            println!("    {}: {}", example.location, example.message);
        }
    }
    Ok(())
}

/// The state to continue from: a fresh one, or the recorded one when `parts` was made by the
/// same command.
fn resume_state(parts: &Path, command: &Command) -> Result<State> {
    let fresh = State {
        command: command.clone(),
        weights: None,
        parts: 0,
        position: 0,
        samples: 0,
        width: 0,
        skipped: 0,
    };
    let state_file = parts.join("state.json");
    if !state_file.exists() {
        return Ok(fresh); // Stopped before its first part.
    }
    let text = mm_data::regular_file::read_text_capped(&state_file, 1 << 20)
        .with_context(|| format!("reading {}", state_file.display()))?;
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an embed state", state_file.display()))?;
    if state.command != *command {
        bail!(
            "{} holds the work of another embed command ({:?}); remove it or choose another --out",
            parts.display(),
            state.command
        );
    }
    eprintln!(
        "continuing from {}: {} samples embedded, item {} of the source next{}",
        parts.display(),
        state.samples,
        state.position,
        state
            .weights
            .as_ref()
            .map(|w| format!(", with the checkpoint it started with ({})", w.display()))
            .unwrap_or_default()
    );
    Ok(state)
}

fn part_path(parts: &Path, index: usize) -> PathBuf {
    parts.join(format!("part-{index:06}.safetensors"))
}

/// Embeddings of the batches since the last part, on the host.
#[derive(Default)]
struct Part {
    image: Vec<f32>,
    text: Vec<f32>,
    keys: Vec<String>,
    width: usize,
}

impl Part {
    fn push(
        &mut self,
        batch: &ClipBatch,
        model: &mm_encoders::ClipModel,
        modality: Modality,
        normalize: bool,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        if batch.batch_size == 0 {
            return Ok(()); // Only skipped samples' reports.
        }
        let finish = |features: Tensor<2>| -> Result<(Vec<f32>, usize)> {
            let width = features.dims()[1];
            let features = if normalize {
                l2_normalize(features)
            } else {
                features
            };
            let values = features
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("embeddings: {e:?}"))?;
            Ok((values, width))
        };
        if modality != Modality::Text {
            let (values, width) = finish(model.image_features(batch.pixels_tensor(device)))?;
            self.image.extend(values);
            self.width = width;
        }
        if modality != Modality::Image {
            let (values, width) = finish(model.text_features(batch.input_ids_tensor(device)))?;
            self.text.extend(values);
            self.width = width;
        }
        self.keys.extend(batch.keys.iter().cloned());
        Ok(())
    }

    /// Writes the part atomically: its tensors, and its keys in the metadata.
    fn write(&self, path: &Path, modality: Modality) -> Result<()> {
        let rows = self.keys.len();
        let mut views = Vec::new();
        for &name in modality.tensors() {
            let values = match name {
                "image_embeds" => &self.image,
                _ => &self.text,
            };
            let bytes: &[u8] = bytes_of(values);
            views.push((
                name,
                TensorView::new(Dtype::F32, vec![rows, self.width], bytes)?,
            ));
        }
        let keys = serde_json::to_string(&self.keys)?;
        let metadata = Some([("keys".to_string(), keys)].into_iter().collect());
        let bytes = safetensors::serialize(views, metadata)?;
        write_file_atomically(path, &bytes)
    }
}

fn bytes_of(values: &[f32]) -> &[u8] {
    // SAFETY: f32s are plain bytes; safetensors stores little-endian, as this target is.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

/// Streams the parts into the outputs in one pass (each part read once): every tensor's rows
/// are written at their offset in its file, the keys appended to the keys file; each file is
/// written under a temporary name and renamed when complete.
fn merge(outputs: &Outputs, state: &State) -> Result<()> {
    let (rows, width) = (state.samples as usize, state.width);
    let tensor_bytes = rows * width * 4;
    let mut files = Vec::new();
    // Temporaries live in the parts folder this run holds, never beside the outputs.
    let temporary = |path: &Path| {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        outputs.parts.join(format!(".{name}.tmp"))
    };
    for (path, names) in &outputs.tensors {
        let tmp = temporary(path);
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let header = match outputs.format {
            Format::Npy => npy_header(rows, width),
            Format::Safetensors => safetensors_header(names, rows, width, tensor_bytes)?,
        };
        file.write_all(&header)?;
        files.push((path, tmp, file, header.len(), names));
    }
    let keys_tmp = temporary(&outputs.keys);
    let mut keys = BufWriter::new(
        fs::File::create(&keys_tmp).with_context(|| format!("creating {}", keys_tmp.display()))?,
    );
    let mut row = 0;
    for i in 0..state.parts {
        let path = part_path(&outputs.parts, i);
        let bytes = mm_data::regular_file::read_capped(&path, 1 << 32)
            .with_context(|| format!("reading {}", path.display()))?;
        let part = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("part {i} of {}", outputs.parts.display()))?;
        for (_, _, file, start, names) in &mut files {
            for (n, name) in names.iter().enumerate() {
                let offset = *start + n * tensor_bytes + row * width * 4;
                file.seek(SeekFrom::Start(offset as u64))?;
                file.write_all(part.tensor(name)?.data())?;
            }
        }
        let (_, metadata) = SafeTensors::read_metadata(&bytes)?;
        let list = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("keys"))
            .context("a part without keys")?;
        let part_keys = serde_json::from_str::<Vec<String>>(list)?;
        for key in &part_keys {
            writeln!(keys, "{}", serde_json::to_string(key)?)?;
        }
        row += part_keys.len();
    }
    for (path, tmp, file, _, _) in files {
        file.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    keys.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&keys_tmp, &outputs.keys)?;
    Ok(())
}

/// A safetensors header for `names`, each `[rows, width]` f32, laid out one after another.
fn safetensors_header(names: &[&str], rows: usize, width: usize, bytes: usize) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": "F32",
                "shape": [rows, width],
                "data_offsets": [i * bytes, (i + 1) * bytes],
            }),
        );
    }
    let mut json = serde_json::to_vec(&header)?;
    // The data starts 8-byte aligned.
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    Ok(out)
}

/// An `.npy` (version 1.0) header for a little-endian f32 `[rows, width]` array.
fn npy_header(rows: usize, width: usize) -> Vec<u8> {
    let mut dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}");
    // Magic (6) + version (2) + length (2) + dict + newline, padded to 64 bytes.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.into_bytes());
    out
}
