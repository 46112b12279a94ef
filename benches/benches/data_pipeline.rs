//! Images/s of the data pipeline on web-photo-sized JPEGs (500x375) -> 224x224 CLIP-normalised
//! tensors, with 1 and 2 worker threads, next to PIL + torchvision on the same files in the
//! same run (`benches/pil_pipeline.py`, skipped with a note if torch is not installed).
//! Then whether training the tiny preset from the shipped shards waits for data: step time
//! with the real pipeline vs with one pre-decoded batch.
//!
//! `cargo bench -p mm-benches --bench data_pipeline`. Prints numbers; asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use mm_data::{
    Batcher, ClipTokenizer, DataConfig, ImageInput, Paths, Prefetcher, SourceKind, TrainTransform,
    decode_input, preprocess_into,
};
use mm_encoders::ClipConfig;
use mm_train::{Learner, TrainConfig};
use rayon::prelude::*;

const FILES: usize = 256;
const SIZE: usize = 224;

/// A 500x375 photo-like JPEG (smooth light, texture, sensor-like noise; quality 90).
fn write_photo(path: &Path, seed: u32) {
    let image = RgbImage::from_fn(500, 375, |x, y| {
        let (fx, fy, s) = (x as f32, y as f32, seed as f32);
        let n =
            ((x.wrapping_mul(73856093) ^ y.wrapping_mul(19349663) ^ seed.wrapping_mul(83492791))
                % 17) as f32
                - 8.0;
        let light = 120.0 + 80.0 * ((fx + s * 13.0) / 97.0).sin() * ((fy - s * 7.0) / 61.0).cos();
        let texture = 25.0 * ((fx * fy + s) / 400.0).sin();
        Rgb([
            (light + texture + n).clamp(0.0, 255.0) as u8,
            (light * 0.8 + 30.0 - texture + n).clamp(0.0, 255.0) as u8,
            (200.0 - light * 0.5 + n).clamp(0.0, 255.0) as u8,
        ])
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Best of three passes over all files on a pool of `workers` threads: read, decode, resize,
/// crop, normalise into a 224x224x3 float buffer.
fn mm_rate(files: &[PathBuf], workers: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .unwrap();
    let plane = 3 * SIZE * SIZE;
    let unlimited = mm_data::ImageLimits {
        max_pixels: u64::MAX,
        max_bytes: u64::MAX,
    };
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut out = vec![0.0f32; files.len() * plane];
        pool.install(|| {
            out.par_chunks_mut(plane)
                .zip(files.par_iter())
                .for_each(|(out, path)| {
                    let input = ImageInput::File(path.clone());
                    let image = decode_input(&input, "bench", unlimited).unwrap();
                    preprocess_into(&image, SIZE, out);
                })
        });
        best = best.max(files.len() as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// The Python pipeline's images/s per worker count, or why it could not run.
fn pil_rates(list: &Path) -> Result<Vec<f64>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pil_pipeline.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(list)
        .args(["--workers", "1", "2"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| e.to_string())?;
            v["images_per_sec"]
                .as_f64()
                .ok_or_else(|| "bad output".to_string())
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..FILES)
        .map(|i| {
            let path = dir.path().join(format!("{i:04}.jpg"));
            write_photo(&path, i as u32);
            path
        })
        .collect();
    let list = dir.path().join("files.txt");
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    println!(
        "{FILES} JPEGs, 500x375, {:.0} KB on average -> {SIZE}x{SIZE} normalised (CLIP eval transform)",
        bytes as f64 / FILES as f64 / 1024.0
    );

    breakdown(&files);
    let mm: Vec<f64> = [1, 2].iter().map(|&w| mm_rate(&files, w)).collect();
    let pil = pil_rates(&list);
    println!(
        "{:<10} {:>14} {:>20} {:>8}",
        "workers", "mm images/s", "PIL+torchvision /s", "ratio"
    );
    for (i, workers) in [1, 2].iter().enumerate() {
        match &pil {
            Ok(p) => println!(
                "{workers:<10} {:>14.0} {:>20.0} {:>7.2}x",
                mm[i],
                p[i],
                mm[i] / p[i]
            ),
            Err(_) => println!("{workers:<10} {:>14.0} {:>20} {:>8}", mm[i], "-", "-"),
        }
    }
    if let Err(e) = &pil {
        println!("(PIL baseline not run: {e}; `pip install pillow torch torchvision`)");
    }

    data_bound_check();
}

/// Tiny preset from the shipped shards: is the step waiting for data?
fn data_bound_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model_config = ClipConfig::preset("tiny").unwrap();
    let text = format!(
        "output_dir = \"{}\"\nmodel = \"tiny\"\n[optim]\nlr = 1e-4\n[train]\nsteps = 1000\nbatch_size = 64\n",
        std::env::temp_dir().join("mm-bench").display()
    );
    let mut config = TrainConfig::from_toml(&text, "bench").unwrap();
    config.data = DataConfig {
        source: SourceKind::Webdataset,
        path: Some(Paths::One(
            root.join("assets/shards/shapes-{00000..00003}.tar")
                .display()
                .to_string(),
        )),
        train_transform: TrainTransform::RandomResizedCrop,
        ..DataConfig::default()
    };
    let size = model_config.vision.image_size;
    let batcher = Batcher::new(
        ClipTokenizer::openai(),
        size,
        model_config.text.context_length,
    )
    .with_transform(config.data.train_transform, 0);
    let stream = config.data.open_stream(0, size).unwrap();
    let mut batches = Prefetcher::spawn(stream, batcher, 64, config.data.prefetch);
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let fixed = batches.next().unwrap().unwrap();
    let (warmup, iters) = (3, 20);
    for step in 0..warmup {
        learner.step(&fixed, step).unwrap();
    }
    let start = Instant::now();
    for step in 0..iters {
        learner.step(&fixed, step).unwrap();
    }
    let decoded = start.elapsed().as_secs_f64() / iters as f64;
    let (mut waiting, start) = (0.0, Instant::now());
    for step in 0..iters {
        let wait = Instant::now();
        let batch = batches.next().unwrap().unwrap();
        waiting += wait.elapsed().as_secs_f64();
        learner.step(&batch, step).unwrap();
    }
    let streamed = start.elapsed().as_secs_f64() / iters as f64;
    println!("\ntiny preset, batch 64, from assets/shards (JPEG 96 px, random resized crop):");
    println!(
        "  step with a pre-decoded batch  {:.0} ms",
        1000.0 * decoded
    );
    println!(
        "  step with the shard pipeline   {:.0} ms (of which waiting for data {:.1} ms)",
        1000.0 * streamed,
        1000.0 * waiting / iters as f64
    );
}

/// Where one worker's time goes, per image.
fn breakdown(files: &[PathBuf]) {
    let t = Instant::now();
    let images: Vec<_> = files
        .iter()
        .map(|p| image::load_from_memory(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let decode = t.elapsed().as_secs_f64() / files.len() as f64;
    let t = Instant::now();
    let resized: Vec<_> = images
        .iter()
        .map(|i| mm_data::resize_center_crop(i, 224))
        .collect();
    let resize = t.elapsed().as_secs_f64() / files.len() as f64;
    let t = Instant::now();
    let mut out = vec![0.0; 3 * 224 * 224];
    for r in &resized {
        mm_data::normalize_into(r, &mut out);
    }
    let norm = t.elapsed().as_secs_f64() / files.len() as f64;
    println!(
        "per image: decode {:.2} ms, resize+crop {:.2} ms, normalise {:.2} ms",
        decode * 1e3,
        resize * 1e3,
        norm * 1e3
    );
}
