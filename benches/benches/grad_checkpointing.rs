//! What activation checkpointing per block saves and costs (`cargo bench -p mm-benches --bench
//! grad_checkpointing [-- bench|vit-b-32] [--precision fp32|bf16]`): one process per setting
//! runs CLIP train steps (both towers, InfoNCE, backward, AdamW) with `train.grad_checkpointing`
//! off and on, and prints the memory a step adds on top of the model, its optimiser state and
//! the batch (peak RSS over 6 steps minus RSS before them minus AdamW's moments: the
//! activations kept for the backward pass, the gradients and the loss), samples/s (median of
//! steps 2-6), and the ratios. Asserts nothing.

use std::process::Command;
use std::time::Instant;

use mm_benches::{flag_value, shape_arg, synthetic_batch, train_config};
use mm_train::Learner;
use mm_train::precision::Precision;

/// Resident and peak resident memory of this process (Linux `VmRSS`, `VmHWM`), in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One setting, in this process: prints `step_mib samples_per_s`.
fn child(shape: &str, checkpointing: bool, precision: &str) {
    mm_train::allocator::keep_freed_memory(); // as the mm-train binary runs
    let (model_config, batch) = mm_benches::shape(shape);
    let mut config = train_config(batch);
    config.train.grad_checkpointing = checkpointing;
    config.train.precision = match precision {
        "fp32" => Precision::Fp32,
        "bf16" => Precision::Bf16,
        other => panic!("--precision {other}: fp32 or bf16"),
    };
    let mut learner = Learner::new(&config, &model_config).unwrap();
    let data = synthetic_batch(&model_config, batch);
    let (before, _) = rss_mib();
    let mut times = Vec::new();
    for step in 0..6 {
        let start = Instant::now();
        learner.step(&data, step).unwrap();
        times.push(start.elapsed().as_secs_f64());
    }
    let (_, peak) = rss_mib();
    let mut timed = times[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    println!(
        "{:.1} {:.2}",
        peak - before,
        batch as f64 / timed[timed.len() / 2]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1], args[i + 2] == "on", &args[i + 3]);
    }
    let shape = shape_arg("vit-b-32");
    let precision = flag_value("--precision").unwrap_or_else(|| "fp32".into());
    let (_, batch) = mm_benches::shape(&shape);
    let run = |setting: &str| -> (f64, f64) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--child", &shape, setting, &precision])
            .output()
            .expect("run the benchmark's child process");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
        (fields.next().unwrap(), fields.next().unwrap())
    };
    println!(
        "{shape}, batch {batch}, {precision}: train step (both towers, InfoNCE, backward, AdamW)"
    );
    println!("| grad_checkpointing | memory a step adds | samples/s |");
    println!("|---|---|---|");
    let (off_mib, off_rate) = run("off");
    println!("| off | {off_mib:.0} MiB | {off_rate:.2} |");
    let (on_mib, on_rate) = run("on");
    println!("| on | {on_mib:.0} MiB | {on_rate:.2} |");
    println!(
        "checkpointing: {:.2}x less step memory, {:.2}x the step time",
        off_mib / on_mib,
        off_rate / on_rate
    );
}
