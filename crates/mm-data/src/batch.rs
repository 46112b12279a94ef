//! Assembling model-ready batches from a pair source, on a background thread.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::preprocess::preprocess_into;
use crate::source::{ImageTextPair, PairSource, SampleErrorKind};
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
    pub captions: Vec<String>,
    /// Samples the source could not produce while this batch was filled, by kind.
    pub skipped: BTreeMap<SampleErrorKind, usize>,
}

impl ClipBatch {
    pub fn pixels_tensor(&self, device: &Device) -> Tensor<4> {
        pixels_tensor(self.pixels.clone(), self.image_size, device)
    }

    pub fn input_ids_tensor(&self, device: &Device) -> Tensor<2, Int> {
        token_ids_tensor(&self.input_ids, self.context_length, device)
    }
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

/// Turns pairs into batches: preprocessing runs in parallel over the batch (rayon).
#[derive(Clone)]
pub struct Batcher {
    pub tokenizer: ClipTokenizer,
    pub image_size: usize,
    pub context_length: usize,
}

impl Batcher {
    /// Preprocesses a list of pairs into one batch.
    pub fn collate(&self, pairs: Vec<ImageTextPair>) -> Result<ClipBatch, DataError> {
        let plane = 3 * self.image_size * self.image_size;
        let mut pixels = vec![0.0f32; pairs.len() * plane];
        pixels
            .par_chunks_mut(plane)
            .zip(pairs.par_iter())
            .for_each(|(out, pair)| preprocess_into(&pair.image, self.image_size, out));
        let captions: Vec<String> = pairs.into_iter().map(|p| p.caption).collect();
        let input_ids = self
            .tokenizer
            .encode_batch(&captions, self.context_length)?;
        Ok(ClipBatch {
            batch_size: captions.len(),
            image_size: self.image_size,
            context_length: self.context_length,
            pixels,
            input_ids,
            captions,
            skipped: BTreeMap::new(),
        })
    }

    /// Pulls `batch_size` good pairs from `source`, skipping and counting bad ones.
    /// Returns `None` when the source ends before a full batch.
    pub fn next_batch(
        &self,
        source: &mut dyn PairSource,
        batch_size: usize,
    ) -> Option<Result<ClipBatch, DataError>> {
        let mut pairs = Vec::with_capacity(batch_size);
        let mut skipped = BTreeMap::new();
        while pairs.len() < batch_size {
            match source.next()? {
                Ok(pair) => pairs.push(pair),
                Err(e) => *skipped.entry(e.kind).or_insert(0) += 1,
            }
        }
        Some(self.collate(pairs).map(|mut batch| {
            batch.skipped = skipped;
            batch
        }))
    }
}

/// Batches produced ahead of the training step on a background thread.
pub struct Prefetcher {
    receiver: Receiver<Result<ClipBatch, DataError>>,
    _worker: JoinHandle<()>,
}

impl Prefetcher {
    /// Starts filling a queue of up to `depth` batches from `source`.
    pub fn spawn(
        mut source: Box<dyn PairSource>,
        batcher: Batcher,
        batch_size: usize,
        depth: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            while let Some(batch) = batcher.next_batch(source.as_mut(), batch_size) {
                // The receiver hung up: training is over.
                if sender.send(batch).is_err() {
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
