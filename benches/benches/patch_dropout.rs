//! Patch dropout's speed-up of the image tower in training (`cargo bench -p mm-benches --bench
//! patch_dropout [-- bench|vit-b-32]`): forward + backward of the image features at batch 32 /
//! 64 with no patches dropped, then with half (FLIP's 0.5), in fp32 and bf16. Prints
//! images/s and the ratio; asserts nothing.

use std::time::Instant;

use burn::tensor::Device;
use mm_benches::{shape_arg, synthetic_batch};
use mm_encoders::{MatmulPrecision, PatchDropout, with_matmul_precision};

fn main() {
    mm_train::allocator::keep_freed_memory();
    let shape = shape_arg("vit-b-32");
    let (config, batch) = mm_benches::shape(&shape);
    let device = Device::flex().autodiff();
    let model = config.init(&device);
    let data = synthetic_batch(&config, batch);
    let pixels = data.pixels_tensor(&device);
    let patches = model.vision_model.num_patches();
    let rate = |prob: f64, precision| {
        let dropout = PatchDropout::new(prob).unwrap();
        let step = |seed: u64| {
            with_matmul_precision(precision, || {
                let kept = dropout.map(|d| d.sample(batch, patches, seed, &device));
                let features = model.image_features_kept(pixels.clone(), kept);
                let _ = features.sum().backward();
            })
        };
        step(0);
        let mut times: Vec<f64> = (1..=5)
            .map(|seed| {
                let start = Instant::now();
                step(seed);
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        batch as f64 / times[times.len() / 2]
    };
    println!("{shape}, batch {batch}, {patches} patches: image tower forward + backward, images/s");
    for (name, precision) in [
        ("fp32", MatmulPrecision::Fp32),
        ("bf16", MatmulPrecision::Bf16),
    ] {
        let (all, half) = (rate(0.0, precision), rate(0.5, precision));
        println!(
            "{name}: all patches {all:.1}, patch_dropout 0.5 {half:.1} ({:.2}x)",
            half / all
        );
    }
}
