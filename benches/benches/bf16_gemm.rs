//! mm's bf16 GEMM (`linear` under `MatmulPrecision::Bf16`) against its fp32 GEMM and against
//! this CPU's bf16 peak measured in the same run (`cargo bench -p mm-benches --bench
//! bf16_gemm`): GFLOP/s on ViT-B/32's projection shapes (batch 32: 1,600 image rows, 2,464
//! text rows), forward alone and forward + backward. Prints; asserts nothing.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mm_kernels::{MatmulPrecision, linear, with_matmul_precision};

fn seconds(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// GFLOP/s of `vdpbf16ps` on every core with 16 independent register chains: the ceiling a
/// bf16 GEMM kernel can reach here (64 FLOP an instruction).
#[cfg(target_arch = "x86_64")]
fn bf16_peak_gflops() -> Option<f64> {
    use std::arch::x86_64::*;
    if !mm_kernels::bf16_supported() {
        return None;
    }
    const ITERS: usize = 400_000_000;
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn chains() -> f32 {
        // SAFETY: reinterpreting 32 bf16 bit patterns.
        let (a, b): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3F80_3F80)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3C00_3C00)),
            )
        };
        // Named accumulators, not an array: they must live in registers.
        macro_rules! chains {
            ($($acc:ident)*) => {{
                $(let mut $acc = _mm512_setzero_ps();)*
                for _ in 0..ITERS / 16 {
                    $($acc = _mm512_dpbf16_ps($acc, a, b);)*
                }
                0.0 $(+ _mm512_reduce_add_ps($acc))*
            }};
        }
        chains!(c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 c10 c11 c12 c13 c14 c15)
    }
    let threads = rayon::current_num_threads();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            // SAFETY: the CPU has AVX512-BF16 (checked above).
            scope.spawn(|| std::hint::black_box(unsafe { chains() }));
        }
    });
    let flops = (threads * (ITERS / 16) * 16 * 64) as f64;
    Some(flops / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn bf16_peak_gflops() -> Option<f64> {
    None
}

fn main() {
    mm_train::allocator::keep_freed_memory();
    // The VM's speed drifts: the peak is the best of several tries, one before and one after
    // the GEMMs.
    let peak = (0..3).filter_map(|_| bf16_peak_gflops()).reduce(f64::max);
    match peak {
        Some(peak) => println!(
            "bf16 peak (vdpbf16ps, {} threads): {peak:.0} GFLOP/s",
            rayon::current_num_threads()
        ),
        None => println!("this CPU has no AVX512-BF16: bf16 runs the fp32 GEMM"),
    }
    let normal = Distribution::Normal(0.0, 1.0);
    let inference = Device::flex();
    let training = Device::flex().autodiff();
    println!(
        "{:<34} {:>10} {:>10} {:>7} {:>8}   {:>10} {:>10} {:>7}",
        "shape (rows x d_in -> d_out)",
        "fwd fp32",
        "fwd bf16",
        "ratio",
        "of peak",
        "f+b fp32",
        "f+b bf16",
        "ratio"
    );
    for (name, [rows, d_in, d_out]) in mm_benches::VIT_B_32_LINEARS {
        let flops = 2.0 * (rows * d_in * d_out) as f64;
        let forward = |precision| {
            let x = Tensor::<2>::random([rows, d_in], normal, &inference);
            let w = Tensor::<2>::random([d_in, d_out], normal, &inference);
            let s = seconds(10, || {
                with_matmul_precision(precision, || linear(x.clone(), w.clone(), None));
            });
            flops / s / 1e9
        };
        let train = |precision| {
            let x = Tensor::<2>::random([rows, d_in], normal, &training).require_grad();
            let w = Tensor::<2>::random([d_in, d_out], normal, &training).require_grad();
            let s = seconds(5, || {
                let out = with_matmul_precision(precision, || linear(x.clone(), w.clone(), None));
                let grads = out.sum().backward();
                let _ = (x.grad(&grads), w.grad(&grads));
            });
            3.0 * flops / s / 1e9
        };
        let (f32_fwd, bf16_fwd) = (
            forward(MatmulPrecision::Fp32),
            forward(MatmulPrecision::Bf16),
        );
        let (f32_train, bf16_train) = (train(MatmulPrecision::Fp32), train(MatmulPrecision::Bf16));
        let of_peak = peak.map_or("-".into(), |p| format!("{:.0}%", 100.0 * bf16_fwd / p));
        println!(
            "{:<34} {f32_fwd:>10.0} {bf16_fwd:>10.0} {:>6.2}x {of_peak:>8}   {f32_train:>10.0} {bf16_train:>10.0} {:>6.2}x",
            format!("{name} [{rows} x {d_in} -> {d_out}]"),
            bf16_fwd / f32_fwd,
            bf16_train / f32_train
        );
    }
    println!("(GFLOP/s; f+b counts the forward GEMM and the two backward GEMMs)");
    if let Some(after) = bf16_peak_gflops() {
        println!("bf16 peak again after the GEMMs: {after:.0} GFLOP/s");
    }
}
