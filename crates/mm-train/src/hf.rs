//! Hugging Face CLIP directories and mm checkpoints: import one as an mm checkpoint, export an
//! mm checkpoint as one (what `CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained`
//! read). [`checkpoint::load`] reads an HF directory directly.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::Device;
use mm_encoders::hf;

use crate::checkpoint::{self, Checkpoint, CheckpointParts};

/// `mm-train import-hf DIR --out CKPT`: an mm checkpoint with the same weights, bit for bit.
pub fn import(dir: &Path, out: &Path, device: &Device) -> Result<Checkpoint> {
    if out.exists() {
        bail!(
            "{} already exists; choose a new output directory",
            out.display()
        );
    }
    let ckpt = checkpoint::load_hf(dir, device)?;
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
