//! Assembling model-ready batches from a pair source: decode, augment, normalise and tokenise
//! on a worker pool, on a background thread ahead of the training step.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::preprocess::{ImageLimits, TrainTransform, decode_input};
use crate::source::{ImageTextPair, PairSource, SampleError, SampleErrorKind, SkipCounts};
use crate::stream::{DataStream, mix};
use crate::{ClipTokenizer, DataError};

/// One batch in host memory: CLIP-normalised images and fixed-length token ids.
#[derive(Clone, Debug)]
pub struct ClipBatch {
    pub batch_size: usize,
    pub image_size: usize,
    pub context_length: usize,
    /// `[batch, 3, image_size, image_size]`, row-major.
    pub pixels: Vec<f32>,
    /// `[batch, context_length]`, row-major.
    pub input_ids: Vec<u32>,
    /// Per row, how many leading ids are given rather than predicted: 1 (the start token)
    /// for a caption, the start token and `question: Q answer:` for a question-answer text, so
    /// a captioner learns the answer, not the question.
    pub prompt_lengths: Vec<usize>,
    pub captions: Vec<String>,
    /// Where each sample came from: its image file, or `shard:key` for a tar member.
    pub keys: Vec<String>,
    /// Each sample's class label as its source gave it (a CSV label column, a shard's `.cls`
    /// member, a built-in task's answer), or `None` where the source has none.
    pub labels: Vec<Option<String>>,
    /// The samples skipped while this batch was filled: where and why.
    pub errors: Vec<SampleError>,
    /// Stream items consumed up to and including this batch: where to resume after it.
    pub stream_position: u64,
}

impl ClipBatch {
    /// This batch's skipped samples, counted by kind (every one kept).
    pub fn skip_counts(&self) -> SkipCounts {
        let mut counts = SkipCounts::new(usize::MAX);
        for error in &self.errors {
            counts.record(error.clone());
        }
        counts
    }

    pub fn pixels_tensor(&self, device: &Device) -> Tensor<4> {
        pixels_tensor(self.pixels.clone(), self.image_size, device)
    }

    pub fn input_ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        token_ids_tensor(&self.input_ids, self.context_length, device)
    }

    /// The samples at `rows` (in that order) as a batch, with this batch's skipped-sample
    /// reports and stream position.
    pub fn select_rows(&self, rows: &[usize]) -> ClipBatch {
        let plane = 3 * self.image_size * self.image_size;
        let ctx = self.context_length;
        let (mut pixels, mut input_ids) = (
            Vec::with_capacity(rows.len() * plane),
            Vec::with_capacity(rows.len() * ctx),
        );
        for &r in rows {
            pixels.extend_from_slice(&self.pixels[r * plane..(r + 1) * plane]);
            input_ids.extend_from_slice(&self.input_ids[r * ctx..(r + 1) * ctx]);
        }
        ClipBatch {
            batch_size: rows.len(),
            image_size: self.image_size,
            context_length: ctx,
            pixels,
            input_ids,
            prompt_lengths: rows.iter().map(|&r| self.prompt_lengths[r]).collect(),
            captions: rows.iter().map(|&r| self.captions[r].clone()).collect(),
            keys: rows.iter().map(|&r| self.keys[r].clone()).collect(),
            labels: rows.iter().map(|&r| self.labels[r].clone()).collect(),
            errors: self.errors.clone(),
            stream_position: self.stream_position,
        }
    }
}

/// One image file, CLIP-preprocessed, as a `[1, 3, size, size]` tensor (what a command that
/// takes image paths feeds a model).
pub fn image_file_tensor(
    path: &std::path::Path,
    image_size: usize,
    device: &Device,
) -> Result<Tensor<4>, crate::DataError> {
    let mut pixels = vec![0.0; 3 * image_size * image_size];
    crate::preprocess_into(&crate::load_image(path)?, image_size, &mut pixels);
    Ok(pixels_tensor(pixels, image_size, device))
}

/// Row-major CHW images (`n * 3 * size * size` floats) as a `[n, 3, size, size]` tensor.
pub fn pixels_tensor(pixels: Vec<f32>, image_size: usize, device: &Device) -> Tensor<4> {
    let n = pixels.len() / (3 * image_size * image_size);
    Tensor::from_data(
        TensorData::new(pixels, [n, 3, image_size, image_size]),
        device,
    )
}

/// Row-major token ids (`n * context_length`) as a `[n, context_length]` tensor.
pub fn token_ids_tensor(ids: &[u32], context_length: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    let n = ids.len() / context_length;
    Tensor::from_data(TensorData::new(ids, [n, context_length]), device)
}

/// Turns pairs into batches. Each sample is read, decoded, transformed, normalised and
/// tokenised by one worker; a sample that fails is counted and replaced from the source, so
/// every batch is full. Augmentation is seeded by the sample's stream index, so batches do
/// not depend on thread scheduling.
#[derive(Clone)]
pub struct Batcher {
    pub tokenizer: ClipTokenizer,
    pub image_size: usize,
    pub context_length: usize,
    pub transform: TrainTransform,
    pub seed: u64,
    pub image_limits: ImageLimits,
    /// Unusable samples in a row that end the stream with an error.
    pub max_consecutive_skips: usize,
    /// Texts are question-answer texts (`data.text_format`): see
    /// [`Batcher::with_question_answers`].
    pub question_answers: bool,
    /// Worker threads; `None` uses rayon's global pool.
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Batcher {
    /// A batcher with the eval transform (no augmentation) on rayon's global pool.
    pub fn new(tokenizer: ClipTokenizer, image_size: usize, context_length: usize) -> Self {
        Self {
            tokenizer,
            image_size,
            context_length,
            transform: TrainTransform::CenterCrop,
            seed: 0,
            image_limits: ImageLimits::default(),
            max_consecutive_skips: 1000,
            question_answers: false,
            pool: None,
        }
    }

    pub fn with_transform(mut self, transform: TrainTransform, seed: u64) -> Self {
        self.transform = transform;
        self.seed = seed;
        self
    }

    pub fn with_image_limits(mut self, limits: ImageLimits) -> Self {
        self.image_limits = limits;
        self
    }

    /// Texts are `question: Q answer: A` with the answer as the pair's label: one longer
    /// than the context is skipped (counted as a bad caption) instead of cut before its
    /// answer, and its prompt (up to `answer:`) is recorded as given, not predicted.
    pub fn with_question_answers(mut self, question_answers: bool) -> Self {
        self.question_answers = question_answers;
        self
    }

    pub fn with_max_consecutive_skips(mut self, n: usize) -> Self {
        self.max_consecutive_skips = n.max(1);
        self
    }

    /// Decodes on a pool of `workers` threads of its own (0: rayon's global pool).
    pub fn with_workers(mut self, workers: usize) -> Result<Self, DataError> {
        self.pool = match workers {
            0 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("mm-data-{i}"))
                    .build()
                    .map_err(|e| DataError::Config(format!("data.workers: {e}")))?,
            )),
        };
        Ok(self)
    }

    /// Everything one sample needs, written into its slot of the batch: pixels into `out`,
    /// token ids returned.
    /// Decodes and transforms the pair's image into `out`; its text's ids and prompt length.
    fn prepare(
        &self,
        pair: &ImageTextPair,
        index: u64,
        out: &mut [f32],
    ) -> Result<(Vec<u32>, usize), SampleError> {
        let image = decode_input(&pair.image, &pair.location, self.image_limits)?;
        let mut rng = StdRng::seed_from_u64(mix(self.seed, index));
        self.transform
            .apply_into(&image, self.image_size, &mut rng, out);
        let bad = |e: DataError| {
            SampleError::new(SampleErrorKind::BadCaption, &pair.location, e.to_string())
        };
        if !self.question_answers {
            let ids = self.tokenizer.encode(&pair.caption, self.context_length);
            return Ok((ids.map_err(bad)?, 1));
        }
        let ids = self
            .tokenizer
            .encode_whole(&pair.caption, self.context_length)
            .map_err(bad)?;
        let answer = pair.label.as_deref().unwrap_or_default();
        let prompt = pair
            .caption
            .strip_suffix(answer)
            .map(str::trim_end)
            .unwrap_or(&pair.caption);
        let prompt = self
            .tokenizer
            .encode_prompt(prompt, self.context_length)
            .map_err(bad)?;
        Ok((ids, prompt.len()))
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Pulls pairs from `source` until `batch_size` are prepared, skipping and counting bad
    /// ones. `position` counts the items pulled (it is the stream index of the next one).
    /// Returns `None` when the source ends before a full batch, and an error when
    /// `max_consecutive_skips` samples in a row were unusable.
    pub fn next_batch(
        &self,
        source: &mut dyn PairSource,
        position: &mut u64,
        batch_size: usize,
    ) -> Result<Option<ClipBatch>, DataError> {
        self.fill(source, position, batch_size, false)
    }

    /// [`Batcher::next_batch`], except that the source's last samples come as a smaller
    /// batch: every usable sample is in some batch (for passes over a whole dataset). That
    /// last batch may hold no sample, only the reports of skipped ones. `None` once nothing
    /// is left.
    pub fn next_batch_or_rest(
        &self,
        source: &mut dyn PairSource,
        position: &mut u64,
        batch_size: usize,
    ) -> Result<Option<ClipBatch>, DataError> {
        self.fill(source, position, batch_size, true)
    }

    fn fill(
        &self,
        source: &mut dyn PairSource,
        position: &mut u64,
        batch_size: usize,
        rest: bool,
    ) -> Result<Option<ClipBatch>, DataError> {
        let plane = 3 * self.image_size * self.image_size;
        // Allocated once at its final size; samples are written into their slots.
        let mut pixels = vec![0.0f32; batch_size * plane];
        let mut input_ids = Vec::with_capacity(batch_size * self.context_length);
        let mut prompt_lengths = Vec::with_capacity(batch_size);
        let mut captions = Vec::with_capacity(batch_size);
        let mut keys = Vec::with_capacity(batch_size);
        let mut labels = Vec::with_capacity(batch_size);
        let mut errors: Vec<SampleError> = Vec::new();
        // Unusable samples since the last usable one.
        let mut in_a_row = 0;
        let broken = |source: &dyn PairSource, errors: &[SampleError], count| {
            Err(DataError::NoUsableSamples {
                source_name: source.describe(),
                count,
                last: errors.last().map(|e| e.to_string()).unwrap_or_default(),
            })
        };
        while captions.len() < batch_size {
            let filled = captions.len();
            let mut pairs = Vec::with_capacity(batch_size - filled);
            let mut ended = false;
            while pairs.len() < batch_size - filled {
                let Some(item) = source.next() else {
                    ended = true;
                    break;
                };
                let index = *position;
                *position += 1;
                match item {
                    Ok(pair) => pairs.push((index, pair)),
                    Err(e) => {
                        errors.push(e);
                        in_a_row += 1;
                        if in_a_row >= self.max_consecutive_skips {
                            return broken(source, &errors, in_a_row);
                        }
                    }
                }
            }
            let results: Vec<Result<(Vec<u32>, usize), SampleError>> = self.install(|| {
                pixels[filled * plane..]
                    .par_chunks_mut(plane)
                    .zip(pairs.par_iter())
                    .map(|(out, (index, pair))| self.prepare(pair, *index, out))
                    .collect()
            });
            // Close the gaps failed samples left, keeping stream order.
            for (slot, (result, (_, pair))) in results.into_iter().zip(pairs).enumerate() {
                match result {
                    Ok((ids, prompt_length)) => {
                        let (from, to) = (filled + slot, captions.len());
                        if from != to {
                            pixels.copy_within(from * plane..(from + 1) * plane, to * plane);
                        }
                        input_ids.extend(ids);
                        prompt_lengths.push(prompt_length);
                        keys.push(match pair.image {
                            crate::ImageInput::File(path) => path.display().to_string(),
                            _ => pair.location,
                        });
                        captions.push(pair.caption);
                        labels.push(pair.label);
                        in_a_row = 0;
                    }
                    Err(e) => {
                        errors.push(e);
                        in_a_row += 1;
                    }
                }
            }
            if in_a_row >= self.max_consecutive_skips {
                return broken(source, &errors, in_a_row);
            }
            if ended {
                // A source that ends on nothing but unusable samples (a folder of FIFOs, a
                // whole epoch undecodable) says why, rather than just ending.
                if !rest && captions.is_empty() && !errors.is_empty() {
                    return Err(DataError::Exhausted {
                        source_name: source.describe(),
                        count: in_a_row,
                        last: errors.last().map(|e| e.to_string()).unwrap_or_default(),
                    });
                }
                // The rest keeps the skipped samples' reports even when no sample is left.
                if !rest || (captions.is_empty() && errors.is_empty()) {
                    return Ok(None);
                }
                pixels.truncate(captions.len() * plane);
                break;
            }
        }
        Ok(Some(ClipBatch {
            batch_size: captions.len(),
            image_size: self.image_size,
            context_length: self.context_length,
            pixels,
            input_ids,
            prompt_lengths,
            captions,
            keys,
            labels,
            errors,
            stream_position: *position,
        }))
    }
}

/// What a full pass over a source found ([`Batcher::scan`]).
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Samples that decode, transform and tokenise.
    pub good: usize,
    /// Skipped samples by kind, with the first few of each.
    pub skipped: SkipCounts,
}

impl Batcher {
    /// Runs every sample of `source` through the full preparation (read, decode, transform,
    /// tokenise) in parallel chunks, counting what fails by kind and keeping `examples` errors
    /// of each kind.
    pub fn scan(&self, source: &mut dyn PairSource, examples: usize) -> ScanReport {
        const CHUNK: usize = 256;
        let mut report = ScanReport {
            good: 0,
            skipped: SkipCounts::new(examples),
        };
        let record = |report: &mut ScanReport, error: SampleError| {
            report.skipped.record(error);
        };
        let plane = 3 * self.image_size * self.image_size;
        let mut index = 0u64;
        loop {
            let (mut pairs, mut pulled) = (Vec::with_capacity(CHUNK), 0);
            for item in (&mut *source).take(CHUNK) {
                match item {
                    Ok(pair) => pairs.push((index, pair)),
                    Err(e) => record(&mut report, e),
                }
                index += 1;
                pulled += 1;
            }
            let results: Vec<Result<(Vec<u32>, usize), SampleError>> = self.install(|| {
                pairs
                    .par_iter()
                    .map_init(
                        || vec![0.0f32; plane],
                        |out, (index, pair)| self.prepare(pair, *index, out),
                    )
                    .collect()
            });
            for result in results {
                match result {
                    Ok(_) => report.good += 1,
                    Err(e) => record(&mut report, e),
                }
            }
            if pulled < CHUNK {
                break;
            }
        }
        report
    }
}

/// Batches produced ahead of the training step on a background thread.
pub struct Prefetcher {
    receiver: Receiver<Result<ClipBatch, DataError>>,
    _worker: JoinHandle<()>,
}

impl Prefetcher {
    /// Starts filling a queue of up to `depth` batches from `stream`. A data error ends the
    /// stream after it is handed over.
    pub fn spawn(stream: DataStream, batcher: Batcher, batch_size: usize, depth: usize) -> Self {
        let position = stream.position();
        Self::start(
            Box::new(stream),
            position,
            batcher,
            batch_size,
            depth,
            false,
        )
    }

    /// One pass over `source` (whose next item has stream index `position`), its last
    /// samples in a smaller batch ([`Batcher::next_batch_or_rest`]).
    pub fn one_pass(
        source: Box<dyn PairSource>,
        position: u64,
        batcher: Batcher,
        batch_size: usize,
        depth: usize,
    ) -> Self {
        Self::start(source, position, batcher, batch_size, depth, true)
    }

    fn start(
        mut source: Box<dyn PairSource>,
        mut position: u64,
        batcher: Batcher,
        batch_size: usize,
        depth: usize,
        rest: bool,
    ) -> Self {
        let (sender, receiver) = sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            loop {
                let next = batcher.fill(source.as_mut(), &mut position, batch_size, rest);
                let batch = match next {
                    Ok(Some(batch)) => Ok(batch),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let failed = batch.is_err();
                // The receiver hung up: training is over.
                if sender.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Self {
            receiver,
            _worker: worker,
        }
    }
}

impl Iterator for Prefetcher {
    type Item = Result<ClipBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}
