//! Self-contained checkpoint directories, written atomically.
//!
//! Layout: `RUN/checkpoints/step-000500/{model.safetensors, config.toml, tokenizer.json,
//! state.json}` and `RUN/checkpoints/latest` (the name of the newest complete one). Each
//! directory is assembled under a temporary name and renamed into place, and `latest` is
//! replaced by rename, so a kill at any moment leaves the previous checkpoint intact.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;
use mm_data::ClipTokenizer;
use mm_encoders::{ClipConfig, ClipModel, from_toml_str};
use serde::{Deserialize, Serialize};

use crate::config::{ModelSpec, TrainConfig};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const STATE_FILE: &str = "state.json";
const LATEST: &str = "latest";

/// What a checkpoint records beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub step: usize,
    pub loss: f32,
    pub zero_shot_accuracy: Option<f64>,
}

/// A checkpoint read back: everything needed to run the model.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub model_config: ClipConfig,
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub state: CheckpointState,
}

/// Writes a checkpoint of `model` under `run_dir/checkpoints` and points `latest` at it.
/// Keeps the newest `keep` step directories (at least the new one).
pub fn save(
    run_dir: &Path,
    model: &ClipModel,
    config: &TrainConfig,
    tokenizer: &ClipTokenizer,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("step-{:06}", state.step);
    let dir = root.join(&name);
    if dir.join(STATE_FILE).exists() {
        return Ok(dir); // This step is already saved (e.g. final step == periodic step).
    }
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

    let mut resolved = config.clone();
    resolved.model = ModelSpec::Inline(Box::new(config.model.resolve()?));
    let model_path = tmp.join(MODEL_FILE);
    let mut store = SafetensorsStore::from_file(&model_path)
        .metadata("format", "mm-clip")
        .metadata("step", state.step.to_string());
    model
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: writing weights: {e}", model_path.display()))?;
    write_synced(
        &tmp.join(CONFIG_FILE),
        toml::to_string(&resolved)?.as_bytes(),
    )?;
    write_synced(&tmp.join(TOKENIZER_FILE), tokenizer.to_json()?.as_bytes())?;
    // state.json last: its presence marks the directory complete.
    write_synced(
        &tmp.join(STATE_FILE),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    fs::rename(&tmp, &dir).with_context(|| format!("moving checkpoint into {}", dir.display()))?;

    let latest_tmp = root.join(format!(".{LATEST}.tmp"));
    write_synced(&latest_tmp, name.as_bytes())?;
    fs::rename(&latest_tmp, root.join(LATEST))?;
    sync_dir(&root);
    prune(&root, keep.max(1))?;
    Ok(dir)
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

/// Removes all but the newest `keep` complete step directories.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut steps: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for old in &steps[..excess] {
        fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// A checkpoint directory itself, or a run directory (whose `checkpoints/latest` is used).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("checkpoint {}: no such file or directory", path.display());
    }
    if path.join(STATE_FILE).exists() || path.join(MODEL_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        let latest = root.join(LATEST);
        if latest.exists() {
            let name = fs::read_to_string(&latest)
                .with_context(|| format!("reading {}", latest.display()))?;
            return Ok(root.join(name.trim()));
        }
    }
    bail!(
        "{}: not a checkpoint (no {STATE_FILE}) nor a run directory (no checkpoints/{LATEST})",
        path.display()
    )
}

/// Loads a checkpoint onto `device`. Every tensor of the model must be present and of the
/// right shape; anything else is an error naming the tensor.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    for file in [STATE_FILE, CONFIG_FILE, TOKENIZER_FILE, MODEL_FILE] {
        if !dir.join(file).exists() {
            bail!("checkpoint {} is incomplete: missing {file}", dir.display());
        }
    }
    let config_path = dir.join(CONFIG_FILE);
    // Parsed but not re-validated for this machine: a checkpoint trained on `cuda` must still
    // load in a CPU-only build.
    let config: TrainConfig = from_toml_str(
        &fs::read_to_string(&config_path)?,
        &config_path.display().to_string(),
    )?;
    let model_config = config.model.resolve()?;
    let tokenizer = ClipTokenizer::from_file(&dir.join(TOKENIZER_FILE))?;
    let state_path = dir.join(STATE_FILE);
    let state: CheckpointState = serde_json::from_str(&fs::read_to_string(&state_path)?)
        .with_context(|| format!("{}: invalid checkpoint state", state_path.display()))?;

    let mut model = model_config.init(device);
    let weights = dir.join(MODEL_FILE);
    let mut store = SafetensorsStore::from_file(&weights);
    let result = model
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
    if let Some((name, reason)) = result.missing.first() {
        bail!("{}: missing tensor `{name}` ({reason})", weights.display());
    }
    if let Some(error) = result.errors.first() {
        bail!("{}: {error}", weights.display());
    }
    Ok(Checkpoint {
        dir,
        config,
        model_config,
        model,
        tokenizer,
        state,
    })
}
