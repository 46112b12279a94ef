//! mm next to PyTorch + open_clip on the same CLIP training step, on this machine, in one run.
//!
//! `cargo bench -p mm-benches --bench side_by_side [-- bench|vit-b-32]` (batch 64 / 32).
//! Both sides are fp32, synthetic inputs of the same shapes, thread counts pinned equal
//! (all cores). The Python side is `benches/torch_clip.py`, run with `benches/.venv/bin/python`
//! when `benches/setup_venv.sh` made it, else `python3`. Prints a table; asserts nothing.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use mm_benches::{shape_arg, synthetic_batch, train_config};
use mm_train::Learner;

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

fn rate(batch: usize, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    (iters * batch) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let shape = shape_arg("bench");
    let (model_config, batch) = mm_benches::shape(&shape);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batch_data = synthetic_batch(&model_config, batch);
    let config = train_config(batch);
    let iters = 10;
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let mut step = 0;
    let mm_train = rate(batch, 3, iters, || {
        learner.step(&batch_data, step).unwrap();
        step += 1;
    });
    let device = Device::flex();
    let model = learner.model.valid();
    let pixels = batch_data.pixels_tensor(&device);
    let ids: Tensor<2, Int> = batch_data.input_ids_tensor(&device);
    let mm_image = rate(batch, 3, iters, || {
        model.image_features(pixels.clone()).into_data();
    });
    let mm_text = rate(batch, 3, iters, || {
        model.text_features(ids.clone()).into_data();
    });
    let mm_rss = peak_rss_mib();

    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let python = if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".into()
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("torch_clip.py");
    let torch = Command::new(&python)
        .arg(&script)
        .args([
            "--shape",
            &shape,
            "--batch",
            &batch.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|out| {
            if out.status.success() {
                serde_json::from_slice::<serde_json::Value>(&out.stdout).map_err(|e| e.to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("failed")
                    .to_string())
            }
        });

    println!("shape {shape}, batch {batch}, fp32, {threads} threads each side");
    println!("{:<34} {:>10} {:>10} {:>8}", "", "mm", "PyTorch", "mm/PT");
    let row = |name: &str, ours: f64, key: &str| match &torch {
        Ok(t) => {
            let theirs = t[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "{name:<34} {ours:>10.1} {theirs:>10.1} {:>7.2}x",
                ours / theirs
            );
        }
        Err(_) => println!("{name:<34} {ours:>10.1} {:>10} {:>8}", "-", "-"),
    };
    row("train step, samples/s", mm_train, "train_samples_per_sec");
    row("image encoder, images/s", mm_image, "image_per_sec");
    row("text encoder, texts/s", mm_text, "text_per_sec");
    row("peak RSS, MiB (lower is better)", mm_rss, "peak_rss_mib");
    match &torch {
        Ok(t) => println!(
            "(PyTorch {}, open_clip CLIP + ClipLoss + AdamW)",
            t["torch"].as_str().unwrap_or("?")
        ),
        Err(e) => println!("(PyTorch side not run: {e}; run `bash benches/setup_venv.sh`)"),
    }
}
