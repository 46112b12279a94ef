//! mm's CPU kernels for the encoder's hot ops, each with its own backward pass, and the
//! optimiser's update ([`FusedAdamW`]). Model code reaches them only through
//! `mm_encoders::ops`; the trainer only through its optimiser.
//!
//! burn 0.22 runs these on Flex as chains of single-threaded tensor ops under autodiff (its
//! `Dispatch` has no `linear`, attention is the decomposed fallback, QuickGELU is three passes
//! with a branchy scalar `expf`), each allocating and recording a node. Here each is one op:
//! [`linear`] (bias in the GEMM, row-blocked GEMMs), [`attention`] on packed q|k|v rows,
//! [`quick_gelu`] and [`layer_norm`]; `benches/README.md` has what each bought. They are a burn
//! backend extension: [`FusedOps`] is implemented for Flex (the kernels) and for `Autodiff<Flex>`
//! (their backward passes), and the public functions route a [`Tensor`] to it on Flex in f32.
//! Other devices (wgpu, CUDA, whose compilers fuse) and other dtypes get the composite burn ops,
//! with the same results to float rounding (`tests/parity.rs` holds them within 1e-5).
//!
//! Mixed precision on Flex is PyTorch's CPU autocast: inside [`with_matmul_precision`]`(Bf16,
//! ..)` the [`linear`] GEMMs (forward and backward) round their f32 operands to bf16 and sum in
//! f32 ([`bf16_gemm`], AVX512-BF16), while activations, LayerNorm statistics, softmax and the
//! optimiser stay f32. Attention's per-head GEMMs stay f32: at CLIP's sequence lengths they are
//! 1-3% of the FLOPs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DispatchDevice, Flex, backend_extension};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Bytes, DType, Device, Shape, Tensor};
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

mod adamw;
mod attention;
mod bf16_gemm;
mod checkpoint;
mod f32_gemm;
mod gemm;
pub mod isa;
mod layer_norm;
mod linear;
mod matrix;

pub use adamw::FusedAdamW;
pub use bf16_gemm::{round_bf16, supported as bf16_supported};
pub use checkpoint::{checkpoint, checkpointing_on};

/// QuickGELU's sigmoid slope (OpenAI CLIP).
const QUICK_GELU_SLOPE: f32 = 1.702;

/// Elements per rayon task: big enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// `x * sigmoid(1.702 x)` (OpenAI CLIP's QuickGELU), element-wise.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex(&x) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::quick_gelu(
            x.into_dispatch(),
        ))
    } else {
        x.clone() * sigmoid(x.mul_scalar(QUICK_GELU_SLOPE))
    }
}

/// What the fused ops' f32 GEMMs compute in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    #[default]
    Fp32,
    /// Operands rounded to bf16, products summed in f32 (fp32 where the CPU lacks
    /// AVX512-BF16).
    Bf16,
}

impl MatmulPrecision {
    fn from_bf16(bf16: bool) -> Self {
        match bf16 {
            true => MatmulPrecision::Bf16,
            false => MatmulPrecision::Fp32,
        }
    }
}

thread_local! {
    static MATMUL_PRECISION: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::Fp32) };
}

/// Runs `f` with the fused ops called from this thread computing their GEMMs in `precision`
/// (a scope, like `torch.autocast`); an op's backward pass keeps its forward pass's precision,
/// wherever `backward()` is called.
pub fn with_matmul_precision<R>(precision: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    let _scope = set_matmul_precision(precision);
    f()
}

/// Sets this thread's GEMM precision until the returned guard drops (then the previous one
/// comes back): [`with_matmul_precision`] for code that cannot be one closure.
pub fn set_matmul_precision(precision: MatmulPrecision) -> MatmulPrecisionGuard {
    MatmulPrecisionGuard(MATMUL_PRECISION.replace(precision))
}

/// Restores the previous GEMM precision when dropped (see [`set_matmul_precision`]).
#[must_use = "the precision reverts when the guard drops"]
pub struct MatmulPrecisionGuard(MatmulPrecision);

impl Drop for MatmulPrecisionGuard {
    fn drop(&mut self) {
        MATMUL_PRECISION.set(self.0);
    }
}

/// The precision [`with_matmul_precision`] set on this thread (fp32 outside it).
pub fn matmul_precision() -> MatmulPrecision {
    MATMUL_PRECISION.get()
}

/// `x · weight + bias` for `x` `[rows, d_in]` and `weight` `[d_in, d_out]` (burn's layout).
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    if !(on_flex(&x) && x.dtype() == DType::F32 && weight.dtype() == DType::F32) {
        let out = x.matmul(weight);
        return match bias {
            Some(bias) => out + bias.unsqueeze(),
            None => out,
        };
    }
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[1]], &weight.device()));
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        matmul_precision() == MatmulPrecision::Bf16,
    ))
}

/// `layer` applied to `[rows, d_in]` rows through [`linear`].
pub fn linear_layer(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// `norm`'s LayerNorm over the last dimension of `x` (its epsilon is `eps`: burn keeps it
/// private).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, eps: f64, x: Tensor<D>) -> Tensor<D> {
    let beta = match &norm.beta {
        Some(beta) if on_flex(&x) && x.dtype() == DType::F32 => beta.val(),
        _ => return norm.forward(x),
    };
    let dims = x.dims();
    let width = dims[D - 1];
    let rows = x.shape().num_elements() / width;
    let out = <burn::backend::Dispatch as FusedOps>::fused_layer_norm(
        x.reshape([rows, width]).into_dispatch(),
        norm.gamma.val().into_dispatch(),
        beta.into_dispatch(),
        eps,
    );
    Tensor::<2>::from_dispatch(out).reshape(dims)
}

/// Multi-head self-attention from packed projections: `qkv` is `[batch * seq, 3 * width]`
/// (each row q | k | v, heads side by side within each), the result `[batch * seq, width]`
/// rows of `softmax(q kᵀ / √head_dim) v`, causal or not.
pub fn attention(qkv: Tensor<2>, seq: usize, heads: usize, causal: bool) -> Tensor<2> {
    let [rows, cols] = qkv.dims();
    let width = cols / 3;
    if on_flex(&qkv) && qkv.dtype() == DType::F32 {
        return Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::fused_attention(
            qkv.into_dispatch(),
            rows / seq,
            seq,
            heads,
            causal,
        ));
    }
    let (batch, head_dim) = (rows / seq, width / heads);
    let part = |i: usize| {
        qkv.clone()
            .slice([0..rows, i * width..(i + 1) * width])
            .reshape([batch, seq, heads, head_dim])
            .swap_dims(1, 2)
    };
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    burn::tensor::module::attention(part(0), part(1), part(2), None, None, options)
        .swap_dims(1, 2)
        .reshape([rows, width])
}

/// Multi-head attention of `query` positions over `key`/`value` positions (already projected;
/// `[batch, n_q, width]`, `[batch, n_k, width]`, `[batch, n_k, width]`) under a mask
/// (`[batch, n_q, n_k]`, or `[batch, 1, n_k]` for one key padding row shared by every query;
/// `true` where a key must not be attended): cross-attention between modalities, self-attention
/// over a padded joint sequence, and cached decoding (new queries over every key so far).
/// Returns the heads' context `[batch, n_q, width]`. burn's attention op on every backend (the
/// models that use it are small next to the towers; a Flex kernel would come with a bench
/// showing it is the bottleneck). Every query needs one unmasked key.
pub fn masked_attention(
    query: Tensor<3>,
    key: Tensor<3>,
    value: Tensor<3>,
    heads: usize,
    mask: Option<Tensor<3, Bool>>,
) -> Tensor<3> {
    let [batch, n_q, width] = query.dims();
    let n_k = key.dims()[1];
    let head_dim = width / heads;
    let split = |x: Tensor<3>, n: usize| x.reshape([batch, n, heads, head_dim]).swap_dims(1, 2);
    let mask = mask.map(|mask| {
        let rows = mask.dims()[1];
        mask.reshape([batch, 1, rows, n_k])
            .expand([batch, heads, n_q, n_k])
    });
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    burn::tensor::module::attention(
        split(query, n_q),
        split(key, n_k),
        split(value, n_k),
        mask,
        None,
        options,
    )
    .swap_dims(1, 2)
    .reshape([batch, n_q, width])
}

fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    fused_on(&x.device())
}

/// Whether `device` runs the fused kernels (Flex, autodiff or not), and so whether
/// [`with_matmul_precision`] applies to it; elsewhere ops are burn's, in the tensors' dtype.
pub fn fused_on(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The fused ops, for Flex and for autodiff on Flex (which adds their backward passes).
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// See [`linear`]; `bf16`: its GEMMs in bf16 (see [`MatmulPrecision`]).
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self>;

    /// See [`layer_norm`]; `x` is `[rows, width]`.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;

    /// See [`attention`].
    fn fused_attention(
        qkv: FloatTensor<Self>,
        batch: usize,
        seq: usize,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self>;
}

impl FusedOps for Flex {
    fn quick_gelu(x: FlexTensor) -> FlexTensor {
        quick_gelu_forward(x)
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, bf16: bool) -> FlexTensor {
        linear::forward(
            &x,
            &weight,
            &contiguous(bias),
            MatmulPrecision::from_bf16(bf16),
        )
    }

    fn fused_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        layer_norm::forward(&x, &gamma, &beta, eps).0
    }

    fn fused_attention(
        qkv: FlexTensor,
        batch: usize,
        seq: usize,
        heads: usize,
        causal: bool,
    ) -> FlexTensor {
        attention::forward(&qkv, attention::Heads::new(&qkv, batch, seq, heads, causal)).0
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    /// Keeps only the input for the backward pass, which recomputes the sigmoid from it:
    /// cheaper than storing a second activation-sized tensor.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        fused_op::<C, _, 1>(
            [x],
            |[x]| (quick_gelu_forward(x.clone()), x),
            |x, grad, _| [Some(quick_gelu_backward(x.clone(), grad.clone()))],
        )
    }

    /// Keeps the input, the weight and the precision.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        let precision = MatmulPrecision::from_bf16(bf16);
        fused_op::<C, _, 3>(
            [x, weight, bias],
            |[x, weight, bias]| {
                let out = linear::forward(&x, &weight, &contiguous(bias), precision);
                (
                    out,
                    linear::Saved {
                        x,
                        weight,
                        precision,
                    },
                )
            },
            linear::backward,
        )
    }

    /// Keeps the input, the gain and each row's mean and 1/std.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        fused_op::<C, _, 3>(
            [x, gamma, beta],
            |inputs| {
                let [x, gamma, beta] = inputs.map(contiguous);
                let (out, stats) = layer_norm::forward(&x, &gamma, &beta, eps);
                (out, layer_norm::Saved { x, gamma, stats })
            },
            |saved, grad, _| layer_norm::backward(saved, grad).map(Some),
        )
    }

    /// Keeps the packed input, the output and each row's log-sum-exp (not the probabilities,
    /// which the backward pass recomputes head by head).
    fn fused_attention(
        qkv: FloatTensor<Self>,
        batch: usize,
        seq: usize,
        heads: usize,
        causal: bool,
    ) -> FloatTensor<Self> {
        fused_op::<C, _, 1>(
            [qkv],
            |[qkv]| {
                let shape = attention::Heads::new(&qkv, batch, seq, heads, causal);
                let (out, lse) = attention::forward(&qkv, shape);
                let saved = attention::Saved {
                    qkv,
                    out: out.clone(),
                    lse,
                    shape,
                };
                (out, saved)
            },
            |saved, grad, _| [Some(attention::backward(saved, grad))],
        )
    }
}

/// An autodiff op on Flex with `N` inputs and a hand-written backward: `forward` computes the
/// output and what the backward pass keeps; `backward` turns that and the output's gradient
/// (made contiguous) into the inputs' gradients.
/// A fused op's backward pass: the saved state, the output's gradient and which inputs need a
/// gradient (a frozen weight, or pixels, need none) give each input's gradient, `None` where
/// not wanted (an op may still return ones not wanted; they are dropped).
type BackwardFn<S, const N: usize> = fn(&S, &FlexTensor, [bool; N]) -> [Option<FlexTensor>; N];

fn fused_op<C: CheckpointStrategy, S: Clone + Send + std::fmt::Debug + 'static, const N: usize>(
    inputs: [FloatTensor<Autodiff<Flex, C>>; N],
    forward: impl FnOnce([FlexTensor; N]) -> (FlexTensor, S),
    backward: BackwardFn<S, N>,
) -> FloatTensor<Autodiff<Flex, C>> {
    #[derive(Debug)]
    struct Op<S, const N: usize> {
        backward: BackwardFn<S, N>,
    }

    impl<S: Clone + Send + std::fmt::Debug + 'static, const N: usize> Backward<Flex, N> for Op<S, N> {
        type State = S;

        fn backward(
            self,
            ops: Ops<Self::State, N>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = contiguous(grads.consume::<Flex>(&ops.node));
            let wanted = ops.parents.each_ref().map(Option::is_some);
            let gradients = (self.backward)(&ops.state, &grad, wanted);
            for (node, grad) in ops.parents.into_iter().zip(gradients) {
                if let (Some(node), Some(grad)) = (node, grad) {
                    grads.register::<Flex>(node.id, grad);
                }
            }
        }
    }

    let prepared = Op { backward }
        .prepare::<C>(inputs.each_ref().map(|t| t.node()))
        .compute_bound()
        .stateful();
    let (out, saved) = forward(inputs.map(|t| t.into_primitive()));
    match prepared {
        OpsKind::Tracked(prep) => prep.finish(saved, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

fn quick_gelu_forward(x: FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let n = x.layout().num_elements();
    let x_values = &x.storage::<f32>()[..n];
    Output::map(x.layout().shape().clone(), x_values, x_values, |x, _| {
        x * sigmoid_f32(QUICK_GELU_SLOPE * x)
    })
}

/// `grad * d/dx quick_gelu(x)` = `grad * (s + 1.702 x s (1 - s))`, `s = sigmoid(1.702 x)`.
fn quick_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let (x, grad) = (contiguous(x), contiguous(grad));
    let n = x.layout().num_elements();
    let (x_values, grad_values) = (&x.storage::<f32>()[..n], &grad.storage::<f32>()[..n]);
    Output::map(x.layout().shape().clone(), x_values, grad_values, |x, g| {
        let s = sigmoid_f32(QUICK_GELU_SLOPE * x);
        g * (s + QUICK_GELU_SLOPE * x * s * (1.0 - s))
    })
}

/// `out[i] = f(a[i], b[i])`, vectorised (see [`vectorised`]).
fn map_chunk<F: Fn(f32, f32) -> f32>(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], f: &F) {
    vectorised(|| {
        for (out, (&a, &b)) in out.iter_mut().zip(a.iter().zip(b)) {
            out.write(f(a, b));
        }
    })
}

/// Runs `f` compiled for the widest vectors this CPU has (AVX-512, else AVX2, else the
/// baseline's SSE2), picked at run time by [`isa::isa`]: the loops over f32 slices in `f`
/// vectorise at that width (`f`, called once, is inlined into each build). No FMA is enabled,
/// so every build rounds alike; reductions written with [`lane_sum`] add in the same order on
/// every CPU.
#[inline(always)]
fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match isa::isa() {
            // SAFETY: the CPU has AVX-512F.
            isa::Isa::Avx512 | isa::Isa::Avx512Bf16 => return unsafe { avx512(f) },
            // SAFETY: the CPU has AVX2.
            isa::Isa::Avx2 => return unsafe { avx2(f) },
            isa::Isa::Scalar => {}
        }
    }
    f()
}

/// `Σ a[i] b[i]` as [`lane_sum`] adds.
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = (chunks_a.remainder().iter().zip(chunks_b.remainder()))
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in chunks_a.zip(chunks_b) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Lanes of [`lane_sum`]: one zmm of f32s.
const LANES: usize = 16;

/// `Σ f(x)` over `xs` in [`LANES`] interleaved partial sums, added in a fixed order: a loop
/// that vectorises (a sequential float sum cannot) and gives the same result on every CPU.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A new contiguous f32 tensor written in place by a kernel: no zero-fill, no copy (Flex's
/// `FlexTensor::empty` zeroes its buffer and may copy it again to align it).
struct Output {
    data: Vec<f32>,
    shape: Shape,
}

impl Output {
    fn new(shape: Shape) -> Self {
        Self {
            data: Vec::with_capacity(shape.num_elements()),
            shape,
        }
    }

    /// `f(a[i], b[i])` for every element, in parallel chunks.
    fn map(shape: Shape, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
        let mut out = Self::new(shape);
        out.data.spare_capacity_mut()[..a.len()]
            .par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(out, (a, b))| map_chunk(out, a, b, &f));
        // SAFETY: every element was written.
        unsafe { out.finish() }
    }

    /// # Safety
    /// Every element must have been written.
    unsafe fn finish(mut self) -> FlexTensor {
        // SAFETY: guaranteed by the caller.
        unsafe { self.data.set_len(self.shape.num_elements()) };
        let layout = Layout::contiguous(self.shape);
        FlexTensor::new(Bytes::from_elems(self.data), layout, DType::F32)
    }
}

fn contiguous(x: FlexTensor) -> FlexTensor {
    assert_eq!(x.dtype(), DType::F32, "fused kernels take f32");
    if x.is_contiguous() && x.layout().start_offset() == 0 {
        x
    } else {
        x.to_contiguous()
    }
}

/// `1 / (1 + e^-x)` without branches, so loops over it vectorise.
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `e^x` to within 2 ulp on [-87, 88] (Cephes' `expf` polynomial), clamped outside it, so
/// `sigmoid_f32` saturates to exactly 0 or 1 instead of producing inf/NaN. Branch-free: the
/// rounding and the power of two are integer tricks, not libm calls.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // The integer n sits in t's low mantissa bits; move it into the exponent field.
    let pow2 = f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    e * pow2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst: f32 = 0.0;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (exp_f32(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(sigmoid_f32(-200.0) < 1e-37 && sigmoid_f32(200.0) == 1.0);
        assert!(sigmoid_f32(f32::NAN).is_nan());
    }
}
