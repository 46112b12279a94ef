//! `objective = "classify"`: a [`FusionClassifier`] trained with cross-entropy on labelled
//! (image, text) pairs, and the accuracy / macro-F1 a held-out set measures. (Its class list
//! and construction are [`crate::start`]'s; its checkpoint files [`crate::checkpoint`]'s.)

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use mm_contrastive::dist::{CommError, Communicator};
use mm_data::{ClipBatch, ImageInput, Labels, SampleError, SampleErrorKind, ShapesTask};
use mm_encoders::{ClipModel, FusionClassifier};

use crate::task::{Objective, StepOptions, Trainee};

/// Each row's class index among `classes` (`None`: no label, or one not in the list).
fn class_indices(batch: &ClipBatch, classes: &[String]) -> Vec<Option<usize>> {
    batch
        .labels
        .iter()
        .map(|label| {
            let label = label.as_deref()?;
            classes.iter().position(|c| c == label)
        })
        .collect()
}

/// Mean cross-entropy of `logits` `[n, classes]` against `targets`, times `n / total` (this
/// batch's share of a mean over `total` rows).
pub fn cross_entropy_share(logits: Tensor<2>, targets: &[usize], total: usize) -> Tensor<1> {
    let device = logits.device();
    let n = targets.len();
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, targets);
    picked.sum().neg().div_scalar(total as f64)
}

impl Trainee for FusionClassifier {
    fn clip(&self) -> &ClipModel {
        &self.clip
    }

    fn clip_mut(&mut self) -> &mut ClipModel {
        &mut self.clip
    }

    fn classifier(&self) -> Option<&FusionClassifier> {
        Some(self)
    }

    /// Rows without a label of the classifier's classes are skipped and counted
    /// (`missing_label`), naming the label.
    fn admit(&self, batch: ClipBatch) -> ClipBatch {
        let classes = &self.fusion.config.class_names;
        let indices = class_indices(&batch, classes);
        if indices.iter().all(Option::is_some) {
            return batch;
        }
        let mut errors = Vec::new();
        let keep: Vec<usize> = indices
            .iter()
            .enumerate()
            .filter_map(|(row, index)| match index {
                Some(_) => Some(row),
                None => {
                    let why = match &batch.labels[row] {
                        Some(label) => format!(
                            "label `{label}` is not one of the {} classes",
                            classes.len()
                        ),
                        None => "no label".into(),
                    };
                    errors.push(SampleError::new(
                        SampleErrorKind::MissingLabel,
                        batch.keys[row].clone(),
                        why,
                    ));
                    None
                }
            })
            .collect();
        let mut admitted = batch.select_rows(&keep);
        admitted.errors.extend(errors);
        admitted
    }

    /// Cross-entropy averaged over every rank's admitted rows: each micro-batch is its own
    /// forward and backward pass (rows do not interact), scaled by its share of the global
    /// count.
    fn gradients(
        &self,
        objective: Objective,
        micro_batches: &[ClipBatch],
        comm: &dyn Communicator,
        _options: &StepOptions,
    ) -> Result<(f32, GradientsParams), CommError> {
        debug_assert_eq!(objective, Objective::Classify);
        let device = self.clip.logit_scale.val().device();
        let classes = &self.fusion.config.class_names;
        let local: usize = micro_batches.iter().map(|b| b.batch_size).sum();
        let total = comm.all_gather(&[local as f32])?.iter().sum::<f32>() as usize;
        let mut accumulator = GradientsAccumulator::<FusionClassifier>::new();
        let mut loss_sum = 0.0;
        for batch in micro_batches.iter().filter(|b| b.batch_size > 0) {
            let targets: Vec<usize> = class_indices(batch, classes)
                .into_iter()
                .map(|i| i.expect("admit() keeps labelled rows only"))
                .collect();
            let logits = self.forward(
                batch.pixels_tensor(&device),
                batch.input_ids_tensor(&device),
            );
            let loss = cross_entropy_share(logits, &targets, total.max(1));
            loss_sum += loss.clone().into_scalar::<f32>();
            accumulator.accumulate(self, GradientsParams::from_grads(loss.backward(), self));
        }
        Ok((loss_sum, accumulator.grads()))
    }

    /// The learned weight α of a sum (image side), when there is one.
    fn log_values(&self) -> Vec<(&'static str, f64)> {
        let sum = match (&self.fusion.merge, &self.fusion.late) {
            (Some(merge), _) => merge.sum.as_ref(),
            (_, Some(late)) => late.sum.as_ref(),
            _ => None,
        };
        match sum {
            Some(sum) => {
                let device = self.clip.logit_scale.val().device();
                vec![("alpha", sum.alpha(&device).into_scalar::<f32>() as f64)]
            }
            None => Vec::new(),
        }
    }
}

/// A classifier's scores on a labelled set.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    pub accuracy: f64,
    /// The mean over classes of F1 (a class never predicted nor present counts as absent).
    pub macro_f1: f64,
    /// Each class's F1 (`NaN` where the class neither occurs nor is predicted).
    pub per_class_f1: Vec<f64>,
    /// Pairs of each true class.
    pub support: Vec<usize>,
    /// `(truth, predicted)` -> count, for the pairs that occurred: at most one entry per
    /// pair scored, so memory follows the set and not the square of the classes.
    pub confusion: BTreeMap<(usize, usize), usize>,
}

impl ClassMetrics {
    pub fn new(truth: &[usize], predicted: &[usize], classes: usize) -> Self {
        let mut confusion = BTreeMap::new();
        let (mut support, mut predicted_count, mut hits) = (
            vec![0usize; classes],
            vec![0usize; classes],
            vec![0usize; classes],
        );
        for (&t, &p) in truth.iter().zip(predicted) {
            *confusion.entry((t, p)).or_insert(0) += 1;
            support[t] += 1;
            predicted_count[p] += 1;
            hits[t] += usize::from(t == p);
        }
        let per_class_f1: Vec<f64> = (0..classes)
            .map(|c| match support[c] + predicted_count[c] {
                0 => f64::NAN,
                n => 2.0 * hits[c] as f64 / n as f64,
            })
            .collect();
        let present: Vec<f64> = per_class_f1
            .iter()
            .copied()
            .filter(|f| !f.is_nan())
            .collect();
        Self {
            accuracy: hits.iter().sum::<usize>() as f64 / truth.len().max(1) as f64,
            macro_f1: present.iter().sum::<f64>() / present.len().max(1) as f64,
            per_class_f1,
            support,
            confusion,
        }
    }

    /// `[truth][predicted]` counts as a dense matrix, for a few classes.
    pub fn confusion_matrix(&self) -> Vec<Vec<usize>> {
        let n = self.support.len();
        let mut matrix = vec![vec![0; n]; n];
        for (&(t, p), &count) in &self.confusion {
            matrix[t][p] = count;
        }
        matrix
    }
}

/// A labelled (image, text) set a classifier is measured on.
pub struct LabelledPairs {
    pub images: Vec<ImageInput>,
    pub texts: Vec<String>,
    /// Each pair's label as the data names it.
    pub labels: Vec<String>,
    /// What the set is, for logs.
    pub name: String,
}

/// Encoded image bytes a labelled set may hold in memory for a whole run.
const MAX_SET_BYTES: u64 = 1 << 30;

impl LabelledPairs {
    /// The first `n` samples of the built-in task's held-out split.
    pub fn builtin(task: ShapesTask, seed: u64, image_size: usize, n: usize) -> Self {
        let dataset = mm_data::ShapesDataset::new(seed, image_size as u32);
        let names = task.class_names();
        let (mut images, mut texts, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n as u64 {
            let sample = task.sample(&dataset, mm_data::Split::HeldOut, i);
            images.push(ImageInput::Decoded(image::DynamicImage::ImageRgb8(
                sample.image,
            )));
            texts.push(sample.text);
            labels.push(names[sample.label].clone());
        }
        Self {
            images,
            texts,
            labels,
            name: format!("built-in {task:?} task, held-out split, {n} pairs").to_lowercase(),
        }
    }

    /// The first `n` labelled pairs of `data` (read in order, unshuffled; unusable samples are
    /// counted in the name).
    pub fn from_source(data: &mm_data::DataConfig, n: usize) -> Result<Self> {
        let mut data = data.clone();
        data.labels = Labels::Required;
        data.shuffle_buffer = 0;
        let source = data.open_epoch(0, 0, 1)?;
        let name = source.describe();
        let (mut images, mut texts, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        let (mut skipped, mut held) = (0, 0u64);
        for item in source {
            let Ok(pair) = item else {
                skipped += 1;
                continue;
            };
            if let ImageInput::Encoded(bytes) = &pair.image {
                held += bytes.len() as u64;
                if held > MAX_SET_BYTES {
                    bail!(
                        "{name}: the first {} pairs hold more than {} MiB of encoded images, kept in memory for the whole run; use fewer samples",
                        images.len() + 1,
                        MAX_SET_BYTES >> 20
                    );
                }
            }
            images.push(pair.image);
            texts.push(pair.caption);
            labels.push(pair.label.unwrap_or_default());
            if images.len() == n {
                break;
            }
        }
        if images.is_empty() {
            bail!("{name}: no usable labelled pairs");
        }
        Ok(Self {
            name: format!(
                "{name}: {} labelled pairs ({skipped} skipped)",
                images.len()
            ),
            images,
            texts,
            labels,
        })
    }

    /// The classifier's predicted class and the true class of every pair whose image reads
    /// and whose label is one of the classifier's classes, and how many were left out.
    pub fn predict(
        &self,
        model: &FusionClassifier,
        tokenizer: &mm_data::ClipTokenizer,
        context_length: usize,
        image_size: usize,
    ) -> Result<(Vec<usize>, Vec<usize>, usize)> {
        const BATCH: usize = 64;
        let device = model.clip.logit_scale.val().device();
        let classes = &model.fusion.config.class_names;
        let plane = 3 * image_size * image_size;
        let (mut truth, mut predicted, mut skipped) = (Vec::new(), Vec::new(), 0);
        for (chunk, start) in self.images.chunks(BATCH).zip((0..).step_by(BATCH)) {
            let (mut pixels, mut texts) = (Vec::new(), Vec::new());
            for (offset, input) in chunk.iter().enumerate() {
                let index = start + offset;
                let Some(class) = classes.iter().position(|c| *c == self.labels[index]) else {
                    skipped += 1;
                    continue;
                };
                match mm_data::decode_input(input, &format!("pair {index}"), Default::default()) {
                    Ok(image) => {
                        let at = pixels.len();
                        pixels.resize(at + plane, 0.0);
                        mm_data::preprocess_into(&image, image_size, &mut pixels[at..]);
                        texts.push(self.texts[index].clone());
                        truth.push(class);
                    }
                    Err(_) => skipped += 1,
                }
            }
            if texts.is_empty() {
                continue;
            }
            let ids = tokenizer.encode_batch(&texts, context_length)?;
            let logits = model.forward(
                mm_data::pixels_tensor(pixels, image_size, &device),
                mm_data::token_ids_tensor(&ids, context_length, &device),
            );
            let n = logits.dims()[0];
            let classes = logits
                .argmax(1)
                .reshape([n])
                .into_data()
                .try_into_vec_as::<i64>()
                .map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
            predicted.extend(classes.into_iter().map(|c| c as usize));
        }
        Ok((truth, predicted, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::ClassMetrics;

    #[test]
    fn metrics_match_a_hand_count() {
        // Class 0: 3 true, 2 found (+1 false alarm); class 1: 2 true, 1 found; class 2: never
        // occurs, predicted once; class 3: neither (left out of the macro mean).
        let truth = [0, 0, 0, 1, 1];
        let predicted = [0, 0, 1, 1, 2];
        let m = ClassMetrics::new(&truth, &predicted, 4);
        let matrix = m.confusion_matrix();
        assert_eq!(matrix[0], vec![2, 1, 0, 0]);
        assert_eq!(matrix[1], vec![0, 1, 1, 0]);
        assert_eq!(matrix[2], vec![0; 4]);
        // Only the pairs that occurred are stored.
        assert_eq!(m.confusion.len(), 4);
        assert_eq!(m.support, vec![3, 2, 0, 0]);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        // F1 = 2TP / (actual + predicted): class 0 4/5, class 1 2/4, class 2 0/1.
        let want = [0.8, 0.5, 0.0];
        for (c, f1) in want.iter().enumerate() {
            assert!((m.per_class_f1[c] - f1).abs() < 1e-12, "class {c}");
        }
        assert!(m.per_class_f1[3].is_nan());
        assert!((m.macro_f1 - (0.8 + 0.5) / 3.0).abs() < 1e-12);
    }
}
