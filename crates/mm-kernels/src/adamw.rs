//! AdamW with the update of an f32 parameter on Flex fused into one parallel pass.

use burn::backend::flex::FlexTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::contiguous;

/// burn's AdamW (same arithmetic, same state, so checkpoints do not change) with the update of
/// an f32 parameter on Flex done in one parallel pass over the parameter, its gradient and both
/// moments, in place where the buffers are not shared. burn's version is fourteen tensor ops per
/// parameter, each a single-threaded pass that allocates: 40 ms a step on the benchmark shape,
/// most of it for the 6.3M-float token embedding. Other devices and dtypes use burn's.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// The step's learning rate is multiplied by this (a parameter group's own rate, e.g.
    /// pretrained towers under a new head).
    lr_scale: f64,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f64) -> Self {
        Self {
            burn: AdamWConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .with_weight_decay(weight_decay as f32)
                .build(),
            beta_1,
            beta_2,
            epsilon,
            weight_decay: weight_decay as f32,
            lr_scale: 1.0,
        }
    }

    /// This optimiser with its learning rate `scale` times the schedule's.
    pub fn with_lr_scale(mut self, scale: f64) -> Self {
        self.lr_scale = scale;
        self
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let lr = lr * self.lr_scale;
        let on_flex = matches!(tensor.device().as_dispatch(), DispatchDevice::Flex(_));
        let f32s = [&tensor, &grad].iter().all(|t| t.dtype() == DType::F32);
        if !(on_flex && f32s) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (time, moments) = match state {
            Some(state) => (state.momentum.time + 1, Some(state.momentum)),
            None => (1, None),
        };
        let flex = |t: Tensor<D>| contiguous(t.try_into_primitive::<Flex>().expect("on Flex"));
        let (mut param, grad) = (flex(tensor), flex(grad));
        let n = grad.layout().num_elements();
        let (mut m, mut v) = match moments {
            Some(moments) => (flex(moments.moment_1), flex(moments.moment_2)),
            // Zero moments give exactly burn's first step (0 * beta + x == x).
            None => {
                let zeros = || FlexTensor::zeros(grad.layout().shape().clone(), DType::F32);
                (zeros(), zeros())
            }
        };
        let (b1, b2, eps) = (self.beta_1, self.beta_2, self.epsilon);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let (c1, c2) = (1.0 - b1.powi(time as i32), 1.0 - b2.powi(time as i32));
        let decay = (1.0 - lr * self.weight_decay as f64) as f32;
        let lr = lr as f32;
        let g = &grad.storage::<f32>()[..n];
        param.storage_mut::<f32>()[..n]
            .par_chunks_mut(crate::CHUNK)
            .zip(m.storage_mut::<f32>()[..n].par_chunks_mut(crate::CHUNK))
            .zip(v.storage_mut::<f32>()[..n].par_chunks_mut(crate::CHUNK))
            .zip(g.par_chunks(crate::CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    *m = *m * b1 + g * f1;
                    *v = *v * b2 + g * g * f2;
                    let delta = (*m / c1) / ((*v / c2).sqrt() + eps);
                    *p = *p * decay - delta * lr;
                }
            });
        let tensor = |t: FlexTensor| Tensor::<D>::from_primitive::<Flex>(t);
        let state = AdaptiveMomentumState::new(time, tensor(m), tensor(v));
        (tensor(param), Some(AdamWState::new(state)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The fused update is burn's AdamW operation for operation: three steps (first, with
    /// state, with weight decay and without) give identical parameters and moments, and the
    /// state round-trips through the same type, on a strided (transposed) parameter too.
    #[test]
    fn fused_adamw_equals_burns_adamw() {
        let device = Device::flex();
        for weight_decay in [0.2, 0.0] {
            let fused = FusedAdamW::new(0.9, 0.98, 1e-6, weight_decay);
            let burn = AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.98)
                .with_epsilon(1e-6)
                .with_weight_decay(weight_decay as f32)
                .build();
            let start = Tensor::<2>::random([70, 33], Distribution::Normal(0.0, 1.0), &device);
            let (mut ours, mut theirs) = (start.clone().transpose(), start.transpose());
            let (mut our_state, mut their_state) = (None, None);
            for step in 0..3 {
                let grad = Tensor::<2>::random(
                    [33, 70],
                    Distribution::Normal(0.0, 0.1 + step as f64),
                    &device,
                );
                (ours, our_state) = fused.step(3e-3, ours, grad.clone(), our_state);
                (theirs, their_state) = burn.step(3e-3, theirs, grad, their_state);
            }
            let (a, b) = (our_state.unwrap().momentum, their_state.unwrap().momentum);
            assert_eq!(a.time, 3);
            assert_eq!(a.time, b.time);
            ours.into_data().assert_eq(&theirs.into_data(), true);
            a.moment_1
                .into_data()
                .assert_eq(&b.moment_1.into_data(), true);
            a.moment_2
                .into_data()
                .assert_eq(&b.moment_2.into_data(), true);
        }
    }
}
