//! What a run will hold in memory, estimated from its config before anything is allocated,
//! so that a model or batch too big for the machine is a clear error and not the OOM killer.

use mm_encoders::ClipConfig;

const F32: u64 = 4;

/// The sizes of a training run that decide its memory besides the model.
pub struct RunSizes {
    pub batch_size: usize,
    /// Micro-batches of one accumulated step, all held on the host.
    pub accum_freq: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Held-out images kept decoded for evaluation.
    pub heldout_samples: usize,
    /// Parameters trained beside the model's (a classifier's fusion modules).
    pub extra_params: u64,
}

/// Bytes a training run on the CPU holds at least: fp32 weights, gradients and two AdamW
/// moments; the activations one micro-batch keeps for backward; the prefetched batches; the
/// decoded held-out images. A lower bound, good to a small factor.
pub fn training_bytes(model: &ClipConfig, run: &RunSizes) -> u64 {
    // In f64: the caps on each key still allow products beyond u64.
    let params = (model.num_params_with_decoder() + run.extra_params) as f64;
    let batch = run.batch_size as f64;
    let (v, t) = (&model.vision, &model.text);
    let patches = (v.grid_size() * v.grid_size()) as f64 + 1.0;
    // Per token and layer, the fused blocks keep about eight width-sized rows (inputs of
    // the norms and projections, q|k|v, attention output) and two MLP-sized ones.
    let per_token = |width: usize, intermediate: usize| (8 * width + 2 * intermediate) as f64;
    // A CoCa's decoder: its blocks (two per layer) and, per token, the logits over the
    // vocabulary with their log-softmax and gradient.
    let decoder = model.multimodal.as_ref().map_or(0.0, |m| {
        t.context_length as f64
            * (2.0 * m.layers as f64 * per_token(m.width, m.intermediate_size)
                + 3.0 * m.vocab_size as f64)
    });
    // A convolutional stem keeps each convolution's output and its ReLU's.
    let stem: f64 = v
        .conv_stem
        .iter()
        .enumerate()
        .map(|(i, &channels)| {
            let side = (v.image_size >> (i + 1)) as f64;
            2.0 * side * side * channels as f64
        })
        .sum();
    let activations = batch
        * (stem
            + patches * v.layers as f64 * per_token(v.width, v.intermediate_size)
            + t.context_length as f64 * t.layers as f64 * per_token(t.width, t.intermediate_size)
            + decoder);
    let image = 3.0 * (v.image_size * v.image_size) as f64;
    let pixels = batch * image;
    // Prefetched batches, and the micro-batches of one accumulated step.
    let prefetched = (run.prefetch + run.accum_freq) as f64 * pixels;
    let heldout = run.heldout_samples as f64 * image;
    // `as` saturates: anything beyond u64 is refused all the same.
    ((4.0 * params + activations + pixels + prefetched) * F32 as f64 + heldout) as u64
}

/// Bytes the weights of `model` take in fp32 (what loading a checkpoint allocates).
pub fn weights_bytes(model: &ClipConfig) -> u64 {
    model.num_params_with_decoder() * F32
}

/// Memory the system can still give without swapping (Linux `MemAvailable`), if known.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An error message when `needed` bytes of host memory exceed what is available.
pub fn check_fits(needed: u64, what: &str) -> Result<(), String> {
    match available_bytes() {
        Some(available) if needed > available => Err(format!(
            "{what} needs at least {} of memory, but {} is available",
            gib(needed),
            gib(available)
        )),
        _ => Ok(()),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
