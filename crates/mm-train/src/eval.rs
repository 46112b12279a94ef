//! Evaluation suites: zero-shot classification (prompt ensembles, top-1/top-5, per class),
//! image<->text retrieval (R@1/5/10, median rank) and a linear probe on frozen image
//! embeddings. `mm-train eval` runs them on a checkpoint and writes `eval.json` beside it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mm_contrastive::l2_normalize;
use mm_data::{ClipTokenizer, ImageInput, SampleError, ShapesDataset, Split, token_ids_tensor};
use mm_encoders::ClipModel;
use serde::Serialize;

use crate::caption_metrics::CaptionScores;
use crate::image_chunks::map_image_chunks;
use crate::zero_shot::ZeroShotClassifier;

/// Images encoded per forward pass.
const BATCH: usize = 128;

/// Images with class labels.
pub struct LabelledImages {
    pub images: Vec<ImageInput>,
    pub labels: Vec<usize>,
    pub class_names: Vec<String>,
}

impl LabelledImages {
    /// The first `n` samples of a split of the built-in data, labelled by colour x shape.
    pub fn shapes(dataset: &ShapesDataset, split: Split, n: usize) -> Self {
        Self::shapes_with_captions(dataset, split, n).0
    }

    /// [`Self::shapes`] and the samples' captions, each picture drawn once.
    pub fn shapes_with_captions(
        dataset: &ShapesDataset,
        split: Split,
        n: usize,
    ) -> (Self, Vec<String>) {
        let (set, captions, _) = Self::shapes_with_references(dataset, split, n);
        (set, captions)
    }

    /// [`Self::shapes_with_captions`] and every caption each picture could have had (the
    /// references generated captions are scored against).
    pub fn shapes_with_references(
        dataset: &ShapesDataset,
        split: Split,
        n: usize,
    ) -> (Self, Vec<String>, Vec<Vec<String>>) {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        let (mut captions, mut references) = (Vec::new(), Vec::new());
        for i in 0..n as u64 {
            let s = dataset.sample(split, i);
            references.push(s.references());
            images.push(ImageInput::Decoded(image::DynamicImage::ImageRgb8(s.image)));
            labels.push(s.class);
            captions.push(s.caption);
        }
        let set = Self {
            images,
            labels,
            class_names: ShapesDataset::class_names(),
        };
        (set, captions, references)
    }

    /// A folder per class (`root/golden_retriever/*.jpg`; `_` reads as a space in the class
    /// name), as torchvision's ImageFolder. Beyond `limit` images, an evenly spaced `limit`
    /// of them (every class keeps its share).
    pub fn from_folder(root: &Path, limit: usize) -> Result<Self> {
        let listing = |dir: &Path| -> Result<Vec<std::path::PathBuf>> {
            let mut entries = Vec::new();
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?
            {
                entries.push(entry?.path());
                if entries.len() > MAX_FOLDER_ENTRIES {
                    bail!("{}: more than {MAX_FOLDER_ENTRIES} entries", dir.display());
                }
            }
            entries.sort();
            Ok(entries)
        };
        let classes: Vec<_> = listing(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if classes.is_empty() {
            bail!("{}: no class folders", root.display());
        }
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for (label, dir) in classes.iter().enumerate() {
            for file in listing(dir)?.into_iter().filter(|p| p.is_file()) {
                images.push(ImageInput::File(file));
                labels.push(label);
                if images.len() > MAX_FOLDER_ENTRIES {
                    bail!("{}: more than {MAX_FOLDER_ENTRIES} images", root.display());
                }
            }
        }
        if images.is_empty() {
            bail!("{}: no files in the class folders", root.display());
        }
        if images.len() > limit {
            let total = images.len();
            let keep: Vec<usize> = (0..limit).map(|i| i * total / limit).collect();
            images = keep.iter().map(|&i| images[i].clone()).collect();
            labels = keep.iter().map(|&i| labels[i]).collect();
        }
        let class_names = classes
            .iter()
            .map(|d| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .replace('_', " ")
            })
            .collect();
        Ok(Self {
            images,
            labels,
            class_names,
        })
    }

    /// The first `limit` usable rows of a CSV/TSV of (image path, label) rows, read as
    /// training reads a CSV (paths relative to the file; bad rows skipped). Labels are class
    /// names; with `classes` (see [`Self::read_class_names`]) they are names in it or 0-based
    /// indices into it, else the classes are the distinct labels, sorted.
    pub fn from_csv(
        path: &Path,
        columns: &mm_data::CsvColumns,
        classes: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Self> {
        let rows = mm_data::CsvSource::open(path, columns)?
            .filter_map(|row| row.ok())
            .take(limit);
        let (mut images, mut labels, mut names) = (Vec::new(), Vec::new(), Vec::new());
        for pair in rows {
            let label = pair.caption;
            if let Some(classes) = &classes {
                let index = classes
                    .iter()
                    .position(|c| *c == label)
                    .or_else(|| label.parse::<usize>().ok().filter(|&i| i < classes.len()))
                    .with_context(|| {
                        format!(
                            "{}: label {label:?} is neither a class name nor an index below {}",
                            pair.location,
                            classes.len()
                        )
                    })?;
                labels.push(index);
            }
            images.push(pair.image);
            names.push(label);
        }
        if images.is_empty() {
            bail!("{}: no usable rows", path.display());
        }
        let class_names = match classes {
            Some(classes) => classes,
            None => {
                let mut classes = names.clone();
                classes.sort();
                classes.dedup();
                labels = names
                    .iter()
                    .map(|l| classes.binary_search(l).expect("collected above"))
                    .collect();
                classes
            }
        };
        Ok(Self {
            images,
            labels,
            class_names,
        })
    }

    /// Class names from a text file, one per line (see [`class_names`]).
    pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
        let text = mm_data::regular_file::read_text(path)
            .with_context(|| format!("reading class names from {}", path.display()))?;
        let names = class_names(&text);
        if names.is_empty() {
            bail!("{}: no class names", path.display());
        }
        Ok(names)
    }

    /// The same set with its classes named by `names` (one per class, in class order), as
    /// ImageNet's folders of ids are named by a class list.
    pub fn renamed(self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.class_names.len() {
            bail!(
                "{} class names for {} class folders",
                names.len(),
                self.class_names.len()
            );
        }
        Ok(Self {
            class_names: names,
            ..self
        })
    }
}

/// Class names, one per line, trimmed; blank lines are not classes.
pub fn class_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Entries listed from one folder of a labelled set.
const MAX_FOLDER_ENTRIES: usize = 10_000_000;

/// Encoded images (tar members) a paired set may keep in memory.
pub const MAX_PAIRS_BYTES: u64 = 2 << 30;

/// Image-caption pairs for retrieval.
pub struct PairedSet {
    pub images: Vec<ImageInput>,
    pub captions: Vec<String>,
    pub name: String,
}

impl PairedSet {
    /// The first `n` usable pairs of a data source (shards, CSV or folder), in order; skipped
    /// samples are counted in the name.
    pub fn from_source(config: &mm_data::DataConfig, n: usize, image_size: usize) -> Result<Self> {
        let mut source = config.open_epoch(0, 0, image_size)?;
        let name = source.describe();
        let (mut images, mut captions, mut skipped) = (Vec::new(), Vec::new(), 0);
        let mut held = 0u64;
        for item in source.as_mut() {
            match item {
                Ok(pair) => {
                    if let ImageInput::Encoded(bytes) = &pair.image {
                        held += bytes.len() as u64;
                    }
                    if held > MAX_PAIRS_BYTES {
                        bail!(
                            "{name}: the first {} pairs hold more than {} MiB of encoded images, kept in memory for the whole run; use fewer pairs",
                            images.len() + 1,
                            MAX_PAIRS_BYTES >> 20
                        );
                    }
                    images.push(pair.image);
                    captions.push(pair.caption);
                }
                Err(_) => skipped += 1,
            }
            if images.len() == n {
                break;
            }
        }
        if images.is_empty() {
            bail!("{name}: no usable image-caption pairs");
        }
        let name = format!("{name}: first {} pairs ({skipped} skipped)", images.len());
        Ok(Self {
            images,
            captions,
            name,
        })
    }
}

/// Image embeddings of a set, and the images that could not be read.
pub struct EncodedImages {
    /// L2-normalised, `[kept.len(), embed_dim]`.
    pub embeddings: Tensor<2>,
    /// Which inputs the rows of `embeddings` are (indices into the input, in order).
    pub kept: Vec<usize>,
    /// Unreadable images (missing, not an image, too large), skipped as training skips them.
    pub skipped: Vec<SampleError>,
}

impl EncodedImages {
    /// `values[i]` for every kept input `i`: labels or captions of the images that were read.
    pub fn select<T: Clone>(&self, values: &[T]) -> Vec<T> {
        self.kept.iter().map(|&i| values[i].clone()).collect()
    }
}

/// Image embeddings through the eval transform. An unreadable image is skipped and reported
/// (with its path), not fatal; a set with no readable image is an error.
pub fn encode_images(
    model: &ClipModel,
    images: &[ImageInput],
    image_size: usize,
) -> Result<EncodedImages> {
    let device = model.logit_scale.val().device();
    let chunks = map_image_chunks(images, image_size, &device, BATCH, |pixels, _| {
        Ok(l2_normalize(model.image_features(pixels)))
    })?;
    Ok(EncodedImages {
        embeddings: Tensor::cat(chunks.outputs, 0),
        kept: chunks.kept,
        skipped: chunks.skipped,
    })
}

/// L2-normalised text embeddings `[n, embed_dim]`.
pub fn encode_texts(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    texts: &[String],
    context_length: usize,
) -> Result<Tensor<2>> {
    let device = model.logit_scale.val().device();
    if texts.is_empty() {
        bail!("no texts to encode");
    }
    let mut parts = Vec::new();
    for chunk in texts.chunks(BATCH) {
        let ids = tokenizer.encode_batch(chunk, context_length)?;
        parts.push(l2_normalize(model.text_features(token_ids_tensor(
            &ids,
            context_length,
            &device,
        ))));
    }
    Ok(Tensor::cat(parts, 0))
}

fn host(t: Tensor<2>) -> Result<(Vec<f32>, usize)> {
    let cols = t.dims()[1];
    let values = t
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor: {e:?}"))?;
    Ok((values, cols))
}

/// 0-based rank of `row[target]` among `row` (how many score strictly higher).
fn rank_of(row: &[f32], target: usize) -> usize {
    row.iter().filter(|&&s| s > row[target]).count()
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassAccuracy {
    pub class: String,
    pub images: usize,
    pub top1: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ZeroShotReport {
    pub images: usize,
    pub classes: usize,
    pub templates: usize,
    pub top1: f64,
    pub top5: f64,
    /// Mean over classes of per-class top-1 (balanced accuracy).
    pub mean_per_class: f64,
    pub per_class: Vec<ClassAccuracy>,
}

/// Zero-shot classification of `images` (embeddings from [`encode_images`]) into the set's
/// classes, text embeddings averaged over `templates` (OpenAI CLIP's prompt ensembling).
pub fn zero_shot(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    context_length: usize,
    image_embeddings: Tensor<2>,
    class_names: &[String],
    labels: &[usize],
    templates: &[String],
) -> Result<ZeroShotReport> {
    let classifier =
        ZeroShotClassifier::new(model, tokenizer, class_names, templates, context_length)?;
    let (scores, n_classes) =
        host(image_embeddings.matmul(classifier.class_embeddings.transpose()))?;
    if scores.iter().any(|s| !s.is_finite()) {
        bail!("the model gives NaN or infinite scores (diverged weights?)");
    }
    let mut per_class = vec![(0usize, 0usize); n_classes];
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in scores.chunks(n_classes).zip(labels) {
        let rank = rank_of(row, label);
        top1 += (rank == 0) as usize;
        top5 += (rank < 5) as usize;
        per_class[label].0 += 1;
        per_class[label].1 += (rank == 0) as usize;
    }
    let n = labels.len().max(1) as f64;
    let per_class: Vec<ClassAccuracy> = per_class
        .iter()
        .zip(class_names)
        .map(|(&(images, correct), class)| ClassAccuracy {
            class: class.clone(),
            images,
            top1: correct as f64 / images.max(1) as f64,
        })
        .collect();
    let present: Vec<&ClassAccuracy> = per_class.iter().filter(|c| c.images > 0).collect();
    Ok(ZeroShotReport {
        images: labels.len(),
        classes: n_classes,
        templates: templates.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        mean_per_class: present.iter().map(|c| c.top1).sum::<f64>() / present.len().max(1) as f64,
        per_class,
    })
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Recall {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    /// Median 1-based rank of the true match.
    pub median_rank: f64,
}

impl Recall {
    fn from_ranks(mut ranks: Vec<usize>) -> Self {
        let n = ranks.len().max(1) as f64;
        let at = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / n;
        let (r1, r5, r10) = (at(1), at(5), at(10));
        ranks.sort_unstable();
        let m = ranks.len();
        let median_rank = match m {
            0 => f64::NAN,
            _ if m % 2 == 1 => ranks[m / 2] as f64 + 1.0,
            _ => (ranks[m / 2 - 1] + ranks[m / 2]) as f64 / 2.0 + 1.0,
        };
        Self {
            r1,
            r5,
            r10,
            median_rank,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RetrievalReport {
    pub pairs: usize,
    pub image_to_text: Recall,
    pub text_to_image: Recall,
}

/// Retrieval between `n` images and their `n` captions (row i of each is a pair): for each
/// image, the rank of its caption among all captions, and the other way round.
pub fn retrieval(
    image_embeddings: Tensor<2>,
    text_embeddings: Tensor<2>,
) -> Result<RetrievalReport> {
    let (scores, n) = host(image_embeddings.matmul(text_embeddings.transpose()))?;
    let image_to_text = (0..n)
        .map(|i| rank_of(&scores[i * n..(i + 1) * n], i))
        .collect();
    let text_to_image = (0..n)
        .map(|j| {
            let column: Vec<f32> = (0..n).map(|i| scores[i * n + j]).collect();
            rank_of(&column, j)
        })
        .collect();
    Ok(RetrievalReport {
        pairs: n,
        image_to_text: Recall::from_ranks(image_to_text),
        text_to_image: Recall::from_ranks(text_to_image),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct LinearProbeReport {
    pub train_images: usize,
    pub val_images: usize,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
}

/// Multinomial logistic regression on frozen embeddings.
#[derive(Module, Debug)]
struct Probe {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

impl Probe {
    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze()
    }
}

/// Linear probe: logistic regression (full batch, AdamW, decay 1e-4, 300 steps from zero) on
/// `train` embeddings, accuracy on `val`. Deterministic.
pub fn linear_probe(
    train: (Tensor<2>, &[usize]),
    val: (Tensor<2>, &[usize]),
    classes: usize,
    device: &Device,
) -> Result<LinearProbeReport> {
    let autodiff = device.clone().autodiff();
    let to = |t: Tensor<2>, d: &Device| -> Result<Tensor<2>> {
        let dims = t.dims();
        let (values, _) = host(t)?;
        Ok(Tensor::from_data(TensorData::new(values, dims), d))
    };
    let labels = |l: &[usize], d: &Device| {
        Tensor::<1, Int>::from_data(
            TensorData::new(l.iter().map(|&x| x as i64).collect::<Vec<_>>(), [l.len()]),
            d,
        )
    };
    let (x, y) = (to(train.0, &autodiff)?, labels(train.1, &autodiff));
    let dim = x.dims()[1];
    let mut probe = Probe {
        weight: Param::from_tensor(Tensor::zeros([dim, classes], &autodiff)),
        bias: Param::from_tensor(Tensor::zeros([classes], &autodiff)),
    };
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    for _ in 0..300 {
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&autodiff)
            .forward(probe.logits(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &probe);
        probe = optim.step(1e-2, probe, grads);
    }
    let accuracy = |probe: &Probe, x: Tensor<2>, labels: &[usize]| -> Result<f64> {
        let predicted = probe
            .logits(x)
            .argmax(1)
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
        let correct = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p as usize == **l)
            .count();
        Ok(correct as f64 / labels.len().max(1) as f64)
    };
    let probe = probe.valid();
    Ok(LinearProbeReport {
        train_images: train.1.len(),
        val_images: val.1.len(),
        train_accuracy: accuracy(&probe, to(x.detach(), device)?, train.1)?,
        val_accuracy: accuracy(&probe, to(val.0, device)?, val.1)?,
    })
}

/// Everything `mm-train eval` measures, as written to `eval.json`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub step: usize,
    /// What the sets were (the built-in held-out split, or a folder).
    pub dataset: String,
    /// The retrieval pairs, when not those of `dataset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval_dataset: Option<String>,
    /// Images that could not be read (left out of every suite), and the first few of them.
    pub skipped_images: usize,
    pub skipped_examples: Vec<String>,
    pub zero_shot: ZeroShotReport,
    pub retrieval: Option<RetrievalReport>,
    pub linear_probe: LinearProbeReport,
    /// A CoCa's captions of the retrieval images, scored against their captions (on the
    /// built-in data: every caption the picture could have, and its colour and shape words).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captions: Option<CaptionEval>,
}

/// The captions part of an [`EvalReport`].
#[derive(Clone, Debug, Serialize)]
pub struct CaptionEval {
    /// `greedy` or `beam search of N`.
    pub decoding: String,
    pub scores: CaptionScores,
    /// The first few captions, with the first reference of each.
    pub examples: Vec<(String, String)>,
}

/// Which sets to evaluate on.
pub enum EvalData {
    /// The built-in shapes: zero-shot and retrieval on `samples` held-out images (with their
    /// captions), linear probe trained on as many training-split images.
    Shapes {
        seed: u64,
        samples: usize,
        placement: mm_data::Placement,
    },
    /// A labelled set (folder per class or CSV): zero-shot on all images; linear probe trained
    /// on four of every five images and tested on the fifth.
    Labelled { set: LabelledImages, name: String },
}

/// Runs the suites on a loaded checkpoint. Retrieval runs on `pairs` if given, else on the
/// built-in held-out pairs when `data` is the built-in set.
pub fn evaluate(
    ckpt: &crate::Checkpoint,
    data: EvalData,
    pairs: Option<PairedSet>,
    templates: &[String],
    (beams, length_penalty): (usize, f32),
    device: &Device,
) -> Result<EvalReport> {
    let model = &ckpt.model;
    let size = ckpt.model_config.vision.image_size;
    let ctx = ckpt.model_config.text.context_length;
    let mut skipped = Vec::new();
    let class_names = match &data {
        EvalData::Shapes { .. } => ShapesDataset::class_names(),
        EvalData::Labelled { set, .. } => set.class_names.clone(),
    };
    let captioner = ckpt.captioner();
    let mut caption_set = None;
    let (dataset, labels, images, probe, builtin_pairs) = match data {
        EvalData::Shapes {
            seed,
            samples,
            placement,
        } => {
            let shapes = ShapesDataset::new(seed, size as u32).with_placement(placement);
            let (set, captions, references) =
                LabelledImages::shapes_with_references(&shapes, Split::HeldOut, samples);
            if captioner.is_some() && pairs.is_none() {
                caption_set = Some((set.images.clone(), references, Some(set.labels.clone())));
            }
            let images = encode_images(model, &set.images, size)?.embeddings;
            let train = LabelledImages::shapes(&shapes, Split::Train, samples);
            let train_images = encode_images(model, &train.images, size)?.embeddings;
            let probe = linear_probe(
                (train_images, &train.labels),
                (images.clone(), &set.labels),
                set.class_names.len(),
                device,
            )?;
            let name = format!("built-in shapes, held-out split (seed {seed}), {samples} images");
            (name, set.labels, images, probe, Some(captions))
        }
        EvalData::Labelled { set, name } => {
            let encoded = encode_images(model, &set.images, size)?;
            let labels = encoded.select(&set.labels);
            skipped.extend(encoded.skipped);
            let images = encoded.embeddings;
            let (train, val): (Vec<usize>, Vec<usize>) =
                (0..labels.len()).partition(|i| i % 5 != 4);
            let rows = |idx: &[usize]| {
                let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
                images.clone().select(
                    0,
                    Tensor::<1, Int>::from_data(TensorData::new(ids, [idx.len()]), device),
                )
            };
            let pick = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
            let (train_labels, val_labels) = (pick(&train), pick(&val));
            let probe = linear_probe(
                (rows(&train), &train_labels),
                (rows(&val), &val_labels),
                class_names.len(),
                device,
            )?;
            (name, labels, images, probe, None)
        }
    };
    if let (Some(_), Some(pairs)) = (&captioner, &pairs) {
        let references = pairs.captions.iter().map(|c| vec![c.clone()]).collect();
        caption_set = Some((pairs.images.clone(), references, None));
    }
    let captions = match (&captioner, caption_set) {
        (Some(coca), Some((images, references, classes))) => {
            let scored = crate::captioner::score_captions(
                coca,
                &ckpt.tokenizer,
                (&images, size),
                (&references, classes.as_deref()),
                (beams, length_penalty),
                ctx,
            )?;
            Some(CaptionEval {
                decoding: match beams {
                    1 => "greedy".into(),
                    n => format!("beam search of {n} (length penalty {length_penalty})"),
                },
                examples: scored
                    .texts
                    .iter()
                    .zip(&references)
                    .take(5)
                    .map(|(t, r)| (t.clone(), r[0].clone()))
                    .collect(),
                scores: scored.scores,
            })
        }
        _ => None,
    };
    let retrieval_report = match (&pairs, builtin_pairs) {
        (Some(pairs), _) => {
            let encoded = encode_images(model, &pairs.images, size)?;
            let captions = encoded.select(&pairs.captions);
            skipped.extend(encoded.skipped);
            Some(retrieval(
                encoded.embeddings,
                encode_texts(model, &ckpt.tokenizer, &captions, ctx)?,
            )?)
        }
        (None, Some(captions)) => Some(retrieval(
            images.clone(),
            encode_texts(model, &ckpt.tokenizer, &captions, ctx)?,
        )?),
        (None, None) => None,
    };
    let zero_shot = zero_shot(
        model,
        &ckpt.tokenizer,
        ctx,
        images,
        &class_names,
        &labels,
        templates,
    )?;
    Ok(EvalReport {
        checkpoint: ckpt.dir.display().to_string(),
        step: ckpt.state.step,
        dataset,
        retrieval_dataset: pairs.map(|p| p.name),
        skipped_images: skipped.len(),
        skipped_examples: skipped.iter().take(5).map(|e| e.to_string()).collect(),
        zero_shot,
        retrieval: retrieval_report,
        linear_probe: probe,
        captions,
    })
}

impl EvalReport {
    /// The report as a table for the terminal.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:6.2}%", 100.0 * x);
        let mut out = format!(
            "{} (step {})\n{}\n\n  zero-shot ({} images, {} classes, {} template(s))\n    top-1 {}   top-5 {}   mean per class {}\n",
            self.checkpoint,
            self.step,
            self.dataset,
            self.zero_shot.images,
            self.zero_shot.classes,
            self.zero_shot.templates,
            pct(self.zero_shot.top1),
            pct(self.zero_shot.top5),
            pct(self.zero_shot.mean_per_class)
        );
        if self.skipped_images > 0 {
            out += &format!(
                "  skipped {} unreadable image(s), e.g.:\n",
                self.skipped_images
            );
            for example in &self.skipped_examples {
                out += &format!("    {example}\n");
            }
        }
        if let Some(r) = &self.retrieval {
            if let Some(name) = &self.retrieval_dataset {
                out += &format!("  retrieval set: {name}\n");
            }
            out += &format!(
                "  retrieval ({} pairs)      R@1      R@5     R@10   median rank\n",
                r.pairs
            );
            for (name, recall) in [
                ("image -> text", &r.image_to_text),
                ("text -> image", &r.text_to_image),
            ] {
                out += &format!(
                    "    {name}          {}  {}  {}   {}\n",
                    pct(recall.r1),
                    pct(recall.r5),
                    pct(recall.r10),
                    recall.median_rank
                );
            }
        }
        let p = &self.linear_probe;
        out += &format!(
            "  linear probe (train {}, val {})\n    val accuracy {}   train accuracy {}\n",
            p.train_images,
            p.val_images,
            pct(p.val_accuracy),
            pct(p.train_accuracy)
        );
        if let Some(c) = &self.captions {
            let s = &c.scores;
            out += &format!(
                "  captions ({} images, {})\n    CIDEr-D {:.3}   BLEU-1..4 {:.3} {:.3} {:.3} {:.3}\n",
                s.images, c.decoding, s.cider_d, s.bleu[0], s.bleu[1], s.bleu[2], s.bleu[3]
            );
            if let Some(a) = &s.attributes {
                out += &format!(
                    "    colour and shape right {}   colour {}   shape {}\n",
                    pct(a.colour_and_shape),
                    pct(a.colour),
                    pct(a.shape)
                );
            }
            for (text, reference) in &c.examples {
                out += &format!("    {text:?} (e.g. {reference:?})\n");
            }
        }
        out
    }
}
