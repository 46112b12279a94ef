//! Mixed precision with fp32 master weights and optimiser (as PyTorch autocast + GradScaler-free
//! bf16 training does), in one of two ways by device ([`Precision::compute_on`]):
//!
//! - on Flex, bf16 is autocast: the model stays f32 and the fused kernels' GEMMs round their
//!   operands to bf16 and sum in f32 (AVX512-BF16), everything else in f32;
//! - elsewhere (wgpu, CUDA; and fp16 everywhere), each step casts the fp32 parameters into a
//!   half-precision copy that keeps their ids, runs the model in that dtype, takes the
//!   contrastive loss in fp32 (the similarities and softmax of a large batch need the range),
//!   and casts the gradients back to fp32 for the update.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, FloatDType, Tensor};
use mm_encoders::{MatmulPrecision, MatmulPrecisionGuard, fused_on, set_matmul_precision};
use serde::{Deserialize, Serialize};

/// The dtype the model computes in during training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

    /// How this precision computes on `device`.
    pub fn compute_on(self, device: &Device) -> Compute {
        match self.half() {
            None => Compute::Fp32,
            Some(FloatDType::BF16) if fused_on(device) => Compute::Bf16Gemms,
            Some(dtype) => Compute::HalfCopy(dtype),
        }
    }

    /// Makes inference with `model` (on `device`) compute in this precision until the guard
    /// drops: bf16 GEMMs on this thread (Flex), or `model` replaced by its half-precision copy
    /// (other devices). Features come out in f32 either way.
    pub fn enter_inference<M: Module>(
        self,
        model: &mut M,
        device: &Device,
    ) -> MatmulPrecisionGuard {
        match self.compute_on(device) {
            Compute::Fp32 => set_matmul_precision(MatmulPrecision::Fp32),
            Compute::Bf16Gemms => set_matmul_precision(MatmulPrecision::Bf16),
            Compute::HalfCopy(dtype) => {
                *model = half_copy(model, dtype);
                set_matmul_precision(MatmulPrecision::Fp32)
            }
        }
    }
}

/// How a pass computes in a [`Precision`] on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compute {
    Fp32,
    /// f32 tensors, bf16 GEMMs (Flex).
    Bf16Gemms,
    /// A copy of the model in this dtype.
    HalfCopy(FloatDType),
}

/// `model` cast to `dtype`: every parameter a new leaf with the master's id (so gradients map
/// back to it) and the master's trainability.
pub fn half_copy<M: Module>(model: &M, dtype: FloatDType) -> M {
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
pub fn grads_to_f32<M: Module>(model: &M, grads: &mut GradientsParams) {
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
