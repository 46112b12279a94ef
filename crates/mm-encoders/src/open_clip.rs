//! open_clip interop: its model config (`open_clip_config.json`, or a bare
//! `model_configs/*.json`) -> [`ClipConfig`], and its weights (`open_clip_model.safetensors`,
//! open_clip's `state_dict` names) -> a [`CocaModel`] or a [`ClipModel`].
//!
//! The towers' blocks keep mm's (HF's) names, so each mm parameter is found in open_clip's
//! file by [`source`]: renamed (`ln_1` -> `layer_norm1`, `c_fc` -> `fc1`, ...), transposed
//! where a PyTorch `Linear` stores `[out, in]`, and sliced where open_clip packs q, k and v
//! into one `in_proj_weight`. Every parameter must be found with its shape and every tensor
//! in the file used, or the load fails naming the tensor in open_clip's terms.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, bridge};
use burn::tensor::{Device, TensorData, bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::coca::CocaModel;
use crate::config::{ConfigError, JsonSection};
use crate::decoder::MultimodalConfig;
use crate::hf::HfError;
use crate::model::{ClipConfig, ClipModel};
use crate::text::{LEGACY_EOS_TOKEN_ID, TextConfig};
use crate::transformer::Activation;
use crate::vision::VisionConfig;

pub const CONFIG_FILE: &str = "open_clip_config.json";
pub const WEIGHTS_FILE: &str = "open_clip_model.safetensors";

/// Reads `DIR/open_clip_config.json` (or `DIR/config.json` holding a bare model config).
pub fn read_config(dir: &Path) -> Result<ClipConfig, HfError> {
    let path = [CONFIG_FILE, "config.json"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| dir.join(CONFIG_FILE));
    let text = mm_data::regular_file::read_text(&path).map_err(|source| HfError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let origin = path.display().to_string();
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| ConfigError::new(&origin, "", format!("invalid JSON: {e}")))?;
    Ok(config_from_open_clip(&json, &origin)?)
}

/// Maps an open_clip model config (`{"model_cfg": {...}}` as the hub files have it, or the
/// bare `{"embed_dim": ..., "vision_cfg": ...}`) to [`ClipConfig`]. Keys open_clip leaves out
/// take its defaults (`CLIPVisionCfg`, `CLIPTextCfg`, `MultimodalCfg`); options mm does not
/// implement (timm or HF towers, layer scale, other poolings, ...) are errors naming the key.
pub fn config_from_open_clip(json: &Value, origin: &str) -> Result<ClipConfig, ConfigError> {
    let json = json.get("model_cfg").unwrap_or(json);
    let top = JsonSection::new(json, "", origin)?;
    let activation = match top.bool_or("quick_gelu", false)? {
        true => Activation::QuickGelu,
        false => Activation::Gelu,
    };
    let vision = top.sub("vision_cfg")?;
    let text = top.sub("text_cfg")?;
    for (section, keys) in [
        (
            &vision,
            &[
                "timm_model_name",
                "ls_init_value",
                "pos_embed_type",
                "no_ln_pre",
                "final_ln_after_pool",
                "block_type",
                "qk_norm",
                "scaled_cosine_attn",
                "scale_heads",
                "scale_attn_inner",
                "scale_attn",
                "scale_fc",
            ][..],
        ),
        (
            &text,
            &[
                "hf_model_name",
                "ls_init_value",
                "no_causal_mask",
                "proj_bias",
                "correct_cls_mask",
                "block_type",
                "qk_norm",
                "scaled_cosine_attn",
                "scale_heads",
                "scale_attn_inner",
                "scale_attn",
                "scale_fc",
            ][..],
        ),
    ] {
        refuse_set(section, keys)?;
    }
    let attentional_pool = match vision.get("attentional_pool") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(vision.error(
                "attentional_pool",
                format!("{other}: only `true` (open_clip's CoCa pooling) is supported"),
            ));
        }
    };
    let pool_type = str_or(&vision, "pool_type", "tok")?;
    if pool_type != "tok" {
        return Err(vision.error(
            "pool_type",
            format!("`{pool_type}`: only `tok` (the class token) is supported"),
        ));
    }
    let vision_width = vision.usize_or("width", 768)?;
    let vision_config = VisionConfig {
        image_size: vision.square_or("image_size", 224)?,
        patch_size: vision.square_or("patch_size", 16)?,
        width: vision_width,
        layers: vision.usize_or("layers", 12)?,
        heads: vision_width / vision.usize_or("head_width", 64)?.max(1),
        intermediate_size: mlp_width(&vision, vision_width)?,
        activation,
        layer_norm_eps: 1e-5,
        attentional_pool,
        attn_pooler_queries: vision.usize_or("attn_pooler_queries", 256)?,
        attn_pooler_heads: vision.usize_or("attn_pooler_heads", 8)?,
        conv_stem: Vec::new(),
    };
    let embed_cls = text.bool_or("embed_cls", false)?;
    let pool_type = str_or(&text, "pool_type", "argmax")?;
    let eos_token_id = match (embed_cls, pool_type) {
        // With a class token open_clip always pools there.
        (true, _) | (false, "argmax") => LEGACY_EOS_TOKEN_ID,
        (false, "eos") => text.usize_or("eos_id", 2)? as u32,
        (false, other) => {
            return Err(text.error(
                "pool_type",
                format!("`{other}`: only `argmax` and `eos` are supported"),
            ));
        }
    };
    let text_width = text.usize_or("width", 512)?;
    let text_config = TextConfig {
        context_length: text.usize_or("context_length", 77)?,
        vocab_size: text.usize_or("vocab_size", 49408)?,
        width: text_width,
        layers: text.usize_or("layers", 12)?,
        heads: text.usize_or("heads", 8)?,
        intermediate_size: mlp_width(&text, text_width)?,
        activation,
        layer_norm_eps: 1e-5,
        eos_token_id,
        embed_cls,
        pad_id: text.usize_or("pad_id", 0)? as u32,
    };
    let multimodal = match json.get("multimodal_cfg") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let m = top.sub("multimodal_cfg")?;
            refuse_set(&m, &["ls_init_value"])?;
            let width = m.usize_or("width", 512)?;
            // open_clip builds the decoder without passing `mlp_ratio` on: always 4.
            Some(MultimodalConfig {
                context_length: m.usize_or("context_length", 77)?,
                vocab_size: m.usize_or("vocab_size", 49408)?,
                width,
                layers: m.usize_or("layers", 12)?,
                heads: m.usize_or("heads", 8)?,
                intermediate_size: 4 * width,
                activation,
                layer_norm_eps: 1e-5,
            })
        }
    };
    let config = ClipConfig {
        embed_dim: top.usize_or("embed_dim", 512)?,
        logit_scale_init: top.f64_or("init_logit_scale", (1.0f64 / 0.07).ln())?,
        logit_bias_init: match json.get("init_logit_bias") {
            None | Some(Value::Null) => None,
            Some(_) => Some(top.f64_or("init_logit_bias", 0.0)?),
        },
        vision: vision_config,
        text: text_config,
        multimodal,
    };
    config.validate(origin).map_err(|e| ConfigError {
        key: open_clip_key(&e.key),
        ..e
    })?;
    Ok(config)
}

/// mm's config key -> open_clip's, for error messages.
fn open_clip_key(mm_key: &str) -> String {
    let (section, field) = mm_key.split_once('.').unwrap_or(("", mm_key));
    let section = match section {
        "vision" => "vision_cfg.",
        "text" => "text_cfg.",
        "multimodal" => "multimodal_cfg.",
        _ => "",
    };
    let field = match field {
        "intermediate_size" => "mlp_ratio",
        "logit_scale_init" => "init_logit_scale",
        "logit_bias_init" => "init_logit_bias",
        other => other,
    };
    format!("{section}{field}")
}

/// Loads an open_clip CoCa directory: its config and its weights.
pub fn load_coca(dir: &Path, device: &Device) -> Result<(ClipConfig, CocaModel), HfError> {
    let config = read_config(dir)?;
    let mut model = config.init_coca(device)?;
    load_weights(&mut model, &config, &dir.join(WEIGHTS_FILE))?;
    Ok((config, model))
}

/// Loads an open_clip CLIP directory (no caption decoder).
pub fn load_clip(dir: &Path, device: &Device) -> Result<(ClipConfig, ClipModel), HfError> {
    let config = read_config(dir)?;
    if config.multimodal.is_some() {
        return Err(HfError::Weights {
            path: dir.display().to_string(),
            message: "this is a CoCa (its config has a multimodal_cfg): load it as one".into(),
        });
    }
    let mut model = config.init(device);
    load_weights(&mut model, &config, &dir.join(WEIGHTS_FILE))?;
    Ok((config, model))
}

/// Fills `model` (a [`CocaModel`] or [`ClipModel`] built from `config`) from open_clip's
/// safetensors at `path`; f16, bf16 and f64 tensors are converted to fp32.
pub fn load_weights<M: Module>(
    model: &mut M,
    config: &ClipConfig,
    path: &Path,
) -> Result<(), HfError> {
    let fail = |message: String| HfError::Weights {
        path: path.display().to_string(),
        message,
    };
    crate::weights_file::check_header(path)?;
    // At most 8 bytes a parameter (f64), and room for the header.
    let cap = config.num_params_with_decoder() * 8 + (16 << 20);
    let bytes = mm_data::regular_file::read_capped(path, cap).map_err(|e| fail(e.to_string()))?;
    let file =
        SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("not safetensors: {e}")))?;
    // CoCa's text tower is `text.*`; a plain CLIP's sits at the top level.
    let text_prefix = match file.names().iter().any(|n| n.starts_with("text.")) {
        true => "text.",
        false => "",
    };
    let mut used = BTreeSet::new();
    let mut tensors = Vec::new();
    for wanted in model.collect(None, None, false) {
        let Some(from) = source(&wanted.name, text_prefix, &file) else {
            return Err(fail(format!(
                "mm parameter `{}` has no open_clip name",
                wanted.name
            )));
        };
        let view = file.tensor(&from.name).map_err(|_| {
            fail(format!(
                "missing tensor `{}` (for mm's `{}`)",
                from.name, wanted.name
            ))
        })?;
        let values = widened(&view).ok_or_else(|| {
            fail(format!(
                "tensor `{}` has dtype {:?}; only float tensors (F16, BF16, F32, F64) are read",
                from.name,
                view.dtype()
            ))
        })?;
        let want = wanted.shape.to_vec();
        let data = from
            .take
            .apply(values, view.shape(), &want)
            .ok_or_else(|| {
                fail(format!(
                    "tensor `{}` has shape {:?}, which does not give mm's `{}` {:?} (config {})",
                    from.name,
                    view.shape(),
                    wanted.name,
                    want,
                    CONFIG_FILE
                ))
            })?;
        used.insert(from.name);
        tensors.push(bridge::from_data(data, wanted.name.clone(), None));
    }
    if let Some(extra) = file.names().into_iter().find(|n| !used.contains(*n)) {
        return Err(fail(format!(
            "unexpected tensor `{extra}`: not a parameter of the model its config describes"
        )));
    }
    let result = model.apply(tensors, None, None, false);
    if let Some(error) = result.errors.first() {
        return Err(fail(match error {
            ApplyError::ShapeMismatch { path, .. } => format!("shape mismatch at `{path}`"),
            other => other.to_string(),
        }));
    }
    Ok(())
}

/// Where one mm parameter comes from in open_clip's file.
struct Source {
    name: String,
    take: Take,
}

/// How open_clip's tensor becomes mm's.
enum Take {
    /// As is (reshaped: open_clip's 0-d `logit_scale` is mm's `[1]`).
    Same,
    /// A PyTorch `Linear` weight, `[out, in]` -> burn's `[in, out]`.
    Transposed,
    /// Part `i` of 3 of a packed q | k | v projection: rows of `in_proj_weight`, transposed.
    PackedWeight(usize),
    /// Part `i` of 3 of `in_proj_bias`.
    PackedBias(usize),
}

impl Take {
    fn apply(&self, values: Vec<f32>, shape: &[usize], want: &[usize]) -> Option<TensorData> {
        let count: usize = want.iter().product();
        let data = match (self, shape) {
            (Take::Same, _) if values.len() == count => values,
            (Take::Transposed, &[rows, cols]) if want == [cols, rows] => {
                transpose(&values, rows, cols)
            }
            (Take::PackedWeight(i), &[rows, cols]) if rows % 3 == 0 && want == [cols, rows / 3] => {
                let part = rows / 3;
                transpose(&values[i * part * cols..(i + 1) * part * cols], part, cols)
            }
            (Take::PackedBias(i), &[len]) if len % 3 == 0 && want == [len / 3] => {
                values[i * len / 3..(i + 1) * len / 3].to_vec()
            }
            _ => return None,
        };
        Some(TensorData::new(data, want.to_vec()))
    }
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn widened(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    let bytes = view.data();
    let pairs = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    Some(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => pairs().map(|b| f16::from_bits(b).to_f32()).collect(),
        Dtype::BF16 => pairs().map(|b| bf16::from_bits(b).to_f32()).collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// open_clip's name for mm's parameter `path` (burn's module path; a [`CocaModel`]'s starts
/// with `clip.` or `text_decoder.`).
fn source(path: &str, text_prefix: &str, file: &SafeTensors<'_>) -> Option<Source> {
    let path = path.strip_prefix("clip.").unwrap_or(path);
    let same = |name: String| {
        Some(Source {
            name,
            take: Take::Same,
        })
    };
    match path {
        "logit_scale" | "logit_bias" => return same(path.to_string()),
        "visual_projection.weight" => return same("visual.proj".into()),
        "text_projection.weight" => return same(format!("{text_prefix}text_projection")),
        "text_decoder.text_projection.weight" => return same(path.replace(".weight", "")),
        _ => {}
    }
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("vision_model.") {
        ("visual.", rest)
    } else if let Some(rest) = path.strip_prefix("text_model.") {
        (text_prefix, rest)
    } else if let Some(rest) = path.strip_prefix("text_decoder.") {
        ("text_decoder.", rest)
    } else {
        return None;
    };
    let renamed = [
        ("embeddings.patch_embedding.weight", "conv1.weight"),
        ("embeddings.class_embedding", "class_embedding"),
        (
            "embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        (
            "embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        ("pre_layrnorm.", "ln_pre."),
        ("post_layernorm.", "ln_post."),
        ("final_layer_norm.", "ln_final."),
        ("encoder.layers.", "transformer.resblocks."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("layer_norm_kv.", "ln_1_kv."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
        ("self_attn.", "attn."),
        (".gamma", ".weight"),
        (".beta", ".bias"),
    ]
    .iter()
    .fold(rest.to_string(), |name, (mm, oc)| name.replace(mm, oc));
    let name = format!("{prefix}{renamed}");
    for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let Some(module) = name.strip_suffix(&format!(".{part}.weight")) else {
            if let Some(module) = name.strip_suffix(&format!(".{part}.bias")) {
                return Some(Source {
                    name: format!("{module}.in_proj_bias"),
                    take: Take::PackedBias(i),
                });
            }
            continue;
        };
        // nn.MultiheadAttention keeps separate weights when keys come from another width
        // (the attentional pooler).
        let separate = format!("{module}.{part}_weight");
        return Some(match file.tensor(&separate) {
            Ok(_) => Source {
                name: separate,
                take: Take::Transposed,
            },
            Err(_) => Source {
                name: format!("{module}.in_proj_weight"),
                take: Take::PackedWeight(i),
            },
        });
    }
    let linear =
        name.ends_with(".weight") && (name.contains("attn.out_proj") || name.contains("mlp.c_"));
    Some(Source {
        name,
        take: if linear { Take::Transposed } else { Take::Same },
    })
}

/// The MLP's hidden width, `width * mlp_ratio` (open_clip's default ratio is 4).
fn mlp_width(section: &JsonSection, width: usize) -> Result<usize, ConfigError> {
    let ratio = section.f64_or("mlp_ratio", 4.0)?;
    let hidden = width as f64 * ratio;
    if !(ratio > 0.0 && hidden.fract() == 0.0 && hidden <= u32::MAX as f64) {
        return Err(section.error(
            "mlp_ratio",
            format!("{ratio}: width x mlp_ratio must be a positive whole number"),
        ));
    }
    Ok(hidden as usize)
}

/// Options mm does not implement: set to anything but their off value, they are errors.
fn refuse_set(section: &JsonSection, keys: &[&str]) -> Result<(), ConfigError> {
    for key in keys {
        match section.get(key) {
            None | Some(Value::Bool(false)) => {}
            Some(Value::String(s)) if matches!(s.as_str(), "learnable" | "default") => {}
            Some(v) => return Err(section.error(key, format!("{v}: not supported by mm"))),
        }
    }
    Ok(())
}

/// A string option, `default` when absent.
fn str_or<'a>(
    section: &JsonSection<'a>,
    key: &str,
    default: &'a str,
) -> Result<&'a str, ConfigError> {
    Ok(section.opt_str(key)?.unwrap_or(default))
}
