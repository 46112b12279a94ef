//! Data-parallel replicas kept one model: rank 0's weights broadcast at the start, every
//! rank's gradients summed in one flat all-reduce per step (not one call per tensor), and a
//! cheap periodic checksum that the replicas still agree.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use mm_contrastive::dist::{CommError, Communicator};

use crate::param_path::ModulePath;

/// A tensor's values as host fp32.
pub(crate) fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .expect("cast to fp32 above")
}

/// A host fp32 buffer as a tensor of `shape` on `device`.
pub(crate) fn tensor_of<const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Sums every rank's gradients of `model`'s trainable parameters, and `extra` (the ranks'
/// loss shares), in one all-reduce; afterwards `grads` and `extra` hold the sums on every rank.
/// A parameter gets a gradient where at least one rank had one, so the optimiser moves the
/// same parameters it would in one process.
pub fn all_reduce_grads<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    extra: &mut [f32],
    comm: &dyn Communicator,
) -> Result<(), CommError> {
    struct Flatten<'a> {
        grads: &'a mut GradientsParams,
        present: Vec<f32>,
        values: Vec<f32>,
        layout: Vec<(ParamId, Vec<usize>, Device)>,
    }
    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            if !value.is_require_grad() {
                return;
            }
            let shape = value.dims().to_vec();
            let device = value.inner().device();
            match self.grads.remove::<D>(param.id) {
                Some(grad) => {
                    self.present.push(1.0);
                    self.values.extend(host_values(grad));
                }
                None => {
                    self.present.push(0.0);
                    let numel: usize = shape.iter().product();
                    self.values.extend(std::iter::repeat_n(0.0, numel));
                }
            }
            self.layout.push((param.id, shape, device));
        }
    }
    let mut flat = Flatten {
        grads,
        present: Vec::new(),
        values: Vec::new(),
        layout: Vec::new(),
    };
    model.visit(&mut flat);
    let Flatten {
        grads,
        present,
        values,
        layout,
    } = flat;
    let (n_params, n_extra) = (present.len(), extra.len());
    let mut buffer = present;
    buffer.extend_from_slice(extra);
    buffer.extend(values);
    comm.all_reduce_sum(&mut buffer)?;
    extra.copy_from_slice(&buffer[n_params..n_params + n_extra]);

    struct Unflatten<'a> {
        grads: &'a mut GradientsParams,
        layout: std::vec::IntoIter<(ParamId, Vec<usize>, Device)>,
        present: &'a [f32],
        values: &'a [f32],
        index: usize,
        offset: usize,
    }
    impl ModuleVisitor for Unflatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.val().is_require_grad() {
                return;
            }
            let (id, shape, device) = self.layout.next().expect("visited in the same order");
            debug_assert_eq!(id, param.id);
            let numel: usize = shape.iter().product();
            let values = &self.values[self.offset..self.offset + numel];
            if self.present[self.index] > 0.0 {
                let shape: [usize; D] = shape.try_into().expect("the parameter's rank");
                self.grads.register(id, tensor_of(values, shape, &device));
            }
            self.index += 1;
            self.offset += numel;
        }
    }
    model.visit(&mut Unflatten {
        grads,
        layout: layout.into_iter(),
        present: &buffer[..n_params],
        values: &buffer[n_params + n_extra..],
        index: 0,
        offset: 0,
    });
    Ok(())
}

/// `model` with every parameter replaced by rank 0's value (ids and trainability kept): the
/// replicas start as one model however each rank initialised or loaded it.
pub fn broadcast_weights<M: Module>(model: M, comm: &dyn Communicator) -> Result<M, CommError> {
    if comm.world_size() == 1 {
        return Ok(model);
    }
    struct Flatten(Vec<f32>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(host_values(param.val()));
        }
    }
    let mut flat = Flatten(Vec::new());
    model.visit(&mut flat);
    let mut buffer = flat.0;
    comm.broadcast(&mut buffer, 0)?;

    struct Load<'a> {
        values: &'a [f32],
        offset: usize,
    }
    impl ModuleMapper for Load<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let trainable = value.is_require_grad();
            let (shape, device, dtype) = (value.dims(), value.device(), value.dtype());
            let numel: usize = shape.iter().product();
            let values = &self.values[self.offset..self.offset + numel];
            self.offset += numel;
            let loaded = tensor_of(values, shape, &device).cast(dtype);
            let loaded = if trainable {
                loaded.require_grad()
            } else {
                loaded
            };
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    Ok(model.map(&mut Load {
        values: &buffer,
        offset: 0,
    }))
}

/// Ranks whose weights differ from rank 0's: the replicas were meant to be one model.
#[derive(Debug, thiserror::Error)]
#[error(
    "the replicas' weights diverged at step {step}: rank {rank} differs from rank 0 in {parameter} (sum of |w| {theirs} vs {ours}); the ranks no longer train one model, so training stops"
)]
pub struct Diverged {
    pub step: usize,
    pub rank: usize,
    pub parameter: String,
    pub theirs: f32,
    pub ours: f32,
}

/// Relative difference of a checksum that counts as divergence (bit-identical replicas differ
/// by 0; a skipped or doubled update by far more).
const CHECKSUM_TOLERANCE: f32 = 1e-6;

/// Checks that every rank holds rank 0's weights, by one all-gather of two sums per parameter
/// tensor (`sum |w|`, `sum w^2`); the error names the first parameter that differs.
pub fn check_replicas_agree<M: Module>(
    model: &M,
    step: usize,
    comm: &dyn Communicator,
) -> anyhow::Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    #[derive(Default)]
    struct Sums {
        path: ModulePath,
        names: Vec<String>,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Sums {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.enter(name);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().inner().cast(burn::tensor::FloatDType::F32);
            self.sums.push(value.clone().abs().sum());
            self.sums.push(value.square().sum());
            self.names.push(self.path.joined());
        }
    }
    let mut sums = Sums::default();
    model.visit(&mut sums);
    let local = host_values(Tensor::cat(sums.sums, 0));
    let all = comm.all_gather(&local)?;
    let ours = &all[..local.len()];
    for (rank, theirs) in all.chunks(local.len()).enumerate().skip(1) {
        for (i, (&a, &b)) in theirs.iter().zip(ours).enumerate() {
            if (a - b).abs() > CHECKSUM_TOLERANCE * a.abs().max(b.abs()).max(1e-30) {
                return Err(Diverged {
                    step,
                    rank,
                    parameter: sums.names[i / 2].clone(),
                    theirs: theirs[i / 2 * 2],
                    ours: ours[i / 2 * 2],
                }
                .into());
            }
        }
    }
    Ok(())
}
