//! Mixed precision: forward and backward in a half-precision copy of the model, fp32 master
//! weights and optimiser (as PyTorch autocast + GradScaler-free bf16 training does).
//!
//! Each step casts the fp32 parameters into a half-precision copy that keeps their ids, runs the
//! model in that dtype, takes the contrastive loss in fp32 (the similarities and softmax of a
//! large batch need the range), and casts the gradients back to fp32 for the update.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor};
use mm_encoders::ClipModel;
use serde::{Deserialize, Serialize};

/// The dtype the model computes in during training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    /// The half-precision compute dtype, or `None` for plain fp32.
    pub fn half(self) -> Option<FloatDType> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::Fp16 => Some(FloatDType::F16),
        }
    }
}

/// `model` cast to `dtype`: every parameter a new leaf with the master's id (so gradients map
/// back to it) and the master's trainability.
pub fn half_copy(model: &ClipModel, dtype: FloatDType) -> ClipModel {
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let trainable = value.is_require_grad();
            let half = value.cast(self.0).detach();
            let half = if trainable { half.require_grad() } else { half };
            Param::from_mapped_value(id, half, mapper)
        }
    }
    model.clone().map(&mut Cast(dtype))
}

/// Casts every gradient of `model`'s parameters to fp32, in place.
pub fn grads_to_f32(model: &ClipModel, grads: &mut GradientsParams) {
    struct ToF32<'a>(&'a mut GradientsParams);
    impl ModuleVisitor for ToF32<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, grad.cast(FloatDType::F32));
            }
        }
    }
    model.visit(&mut ToF32(grads));
}
