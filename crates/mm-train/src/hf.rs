//! Hugging Face CLIP directories as checkpoints: load one directly, import it as an mm
//! checkpoint, export an mm checkpoint as one (what `CLIPModel.from_pretrained` and
//! `CLIPProcessor.from_pretrained` read).

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use mm_encoders::hf;

use crate::checkpoint::{self, Checkpoint, CheckpointParts, CheckpointState};

/// Loads an HF CLIP directory: config, weights, tokenizer, and a check that its image processor
/// is the transform mm applies.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let (model_config, model) = hf::load(dir, device)?;
    crate::param_path::check_finite(&model).with_context(|| format!("{}", dir.display()))?;
    let tokenizer = mm_data::hf::load_tokenizer(dir)?;
    checkpoint::check_tokenizer_fits(&tokenizer, &model_config, "text_config.vocab_size")
        .with_context(|| format!("{}", dir.display()))?;
    mm_data::hf::check_image_processor(dir, model_config.vision.image_size)?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        train_config: None,
        model_config,
        model,
        tokenizer,
        state: CheckpointState {
            imported_from: Some(dir.display().to_string()),
            ..Default::default()
        },
    })
}

/// `mm-train import-hf DIR --out CKPT`: an mm checkpoint with the same weights, bit for bit.
pub fn import(dir: &Path, out: &Path, device: &Device) -> Result<Checkpoint> {
    if out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            out.display()
        );
    }
    let ckpt = load(dir, device)?;
    checkpoint::save_to(
        out,
        &CheckpointParts {
            model: &ckpt.model,
            model_config: &ckpt.model_config,
            train_config: None,
            tokenizer: &ckpt.tokenizer,
            state: &ckpt.state,
            optimizer: None,
        },
    )?;
    Ok(ckpt)
}

/// `mm-train export-hf CKPT --out DIR`: an HF CLIP directory (config, weights, tokenizer,
/// image processor). Nothing appears at `out` unless every file was written.
pub fn export(checkpoint_path: &Path, out: &Path, device: &Device) -> Result<Checkpoint> {
    if out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            out.display()
        );
    }
    let ckpt = checkpoint::load(checkpoint_path, device)?;
    let config = &ckpt.model_config;
    checkpoint::write_dir_atomically(out, |dir| {
        let json = hf::config_to_hf(config, ckpt.tokenizer.sot_id(), ckpt.tokenizer.pad_id());
        std::fs::write(
            dir.join(hf::CONFIG_FILE),
            serde_json::to_string_pretty(&json)? + "\n",
        )?;
        hf::save_weights(&ckpt.model, &dir.join(hf::WEIGHTS_FILE))?;
        mm_data::hf::write_tokenizer(dir, &ckpt.tokenizer, config.text.context_length)?;
        mm_data::hf::write_image_processor(dir, config.vision.image_size)?;
        Ok(())
    })?;
    Ok(ckpt)
}
