//! Exact resumption: a run killed with SIGKILL and resumed ends with the same weights, bit for
//! bit, as a run that was never interrupted.

mod common;

use std::path::Path;

#[test]
fn a_killed_run_resumes_to_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 60;
    let config_for = |run: &Path| {
        let mut config = common::tiny_config(run, steps);
        config.train.checkpoint_every = 5;
        config.train.keep_checkpoints = 3;
        config.train.eval_every = 0;
        config
    };

    // Uninterrupted reference.
    let reference = dir.path().join("reference");
    mm_train::train(&config_for(&reference), false).unwrap();

    // The same run in a child process, killed (SIGKILL) once it has checkpointed step 10.
    let run = dir.path().join("killed");
    let config = config_for(&run);
    let config_file = dir.path().join("run.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let killed_at = common::kill_after_checkpoint(&config_file, &run, 10);
    assert!(killed_at < steps, "killed too late to test anything");

    // A fresh start in the same directory is refused; resuming is not.
    let err = mm_train::train(&config, false).err().unwrap().to_string();
    assert!(err.contains("--resume latest"), "{err}");

    // Break the newest checkpoint: resume must fall back to the previous good one.
    let newest = run.join(format!("checkpoints/step-{killed_at:06}"));
    let weights = newest.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();

    let report = mm_train::train_from(&config, false, Some(&run)).unwrap();
    assert_eq!(
        report.losses.len(),
        steps - (killed_at - 5),
        "resumed from the checkpoint before the broken one"
    );
    assert!(
        common::final_tensors(&reference, steps) == common::final_tensors(&run, steps),
        "weights differ from the uninterrupted run"
    );
}
