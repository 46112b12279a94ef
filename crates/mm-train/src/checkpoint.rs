//! Self-contained checkpoint directories, written atomically.
//!
//! Layout: `RUN/checkpoints/step-000500/{model.safetensors, model.toml, tokenizer.json,
//! state.json, config.toml}` and `RUN/checkpoints/latest` (the name of the newest complete
//! one). `model.toml` is the model's shape; `config.toml` is the training config of the run
//! that wrote it (absent for imported checkpoints). Each directory is assembled under a
//! temporary name and renamed into place, and `latest` is replaced by rename, so a kill at any
//! moment leaves the previous checkpoint intact.
//!
//! [`load`] also reads Hugging Face CLIP directories, so every command that takes a
//! checkpoint takes one of those too.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use mm_data::ClipTokenizer;
use mm_encoders::{
    ClipConfig, ClipModel, CocaModel, FusionClassifier, FusionConfig, MultimodalDecoder,
    from_toml_str,
};
use serde::{Deserialize, Serialize};

use crate::config::{EvalConfig, TrainConfig};
use crate::precision::Precision;
use crate::suite::Selection;
use crate::task::Trainee;

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_CONFIG_FILE: &str = "model.toml";
pub const CONFIG_FILE: &str = "config.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const STATE_FILE: &str = "state.json";
const LATEST: &str = "latest";
/// AdamW's moments, for exact resumption (burn's record of the optimiser).
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// Each parameter's burn id by module path, which the optimiser record is keyed by.
pub const PARAM_IDS_FILE: &str = "param_ids.json";

/// The classifier's own weights in a checkpoint (the towers stay in `model.safetensors`, so
/// every CLIP command still reads it).
pub const FUSION_FILE: &str = "fusion.safetensors";
/// A CoCa's caption decoder (its shape is `model.toml`'s `[multimodal]`).
pub const DECODER_FILE: &str = "text_decoder.safetensors";
/// The classifier's shape and class names.
pub const FUSION_CONFIG_FILE: &str = "fusion.toml";

/// What a checkpoint records beside the weights.
#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub step: usize,
    /// Training loss at `step` (none for imported weights).
    #[serde(default)]
    pub loss: Option<f32>,
    /// The eval suites' metrics on these weights (`SUITE/METRIC`), once measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval: BTreeMap<String, f64>,
    /// The metric that ranks the run's checkpoints (`[eval] select`): the best by it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_by: Option<String>,
    /// Where the weights came from when not from an mm run, e.g. an HF directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// Items of the training stream consumed through `step`: resuming skips this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_position: Option<u64>,
    /// Ranks of the data-parallel run that wrote it (absent: one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// Every rank's `data_position`, in rank order, for a data-parallel run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_positions: Vec<u64>,
}

impl CheckpointState {
    /// Where rank `rank` of `world_size` resumes reading its share of the data, and a note
    /// for the log when the run continues on another number of ranks than wrote this.
    /// At the same number each rank continues exactly where it was. At another, weights,
    /// optimiser and step are still exact; the global stream continues after the items all
    /// ranks consumed together, each rank skipping its share of them: exact for a CSV, a
    /// folder or the built-in data when the ranks had consumed equally, approximate for
    /// shards (re-split among the ranks) or with skipped samples.
    pub fn data_position_for(&self, rank: usize, world_size: usize) -> (u64, Option<String>) {
        let written = self.world_size.unwrap_or(1);
        let positions = match self.data_positions.as_slice() {
            [] => vec![self.data_position.unwrap_or(0)],
            all => all.to_vec(),
        };
        if written == world_size && positions.len() == world_size {
            return (positions[rank], None);
        }
        let total: u64 = positions.iter().sum();
        let (w, r) = (world_size as u64, rank as u64);
        // Global items 0..total, dealt to ranks in turn: rank r's share of them.
        let share = total / w + u64::from(r < total % w);
        let note = format!(
            "resuming at step {} on {world_size} rank(s) from a checkpoint of {written}: weights, optimiser and step are exact; the data continues after the {total} items read so far, each rank skipping its share (exact for CSV, folder and built-in data read evenly; shards are re-split, so some of this epoch's samples may repeat or be missed)",
            self.step
        );
        (share, Some(note))
    }
}

/// A checkpoint read back: everything needed to run the model.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The config of the run that wrote it; `None` for imported and HF checkpoints.
    pub train_config: Option<TrainConfig>,
    pub model_config: ClipConfig,
    pub model: ClipModel,
    /// A CoCa's caption decoder (where `model_config` has a `[multimodal]` one).
    pub decoder: Option<MultimodalDecoder>,
    pub tokenizer: ClipTokenizer,
    pub state: CheckpointState,
}

impl Checkpoint {
    /// The whole CoCa (sharing this checkpoint's towers), if it has a caption decoder.
    pub fn captioner(&self) -> Option<CocaModel> {
        Some(CocaModel {
            clip: self.model.clone(),
            text_decoder: self.decoder.clone()?,
        })
    }

    /// The whole CoCa, or an error saying this checkpoint has no caption decoder.
    pub fn coca(self) -> Result<CocaModel> {
        let Some(text_decoder) = self.decoder else {
            bail!(
                "{}: an image-text model without a caption decoder (trained with objective = \"{}\"): captioning needs a CoCa (objective = \"coca\", e.g. model = \"coca-tiny\")",
                self.dir.display(),
                self.train_config
                    .as_ref()
                    .map_or("clip".to_string(), |c| format!("{:?}", c.objective)
                        .to_lowercase())
            );
        };
        Ok(CocaModel {
            clip: self.model,
            text_decoder,
        })
    }

    /// Makes this checkpoint's model, towers and caption decoder alike, compute in `precision`
    /// on `device` until the guard drops (see [`Precision::enter_inference`]).
    pub fn enter_inference(
        &mut self,
        precision: Precision,
        device: &Device,
    ) -> mm_encoders::MatmulPrecisionGuard {
        let guard = precision.enter_inference(&mut self.model, device);
        if let Some(decoder) = &mut self.decoder {
            // Its guard restores what the first one set, so dropping it keeps the scope.
            drop(precision.enter_inference(decoder, device));
        }
        guard
    }

    /// Prompt templates for zero-shot use: the run's, else mm's default.
    pub fn templates(&self) -> Vec<String> {
        self.train_config
            .as_ref()
            .map(|c| c.eval.templates.clone())
            .unwrap_or_else(|| EvalConfig::default().templates)
    }
}

/// The parts of a checkpoint, borrowed for writing.
pub struct CheckpointParts<'a, M: Trainee = ClipModel> {
    /// The towers go to `model.safetensors`; a classifier's own parts beside them.
    pub model: &'a M,
    pub model_config: &'a ClipConfig,
    pub train_config: Option<&'a TrainConfig>,
    pub tokenizer: &'a ClipTokenizer,
    pub state: &'a CheckpointState,
    /// Optimiser state, for exact resumption of a training run.
    pub optimizer: Option<&'a burn::optim::ModuleOptimizer>,
}

impl<M: Trainee> CheckpointParts<'_, M> {
    /// Writes every file into the (new, empty) directory `dir`; `state.json` last, since its
    /// presence marks a checkpoint complete.
    fn write_into(&self, dir: &Path) -> Result<()> {
        let model_path = dir.join(MODEL_FILE);
        let mut store = SafetensorsStore::from_file(&model_path)
            .metadata("format", "mm-clip")
            .metadata("step", self.state.step.to_string());
        self.model
            .clip()
            .save_into(&mut store)
            .map_err(|e| anyhow::anyhow!("{}: writing weights: {e}", model_path.display()))?;
        if let Some(classifier) = self.model.classifier() {
            save_fusion(classifier, dir)?;
        }
        if let Some(coca) = self.model.captioner() {
            let path = dir.join(DECODER_FILE);
            let mut store =
                SafetensorsStore::from_file(&path).metadata("format", "mm-coca-decoder");
            coca.text_decoder
                .save_into(&mut store)
                .map_err(|e| anyhow::anyhow!("{}: writing weights: {e}", path.display()))?;
        }
        // Only a model that keeps its caption decoder describes one (a classifier trained
        // on CoCa's towers does not).
        let mut model_config = self.model_config.clone();
        if self.model.captioner().is_none() {
            model_config.multimodal = None;
        }
        write_synced(
            &dir.join(MODEL_CONFIG_FILE),
            toml::to_string(&model_config)?.as_bytes(),
        )?;
        if let Some(config) = self.train_config {
            write_synced(&dir.join(CONFIG_FILE), toml::to_string(config)?.as_bytes())?;
        }
        write_synced(
            &dir.join(TOKENIZER_FILE),
            self.tokenizer.to_json()?.as_bytes(),
        )?;
        if let Some(optimizer) = self.optimizer {
            let path = dir.join(OPTIMIZER_FILE);
            optimizer
                .save(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
            write_param_ids(dir, self.model)?;
        }
        write_synced(
            &dir.join(STATE_FILE),
            serde_json::to_string_pretty(self.state)?.as_bytes(),
        )
    }
}

/// Builds directory `out` atomically: `fill` writes into a temporary sibling that is renamed to
/// `out` only once it succeeded, and removed otherwise. Refuses an existing `out`.
pub fn write_dir_atomically(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            out.display()
        );
    }
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a directory name", out.display()))?
        .to_string_lossy();
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    // The folders above `out` this call creates go again if it fails: a failed write leaves
    // nothing behind.
    let created: Vec<PathBuf> = parent
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    let remove_created = || {
        for dir in &created {
            let _ = fs::remove_dir(dir); // Only while empty.
        }
    };
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_dead_writers_temps(parent, &name)?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        fill(&tmp)?;
        fs::rename(&tmp, out).with_context(|| format!("moving {} into place", out.display()))
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        remove_created();
        return Err(e);
    }
    sync_dir(parent);
    Ok(())
}

/// Removes `.{name}.tmp-PID` directories in `parent` whose writer process no longer exists
/// (killed before its rename); another live process's are left alone.
fn remove_dead_writers_temps(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // Signal 0 checks that the process exists without touching it.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let path = entry.path();
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes a checkpoint of a training run under `run_dir/checkpoints` and points `latest` at it.
/// Keeps the newest `keep` step directories (at least the new one).
pub fn save<M: Trainee>(
    run_dir: &Path,
    parts: &CheckpointParts<M>,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    let name = format!("step-{:06}", parts.state.step);
    let dir = root.join(&name);
    if dir.join(STATE_FILE).exists() {
        return Ok(dir); // This step is already saved (e.g. final step == periodic step).
    }
    write_dir_atomically(&dir, |tmp| parts.write_into(tmp))?;
    write_file_atomically(&root.join(LATEST), name.as_bytes())?;
    prune(&root, keep.max(1))?;
    Ok(dir)
}

/// Writes a stand-alone checkpoint directory at `out` (which must not exist).
pub fn save_to<M: Trainee>(out: &Path, parts: &CheckpointParts<M>) -> Result<()> {
    write_dir_atomically(out, |tmp| parts.write_into(tmp))
}

/// Replaces the file `path` with `bytes` all at once: written and synced under a hidden
/// temporary name beside it, then renamed, so readers see the old or the new file, never half.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes renames inside `dir` durable (best effort: not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Removes all but the newest `keep` step directories and the best one by the selected eval
/// metric (that of the newest checkpoint that records one).
fn prune(root: &Path, keep: usize) -> Result<()> {
    let steps = step_dirs(root);
    let scored: Vec<(PathBuf, CheckpointState)> = steps
        .iter()
        .filter_map(|d| Some((d.clone(), read_state(d).ok()?)))
        .collect();
    let selection = scored
        .iter()
        .rev()
        .find_map(|(_, s)| s.selected_by.clone())
        .map(|metric| Selection { metric });
    let mut best: Option<(f64, PathBuf)> = None;
    if let Some(selection) = &selection {
        for (dir, state) in &scored {
            let Some(&value) = state.eval.get(&selection.metric) else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(b, _)| selection.better(value, *b))
            {
                best = Some((value, dir.clone()));
            }
        }
    }
    let best = best.map(|(_, d)| d);
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        if Some(old) != best.as_ref() {
            fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    Ok(())
}

/// Whether `dir` is an open_clip directory rather than an mm checkpoint.
pub fn is_open_clip_dir(dir: &Path) -> bool {
    dir.join(mm_encoders::open_clip::CONFIG_FILE).exists() && !dir.join(STATE_FILE).exists()
}

/// Loads an open_clip directory (`open_clip_config.json`, `open_clip_model.safetensors`; a
/// CoCa or a CLIP) with OpenAI's tokenizer padding as open_clip's does.
pub fn load_open_clip(dir: &Path, device: &Device) -> Result<Checkpoint> {
    use mm_encoders::open_clip;
    let model_config = open_clip::read_config(dir)?;
    crate::memory::check_fits(
        crate::memory::weights_bytes(&model_config),
        &format!(
            "{}: a model of {} parameters",
            dir.display(),
            model_config.num_params_with_decoder()
        ),
    )
    .map_err(anyhow::Error::msg)?;
    let (model, decoder) = match model_config.multimodal {
        Some(_) => {
            let (_, coca) = open_clip::load_coca(dir, device)?;
            (coca.clip, Some(coca.text_decoder))
        }
        None => (open_clip::load_clip(dir, device)?.1, None),
    };
    crate::param_path::check_finite(&model).with_context(|| format!("{}", dir.display()))?;
    let tokenizer = ClipTokenizer::openai().with_pad_id(model_config.text.pad_id)?;
    let parts = (model_config, model, decoder, tokenizer);
    imported(dir, parts, "text_cfg.vocab_size")
}

/// A checkpoint of weights imported from `dir` (no run of mm's; its weights checked finite),
/// once its tokenizer's ids fit the model's vocabulary (`vocab_key` names that size in the
/// source's config).
fn imported(
    dir: &Path,
    (model_config, model, decoder, tokenizer): (
        ClipConfig,
        ClipModel,
        Option<MultimodalDecoder>,
        ClipTokenizer,
    ),
    vocab_key: &str,
) -> Result<Checkpoint> {
    check_tokenizer_fits(&tokenizer, &model_config, vocab_key)
        .with_context(|| format!("{}", dir.display()))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        train_config: None,
        model_config,
        model,
        decoder,
        tokenizer,
        state: CheckpointState {
            imported_from: Some(dir.display().to_string()),
            ..Default::default()
        },
    })
}

/// Whether `dir` is a Hugging Face CLIP directory rather than an mm checkpoint.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join(mm_encoders::hf::CONFIG_FILE).exists() && !dir.join(STATE_FILE).exists()
}

/// A checkpoint directory itself (mm, HF or open_clip), or a run directory (whose `checkpoints/latest`
/// is used).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("checkpoint {}: no such file or directory", path.display());
    }
    if path.join(STATE_FILE).exists()
        || path.join(MODEL_FILE).exists()
        || is_hf_dir(path)
        || is_open_clip_dir(path)
    {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        if root.join(LATEST).exists() {
            return latest(&root);
        }
    }
    bail!(
        "{}: not a checkpoint (no {STATE_FILE}), an HF CLIP directory (no config.json), an open_clip directory (no {}) nor a run directory (no checkpoints/{LATEST})",
        path.display(),
        mm_encoders::open_clip::CONFIG_FILE
    )
}

/// The checkpoint `root/latest` names. It must name a `step-N` directory inside `root` that
/// holds a complete checkpoint: a name with a path in it (`../x`, `/etc`) or one that no
/// longer exists is refused, never followed.
fn latest(root: &Path) -> Result<PathBuf> {
    let file = root.join(LATEST);
    let name = mm_data::regular_file::read_text_capped(&file, 4096)
        .with_context(|| format!("reading {}", file.display()))?;
    let name = name.trim();
    let is_step_name = name
        .strip_prefix("step-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !is_step_name {
        bail!(
            "{}: names {name:?}, not a checkpoint of this run (step-NNNNNN); pass a checkpoint directory instead",
            file.display()
        );
    }
    let dir = root.join(name);
    if !dir.join(STATE_FILE).is_file() {
        bail!(
            "{}: names {name}, which is not a complete checkpoint; pass a checkpoint directory instead",
            file.display()
        );
    }
    Ok(dir)
}

/// Step directories under `root` (`step-NNNNNN`, complete or not), oldest first.
pub fn step_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

pub fn write_param_ids<M: burn::module::Module>(dir: &Path, model: &M) -> Result<()> {
    let path = dir.join(PARAM_IDS_FILE);
    std::fs::write(
        &path,
        serde_json::to_string(&crate::param_path::param_ids(model))?,
    )
    .with_context(|| format!("writing {}", path.display()))
}

pub fn read_param_ids(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let path = dir.join(PARAM_IDS_FILE);
    let text = mm_data::regular_file::read_text(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
}

/// Checkpoint directories of a run that could be resumed from, newest first: complete
/// (`state.json` written last) and holding optimiser state.
pub fn resumable(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = step_dirs(&run_dir.join("checkpoints"));
    dirs.reverse();
    dirs.retain(|d| d.join(STATE_FILE).exists() && d.join(OPTIMIZER_FILE).exists());
    dirs
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = mm_data::regular_file::read_text(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid checkpoint state", path.display()))
}

/// Records the eval metrics measured on the weights of checkpoint `dir` after it was written
/// (the checkpoint comes first, so that a failing evaluation never costs it), and the metric
/// that ranks checkpoints; then prunes as [`save`] does, now that `dir` may be the best.
pub fn record_eval(
    dir: &Path,
    metrics: &[(String, f64)],
    selection: Option<&Selection>,
    keep: usize,
) -> Result<()> {
    let mut state = read_state(dir)?;
    state.eval = metrics.iter().cloned().collect();
    state.selected_by = selection.map(|s| s.metric.clone());
    write_file_atomically(
        &dir.join(STATE_FILE),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    match dir.parent() {
        Some(root) => prune(root, keep.max(1)),
        None => Ok(()),
    }
}

/// Takes the checkpoint at `step` out of the run when its weights produced a non-finite loss:
/// it is renamed `diverged-step-NNNNNN` (kept for inspection, never resumed from) and `latest`
/// points at the newest remaining one. Returns (where the diverged one went, the last good
/// one).
pub fn set_aside_diverged(
    run_dir: &Path,
    step: usize,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    let root = run_dir.join("checkpoints");
    let name = format!("step-{step:06}");
    let dir = root.join(&name);
    let moved = if dir.exists() {
        let to = root.join(format!("diverged-{name}"));
        if to.exists() {
            fs::remove_dir_all(&to)?;
        }
        fs::rename(&dir, &to).with_context(|| format!("moving {} aside", dir.display()))?;
        Some(to)
    } else {
        None
    };
    let good = step_dirs(&root)
        .into_iter()
        .rev()
        .find(|d| d.join(STATE_FILE).is_file());
    match &good {
        Some(good) => {
            let name = good.file_name().expect("a step dir").to_string_lossy();
            write_file_atomically(&root.join(LATEST), name.as_bytes())?;
        }
        None if root.join(LATEST).exists() => fs::remove_file(root.join(LATEST))?,
        None => {}
    }
    Ok((moved, good))
}

/// Writes the classifier's own weights and config into checkpoint directory `dir`.
pub fn save_fusion(model: &FusionClassifier, dir: &Path) -> Result<()> {
    let path = dir.join(FUSION_FILE);
    let mut store = SafetensorsStore::from_file(&path).metadata("format", "mm-fusion");
    model
        .fusion
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: writing weights: {e}", path.display()))?;
    write_file_atomically(
        &dir.join(FUSION_CONFIG_FILE),
        toml::to_string(&model.fusion.config)?.as_bytes(),
    )
}

/// The classifier of checkpoint directory `dir` on its towers `clip`; `None` when `dir` holds
/// no classifier.
pub fn load_fusion(
    dir: &Path,
    clip: ClipModel,
    device: &Device,
) -> Result<Option<FusionClassifier>> {
    let config_path = dir.join(FUSION_CONFIG_FILE);
    if !config_path.exists() {
        return Ok(None);
    }
    let text = mm_data::regular_file::read_text(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: FusionConfig = from_toml_str(&text, &config_path.display().to_string())?;
    let embed_dim = clip.visual_projection.weight.dims()[1];
    config
        .check(embed_dim)
        .map_err(|(key, why)| anyhow::anyhow!("{}: `{key}`: {why}", config_path.display()))?;
    let mut model = config.init(clip, device);
    let path = dir.join(FUSION_FILE);
    mm_data::regular_file::open_regular(&path).with_context(|| format!("{}", path.display()))?;
    load_checked(&mut model.fusion, &path)?;
    Ok(Some(model))
}

/// Loads an HF CLIP directory: config, weights, tokenizer, and a check that its image processor
/// is the transform mm applies.
pub fn load_hf(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let (model_config, model) = mm_encoders::hf::load(dir, device)?;
    crate::param_path::check_finite(&model).with_context(|| format!("{}", dir.display()))?;
    let tokenizer = mm_data::hf::load_tokenizer(dir)?;
    let ckpt = imported(
        dir,
        (model_config, model, None, tokenizer),
        "text_config.vocab_size",
    )?;
    mm_data::hf::check_image_processor(dir, ckpt.model_config.vision.image_size)?;
    Ok(ckpt)
}

/// Loads a checkpoint (mm or HF) onto `device`. Every tensor of the model must be present and
/// of the right shape; anything else is an error naming the tensor.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    if is_open_clip_dir(&dir) {
        return load_open_clip(&dir, device);
    }
    if is_hf_dir(&dir) {
        return load_hf(&dir, device);
    }
    for file in [STATE_FILE, MODEL_CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE] {
        if !dir.join(file).exists() {
            bail!("checkpoint {} is incomplete: missing {file}", dir.display());
        }
    }
    let read = |file: &str| -> Result<(String, String)> {
        let path = dir.join(file);
        let text = mm_data::regular_file::read_text(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok((text, path.display().to_string()))
    };
    let model_config = read_model_config(&dir)?;
    // Parsed but not re-validated for this machine: a checkpoint trained on `cuda` must still
    // load in a CPU-only build.
    let train_config = if dir.join(CONFIG_FILE).exists() {
        let (text, origin) = read(CONFIG_FILE)?;
        Some(from_toml_str::<TrainConfig>(&text, &origin)?)
    } else {
        None
    };
    let tokenizer = ClipTokenizer::from_file(&dir.join(TOKENIZER_FILE))?;
    check_tokenizer_fits(&tokenizer, &model_config, "text.vocab_size")
        .with_context(|| format!("checkpoint {}", dir.display()))?;
    let state = read_state(&dir)?;

    let model = load_weights(&model_config, &dir.join(MODEL_FILE), device)?;
    let decoder = match &model_config.multimodal {
        Some(shape) => {
            let path = dir.join(DECODER_FILE);
            mm_data::regular_file::open_regular(&path)
                .with_context(|| format!("{} (the caption decoder)", path.display()))?;
            let mut decoder = shape.init(device);
            load_checked(&mut decoder, &path)?;
            Some(decoder)
        }
        None => None,
    };
    Ok(Checkpoint {
        dir,
        train_config,
        model_config,
        model,
        decoder,
        tokenizer,
        state,
    })
}

/// The shape of the model at `path` (any checkpoint format, or a run directory), read
/// without its weights: what a run checks its memory against before loading them.
pub fn model_config(path: &Path) -> Result<ClipConfig> {
    let dir = resolve(path)?;
    if is_open_clip_dir(&dir) {
        return Ok(mm_encoders::open_clip::read_config(&dir)?);
    }
    if is_hf_dir(&dir) {
        return Ok(mm_encoders::hf::read_config(&dir)?);
    }
    read_model_config(&dir)
}

/// An mm checkpoint's `model.toml`, validated.
fn read_model_config(dir: &Path) -> Result<ClipConfig> {
    let path = dir.join(MODEL_CONFIG_FILE);
    let text = mm_data::regular_file::read_text(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let origin = path.display().to_string();
    let model_config: ClipConfig = from_toml_str(&text, &origin)?;
    model_config.validate(&origin)?;
    Ok(model_config)
}

/// A model of `config` with the weights of mm safetensors file `path`, checked: the file is
/// regular, the model fits in memory, every tensor is present, of the right shape and finite.
fn load_weights(config: &ClipConfig, path: &Path, device: &Device) -> Result<ClipModel> {
    mm_data::regular_file::open_regular(path).with_context(|| format!("{}", path.display()))?;
    crate::memory::check_fits(
        crate::memory::weights_bytes(config),
        &format!(
            "{}: a model of {} parameters",
            path.display(),
            config.num_params()
        ),
    )
    .map_err(anyhow::Error::msg)?;
    let mut model = config.init(device);
    load_checked(&mut model, path)?;
    Ok(model)
}

/// Loads `module`'s weights from safetensors file `path`: every tensor present once, of the
/// right shape, and finite, and nothing else in the file (a model config that declares fewer
/// layers than the weights hold is not a smaller model), or an error naming the tensor. Float
/// tensors of any dtype are converted to the dtype models compute in.
fn load_checked<M: burn::module::Module>(module: &mut M, path: &Path) -> Result<()> {
    mm_encoders::weights_file::check_header(path)?;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(mm_encoders::weights_file::to_load_dtype())
        .allow_partial(true)
        .validate(false);
    let result = module
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some((name, reason)) = result.missing.first() {
        bail!("{}: missing tensor `{name}` ({reason})", path.display());
    }
    if let Some(error) = result.errors.first() {
        bail!("{}: {error}", path.display());
    }
    if let Some(name) = result.unused.first() {
        bail!(
            "{}: unexpected tensor `{name}`: not a parameter of the model its config describes",
            path.display()
        );
    }
    crate::param_path::check_finite(module).with_context(|| format!("{}", path.display()))
}

/// A tokenizer that can emit ids beyond the embedding table would index out of range;
/// `key` names the vocabulary size in the model's config.
pub fn check_tokenizer_fits(
    tokenizer: &ClipTokenizer,
    config: &ClipConfig,
    key: &str,
) -> Result<()> {
    let (tokens, vocab) = (tokenizer.vocab_size(), config.text.vocab_size);
    if tokens > vocab {
        bail!("the tokenizer has {tokens} tokens but {key} is {vocab}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Step directories with `metric` at the given values, pruned to `keep`: what is left.
    fn pruned(metric: &str, values: [(usize, Option<f64>); 4], keep: usize) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for (step, value) in values {
            let step_dir = dir.path().join(format!("step-{step:06}"));
            fs::create_dir(&step_dir).unwrap();
            let state = CheckpointState {
                step,
                eval: value.map(|v| (metric.to_string(), v)).into_iter().collect(),
                selected_by: value.map(|_| metric.into()),
                ..Default::default()
            };
            fs::write(
                step_dir.join(STATE_FILE),
                serde_json::to_string(&state).unwrap(),
            )
            .unwrap();
        }
        prune(dir.path(), keep).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        left
    }

    #[test]
    fn pruning_keeps_the_best_by_a_loss_the_lowest() {
        let values = [
            (100, Some(2.0)),
            (200, Some(0.5)),
            (300, Some(0.3)),
            (400, Some(0.9)),
        ];
        assert_eq!(
            pruned("val/loss", values, 1),
            ["step-000300", "step-000400"]
        );
        assert_eq!(
            pruned("val/top1", values, 1),
            ["step-000100", "step-000400"]
        );
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_best() {
        let values = [
            (100, Some(0.2)),
            (200, Some(0.5)),
            (300, Some(0.3)),
            (400, None),
        ];
        assert_eq!(
            pruned("shapes/top1", values, 2),
            ["step-000200", "step-000300", "step-000400"]
        );
    }
}
