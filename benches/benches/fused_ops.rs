//! mm's fused Flex kernels against the burn ops they replace, forward + backward, on the
//! benchmark shape's tensors (`cargo bench -p mm-benches --bench fused_ops`). Prints ms per
//! call and the ratio; asserts nothing.

use std::time::Instant;

use burn::tensor::activation::sigmoid;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};
use mm_kernels as fused;

fn time_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// Forward and backward of `f` on fresh leaves of `inputs`' values.
fn fwd_bwd<const N: usize>(inputs: &[Tensor<4>; N], f: &dyn Fn([Tensor<4>; N]) -> Tensor<4>) {
    let leaves = inputs.clone().map(|x| x.detach().require_grad());
    let grads = f(leaves.clone()).sum().backward();
    for leaf in leaves {
        let _ = leaf.grad(&grads).unwrap();
    }
}

fn report(name: &str, ours: f64, burn: f64) {
    println!(
        "{name:<44} mm {ours:>7.2} ms  burn {burn:>7.2} ms  {:>5.2}x",
        burn / ours
    );
}

fn main() {
    mm_train::allocator::keep_freed_memory();
    let device = Device::flex().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    for (name, [batch, heads, seq, dim], causal) in [
        ("attention image [64, 3, 37, 64]", [64, 3, 37, 64], false),
        (
            "attention text  [64, 2, 32, 64], causal",
            [64, 2, 32, 64],
            true,
        ),
    ] {
        let width = heads * dim;
        let qkv = [Tensor::<4>::random(
            [1, 1, batch * seq, 3 * width],
            normal,
            &device,
        )];
        let as_rows = |x: Tensor<4>| x.reshape([batch * seq, 3 * width]);
        let ours = time_ms(20, || {
            fwd_bwd(&qkv, &|[qkv]| {
                fused::attention(as_rows(qkv), seq, heads, causal).unsqueeze::<4>()
            })
        });
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let burn = time_ms(20, || {
            fwd_bwd(&qkv, &|[qkv]| {
                // The encoder's layout before this op: q, k, v split and heads permuted.
                let qkv = as_rows(qkv);
                let part = |i: usize| {
                    qkv.clone()
                        .slice([0..batch * seq, i * width..(i + 1) * width])
                        .reshape([batch, seq, heads, dim])
                        .swap_dims(1, 2)
                };
                attention(part(0), part(1), part(2), None, None, options)
                    .swap_dims(1, 2)
                    .reshape([1, 1, batch * seq, width])
            })
        });
        report(name, ours, burn);
    }
    let x = [Tensor::<4>::random([1, 64, 37, 768], normal, &device)];
    let ours = time_ms(20, || fwd_bwd(&x, &|[x]| fused::quick_gelu(x)));
    let burn = time_ms(20, || {
        fwd_bwd(&x, &|[x]| x.clone() * sigmoid(x.mul_scalar(1.702)))
    });
    report("quick_gelu [64 * 37, 768]", ours, burn);
    let norm = burn::nn::LayerNormConfig::new(192).init(&device);
    let x = [Tensor::<4>::random([1, 1, 64 * 37, 192], normal, &device)];
    let ours = time_ms(20, || fwd_bwd(&x, &|[x]| fused::layer_norm(&norm, 1e-5, x)));
    let burn = time_ms(20, || fwd_bwd(&x, &|[x]| norm.forward(x)));
    report("layer_norm [64 * 37, 192]", ours, burn);
    for [rows, d_in, d_out] in [
        [64 * 37, 192, 768],
        [64 * 37, 768, 192],
        [64 * 37, 192, 576],
    ] {
        let x = [Tensor::<4>::random([1, 1, rows, d_in], normal, &device)];
        let weight = Tensor::<2>::random([d_in, d_out], normal, &device).require_grad();
        let bias = Tensor::<1>::random([d_out], normal, &device).require_grad();
        let rows_of = |x: Tensor<4>| x.reshape([rows, d_in]);
        let ours = time_ms(20, || {
            fwd_bwd(&x, &|[x]| {
                fused::linear(rows_of(x), weight.clone(), Some(bias.clone())).unsqueeze()
            })
        });
        let burn = time_ms(20, || {
            fwd_bwd(&x, &|[x]| {
                (rows_of(x).matmul(weight.clone()) + bias.clone().unsqueeze()).unsqueeze()
            })
        });
        report(&format!("linear [{rows}, {d_in}] -> {d_out}"), ours, burn);
    }
}
