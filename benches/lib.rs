//! Shared pieces of the benchmarks in `benches/benches/`: issue 7's fixed shapes and the
//! synthetic batch both the side-by-side and the step-breakdown benchmarks feed.

use mm_data::ClipBatch;
use mm_encoders::{ClipConfig, from_toml_str};
use mm_train::TrainConfig;

/// issue 7's benchmark shape.
pub const BENCH_SHAPE: &str = r#"
embed_dim = 128
[vision]
image_size = 96
patch_size = 16
width = 192
layers = 6
heads = 3
intermediate_size = 768
activation = "quick_gelu"
[text]
context_length = 32
vocab_size = 49408
width = 128
layers = 4
heads = 2
intermediate_size = 512
activation = "quick_gelu"
"#;

/// The projections' GEMMs `(name, [rows, d_in, d_out])` of ViT-B/32 at batch 32 (1,600 image
/// rows, 2,464 text rows).
pub const VIT_B_32_LINEARS: [(&str, [usize; 3]); 7] = [
    ("image qkv", [1600, 768, 2304]),
    ("image out", [1600, 768, 768]),
    ("image fc1", [1600, 768, 3072]),
    ("image fc2", [1600, 3072, 768]),
    ("text qkv", [2464, 512, 1536]),
    ("text fc1", [2464, 512, 2048]),
    ("text fc2", [2464, 2048, 512]),
];

/// The same for the bench shape at batch 64 (2,368 image rows, 2,048 text rows).
pub const BENCH_LINEARS: [(&str, [usize; 3]); 6] = [
    ("image qkv", [2368, 192, 576]),
    ("image fc1", [2368, 192, 768]),
    ("image fc2", [2368, 768, 192]),
    ("text qkv", [2048, 128, 384]),
    ("text fc1", [2048, 128, 512]),
    ("text fc2", [2048, 512, 128]),
];

/// `bench` (the shape above, batch 64) or `vit-b-32` (batch 32): model and batch size.
pub fn shape(name: &str) -> (ClipConfig, usize) {
    match name {
        "bench" => (
            from_toml_str::<ClipConfig>(BENCH_SHAPE, "bench shape").unwrap(),
            64,
        ),
        "vit-b-32" => (ClipConfig::preset("vit-b-32").unwrap(), 32),
        other => panic!("unknown shape {other} (bench, vit-b-32)"),
    }
}

/// Flags of the benchmarks that take a value.
const VALUE_FLAGS: [&str; 2] = ["--rounds", "--precision"];

/// The first argument that is neither a flag (cargo passes `--bench`) nor a flag's value, or
/// `default`.
pub fn shape_arg(default: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--") && (*i == 0 || !VALUE_FLAGS.contains(&args[i - 1].as_str()))
        })
        .map_or_else(|| default.into(), |(_, a)| a.clone())
}

/// The value after `flag` on the command line, if any.
pub fn flag_value(flag: &str) -> Option<String> {
    debug_assert!(VALUE_FLAGS.contains(&flag));
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// Synthetic inputs of `model`'s shapes: pixels in [-1, 1], ids with start/end tokens.
pub fn synthetic_batch(model: &ClipConfig, batch: usize) -> ClipBatch {
    let (size, ctx) = (model.vision.image_size, model.text.context_length);
    let pixels: Vec<f32> = (0..batch * 3 * size * size)
        .map(|i| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0)
        .collect();
    let mut ids: Vec<u32> = (0..batch * ctx)
        .map(|i| (1 + i * 104_729 % 49_000) as u32)
        .collect();
    for row in ids.chunks_mut(ctx) {
        row[0] = 49406;
        row[ctx - 1] = 49407;
    }
    ClipBatch {
        batch_size: batch,
        image_size: size,
        context_length: ctx,
        pixels,
        input_ids: ids,
        prompt_lengths: vec![1; batch],
        captions: vec![String::new(); batch],
        keys: (0..batch).map(|i| format!("synthetic {i}")).collect(),
        labels: vec![None; batch],
        errors: Vec::new(),
        stream_position: 0,
    }
}

/// The training settings both sides use: AdamW (lr 1e-4, weight decay 0.1), clipping at 1.
pub fn train_config(batch: usize) -> TrainConfig {
    TrainConfig::from_toml(
        &format!(
            "output_dir = \"{}\"\nmodel = \"tiny\"\n[optim]\nlr = 1e-4\nweight_decay = 0.1\ngrad_clip_norm = 1.0\n[train]\nsteps = 1000\nbatch_size = {batch}\n",
            std::env::temp_dir().join("mm-bench-step").display()
        ),
        "bench",
    )
    .unwrap()
}

/// The Python that runs the PyTorch sides: `benches/.venv/bin/python` when
/// `benches/setup_venv.sh` made it, else `python3`.
pub fn python() -> std::process::Command {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    match venv.exists() {
        true => std::process::Command::new(venv),
        false => std::process::Command::new("python3"),
    }
}

/// The PyTorch settings that cap its kernels where `MM_MAX_ISA` caps mm's (ATen's own
/// kernels, oneDNN, MKL), so both sides run the same instruction set; none when uncapped.
pub fn torch_isa_caps(isa: mm_kernels::isa::Isa) -> Vec<(&'static str, &'static str)> {
    use mm_kernels::isa::Isa;
    if isa >= Isa::detected() {
        return Vec::new();
    }
    let (aten, onednn, mkl) = match isa {
        Isa::Scalar => ("default", "SSE41", "SSE4_2"),
        Isa::Avx2 => ("avx2", "AVX2", "AVX2"),
        Isa::Avx512 => ("avx512", "AVX512_CORE", "AVX512"),
        Isa::Avx512Bf16 => return Vec::new(),
    };
    vec![
        ("ATEN_CPU_CAPABILITY", aten),
        ("ONEDNN_MAX_CPU_ISA", onednn),
        ("MKL_ENABLE_INSTRUCTIONS", mkl),
    ]
}
