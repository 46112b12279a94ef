//! Caption generation speed (`cargo bench -p mm-benches --bench generation [-- coca-tiny|
//! coca-vit-b-32]`): new tokens per second of a CoCa's greedy decoding and beam search, with
//! the KV cache (each new token computes one position) against the anchor measured in the same
//! run, re-running the whole prefix at every step as open_clip's `generate` does. Every text
//! runs to the same length (the end token is barred until then), so both sides decode the same
//! tokens. Prints tokens/s and the ratio; asserts nothing.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use mm_encoders::ClipConfig;
use mm_encoders::generate::{
    CachedCaptioner, Decoding, Generation, NextTokens, UncachedCaptioner, generate,
};

fn main() {
    mm_train::allocator::keep_freed_memory();
    let name = mm_benches::shape_arg("coca-tiny");
    let config = ClipConfig::preset(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let device = Device::flex();
    device.seed(0);
    let model = config.init_coca(&device).unwrap();
    let (images, new_tokens) = match name.as_str() {
        "coca-tiny" => (32, 20),
        _ => (4, 16),
    };
    let size = config.vision.image_size;
    let pixels = Tensor::<4>::random(
        [images, 3, size, size],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let (_, tokens) = model.encode_image(pixels);
    let prompts = vec![vec![49406u32]; images];
    println!(
        "{name}: {images} images, {new_tokens} new tokens each (context {}), new tokens/s (median of 3)",
        config.text.context_length
    );
    for (label, decoding, width) in [
        ("greedy", Decoding::Greedy, 1),
        (
            "beam 4",
            Decoding::Beam {
                width: 4,
                length_penalty: 1.0,
            },
            4,
        ),
    ] {
        let generation = Generation {
            decoding,
            max_new_tokens: new_tokens,
            min_new_tokens: new_tokens,
            repetition_penalty: 1.0,
            end_id: 49407,
        };
        let rate = |cached: bool| {
            let run = || {
                let mut next: Box<dyn NextTokens> = match cached {
                    true => Box::new(CachedCaptioner::new(&model, tokens.clone())),
                    false => Box::new(UncachedCaptioner::new(&model, tokens.clone())),
                };
                let start = Instant::now();
                generate(next.as_mut(), &prompts, &generation);
                start.elapsed().as_secs_f64()
            };
            let mut times: Vec<f64> = (0..3).map(|_| run()).collect();
            times.sort_by(f64::total_cmp);
            // Beam search decodes `width` rows per image.
            (images * width * new_tokens) as f64 / times[1]
        };
        let (uncached, cached) = (rate(false), rate(true));
        println!(
            "{label}: KV cache {cached:.0} vs full re-run {uncached:.0} ({:.2}x)",
            cached / uncached
        );
    }
}
