//! Every objective repeats and resumes exactly: two runs of one config and seed end with the
//! same weights, bit for bit, and so does a run killed (SIGKILL) mid-way and resumed with
//! `--resume latest`. Each of a run's weight files is compared: the towers, a classifier's
//! fusion modules, a CoCa's caption decoder.

mod common;

use std::path::Path;

const STEPS: usize = 12;

/// A config's runs: two fresh ones into their own directories, and one killed once it has
/// checkpointed step 4 and resumed; all three end with the same weights.
fn assert_repeats_and_resumes(name: &str, toml: impl Fn(&Path) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let config_of = |run: &Path| {
        let text = toml(run)
            .replace("checkpoint_every = 10", "checkpoint_every = 4")
            .replace("log_every = 5", "log_every = 1\neval_every = 4");
        let config = mm_train::TrainConfig::from_toml(&text, name).unwrap();
        config.validate(name).unwrap();
        (config, text)
    };
    let runs: Vec<_> = ["first", "second"]
        .iter()
        .map(|run| {
            let run = dir.path().join(run);
            let report = mm_train::train(&config_of(&run).0, false)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            (run, report.losses)
        })
        .collect();
    assert_eq!(
        runs[0].1, runs[1].1,
        "{name}: the losses of two runs differ"
    );
    let weights = |run: &Path| weight_files(&run.join(format!("checkpoints/step-{STEPS:06}")));
    let reference = weights(&runs[0].0);
    assert_eq!(
        reference,
        weights(&runs[1].0),
        "{name}: two runs of one seed differ"
    );

    // The same run in a child process, killed once it has checkpointed step 4.
    let killed = dir.path().join("killed");
    let (config, text) = config_of(&killed);
    let config_file = dir.path().join("run.toml");
    std::fs::write(&config_file, text).unwrap();
    let killed_at = common::kill_after_checkpoint(&config_file, &killed, 4);
    assert!(
        killed_at < STEPS,
        "{name}: killed too late to test anything"
    );
    let resumed = mm_train::train_from(&config, false, Some(&killed))
        .unwrap_or_else(|e| panic!("{name}: resuming: {e:#}"));
    assert_eq!(
        runs[0].1[killed_at..],
        resumed.losses[..],
        "{name}: the resumed run's losses differ"
    );
    assert_eq!(
        reference,
        weights(&killed),
        "{name}: the resumed run's weights differ from the uninterrupted run's"
    );
}

/// A weights file's name and its tensors' bytes by name.
type WeightFile = (String, Vec<(String, Vec<u8>)>);

/// Every weights file of checkpoint `dir`.
fn weight_files(dir: &Path) -> Vec<WeightFile> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, common::safetensors_tensors(&p))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no weights", dir.display());
    files
}

fn classify(dir: &Path, data: &str, fusion: &str) -> String {
    "objective = \"classify\"\n".to_string()
        + &common::tiny_toml(dir, STEPS).replace("[data]\n", &format!("[data]\n{data}\n"))
        + &format!("\n[fusion]\n{fusion}\n")
}

fn coca(dir: &Path) -> String {
    common::coca_toml(dir, STEPS)
}

#[test]
fn clip_and_siglip_runs_repeat_and_resume_exactly() {
    assert_repeats_and_resumes("clip", |dir| common::tiny_toml(dir, STEPS));
    assert_repeats_and_resumes("siglip", |dir| {
        common::tiny_toml(dir, STEPS).replace("seed = 3", "seed = 3\nobjective = \"siglip\"")
    });
}

#[test]
fn classify_runs_of_every_stage_repeat_and_resume_exactly() {
    for (name, data, fusion) in [
        (
            "early fusion",
            "shapes_task = \"matching\"",
            "stage = \"early\"\nhead_hidden = 16",
        ),
        (
            "mid gated fusion",
            "shapes_task = \"matching\"",
            "stage = \"mid\"\noperator = \"gated\"\nhead_hidden = 16",
        ),
        (
            "mid attention fusion",
            "shapes_task = \"question\"",
            "stage = \"mid\"\noperator = \"attention\"\nheads = 2\nhead_hidden = 16",
        ),
        (
            "late fusion",
            "",
            "stage = \"late\"\noperator = \"product\"\nhead_hidden = 16",
        ),
    ] {
        assert_repeats_and_resumes(name, |dir| classify(dir, data, fusion));
    }
}

#[test]
fn a_classifier_on_loaded_towers_repeats_and_resumes_exactly() {
    // The fusion head is new on towers of a checkpoint: its draws must come from the run's
    // seed too, not from whatever the generator holds.
    let dir = tempfile::tempdir().unwrap();
    let towers = dir.path().join("towers");
    mm_train::train(&common::tiny_config(&towers, 2), false).unwrap();
    assert_repeats_and_resumes("classifier on init_from", |run| {
        let text = classify(
            run,
            "shapes_task = \"matching\"",
            "stage = \"mid\"\noperator = \"gated\"\nhead_hidden = 16",
        );
        // The towers' shape comes from the checkpoint.
        let (start, end) = (text.find("[model]").unwrap(), text.find("[data]").unwrap());
        format!("{}{}", &text[..start], &text[end..]).replace(
            "seed = 3",
            &format!("seed = 3\ninit_from = \"{}\"", towers.display()),
        )
    });
}

#[test]
fn coca_and_question_answer_runs_repeat_and_resume_exactly() {
    assert_repeats_and_resumes("coca", coca);
    assert_repeats_and_resumes("question-answer coca", |dir| {
        coca(dir)
            .replace("context_length = 12", "context_length = 24")
            .replace(
                "[data]",
                "[data]\nshapes_task = \"question\"\ntext_format = \"question_answer\"",
            )
    });
}
