//! Hugging Face `CLIPModel` interop: `config.json` <-> [`ClipConfig`], `model.safetensors` <->
//! [`ClipModel`].
//!
//! mm's module paths are HF's parameter names, so the weights map 1:1 through burn's store.
//! Three layout differences remain, handled by adapters rather than by renaming code:
//! burn's `Linear` stores `[in, out]` (PyTorch `[out, in]`), burn's `LayerNorm` calls its
//! parameters `gamma`/`beta` (PyTorch `weight`/`bias`) — both burn's own PyTorch adapters —
//! and HF's `logit_scale` is a 0-d tensor where mm's is `[1]` ([`ScalarAdapter`]).

use std::path::Path;

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, BurnToPyTorchAdapter, ModuleAdapter, ModuleContext, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::{Device, Shape, TensorData};
use serde_json::{Value, json};

use crate::config::{ConfigError, JsonSection};
use crate::model::ClipConfig;
use crate::model::ClipModel;
use crate::text::TextConfig;
use crate::transformer::Activation;
use crate::vision::VisionConfig;

pub use crate::text::LEGACY_EOS_TOKEN_ID;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What can go wrong reading or writing an HF CLIP directory. Every variant names the file and,
/// where there is one, the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {message}")]
    Weights { path: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HfError + '_ {
    move |source| HfError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads `DIR/config.json` into mm's model config, refusing anything mm would run differently.
pub fn read_config(dir: &Path) -> Result<ClipConfig, HfError> {
    let path = dir.join(CONFIG_FILE);
    let text = mm_data::regular_file::read_text(&path).map_err(io_error(&path))?;
    let origin = path.display().to_string();
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| ConfigError::new(&origin, "", format!("invalid JSON: {e}")))?;
    Ok(config_from_hf(&json, &origin)?)
}

static NULL: Value = Value::Null;

/// Maps an HF `CLIPConfig` (as JSON) to [`ClipConfig`]. Keys HF leaves out take HF's
/// defaults (`CLIPTextConfig`/`CLIPVisionConfig`); keys mm has no use for are ignored; values mm
/// cannot honour (another activation, a non-square image, 4 channels, ...) are errors naming
/// the key, never silently changed.
pub fn config_from_hf(json: &Value, origin: &str) -> Result<ClipConfig, ConfigError> {
    let top = JsonSection::new(json, "", origin)?;
    // Every config transformers writes names its model type; without it the defaults below
    // would describe a ViT-B/32 whatever the weights are (an empty or foreign config.json).
    match top.opt_str("model_type")? {
        Some(model_type) if model_type != "clip" => {
            return Err(top.error(
                "model_type",
                format!("`{model_type}` is not a CLIP model (expected `clip`)"),
            ));
        }
        Some(_) => {}
        None => {
            return Err(top.error(
                "model_type",
                "missing: not an HF CLIP config (transformers writes `\"model_type\": \"clip\"`)"
                    .into(),
            ));
        }
    }
    if let Some(Value::Array(archs)) = json.get("architectures")
        && !archs.iter().any(|a| a == "CLIPModel")
    {
        return Err(top.error(
            "architectures",
            format!("{archs:?}: only `CLIPModel` (both towers and projections) is supported"),
        ));
    }
    // Old configs nest the towers under `*_config_dict` as well; `*_config` wins as in HF.
    let sub = |name: &'static str| -> Result<JsonSection, ConfigError> {
        let value = json
            .get(name)
            .filter(|v| !v.is_null())
            .or_else(|| json.get(format!("{name}_dict")).filter(|v| !v.is_null()));
        match value {
            Some(v) => JsonSection::new(v, name, origin),
            None => JsonSection::new(&NULL, name, origin),
        }
    };
    let text = sub("text_config")?;
    let vision = sub("vision_config")?;

    let channels = vision.usize_or("num_channels", 3)?;
    if channels != 3 {
        return Err(vision.error(
            "num_channels",
            format!("{channels}: only RGB (3) images are supported"),
        ));
    }
    let config = ClipConfig {
        embed_dim: top.usize_or("projection_dim", 512)?,
        logit_scale_init: top.f64_or("logit_scale_init_value", 2.6592)?,
        logit_bias_init: None,
        vision: VisionConfig {
            image_size: vision.square_or("image_size", 224)?,
            patch_size: vision.square_or("patch_size", 32)?,
            width: vision.usize_or("hidden_size", 768)?,
            layers: vision.usize_or("num_hidden_layers", 12)?,
            heads: vision.usize_or("num_attention_heads", 12)?,
            intermediate_size: vision.usize_or("intermediate_size", 3072)?,
            activation: activation(&vision)?,
            layer_norm_eps: vision.f64_or("layer_norm_eps", 1e-5)?,
            attentional_pool: false,
            attn_pooler_queries: 0,
            attn_pooler_heads: 0,
            conv_stem: Vec::new(),
        },
        text: TextConfig {
            context_length: text.usize_or("max_position_embeddings", 77)?,
            vocab_size: text.usize_or("vocab_size", 49408)?,
            width: text.usize_or("hidden_size", 512)?,
            layers: text.usize_or("num_hidden_layers", 12)?,
            heads: text.usize_or("num_attention_heads", 8)?,
            intermediate_size: text.usize_or("intermediate_size", 2048)?,
            activation: activation(&text)?,
            layer_norm_eps: text.f64_or("layer_norm_eps", 1e-5)?,
            eos_token_id: text.usize_or("eos_token_id", 49407)? as u32,
            embed_cls: false,
            pad_id: 0,
        },
        multimodal: None,
    };
    // Relations (heads | width, patch | image, eos < vocab) named with HF's keys.
    config.validate(origin).map_err(|e| ConfigError {
        key: hf_key(&e.key),
        ..e
    })?;
    Ok(config)
}

/// mm's config key -> the HF key it came from, for error messages.
fn hf_key(mm_key: &str) -> String {
    let (tower, field) = mm_key.split_once('.').unwrap_or(("", mm_key));
    let field = match field {
        "width" => "hidden_size",
        "layers" => "num_hidden_layers",
        "heads" => "num_attention_heads",
        "context_length" => "max_position_embeddings",
        "embed_dim" => "projection_dim",
        other => other,
    };
    match tower {
        "" => field.to_string(),
        tower => format!("{tower}_config.{field}"),
    }
}

/// The HF `config.json` for `config`. `bos_token_id`/`pad_token_id` are the tokenizer's (HF
/// keeps them in the text config although the model never reads them).
pub fn config_to_hf(config: &ClipConfig, bos_token_id: u32, pad_token_id: u32) -> Value {
    let act = |a: Activation| match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
    };
    let (v, t) = (&config.vision, &config.text);
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": "float32",
        "initializer_factor": 1.0,
        "logit_scale_init_value": config.logit_scale_init,
        "projection_dim": config.embed_dim,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act(t.activation),
            "layer_norm_eps": t.layer_norm_eps,
            "projection_dim": config.embed_dim,
            "bos_token_id": bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": pad_token_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_size": v.width,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "hidden_act": act(v.activation),
            "layer_norm_eps": v.layer_norm_eps,
            "projection_dim": config.embed_dim,
        },
    })
}

/// A tower's `hidden_act`, of those mm implements.
fn activation(section: &JsonSection) -> Result<Activation, ConfigError> {
    match section.opt_str("hidden_act")?.unwrap_or("quick_gelu") {
        "quick_gelu" => Ok(Activation::QuickGelu),
        "gelu" => Ok(Activation::Gelu),
        other => Err(section.error(
            "hidden_act",
            format!("unsupported activation `{other}` (mm supports quick_gelu and gelu)"),
        )),
    }
}

/// Reshapes HF's 0-d `logit_scale` to mm's `[1]` on load, and back on save.
#[derive(Clone)]
struct ScalarAdapter {
    to_hf: bool,
}

impl ModuleAdapter for ScalarAdapter {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        let want: Shape = if self.to_hf {
            Shape::from(Vec::<usize>::new())
        } else {
            Shape::from(vec![1])
        };
        if tensor.name != "logit_scale" || tensor.shape.num_elements() != 1 || tensor.shape == want
        {
            return tensor;
        }
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let shape = want.clone();
        bridge::map_data(tensor, name, dtype, want, move |data| {
            let (bytes, _, dtype) = data.into_parts();
            TensorData::from_bytes(bytes, shape.clone(), dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// The HF name of mm's parameter `path` (burn's LayerNorm says gamma/beta).
fn hf_name(path: &str) -> String {
    match path.rsplit_once('.') {
        Some((module, "gamma")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => path.to_string(),
    }
}

/// A shape in HF's layout: burn's `Linear` weights are stored transposed. In a CLIP model every
/// 2-D `weight` outside the embeddings belongs to a `Linear`.
fn hf_shape(path: &str, shape: &Shape) -> Vec<usize> {
    let mut dims = shape.to_vec();
    if dims.len() == 2 && path.ends_with(".weight") && !path.contains("embedding") {
        dims.reverse();
    }
    dims
}

/// Buffers HF may have saved that are not parameters (recomputed, never learned).
fn is_buffer(name: &str) -> bool {
    name.ends_with(".position_ids")
}

/// Loads an HF CLIP directory: its config and its weights.
pub fn load(dir: &Path, device: &Device) -> Result<(ClipConfig, ClipModel), HfError> {
    let config = read_config(dir)?;
    let mut model = config.init(device);
    load_weights(&mut model, &dir.join(WEIGHTS_FILE))?;
    Ok((config, model))
}

/// Loads HF-layout safetensors into `model`. Every parameter must be present with the right
/// shape and the file must hold nothing else (buffers aside); half-precision files are widened
/// to fp32.
pub fn load_weights(model: &mut ClipModel, path: &Path) -> Result<(), HfError> {
    let fail = |message: String| HfError::Weights {
        path: path.display().to_string(),
        message,
    };
    if let Err(e) = mm_data::regular_file::open_regular(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(fail(e.to_string()));
    }
    if !path.exists() {
        let sharded = path.with_file_name("model.safetensors.index.json").exists();
        return Err(fail(if sharded {
            "sharded checkpoints are not supported; merge the shards into one model.safetensors"
                .into()
        } else {
            "no such file (mm reads HF weights from model.safetensors)".into()
        }));
    }
    crate::weights_file::check_header(path)?;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(
            PyTorchToBurnAdapter
                .chain(ScalarAdapter { to_hf: false })
                .chain(crate::weights_file::to_load_dtype()),
        )
        // Collect missing/mismatched tensors instead of failing on the first, so the error can
        // name them in HF's terms.
        .allow_partial(true)
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| fail(e.to_string()))?;
    if let Some((name, _)) = result.missing.first() {
        return Err(fail(format!(
            "missing tensor `{}` ({} of {} missing)",
            hf_name(name),
            result.missing.len(),
            result.missing.len() + result.applied.len()
        )));
    }
    if let Some(error) = result.errors.first() {
        return Err(fail(match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "tensor `{}` has shape {:?} but config.json implies {:?}",
                hf_name(path),
                hf_shape(path, found),
                hf_shape(path, expected)
            ),
            other => other.to_string(),
        }));
    }
    if let Some(name) = result.unused.iter().find(|n| !is_buffer(n)) {
        return Err(fail(format!(
            "unexpected tensor `{name}`: not a parameter of a CLIP model with this config.json"
        )));
    }
    Ok(())
}

/// Writes `model` as HF-layout safetensors (what `CLIPModel.from_pretrained` reads).
pub fn save_weights(model: &ClipModel, path: &Path) -> Result<(), HfError> {
    let refuse = |message: &str| {
        Err(HfError::Weights {
            path: path.display().to_string(),
            message: message.into(),
        })
    };
    if model.logit_bias.is_some() {
        return refuse(
            "the model has a logit_bias (trained with the sigmoid loss): HF's CLIPModel has no such parameter, so it has no CLIP export",
        );
    }
    if !model.vision_model.embeddings.conv_stem.is_empty() {
        return refuse(
            "the image tower has a convolutional stem (vision.conv_stem): HF's CLIPVisionModel has none, so it has no HF export",
        );
    }
    if model.vision_model.attn_pool.is_some() || model.text_model.cls_emb.is_some() {
        return refuse(
            "the model has CoCa's towers (attentional pooler, text class token): HF's CLIPModel has neither; open_clip reads it (see mm_encoders::open_clip)",
        );
    }
    // transformers refuses safetensors files whose `format` is not `pt`.
    let mut store = SafetensorsStore::from_file(path)
        .clear_metadata()
        .metadata("format", "pt")
        .with_to_adapter(BurnToPyTorchAdapter.chain(ScalarAdapter { to_hf: true }));
    model.save_into(&mut store).map_err(|e| HfError::Weights {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
