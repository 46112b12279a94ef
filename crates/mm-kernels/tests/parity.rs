//! mm's fused Flex kernels against the burn ops they replace: values and gradients within 1e-5.

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Distribution, Tensor};
use mm_kernels::quick_gelu;

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Values spanning where QuickGELU saturates both ways (|1.702 x| past 88 too), and a
/// transposed view so the non-contiguous path runs.
fn inputs(device: &Device) -> Tensor<2> {
    let x = Tensor::<2>::random([300, 257], Distribution::Normal(0.0, 4.0), device);
    let extremes = Tensor::<2>::from_floats(
        [
            [-200.0; 257],
            [-60.0; 257],
            [0.0; 257],
            [60.0; 257],
            [200.0; 257],
        ],
        device,
    );
    Tensor::cat(vec![x, extremes], 0).transpose()
}

#[test]
fn quick_gelu_matches_burn_ops_forward_and_backward() {
    let device = Device::flex().autodiff();
    let x = inputs(&device);
    let reference = |x: Tensor<2>| x.clone() * sigmoid(x.mul_scalar(1.702));

    let forward = max_diff(quick_gelu(x.clone()), reference(x.clone()));

    // Gradients against a non-uniform upstream gradient, so every element's scale differs.
    let upstream = Tensor::<2>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
    let grad_of = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
        let x = x.clone().detach().require_grad();
        let grads = (f(x.clone()) * upstream.clone()).sum().backward();
        x.grad(&grads).unwrap()
    };
    let fused_grad = grad_of(&|x| quick_gelu(x));
    let reference_grad = grad_of(&reference);
    let backward = max_diff(fused_grad.clone(), reference_grad);
    println!("quick_gelu: forward max diff {forward:.2e}, gradient max diff {backward:.2e}");
    assert!(forward <= 1e-5, "forward differs by {forward}");
    assert!(backward <= 1e-5, "gradient differs by {backward}");
    assert!(!fused_grad.is_nan().any().into_scalar::<bool>());
}

#[test]
fn quick_gelu_without_autodiff_and_in_bf16_uses_the_right_path() {
    let device = Device::flex();
    let x = inputs(&device);
    let reference = x.clone() * sigmoid(x.clone().mul_scalar(1.702));
    assert!(max_diff(quick_gelu(x.clone()), reference.clone()) <= 1e-5);
    // Half precision falls back to burn's ops (the kernel is f32-only).
    let half =
        quick_gelu(x.cast(burn::tensor::FloatDType::BF16)).cast(burn::tensor::FloatDType::F32);
    assert!(max_diff(half, reference) <= 2.0);
}

/// Packed q|k|v rows (what the encoder's one projection GEMM makes) against burn's attention
/// on the q, k and v split out of them, causal or not, forward and backward.
#[test]
fn attention_matches_burn_forward_and_backward() {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let device = Device::flex().autodiff();
    let [batch, heads, seq, dim] = [3, 2, 7, 8];
    let width = heads * dim;
    for causal in [false, true] {
        let qkv = Tensor::<2>::random(
            [batch * seq, 3 * width],
            Distribution::Normal(0.0, 2.0),
            &device,
        );
        let upstream = Tensor::<2>::random([batch * seq, width], Distribution::Default, &device);
        let reference = |qkv: Tensor<2>| {
            let part = |i: usize| {
                qkv.clone()
                    .slice([0..batch * seq, i * width..(i + 1) * width])
                    .reshape([batch, seq, heads, dim])
                    .swap_dims(1, 2)
            };
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: causal,
            };
            attention(part(0), part(1), part(2), None, None, options)
                .swap_dims(1, 2)
                .reshape([batch * seq, width])
        };
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let leaf = qkv.clone().detach().require_grad();
            let out = f(leaf.clone());
            let grads = (out.clone() * upstream.clone()).sum().backward();
            (out, leaf.grad(&grads).unwrap())
        };
        let (out, grad) = run(&|qkv| mm_kernels::attention(qkv, seq, heads, causal));
        let (want, want_grad) = run(&reference);
        let (forward, backward) = (max_diff(out, want), max_diff(grad, want_grad));
        println!("attention (causal {causal}): forward {forward:.2e}, gradients {backward:.2e}");
        assert!(forward <= 1e-5 && backward <= 1e-5);
    }
}

/// LayerNorm against burn's (same module, same parameters): output and the gradients of the
/// input, gain and bias, on rows with large offsets and scales; widths that fill whole vectors
/// of lanes and one that leaves a tail.
#[test]
fn layer_norm_matches_burn_forward_and_backward() {
    for width in [48, 37] {
        layer_norm_matches_burn(150, width);
    }
}

fn layer_norm_matches_burn(rows: usize, width: usize) {
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    let device = Device::flex().autodiff();
    let eps = 1e-5;
    let mut norm = LayerNormConfig::new(width).with_epsilon(eps).init(&device);
    norm.gamma = Param::from_tensor(Tensor::random(
        [width],
        Distribution::Normal(1.0, 0.5),
        &device,
    ));
    norm.beta = Some(Param::from_tensor(Tensor::random(
        [width],
        Distribution::Default,
        &device,
    )));
    let x = Tensor::<2>::random([rows, width], Distribution::Normal(3.0, 5.0), &device);
    let upstream = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let x = x.clone().detach().require_grad();
        let out = if fused {
            mm_kernels::layer_norm(&norm, eps, x.clone())
        } else {
            norm.forward(x.clone())
        };
        let grads = (out.clone() * upstream.clone()).sum().backward();
        let beta = norm.beta.as_ref().unwrap();
        (
            out,
            x.grad(&grads).unwrap(),
            norm.gamma.grad(&grads).unwrap(),
            beta.grad(&grads).unwrap(),
        )
    };
    let (out, dx, dgamma, dbeta) = run(true);
    let (want, want_dx, want_dgamma, want_dbeta) = run(false);
    let forward = max_diff(out, want);
    let dx = max_diff(dx, want_dx);
    let dparams = max_diff(dgamma, want_dgamma).max(max_diff(dbeta, want_dbeta));
    println!(
        "layer_norm width {width}: forward {forward:.2e}, dx {dx:.2e}, dgamma/dbeta {dparams:.2e}"
    );
    assert!(forward <= 1e-5 && dx <= 1e-5);
    // Sums over 150 rows of O(1) terms: 1e-5 relative.
    assert!(dparams <= 1e-4, "parameter gradients differ by {dparams}");
}

#[test]
fn layer_norm_gradients_are_the_same_every_time() {
    // The gain and bias gradients sum over rows in parallel; however the threads share the
    // work, the sum must be the same to the bit, or trained weights differ between runs.
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    let device = Device::flex().autodiff();
    let [rows, width] = [64 * 37 + 5, 128];
    let norm = LayerNormConfig::new(width).init(&device);
    let x = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 3.0), &device);
    let upstream = Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 1.0), &device);
    let gamma_grad = |norm: &burn::nn::LayerNorm| {
        let x = x.clone().detach().require_grad();
        let out = mm_kernels::layer_norm(norm, 1e-5, x);
        let grads = (out * upstream.clone()).sum().backward();
        let gamma: &Param<Tensor<1>> = &norm.gamma;
        gamma.grad(&grads).unwrap().into_data()
    };
    let first = gamma_grad(&norm);
    for _ in 0..30 {
        assert_eq!(gamma_grad(&norm), first);
    }
}

/// `x · W + b` against burn's matmul and add: output and all three gradients, for a row count
/// that does not divide into the kernel's blocks, a transposed (strided) weight, and no bias.
#[test]
fn linear_matches_burn_forward_and_backward() {
    use mm_kernels::linear;
    let device = Device::flex().autodiff();
    let [rows, d_in, d_out] = [601, 40, 72];
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<2>::random([rows, d_in], normal, &device);
    let weight_t = Tensor::<2>::random([d_out, d_in], normal, &device);
    let bias = Tensor::<1>::random([d_out], normal, &device);
    let upstream = Tensor::<2>::random([rows, d_out], normal, &device);
    for with_bias in [true, false] {
        let run = |fused: bool| {
            let x = x.clone().detach().require_grad();
            let weight_t = weight_t.clone().detach().require_grad();
            let bias = bias.clone().detach().require_grad();
            let weight = weight_t.clone().transpose();
            let b = with_bias.then(|| bias.clone());
            let out = if fused {
                linear(x.clone(), weight, b)
            } else {
                let out = x.clone().matmul(weight);
                match b {
                    Some(b) => out + b.unsqueeze(),
                    None => out,
                }
            };
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let db = bias.grad(&grads);
            (
                out,
                x.grad(&grads).unwrap(),
                weight_t.grad(&grads).unwrap(),
                db,
            )
        };
        let (out, dx, dw, db) = run(true);
        let (want, want_dx, want_dw, want_db) = run(false);
        let errors = [
            max_diff(out, want),
            max_diff(dx, want_dx),
            max_diff(dw, want_dw),
        ];
        println!("linear (bias {with_bias}): out, dx, dw {errors:?}");
        assert!(errors.iter().all(|&e| e <= 1e-4), "{errors:?}");
        if with_bias {
            assert!(max_diff(db.unwrap(), want_db.unwrap()) <= 1e-4);
        }
    }
}

/// Host values of a 2-D tensor.
fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// For `c = a · b` (`a` `[m, k]`, `b` `[k, n]`, row-major), the largest `|got - c| / bound`,
/// where c is computed in f64 from `round(a)` and `round(b)` and the bound is
/// `scale * Σ|a b|` per element (plus a tiny absolute floor for all-zero rows).
fn worst_ratio(
    got: &[f32],
    a: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
    round: fn(f32) -> f32,
    scale: f64,
) -> f64 {
    let mut worst: f64 = 0.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
            for p in 0..k {
                let (x, y) = (a[i * k + p], b[p * n + j]);
                sum += round(x) as f64 * round(y) as f64;
                magnitude += (x as f64 * y as f64).abs();
            }
            let error = (got[i * n + j] as f64 - sum).abs();
            worst = worst.max(error / (scale * magnitude + 1e-30));
        }
    }
    worst
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| v[(i % rows) * cols + i / rows])
        .collect()
}

/// The bf16 GEMMs of `linear` (forward, dx, dw) against f64 products of the bf16-rounded
/// inputs, within the f32 summation bound `(k + 2) * 2^-24 * Σ|a b|`, and against the exact
/// (unrounded) products within the rounding bound `(2u + u² + (k + 2) * 2^-24) Σ|a b|`,
/// u = 2^-8 (see `bf16_gemm`). Shapes that divide into no block: 601 rows (12-row panels),
/// k = 403 (odd, two k blocks), 75 columns (32-column panels), a strided weight.
#[test]
fn linear_in_bf16_rounds_inputs_and_sums_in_f32() {
    use mm_kernels::{
        MatmulPrecision, linear, matmul_precision, round_bf16, with_matmul_precision,
    };
    let device = Device::flex().autodiff();
    let [rows, d_in, d_out] = [601, 403, 75];
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<2>::random([rows, d_in], normal, &device);
    let weight_t = Tensor::<2>::random([d_out, d_in], normal, &device);
    let upstream = Tensor::<2>::random([rows, d_out], normal, &device);
    let run = |precision| {
        let x = x.clone().detach().require_grad();
        let weight_t = weight_t.clone().detach().require_grad();
        let out = with_matmul_precision(precision, || {
            linear(x.clone(), weight_t.clone().transpose(), None)
        });
        // The backward pass runs outside the scope and keeps the forward pass's precision.
        let grads = (out.clone() * upstream.clone()).sum().backward();
        let dw = weight_t.grad(&grads).unwrap().transpose();
        (values(out), values(x.grad(&grads).unwrap()), values(dw))
    };
    assert_eq!(matmul_precision(), MatmulPrecision::Fp32);
    let (out, dx, dw) = run(MatmulPrecision::Bf16);
    assert_eq!(
        matmul_precision(),
        MatmulPrecision::Fp32,
        "the scope restores fp32"
    );
    let (out32, _, _) = run(MatmulPrecision::Fp32);

    let (xs, w, dy) = (
        values(x.clone()),
        values(weight_t.clone().transpose()),
        values(upstream),
    );
    let (w_t, x_t) = (transpose(&w, d_in, d_out), transpose(&xs, rows, d_in));
    let sum_bound = |k: usize| (k + 2) as f64 * 2f64.powi(-24);
    let u = 2f64.powi(-8);
    let round_bound = |k: usize| 2.0 * u + u * u + sum_bound(k);
    let exact = |x: f32| x;
    let products = [
        ("out = x w", &out, &xs, &w, [rows, d_in, d_out]),
        ("dx = dy wᵀ", &dx, &dy, &w_t, [rows, d_out, d_in]),
        ("dw = xᵀ dy", &dw, &x_t, &dy, [d_in, rows, d_out]),
    ];
    let bf16 = mm_kernels::bf16_supported();
    for (name, got, a, b, shape @ [_, k, _]) in products {
        let exact_ratio = worst_ratio(got, a, b, shape, exact, round_bound(k));
        println!("{name}: worst error / rounding bound {exact_ratio:.3}");
        assert!(exact_ratio <= 1.0, "{name}: {exact_ratio} of the bound");
        if bf16 {
            let rounded_ratio = worst_ratio(got, a, b, shape, round_bf16, sum_bound(k));
            println!("{name}: worst error / f32 summation bound {rounded_ratio:.3}");
            assert!(rounded_ratio <= 1.0, "{name}: {rounded_ratio} of the bound");
        }
    }
    // The bf16 path really rounds: its error is far above fp32's (where the CPU has it).
    let error = |got: &[f32]| worst_ratio(got, &xs, &w, [rows, d_in, d_out], exact, 1.0);
    let (e16, e32) = (error(&out), error(&out32));
    println!("forward relative error: bf16 {e16:.2e}, fp32 {e32:.2e}");
    assert_eq!(bf16, e16 > 10.0 * e32, "bf16 {e16:e}, fp32 {e32:e}");
}

#[test]
fn rounding_to_bf16_is_to_nearest_even() {
    use mm_kernels::round_bf16;
    let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
    assert_eq!(
        round_bf16(1.0 + ulp / 2.0),
        1.0,
        "a tie goes to the even 1.0"
    );
    assert_eq!(
        round_bf16(1.0 + 1.5 * ulp),
        1.0 + 2.0 * ulp,
        "a tie goes to even"
    );
    assert_eq!(round_bf16(1.0 + 0.6 * ulp), 1.0 + ulp);
    assert_eq!(round_bf16(-3.0), -3.0);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(
        round_bf16(f32::MAX),
        f32::INFINITY,
        "past bf16's largest finite value"
    );
}
