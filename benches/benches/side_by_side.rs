//! mm next to PyTorch + open_clip on the same CLIP training step, on this machine, in one run.
//!
//! `cargo bench -p mm-benches --bench side_by_side [-- bench|vit-b-32] [--rounds N]
//! [--precision fp32|bf16]` (batch 64 / 32; 3 rounds, fp32 by default). Both sides run the
//! same precision: fp32, or bf16 mixed precision (mm's `precision = "bf16"` and bf16 GEMMs
//! in inference; PyTorch's `torch.autocast("cpu", torch.bfloat16)`, oneDNN's kernels), on
//! synthetic inputs of the same shapes, thread counts pinned equal (all cores). The Python side is `benches/torch_clip.py`,
//! run with `benches/.venv/bin/python` when `benches/setup_venv.sh` made it, else `python3`.
//!
//! Under `MM_MAX_ISA=avx2` (or `avx512`, `scalar`) mm's kernels are capped and PyTorch gets the
//! matching `ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA` and `MKL_ENABLE_INSTRUCTIONS`, so a
//! lesser CPU's paths are compared fairly on a wider one.
//!
//! Shared or throttled machines drift by tens of percent within minutes, so the sides take
//! turns (mm, PyTorch, mm, PyTorch, ...), each rate is the median over its iterations, and the
//! table shows the median over rounds with the range beside it. Prints a table; asserts nothing.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use mm_benches::{flag_value, python, shape_arg, synthetic_batch, torch_isa_caps, train_config};
use mm_kernels::isa::{describe, isa};
use mm_train::Learner;
use mm_train::precision::Precision;
use serde_json::Value;

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Items per second from the median time of `iters` calls, after `warmup` untimed ones.
fn rate(batch: usize, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let times = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    batch as f64 / median(times)
}

/// The rates one side reports per round.
const ROWS: [(&str, &str); 3] = [
    ("train step, samples/s", "train_samples_per_sec"),
    ("image encoder, images/s", "image_per_sec"),
    ("text encoder, texts/s", "text_per_sec"),
];

fn run_torch(
    shape: &str,
    batch: usize,
    threads: usize,
    iters: usize,
    precision: &str,
) -> Result<Value, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = python()
        .arg(dir.join("torch_clip.py"))
        .args(["--shape", shape, "--batch", &batch.to_string()])
        .args([
            "--threads",
            &threads.to_string(),
            "--iters",
            &iters.to_string(),
            "--precision",
            precision,
        ])
        .envs(torch_isa_caps(isa()))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn main() {
    mm_train::allocator::keep_freed_memory();
    let rounds: usize = mm_benches::flag_value("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let shape = shape_arg("bench");
    let (model_config, batch) = mm_benches::shape(&shape);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batch_data = synthetic_batch(&model_config, batch);
    let precision_name = flag_value("--precision").unwrap_or_else(|| "fp32".into());
    let precision = match precision_name.as_str() {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        other => panic!("--precision {other}: fp32 or bf16"),
    };
    let mut config = train_config(batch);
    config.train.precision = precision;
    let iters = if shape == "bench" { 10 } else { 5 };
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let mut step = 0;
    let device = Device::flex();
    let pixels = batch_data.pixels_tensor(&device);
    let ids: Tensor<2, Int> = batch_data.input_ids_tensor(&device);

    let (mut ours, mut theirs): (Vec<[f64; 3]>, Vec<[f64; 3]>) = (Vec::new(), Vec::new());
    let mut torch_rss: f64 = 0.0;
    let mut torch_version = String::new();
    let mut torch_isa = String::new();
    let mut torch_error = None;
    for _ in 0..rounds {
        let train = rate(batch, 2, iters, || {
            learner.step(&batch_data, step).unwrap();
            step += 1;
        });
        let mut model = learner.model.valid();
        let _precision = precision.enter_inference(&mut model, &device);
        let image = rate(batch, 2, iters, || {
            model.image_features(pixels.clone()).into_data();
        });
        let text = rate(batch, 2, iters, || {
            model.text_features(ids.clone()).into_data();
        });
        ours.push([train, image, text]);
        match run_torch(&shape, batch, threads, iters, &precision_name) {
            Ok(t) => {
                theirs.push(ROWS.map(|(_, key)| t[key].as_f64().unwrap_or(f64::NAN)));
                torch_rss = torch_rss.max(t["peak_rss_mib"].as_f64().unwrap_or(f64::NAN));
                torch_version = t["torch"].as_str().unwrap_or("?").to_string();
                torch_isa = t["capability"].as_str().unwrap_or("?").to_string();
            }
            Err(e) => torch_error = Some(e),
        }
    }
    let mm_rss = peak_rss_mib();

    println!(
        "shape {shape}, batch {batch}, {precision_name}, {threads} threads each side, {rounds} alternating rounds"
    );
    println!("mm {}", describe());
    println!(
        "{:<32} {:>9} {:>9} {:>7}   {:<26}",
        "", "mm", "PyTorch", "mm/PT", "range over rounds (mm | PT)"
    );
    let column = |runs: &[[f64; 3]], i: usize| runs.iter().map(|r| r[i]).collect::<Vec<_>>();
    let range = |values: &[f64]| {
        let (lo, hi) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let digits = if hi < 100.0 { 1 } else { 0 };
        format!("{lo:.digits$}-{hi:.digits$}")
    };
    for (i, (name, _)) in ROWS.iter().enumerate() {
        let mm = column(&ours, i);
        let mm_median = median(mm.clone());
        if theirs.is_empty() {
            println!("{name:<32} {mm_median:>9.1} {:>9} {:>7}", "-", "-");
            continue;
        }
        let pt = column(&theirs, i);
        let pt_median = median(pt.clone());
        println!(
            "{name:<32} {mm_median:>9.1} {pt_median:>9.1} {:>6.2}x   {} | {}",
            mm_median / pt_median,
            range(&mm),
            range(&pt)
        );
    }
    println!(
        "{:<32} {mm_rss:>9.0} {torch_rss:>9.0} {:>6.2}x   (lower is better)",
        "peak RSS, MiB",
        mm_rss / torch_rss
    );
    match torch_error {
        None => {
            println!("(PyTorch {torch_version} at {torch_isa}, open_clip CLIP + ClipLoss + AdamW)")
        }
        Some(e) => println!("(PyTorch side failed: {e}; run `bash benches/setup_venv.sh`)"),
    }
}
