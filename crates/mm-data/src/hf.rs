//! The data half of an HF CLIP directory: the tokenizer files and the image processor config.
//!
//! mm's image transform is CLIP's eval transform at the model's input size (resize the short
//! side to it, centre-crop, CLIP mean/std). An `preprocessor_config.json` that asks for
//! anything else is refused by key rather than run differently.

use std::path::Path;

use serde_json::{Value, json};

use crate::preprocess::{CLIP_MEAN, CLIP_STD};
use crate::tokenizer::{END_TOKEN, START_TOKEN};
use crate::{ClipTokenizer, DataError};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";
pub const IMAGE_PROCESSOR_FILE: &str = "preprocessor_config.json";
/// transformers 5 nests the image processor config under `image_processor` in this file.
pub const PROCESSOR_FILE: &str = "processor_config.json";

fn read_json(path: &Path) -> Result<Option<Value>, DataError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::regular_file::read_text(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DataError::Config(format!("{}: invalid JSON: {e}", path.display())))
}

fn write_json(path: &Path, value: &Value) -> Result<(), DataError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|e| DataError::io(path, e))
}

/// A special token as HF configs write it: a string or `{"content": ...}`.
fn token_name(value: &Value) -> Option<&str> {
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
}

/// The tokenizer of an HF CLIP directory: `tokenizer.json`, else `vocab.json` + `merges.txt`;
/// the pad token from `tokenizer_config.json` / `special_tokens_map.json` as HF reads it.
pub fn load_tokenizer(dir: &Path) -> Result<ClipTokenizer, DataError> {
    let (json, vocab, merges) = (
        dir.join(TOKENIZER_FILE),
        dir.join("vocab.json"),
        dir.join("merges.txt"),
    );
    let tokenizer = if json.exists() {
        ClipTokenizer::from_file(&json)?
    } else if vocab.exists() && merges.exists() {
        ClipTokenizer::from_vocab_merges(&vocab, &merges)?
    } else {
        return Err(DataError::Tokenizer(format!(
            "{}: no tokenizer (neither {TOKENIZER_FILE} nor vocab.json + merges.txt)",
            dir.display()
        )));
    };
    let mut pad = None;
    for file in [TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE] {
        if let Some(config) = read_json(&dir.join(file))? {
            pad = pad.or_else(|| {
                config
                    .get("pad_token")
                    .and_then(token_name)
                    .map(String::from)
            });
        }
    }
    // HF CLIPTokenizer's default pad token.
    let pad = pad.unwrap_or_else(|| END_TOKEN.to_string());
    tokenizer
        .with_pad_token(&pad)
        .map_err(|e| DataError::Tokenizer(format!("{}: {e}", dir.display())))
}

/// Writes the tokenizer as HF expects it: `tokenizer.json` plus the two small configs that
/// name the special tokens and the context length.
pub fn write_tokenizer(
    dir: &Path,
    tokenizer: &ClipTokenizer,
    context_length: usize,
) -> Result<(), DataError> {
    let path = dir.join(TOKENIZER_FILE);
    std::fs::write(&path, tokenizer.to_json()?).map_err(|e| DataError::io(&path, e))?;
    let special = json!({
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": tokenizer.pad_token(),
    });
    let mut config = special.clone();
    config["tokenizer_class"] = "CLIPTokenizer".into();
    config["model_max_length"] = context_length.into();
    write_json(&dir.join(TOKENIZER_CONFIG_FILE), &config)?;
    write_json(&dir.join(SPECIAL_TOKENS_FILE), &special)
}

/// `CLIPImageProcessor`'s config for mm's transform at `image_size`.
pub fn write_image_processor(dir: &Path, image_size: usize) -> Result<(), DataError> {
    write_json(
        &dir.join(IMAGE_PROCESSOR_FILE),
        &json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": true,
            "do_resize": true,
            "size": {"shortest_edge": image_size},
            "resample": 3,
            "do_center_crop": true,
            "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
        }),
    )
}

/// Checks that the directory's image processor is CLIP's eval transform at `image_size` (what
/// mm runs). A directory without one gets HF's defaults, which are that transform.
pub fn check_image_processor(dir: &Path, image_size: usize) -> Result<(), DataError> {
    let (path, config) = match read_json(&dir.join(IMAGE_PROCESSOR_FILE))? {
        Some(config) => (dir.join(IMAGE_PROCESSOR_FILE), config),
        None => match read_json(&dir.join(PROCESSOR_FILE))? {
            Some(processor) => match processor.get("image_processor") {
                Some(config) => (dir.join(PROCESSOR_FILE), config.clone()),
                None => return Ok(()),
            },
            None => return Ok(()),
        },
    };
    let fail = |key: &str, message: String| {
        Err(DataError::Config(format!(
            "{}: key `{key}`: {message}",
            path.display()
        )))
    };
    for flag in [
        "do_resize",
        "do_center_crop",
        "do_rescale",
        "do_normalize",
        "do_convert_rgb",
    ] {
        if config.get(flag) == Some(&Value::Bool(false)) {
            return fail(
                flag,
                "false is not supported: mm always applies this step".into(),
            );
        }
    }
    // `size` is {"shortest_edge": n}, or a bare n in old configs; {"height", "width"} would
    // squash the image instead of cropping it.
    let side = |key: &str, field: &str| -> Option<Option<u64>> {
        let value = config.get(key)?;
        Some(
            value
                .as_u64()
                .or_else(|| value.get(field).and_then(Value::as_u64)),
        )
    };
    if let Some(resize) = side("size", "shortest_edge")
        && resize != Some(image_size as u64)
    {
        return fail(
            "size",
            format!(
                "{}: mm resizes the shortest edge to the model's image size ({image_size})",
                config["size"]
            ),
        );
    }
    if let Some(crop) = config.get("crop_size") {
        let square = crop.as_u64().or_else(|| {
            (crop.get("height") == crop.get("width"))
                .then(|| crop.get("height")?.as_u64())
                .flatten()
        });
        if square != Some(image_size as u64) {
            return fail(
                "crop_size",
                format!("{crop}: must be {image_size}x{image_size}, the model's image size"),
            );
        }
    }
    if let Some(resample) = config.get("resample")
        && resample.as_u64() != Some(3)
    {
        return fail(
            "resample",
            format!("{resample}: only bicubic (3) is supported"),
        );
    }
    if let Some(factor) = config.get("rescale_factor").and_then(Value::as_f64)
        && (factor - 1.0 / 255.0).abs() > 1e-9
    {
        return fail(
            "rescale_factor",
            format!("{factor}: only 1/255 is supported"),
        );
    }
    for (key, expected) in [("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)] {
        if let Some(values) = config.get(key) {
            let ok = values.as_array().is_some_and(|v| {
                v.len() == 3
                    && v.iter()
                        .zip(expected)
                        .all(|(a, b)| a.as_f64().is_some_and(|a| (a - b as f64).abs() < 1e-6))
            });
            if !ok {
                return fail(
                    key,
                    format!("{values}: only OpenAI CLIP's normalisation {expected:?} is supported"),
                );
            }
        }
    }
    Ok(())
}
