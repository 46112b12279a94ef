//! The two towers joined (HF `CLIPModel`): projections into a shared embedding space and the
//! learnable temperature; `ClipConfig`, the whole model's shape as data, and its TOML presets.
//! The towers compute in their parameters' dtype (a half-precision copy computes in half);
//! features come out in f32, which similarities and losses need.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{
    ConfigError, MAX_CONTEXT_LENGTH, MAX_IMAGE_SIZE, MAX_LAYERS, MAX_PARAMS, MAX_PATCHES,
    MAX_VOCAB_SIZE, MAX_WIDTH, from_toml_str,
};
use crate::decoder::MultimodalConfig;
use crate::text::{TextConfig, TextTransformer};
use crate::transformer::linear;
use crate::vision::{VisionConfig, VisionTransformer};

fn default_logit_scale_init() -> f64 {
    (1.0f64 / 0.07).ln()
}

/// A whole CLIP model: both towers and the shared embedding space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipConfig {
    /// Dimension of the joint image-text embedding (HF `projection_dim`).
    pub embed_dim: usize,
    /// Initial value of the learnable log temperature (ln(1/0.07) as in CLIP).
    #[serde(default = "default_logit_scale_init")]
    pub logit_scale_init: f64,
    /// A learnable bias added to the scaled similarities, for the sigmoid loss (SigLIP starts
    /// it at -10); absent for CLIP's softmax loss, which a bias would not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias_init: Option<f64>,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// CoCa's caption decoder (open_clip's `multimodal_cfg`; see [`crate::CocaModel`]): the
    /// towers above are then CoCa's (`vision.attentional_pool`, `text.embed_cls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multimodal: Option<MultimodalConfig>,
}

/// Named model shapes shipped with mm (files in `crates/mm-encoders/presets/`).
const PRESETS: &[(&str, &str)] = &[
    ("vit-b-32", include_str!("../presets/vit-b-32.toml")),
    ("tiny", include_str!("../presets/tiny.toml")),
    ("tiny-conv", include_str!("../presets/tiny-conv.toml")),
    (
        "coca-vit-b-32",
        include_str!("../presets/coca-vit-b-32.toml"),
    ),
    ("coca-tiny", include_str!("../presets/coca-tiny.toml")),
];

impl ClipConfig {
    /// Names accepted by [`ClipConfig::preset`].
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(name, _)| *name).collect()
    }

    /// A named preset, e.g. `vit-b-32` or `tiny`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            ConfigError::new(
                "model presets",
                "model",
                format!(
                    "unknown preset `{name}` (known: {})",
                    Self::preset_names().join(", ")
                ),
            )
        })?;
        let config: Self = from_toml_str(text, &format!("preset `{name}`"))?;
        config.validate(&format!("preset `{name}`"))?;
        Ok(config)
    }

    /// Checks the relations between fields that serde cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(origin, key, msg));
        let v = &self.vision;
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return err(
                "vision.patch_size",
                format!(
                    "must divide vision.image_size ({}) exactly, got {}",
                    v.image_size, v.patch_size
                ),
            );
        }
        for (tower, width, heads) in [
            ("vision", v.width, v.heads),
            ("text", self.text.width, self.text.heads),
        ] {
            if heads == 0 || !width.is_multiple_of(heads) {
                return err(
                    &format!("{tower}.heads"),
                    format!("must divide {tower}.width ({width}) exactly, got {heads}"),
                );
            }
        }
        if self.text.context_length < MIN_CONTEXT_LENGTH {
            return err(
                "text.context_length",
                format!(
                    "must be at least {MIN_CONTEXT_LENGTH} (start and end tokens and room for a text), got {}",
                    self.text.context_length
                ),
            );
        }
        if self.text.eos_token_id as usize >= self.text.vocab_size {
            return err(
                "text.eos_token_id",
                format!("must be below text.vocab_size ({})", self.text.vocab_size),
            );
        }
        let t = &self.text;
        for (key, value, max) in [
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("vision.image_size", v.image_size, MAX_IMAGE_SIZE),
            ("vision.patch_size", v.patch_size, MAX_IMAGE_SIZE),
            ("vision.width", v.width, MAX_WIDTH),
            ("vision.layers", v.layers, MAX_LAYERS),
            ("vision.heads", v.heads, MAX_WIDTH),
            (
                "vision.intermediate_size",
                v.intermediate_size,
                4 * MAX_WIDTH,
            ),
            ("text.context_length", t.context_length, MAX_CONTEXT_LENGTH),
            ("text.vocab_size", t.vocab_size, MAX_VOCAB_SIZE),
            ("text.width", t.width, MAX_WIDTH),
            ("text.layers", t.layers, MAX_LAYERS),
            ("text.heads", t.heads, MAX_WIDTH),
            ("text.intermediate_size", t.intermediate_size, 4 * MAX_WIDTH),
        ] {
            if value == 0 {
                return err(key, "must be positive".into());
            }
            if value > max {
                return err(
                    key,
                    format!("{value} is beyond any real model (at most {max})"),
                );
            }
        }
        if v.conv_stem.len() > MAX_STEM_LAYERS {
            return err(
                "vision.conv_stem",
                format!(
                    "{} convolutions (at most {MAX_STEM_LAYERS})",
                    v.conv_stem.len()
                ),
            );
        }
        if let Some(&channels) = v.conv_stem.iter().find(|&&c| c == 0 || c > MAX_WIDTH) {
            return err(
                "vision.conv_stem",
                format!("{channels} channels (must be in 1..={MAX_WIDTH})"),
            );
        }
        if !v.patch_size.is_multiple_of(1 << v.conv_stem.len()) {
            return err(
                "vision.conv_stem",
                format!(
                    "{} stride-2 convolutions halve the image {} times: vision.patch_size ({}) must be a multiple of {}",
                    v.conv_stem.len(),
                    v.conv_stem.len(),
                    v.patch_size,
                    1 << v.conv_stem.len()
                ),
            );
        }
        if v.grid_size() * v.grid_size() > MAX_PATCHES {
            return err(
                "vision.patch_size",
                format!(
                    "{} patches per image (image_size / patch_size squared) is beyond any real model (at most {MAX_PATCHES})",
                    v.grid_size() * v.grid_size()
                ),
            );
        }
        for (key, value) in [
            ("vision.layer_norm_eps", v.layer_norm_eps),
            ("text.layer_norm_eps", t.layer_norm_eps),
        ] {
            if !(value > 0.0 && value < 1.0) {
                return err(key, format!("must be in (0, 1), got {value}"));
            }
        }
        self.validate_coca(origin)?;
        if !self.logit_scale_init.is_finite() || self.logit_scale_init.abs() > 20.0 {
            return err(
                "logit_scale_init",
                format!(
                    "must be a finite log temperature in [-20, 20], got {}",
                    self.logit_scale_init
                ),
            );
        }
        if let Some(bias) = self.logit_bias_init
            && !(bias.is_finite() && bias.abs() <= 100.0)
        {
            return err(
                "logit_bias_init",
                format!("must be a finite number in [-100, 100], got {bias}"),
            );
        }
        let params = self.num_params_with_decoder();
        if params > MAX_PARAMS {
            return err(
                "model",
                format!("{params} parameters is beyond any real model (at most {MAX_PARAMS})"),
            );
        }
        Ok(())
    }

    /// The attentional pooler's and the caption decoder's sizes, and how they must meet the
    /// towers (open_clip's CoCa wiring: the decoder reads the text tower's token states and
    /// cross-attends to the pooler's queries, which live in the joint space).
    fn validate_coca(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(origin, key, msg));
        let v = &self.vision;
        if v.attentional_pool {
            if v.attn_pooler_queries < 2 && self.multimodal.is_some() {
                return err(
                    "vision.attn_pooler_queries",
                    "must be at least 2 (one pools, the rest are the decoder's tokens)".into(),
                );
            }
            for (key, value) in [
                ("vision.attn_pooler_queries", v.attn_pooler_queries),
                ("vision.attn_pooler_heads", v.attn_pooler_heads),
            ] {
                if value == 0 || value > MAX_PATCHES {
                    return err(key, format!("must be in 1..={MAX_PATCHES}, got {value}"));
                }
            }
            if !self.embed_dim.is_multiple_of(v.attn_pooler_heads) {
                return err(
                    "vision.attn_pooler_heads",
                    format!(
                        "must divide embed_dim ({}) exactly, got {}",
                        self.embed_dim, v.attn_pooler_heads
                    ),
                );
            }
        }
        let Some(m) = &self.multimodal else {
            return Ok(());
        };
        if !v.attentional_pool {
            return err(
                "vision.attentional_pool",
                "must be true with a [multimodal] decoder (it reads the pooler's tokens)".into(),
            );
        }
        if !self.text.embed_cls {
            return err(
                "text.embed_cls",
                "must be true with a [multimodal] decoder (CoCa pools text at its class token)"
                    .into(),
            );
        }
        for (key, value, max) in [
            (
                "multimodal.context_length",
                m.context_length,
                MAX_CONTEXT_LENGTH,
            ),
            ("multimodal.vocab_size", m.vocab_size, MAX_VOCAB_SIZE),
            ("multimodal.width", m.width, MAX_WIDTH),
            ("multimodal.layers", m.layers, MAX_LAYERS),
            ("multimodal.heads", m.heads, MAX_WIDTH),
            (
                "multimodal.intermediate_size",
                m.intermediate_size,
                4 * MAX_WIDTH,
            ),
        ] {
            if value == 0 || value > max {
                return err(key, format!("must be in 1..={max}, got {value}"));
            }
        }
        if !m.width.is_multiple_of(m.heads) {
            return err(
                "multimodal.heads",
                format!(
                    "must divide multimodal.width ({}) exactly, got {}",
                    m.width, m.heads
                ),
            );
        }
        for (key, other, what) in [
            (
                "text.width",
                self.text.width,
                "the text tower's token states",
            ),
            ("embed_dim", self.embed_dim, "the image pooler's tokens"),
        ] {
            if m.width != other {
                return err(
                    "multimodal.width",
                    format!(
                        "{} must equal {key} ({other}): the decoder reads {what}",
                        m.width
                    ),
                );
            }
        }
        if m.vocab_size != self.text.vocab_size {
            return err(
                "multimodal.vocab_size",
                format!(
                    "{} must equal text.vocab_size ({}): it predicts the text tower's tokens",
                    m.vocab_size, self.text.vocab_size
                ),
            );
        }
        if !(m.layer_norm_eps > 0.0 && m.layer_norm_eps < 1.0) {
            return err(
                "multimodal.layer_norm_eps",
                format!("must be in (0, 1), got {}", m.layer_norm_eps),
            );
        }
        if self.text.pad_id as usize >= self.text.vocab_size {
            return err(
                "text.pad_id",
                format!("must be below text.vocab_size ({})", self.text.vocab_size),
            );
        }
        Ok(())
    }

    /// Parameters of the model this config builds (the towers, [`ClipConfig::init`]; with a
    /// decoder, [`ClipConfig::num_params_with_decoder`]), counted without allocating it
    /// (checked against the built model in the tests).
    pub fn num_params(&self) -> u64 {
        let block = |width: usize, intermediate: usize| -> u64 {
            let (w, i) = (width as u64, intermediate as u64);
            // Two LayerNorms, q/k/v/out projections with biases, fc1 and fc2 with biases.
            2 * 2 * w + 4 * (w * w + w) + (w * i + i) + (i * w + w)
        };
        let (v, t) = (&self.vision, &self.text);
        let (vw, tw, e) = (v.width as u64, t.width as u64, self.embed_dim as u64);
        let pool = v.pool_dim(self.embed_dim) as u64;
        let patches = (v.grid_size() * v.grid_size()) as u64;
        let pooler = match v.attentional_pool {
            // Queries, q and out projections (e -> e), k and v (width -> e), biases, ln_q, ln_k.
            true => {
                v.attn_pooler_queries as u64 * e
                    + 2 * (e * e + e)
                    + 2 * (vw * e + e)
                    + 2 * e
                    + 2 * vw
            }
            false => 0,
        };
        let stem: u64 = std::iter::once(3)
            .chain(v.conv_stem.iter().copied())
            .zip(&v.conv_stem)
            .map(|(input, &output)| (9 * input as u64 + 1) * output as u64)
            .sum();
        let patch = v.embedding_patch() as u64;
        let vision = stem
            + v.embedding_channels() as u64 * patch * patch * vw // patch embedding, no bias
            + vw // class embedding
            + (patches + 1) * vw // positions
            + 2 * vw // pre LayerNorm
            + 2 * pool // post LayerNorm
            + pooler
            + v.layers as u64 * block(v.width, v.intermediate_size);
        let text = (t.vocab_size + t.num_positions()) as u64 * tw
            + t.embed_cls as u64 * tw
            + 2 * tw
            + t.layers as u64 * block(t.width, t.intermediate_size);
        vision + text + pool * e + tw * e + 1 + self.logit_bias_init.is_some() as u64
    }

    /// [`ClipConfig::num_params`] and the caption decoder's.
    pub fn num_params_with_decoder(&self) -> u64 {
        self.num_params()
            + self
                .multimodal
                .as_ref()
                .map_or(0, MultimodalConfig::num_params)
    }
}

/// The most convolutions a vision stem has (each halves the image).
pub const MAX_STEM_LAYERS: usize = 4;

/// The shortest text context: below it no caption survives truncation.
pub const MIN_CONTEXT_LENGTH: usize = 8;

/// Serialises model initialisations within the process (see [`initialised`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The module `build` makes, every parameter drawn before this returns, from `device`'s
/// generator seeded with `seed` (when given). burn's generator is per device and global, and
/// its parameters are drawn lazily on first use, so seeding and drawing happen here under one
/// lock: the same seed gives the same module whatever else the process is doing. Every
/// module a run initialises (towers, CoCa's decoder, a classifier's fusion head) is drawn
/// through this.
pub fn initialised<M: Module>(device: &Device, seed: Option<u64>, build: impl FnOnce() -> M) -> M {
    let _exclusive = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(seed) = seed {
        device.seed(seed);
    }
    materialized(build())
}

#[derive(Module, Debug)]
pub struct ClipModel {
    pub text_model: TextTransformer,
    pub vision_model: VisionTransformer,
    /// Bias-free projection of the pooled image features.
    pub visual_projection: Linear,
    /// Bias-free projection of the pooled text features.
    pub text_projection: Linear,
    /// Log of the inverse softmax temperature; `exp` of it scales the cosine similarities.
    pub logit_scale: Param<Tensor<1>>,
    /// Added to the scaled similarities by sigmoid-loss (SigLIP) models; `None` for CLIP.
    pub logit_bias: Option<Param<Tensor<1>>>,
}

impl ClipConfig {
    /// A randomly initialised model (HF's init), drawing from `device`'s random generator.
    pub fn init(&self, device: &Device) -> ClipModel {
        initialised(device, None, || self.build(device))
    }

    /// The same initialisation for every `seed`, even with other threads initialising models
    /// at the same time (see [`initialised`]).
    pub fn init_seeded(&self, device: &Device, seed: u64) -> ClipModel {
        initialised(device, Some(seed), || self.build(device))
    }

    /// A model built around this config's towers by `wrap` (CoCa adds its decoder), drawn as
    /// [`ClipConfig::init_seeded`] draws.
    pub(crate) fn init_with<M: Module>(
        &self,
        device: &Device,
        seed: Option<u64>,
        wrap: impl FnOnce(ClipModel) -> M,
    ) -> M {
        initialised(device, seed, || wrap(self.build(device)))
    }

    fn build(&self, device: &Device) -> ClipModel {
        ClipModel {
            text_model: self.text.init(device),
            vision_model: self.vision.init(self.embed_dim, device),
            visual_projection: linear(
                self.vision.pool_dim(self.embed_dim),
                self.embed_dim,
                (self.vision.width as f64).powf(-0.5),
                false,
                device,
            ),
            text_projection: linear(
                self.text.width,
                self.embed_dim,
                (self.text.width as f64).powf(-0.5),
                false,
                device,
            ),
            logit_scale: Param::from_tensor(Tensor::from_floats(
                [self.logit_scale_init as f32],
                device,
            )),
            logit_bias: self
                .logit_bias_init
                .map(|bias| Param::from_tensor(Tensor::from_floats([bias as f32], device))),
        }
    }
}

impl ClipModel {
    /// Activation checkpointing per transformer block in both towers (open_clip's
    /// `set_grad_checkpointing`; see [`crate::Encoder::grad_checkpointing`]).
    pub fn set_grad_checkpointing(&mut self, enable: bool) {
        self.vision_model.encoder.grad_checkpointing = enable;
        self.text_model.encoder.grad_checkpointing = enable;
    }

    /// The log temperature and (a sigmoid-loss model's) logit bias in f32, whatever dtype the
    /// model computes in: they scale similarities of features, which come out in f32.
    pub fn scale_and_bias(&self) -> (Tensor<1>, Option<Tensor<1>>) {
        (
            in_dtype(self.logit_scale.val(), DType::F32),
            self.logit_bias
                .as_ref()
                .map(|bias| in_dtype(bias.val(), DType::F32)),
        )
    }

    /// `[batch, 3, H, W]` CLIP-normalised pixels -> `[batch, embed_dim]` (not normalised).
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.image_features_kept(pixels, None)
    }

    /// [`ClipModel::image_features`] from only the patches at `kept` (patch dropout, see
    /// [`crate::PatchDropout`]).
    pub fn image_features_kept(
        &self,
        pixels: Tensor<4>,
        kept: Option<Tensor<2, Int>>,
    ) -> Tensor<2> {
        let features = self
            .visual_projection
            .forward(self.vision_model.forward_kept(pixels, kept).pooled);
        in_dtype(features, DType::F32)
    }

    /// `[batch, seq]` token ids -> `[batch, embed_dim]` (not normalised).
    pub fn text_features(&self, input_ids: Tensor<2, Int>) -> Tensor<2> {
        let features = self
            .text_projection
            .forward(self.text_model.forward(input_ids).pooled);
        in_dtype(features, DType::F32)
    }
}

/// `model` with every parameter drawn now: burn initialises lazily, on first use, which
/// would draw from the generator outside the init lock.
fn materialized<M: Module>(model: M) -> M {
    struct Materialize;
    impl ModuleVisitor for Materialize {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Materialize);
    model
}

/// `x` in `dtype`, without an autodiff node when it already is.
pub(crate) fn in_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    match x.dtype() == dtype {
        true => x,
        false => x.cast(dtype),
    }
}
