//! AdamW with CLIP's parameter groups, the learning-rate schedule and global-norm clipping.

use burn::backend::flex::FlexTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate,
    ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::config::OptimConfig;

/// AdamW that decays only matrices: biases, LayerNorm gains, the class embedding and
/// `logit_scale` (every parameter with fewer than 2 dimensions) get no weight decay, as in
/// open_clip.
pub fn clip_adamw<M: Module>(config: &OptimConfig, model: &M) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdamW::new(config, config.weight_decay)).with_group(
        ParamGroup::from_ids(no_decay_params(model)),
        FusedAdamW::new(config, 0.0),
        None,
    )
}

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
}

impl FusedAdamW {
    pub fn new(config: &OptimConfig, weight_decay: f64) -> Self {
        let (beta_1, beta_2, epsilon) =
            (config.beta1 as f32, config.beta2 as f32, config.eps as f32);
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
        }
    }
}

/// Elements per rayon task.
const CHUNK: usize = 16 * 1024;

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
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
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>()[..n].par_chunks_mut(CHUNK))
            .zip(v.storage_mut::<f32>()[..n].par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
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

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

/// Ids of parameters with fewer than two dimensions.
pub fn no_decay_params<M: Module>(model: &M) -> Vec<ParamId> {
    struct Collect(Vec<ParamId>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D < 2 {
                self.0.push(param.id);
            }
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Linear warm-up to `lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`
/// (open_clip's `cosine_lr`). `step` counts from 0.
pub fn learning_rate(lr: f64, warmup_steps: usize, total_steps: usize, step: usize) -> f64 {
    if step < warmup_steps {
        return lr * (step + 1) as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = (step - warmup_steps) as f64 / decay_steps as f64;
    0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()) * lr
}

/// Global L2 norm of all gradients of `model`'s parameters (one host read).
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                let sq = grad.square().sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + sq,
                    None => sq,
                });
            }
        }
    }
    let mut visitor = SquaredNorm { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map(|t| (t.into_scalar::<f32>() as f64).sqrt())
        .unwrap_or(0.0)
}

/// Scales all gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = grad_norm(model, grads);
    if norm > max_norm {
        struct Scale<'a> {
            grads: &'a mut GradientsParams,
            factor: f64,
        }
        impl ModuleVisitor for Scale<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(grad) = self.grads.remove::<D>(param.id) {
                    self.grads.register(param.id, grad.mul_scalar(self.factor));
                }
            }
        }
        model.visit(&mut Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    norm
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
        let config = OptimConfig {
            lr: 1e-3,
            weight_decay: 0.2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            warmup_steps: 0,
            grad_clip_norm: None,
        };
        for weight_decay in [0.2, 0.0] {
            let fused = FusedAdamW::new(&config, weight_decay);
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

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        let lr = |step| learning_rate(1.0, 10, 110, step);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.5).abs() < 1e-12);
        assert!(lr(109) < 1e-3 && lr(109) > 0.0);
        assert!((1..110).all(|s| s <= 10 || lr(s) <= lr(s - 1)));
    }
}
