//! Activation (gradient) checkpointing of one module call, as `torch.utils.checkpoint` does
//! for open_clip's `set_grad_checkpointing()`: the forward pass runs without autodiff and keeps
//! only the call's input; the backward pass runs the call again with autodiff and
//! back-propagates the output's gradient through it. A transformer block's activations (q|k|v,
//! attention, the MLP's 4x-wide hidden layer, norms' inputs: ~14x its input) then live only
//! while its own backward pass runs, for one more forward pass per block.
//!
//! burn 0.22 checkpoints per op (its `BalancedCheckpointing` recomputes element-wise ops), not
//! per module, so this is an autodiff op of its own: its parents are the input and the
//! module's parameters concatenated into one flat vector (an autodiff op has a fixed number of
//! parents; the concatenation's own backward pass hands each parameter its slice), and its
//! backward pass runs a second, separate graph on fresh leaves (burn supports a `backward()`
//! inside a backward step when the graphs are disjoint).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    Flex, GradientCheckpointingStrategy,
};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use std::sync::{Arc, Mutex};

use crate::{MatmulPrecision, matmul_precision, set_matmul_precision};

/// `forward(module, x)`, keeping only `x` for the backward pass, which recomputes the call.
///
/// Gradients (of `x` and of `module`'s trainable parameters) equal those of the plain call up
/// to float rounding; the recomputation uses the caller's [`MatmulPrecision`]. `forward` must
/// be deterministic (no dropout). Without autodiff (inference) this is the plain call; on a
/// backend this op does not cover yet (see [`Routed`]) it is the plain call too, keeping
/// everything as before.
pub fn checkpoint<M: Module + 'static, const D: usize>(
    module: &M,
    x: Tensor<D>,
    forward: fn(&M, Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let params = flat_params(module);
    if !routed(&x) || params.is_empty() {
        return forward(module, x);
    }
    let (params, trainable): (Vec<_>, Vec<_>) = params.into_iter().unzip();
    let params = Tensor::cat(params, 0);
    if !routed(&params) {
        return forward(module, x);
    }
    let snapshot = module.valid();
    let input = x.clone().inner();
    let precision = matmul_precision();
    let output = forward(&snapshot, input.clone());
    let rerun = Rerun {
        call: Arc::new(Mutex::new(Some(Box::new(Call {
            module: snapshot,
            trainable,
            input,
            precision,
            forward,
        })))),
    };
    record(x, params, output, rerun)
}

/// Every float parameter of a module flattened, in visiting order, and whether it takes a
/// gradient.
fn flat_params<M: Module>(module: &M) -> Vec<(Tensor<1>, bool)> {
    struct Flatten(Vec<(Tensor<1>, bool)>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let (n, trainable) = (value.shape().num_elements(), value.is_require_grad());
            self.0.push((value.reshape([n]), trainable));
        }
    }
    let mut flatten = Flatten(Vec::new());
    module.visit(&mut flatten);
    flatten.0
}

/// Whether [`checkpoint`] recomputes on `device` (in training, on its autodiff version); on
/// other backends it is the plain call, every activation kept.
pub fn checkpointing_on(device: &Device) -> bool {
    routed(&Tensor::<1>::zeros([1], &device.clone().autodiff()))
}

/// The gradient of every float parameter of `module` flattened, in visiting order (zeros for
/// one that got none).
fn flat_grads<M: Module>(module: &M, grads: &burn::tensor::Gradients) -> Vec<Tensor<1>> {
    struct Flatten<'a>(&'a burn::tensor::Gradients, Vec<Tensor<1>>);
    impl ModuleVisitor for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            let grad = value
                .grad(self.0)
                .unwrap_or_else(|| value.inner().zeros_like());
            self.1.push(grad.reshape([n]));
        }
    }
    let mut flatten = Flatten(grads, Vec::new());
    module.visit(&mut flatten);
    flatten.1
}

/// `module` (without autodiff) with every float parameter a fresh autodiff leaf, requiring a
/// gradient where `trainable` (in visiting order) says so: a graph of its own.
fn fresh_leaves<M: Module>(module: M, trainable: &[bool]) -> M {
    struct Leaves<'a>(std::slice::Iter<'a, bool>);
    impl ModuleMapper for Leaves<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let trainable = self.0.next().copied().unwrap_or(false);
            param.map(|value| match trainable {
                true => value.autodiff().require_grad(),
                false => value.autodiff(),
            })
        }
    }
    module.map(&mut Leaves(trainable.iter()))
}

/// The recomputation a checkpoint's backward pass runs (once: the tape consumes it).
struct Call<M, const D: usize> {
    /// The module without autodiff (its parameters shared, not copied).
    module: M,
    /// Which of its parameters (in visiting order) take gradients.
    trainable: Vec<bool>,
    input: Tensor<D>,
    precision: MatmulPrecision,
    forward: fn(&M, Tensor<D>) -> Tensor<D>,
}

impl<M: Module, const D: usize> Call<M, D> {
    /// The gradients of the input (if `input_grad`) and of the flat parameters (if
    /// `param_grads`; zeros for frozen ones) for the output gradient `grad`.
    fn gradients(
        self,
        grad: Tensor<D>,
        input_grad: bool,
        param_grads: bool,
    ) -> (Option<Tensor<D>>, Option<Tensor<1>>) {
        let _precision = set_matmul_precision(self.precision);
        let input = match input_grad {
            true => self.input.autodiff().require_grad(),
            false => self.input.autodiff(),
        };
        let module = fresh_leaves(self.module, &self.trainable);
        let output = (self.forward)(&module, input.clone());
        let grads = (output * grad).sum().backward();
        let input_grad = input_grad.then(|| input.grad(&grads)).flatten();
        let param_grads = param_grads.then(|| Tensor::cat(flat_grads(&module, &grads), 0));
        (input_grad, param_grads)
    }
}

/// A checkpoint's backward state: type-erased and shared, as an op state must be `Clone`.
#[derive(Clone)]
struct Rerun<const D: usize> {
    #[allow(clippy::type_complexity)]
    call: Arc<Mutex<Option<Box<dyn RunOnce<D>>>>>,
}

impl<const D: usize> std::fmt::Debug for Rerun<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rerun")
    }
}

trait RunOnce<const D: usize>: Send {
    fn run(
        self: Box<Self>,
        grad: Tensor<D>,
        input_grad: bool,
        param_grads: bool,
    ) -> (Option<Tensor<D>>, Option<Tensor<1>>);
}

impl<M: Module + 'static, const D: usize> RunOnce<D> for Call<M, D> {
    fn run(
        self: Box<Self>,
        grad: Tensor<D>,
        input_grad: bool,
        param_grads: bool,
    ) -> (Option<Tensor<D>>, Option<Tensor<1>>) {
        self.gradients(grad, input_grad, param_grads)
    }
}

impl<const D: usize> Rerun<D> {
    fn take(&self) -> Box<dyn RunOnce<D>> {
        self.call
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .expect("a checkpoint's backward step runs once")
    }
}

/// Backends whose autodiff tensors this op can unwrap: a backend's tensors to and from a
/// [`DispatchTensorKind`] (its variant exists only when burn builds that backend).
trait Routed: Backend {
    fn wrap(tensor: BackendTensor<Self>) -> DispatchTensorKind;
    /// `kind`'s tensor, when it is this backend's.
    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>>;
    /// Whether `kind` is an autodiff tensor of this backend.
    fn owns_autodiff(kind: &DispatchTensorKind) -> bool;
}

impl Routed for Flex {
    fn wrap(tensor: BackendTensor<Self>) -> DispatchTensorKind {
        DispatchTensorKind::Flex(tensor)
    }

    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Flex(tensor) => Some(tensor),
            _ => None,
        }
    }

    fn owns_autodiff(kind: &DispatchTensorKind) -> bool {
        matches!(kind, DispatchTensorKind::Flex(BackendTensor::Autodiff(_)))
    }
}

#[cfg(feature = "cube")]
impl Routed for burn::backend::Cube {
    fn wrap(tensor: BackendTensor<Self>) -> DispatchTensorKind {
        DispatchTensorKind::Cube(tensor)
    }

    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Cube(tensor) => Some(tensor),
            _ => None,
        }
    }

    fn owns_autodiff(kind: &DispatchTensorKind) -> bool {
        matches!(kind, DispatchTensorKind::Cube(BackendTensor::Autodiff(_)))
    }
}

/// Whether `x` is an autodiff tensor of a [`Routed`] backend.
fn routed<const D: usize>(x: &Tensor<D>) -> bool {
    let DispatchTensorKind::Autodiff(inner) = x.clone().into_dispatch().kind else {
        return false;
    };
    #[cfg(feature = "cube")]
    if <burn::backend::Cube as Routed>::owns_autodiff(&inner) {
        return true;
    }
    <Flex as Routed>::owns_autodiff(&inner)
}

/// The output as an autodiff tensor on `x`'s (routed) backend whose backward step is `rerun`.
fn record<const D: usize>(
    x: Tensor<D>,
    params: Tensor<1>,
    output: Tensor<D>,
    rerun: Rerun<D>,
) -> Tensor<D> {
    let (x, params) = (x.into_dispatch(), params.into_dispatch());
    let context = x.autodiff.merge(params.autodiff);
    let (
        DispatchAutodiffContext::Enabled(strategy),
        DispatchTensorKind::Autodiff(x),
        DispatchTensorKind::Autodiff(params),
    ) = (context, x.kind, params.kind)
    else {
        unreachable!("a routed input and its module's parameters are autodiff tensors")
    };
    let output = output.into_dispatch().kind;
    #[cfg(feature = "cube")]
    if <burn::backend::Cube as Routed>::owns_autodiff(&x) {
        let kind = on_backend::<burn::backend::Cube, D>(*x, *params, output, rerun, strategy);
        return autodiff_tensor(kind, context);
    }
    let kind = on_backend::<Flex, D>(*x, *params, output, rerun, strategy);
    autodiff_tensor(kind, context)
}

fn autodiff_tensor<const D: usize>(
    kind: DispatchTensorKind,
    context: DispatchAutodiffContext,
) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(kind)),
        autodiff: context,
    })
}

/// [`node`] on backend `B`, the output wrapped back into a dispatch kind.
fn on_backend<B: Routed, const D: usize>(
    x: DispatchTensorKind,
    params: DispatchTensorKind,
    output: DispatchTensorKind,
    rerun: Rerun<D>,
    strategy: GradientCheckpointingStrategy,
) -> DispatchTensorKind {
    let (Some(BackendTensor::Autodiff(x)), Some(BackendTensor::Autodiff(params))) =
        (B::unwrap(x), B::unwrap(params))
    else {
        unreachable!("a module's parameters live on its input's backend")
    };
    let Some(BackendTensor::Float(output)) = B::unwrap(output) else {
        unreachable!("a plain forward pass on B returns B's plain float tensor")
    };
    let out = match strategy {
        GradientCheckpointingStrategy::Disabled => {
            node::<B, NoCheckpointing, D>(x, params, output, rerun)
        }
        GradientCheckpointingStrategy::Balanced => {
            node::<B, BalancedCheckpointing, D>(x, params, output, rerun)
        }
    };
    B::wrap(BackendTensor::Autodiff(out))
}

/// Registers the op: parents `[x, params]`, output `output`.
fn node<B: Routed, C: CheckpointStrategy, const D: usize>(
    x: FloatTensor<Autodiff<B>>,
    params: FloatTensor<Autodiff<B>>,
    output: B::FloatTensorPrimitive,
    rerun: Rerun<D>,
) -> FloatTensor<Autodiff<B>> {
    match (RerunOp::<D>)
        .prepare::<C>([x.node(), params.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(rerun, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

#[derive(Debug)]
struct RerunOp<const D: usize>;

impl<B: Routed, const D: usize> Backward<B, 2> for RerunOp<D> {
    type State = Rerun<D>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let grad = Tensor::<D>::from_dispatch(DispatchTensor {
            kind: B::wrap(BackendTensor::Float(grad)),
            autodiff: DispatchAutodiffContext::Disabled,
        });
        let [x_node, params_node] = ops.parents;
        let (x_grad, params_grad) =
            ops.state
                .take()
                .run(grad, x_node.is_some(), params_node.is_some());
        for (node, grad) in [
            (x_node, x_grad.map(|g| g.into_dispatch())),
            (params_node, params_grad.map(|g| g.into_dispatch())),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                let Some(BackendTensor::Float(grad)) = B::unwrap(grad.kind) else {
                    unreachable!("gradients of a plain graph are plain tensors")
                };
                grads.register::<B>(node.id, grad);
            }
        }
    }
}
