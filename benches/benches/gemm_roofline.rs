//! The fp32 GEMM roofline per instruction set (`cargo bench -p mm-benches --bench
//! gemm_roofline [-- --rounds N]`): for each build this CPU runs (AVX-512, AVX2 + FMA), the
//! measured peak of an FMA loop on every core, mm's fp32 GEMM (`linear` forward) and MKL's
//! (PyTorch's `x @ w`, `benches/torch_gemm.py`) on ViT-B/32's and the bench shape's projection
//! shapes, GFLOP/s and share of the peak. Each build runs in a child process under
//! `MM_MAX_ISA`, PyTorch under the matching caps (`ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`,
//! `MKL_ENABLE_INSTRUCTIONS`). The peak is the best of a measurement before and after the
//! GEMMs; rates are medians over rounds. Prints; asserts nothing.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use mm_benches::{BENCH_LINEARS, VIT_B_32_LINEARS, python, torch_isa_caps};
use mm_kernels::isa::{Isa, MAX_ISA_VAR, isa};
use mm_kernels::linear;
use serde_json::{Value, json};

/// Set in the child processes that measure one build.
const CHILD_VAR: &str = "MM_ROOFLINE_CHILD";

/// `(name, [rows, d_in, d_out])`: ViT-B/32's projections, then the bench shape's.
fn shapes() -> Vec<(String, [usize; 3])> {
    let named = |prefix: &str, shapes: &[(&str, [usize; 3])]| -> Vec<(String, [usize; 3])> {
        shapes
            .iter()
            .map(|(name, shape)| (format!("{prefix} {name}"), *shape))
            .collect()
    };
    [
        named("B/32", &VIT_B_32_LINEARS),
        named("bench", &BENCH_LINEARS),
    ]
    .concat()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// GFLOP/s of independent FMA chains on every core in `isa`'s widest vectors (None for the
/// portable build, which has no FMA).
#[cfg(target_arch = "x86_64")]
fn fma_peak(isa: Isa) -> Option<f64> {
    let iters: usize = 200_000_000;
    // In assembly: compiled from intrinsics, LLVM merges chains that compute the same values
    // and shuffles registers inside the loop.
    #[target_feature(enable = "avx512f")]
    fn zmm(iters: usize) -> f32 {
        // SAFETY: registers only; the CPU has AVX-512F (caller).
        unsafe {
            std::arch::asm!(
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "2:",
                "vfmadd231ps zmm0, zmm16, zmm17", "vfmadd231ps zmm1, zmm16, zmm17",
                "vfmadd231ps zmm2, zmm16, zmm17", "vfmadd231ps zmm3, zmm16, zmm17",
                "vfmadd231ps zmm4, zmm16, zmm17", "vfmadd231ps zmm5, zmm16, zmm17",
                "vfmadd231ps zmm6, zmm16, zmm17", "vfmadd231ps zmm7, zmm16, zmm17",
                "vfmadd231ps zmm8, zmm16, zmm17", "vfmadd231ps zmm9, zmm16, zmm17",
                "vfmadd231ps zmm10, zmm16, zmm17", "vfmadd231ps zmm11, zmm16, zmm17",
                "vfmadd231ps zmm12, zmm16, zmm17", "vfmadd231ps zmm13, zmm16, zmm17",
                "vfmadd231ps zmm14, zmm16, zmm17", "vfmadd231ps zmm15, zmm16, zmm17",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters / 16 => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                out("zmm16") _, out("zmm17") _,
                options(nostack, nomem),
            );
        }
        0.0
    }
    #[target_feature(enable = "avx2,fma")]
    fn ymm(iters: usize) -> f32 {
        // SAFETY: registers only; the CPU has AVX2 and FMA (caller).
        unsafe {
            std::arch::asm!(
                "vxorps ymm14, ymm14, ymm14",
                "vxorps ymm15, ymm15, ymm15",
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
                "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
                "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
                "vfmadd231ps ymm8, ymm14, ymm15", "vfmadd231ps ymm9, ymm14, ymm15",
                "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters / 16 => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
        0.0
    }
    let (chains, lanes, run): (usize, usize, fn(usize) -> f32) = match isa {
        // SAFETY (both): the child runs only builds the CPU has.
        Isa::Avx512 | Isa::Avx512Bf16 => (16, 16, |n| unsafe { zmm(n) }),
        Isa::Avx2 => (12, 8, |n| unsafe { ymm(n) }),
        Isa::Scalar => return None,
    };
    let threads = rayon::current_num_threads();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| std::hint::black_box(run(iters)));
        }
    });
    let flops = (threads * (iters / 16) * chains * lanes * 2) as f64;
    Some(flops / start.elapsed().as_secs_f64() / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak(_: Isa) -> Option<f64> {
    None
}

/// The child: this build's peak and mm's GFLOP/s on every shape, as JSON on stdout.
fn measure() -> Value {
    mm_train::allocator::keep_freed_memory();
    let before = fma_peak(isa());
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    let gflops: Vec<f64> = shapes()
        .iter()
        .map(|(_, [rows, d_in, d_out])| {
            let x = Tensor::<2>::random([*rows, *d_in], normal, &device);
            let w = Tensor::<2>::random([*d_in, *d_out], normal, &device);
            let times: Vec<f64> = (0..12)
                .map(|_| {
                    let start = Instant::now();
                    linear(x.clone(), w.clone(), None);
                    start.elapsed().as_secs_f64()
                })
                .skip(2)
                .collect();
            2.0 * (rows * d_in * d_out) as f64 / median(times) / 1e9
        })
        .collect();
    let peak = [before, fma_peak(isa())]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    json!({ "isa": isa().name(), "peak": peak, "gflops": gflops })
}

fn run_child(cap: Isa) -> Result<Value, String> {
    let out = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(MAX_ISA_VAR, cap.name())
        .env(CHILD_VAR, "1")
        .output()
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn run_torch(cap: Isa, threads: usize) -> Result<Value, String> {
    let shapes = shapes()
        .into_iter()
        .map(|(_, [m, k, n])| format!("{m}x{k}x{n}"));
    let out = python()
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/torch_gemm.py"))
        .args(["--threads", &threads.to_string(), "--shapes"])
        .args(shapes)
        .envs(torch_isa_caps(cap))
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => serde_json::from_slice(&out.stdout).map_err(|e| e.to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .into()),
    }
}

fn main() {
    if std::env::var_os(CHILD_VAR).is_some() {
        println!("{}", measure());
        return;
    }
    let rounds: usize = mm_benches::flag_value("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let threads = rayon::current_num_threads();
    let caps: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|&cap| cap <= Isa::detected())
        .collect();
    for cap in caps {
        let (mut peaks, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        let mut notes = Vec::new();
        for _ in 0..rounds {
            match run_child(cap) {
                Ok(v) => {
                    peaks.extend(v["peak"].as_f64());
                    ours.push(floats(&v["gflops"]));
                }
                Err(e) => notes.push(format!("mm failed: {e}")),
            }
            match run_torch(cap, threads) {
                Ok(v) => {
                    theirs.push(floats(&v["gflops"]));
                    notes.push(format!("PyTorch {} at {}", v["torch"], v["capability"]));
                }
                Err(e) => notes.push(format!("PyTorch failed: {e} (bash benches/setup_venv.sh)")),
            }
        }
        notes.dedup();
        let note = notes.join("; ");
        let peak = peaks.iter().copied().fold(f64::NAN, f64::max);
        println!(
            "\n{} build, {threads} threads, FMA peak {peak:.0} GFLOP/s (best of {} runs); {note}",
            cap.name(),
            peaks.len()
        );
        println!(
            "{:<38} {:>8} {:>8} {:>8} {:>8}",
            "shape (rows x d_in -> d_out)", "mm", "of peak", "MKL", "of peak"
        );
        for (i, (name, [m, k, n])) in shapes().iter().enumerate() {
            let column = |runs: &[Vec<f64>]| {
                let values: Vec<f64> = runs.iter().filter_map(|r| r.get(i).copied()).collect();
                (!values.is_empty()).then(|| median(values))
            };
            let cell = |v: Option<f64>| {
                v.map_or(("-".into(), "-".into()), |v| {
                    (format!("{v:.0}"), format!("{:.0}%", 100.0 * v / peak))
                })
            };
            let ((mm, mm_share), (mkl, mkl_share)) = (cell(column(&ours)), cell(column(&theirs)));
            println!(
                "{:<38} {mm:>8} {mm_share:>8} {mkl:>8} {mkl_share:>8}",
                format!("{name} [{m} x {k} -> {n}]")
            );
        }
    }
    println!("(GFLOP/s of the forward GEMM; medians over {rounds} rounds)");
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}
