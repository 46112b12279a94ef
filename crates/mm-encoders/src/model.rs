//! The two towers joined (HF `CLIPModel`): projections into a shared embedding space and the
//! learnable temperature.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};

use crate::config::ClipConfig;
use crate::text::TextTransformer;
use crate::transformer::linear;
use crate::vision::VisionTransformer;

/// Serialises model initialisations within the process (see [`ClipConfig::init_seeded`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
        let _exclusive = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.init_unlocked(device)
    }

    /// The same initialisation for every `seed`, even with other threads initialising models
    /// at the same time: burn's generator is per device and global, so seeding and drawing
    /// happen under one lock.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> ClipModel {
        let _exclusive = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        self.init_unlocked(device)
    }

    /// Builds the model and draws every parameter now: burn initialises lazily, on first use,
    /// which would draw from the generator outside the lock.
    fn init_unlocked(&self, device: &Device) -> ClipModel {
        struct Materialize;
        impl ModuleVisitor for Materialize {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        let model = self.build(device);
        model.visit(&mut Materialize);
        model
    }

    fn build(&self, device: &Device) -> ClipModel {
        ClipModel {
            text_model: self.text.init(device),
            vision_model: self.vision.init(device),
            visual_projection: linear(
                self.vision.width,
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
    /// `[batch, 3, H, W]` CLIP-normalised pixels -> `[batch, embed_dim]` (not normalised).
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.visual_projection
            .forward(self.vision_model.forward(pixels).pooled)
    }

    /// `[batch, seq]` token ids -> `[batch, embed_dim]` (not normalised).
    pub fn text_features(&self, input_ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_projection
            .forward(self.text_model.forward(input_ids).pooled)
    }
}
