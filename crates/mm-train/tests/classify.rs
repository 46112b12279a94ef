//! `objective = "classify"`: a fusion classifier trains, checkpoints beside its towers, resumes
//! exactly and is measured; bad labels and configs get clear errors or are skipped and counted.

mod common;

use std::path::Path;

use mm_train::TrainConfig;

/// [`common::tiny_toml`] as a classify run with `[fusion]` `fusion` and `[data]` additions.
fn classify_config(dir: &Path, steps: usize, data: &str, fusion: &str) -> TrainConfig {
    TrainConfig::from_toml(&classify_toml(dir, steps, data, fusion), "test config").unwrap()
}

fn classify_toml(dir: &Path, steps: usize, data: &str, fusion: &str) -> String {
    "objective = \"classify\"\n".to_string()
        + &common::tiny_toml(dir, steps).replace("[data]\n", &format!("[data]\n{data}\n"))
        + &format!("\n[fusion]\n{fusion}\n")
}

fn mean(xs: &[f32]) -> f32 {
    xs.iter().sum::<f32>() / xs.len() as f32
}

#[test]
fn a_classifier_learns_and_its_checkpoint_holds_towers_and_head_apart() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // The built-in pictures' 48 colour x shape classes, named by the caption as well.
    let config = classify_config(&run, 80, "", "operator = \"gated\"\nhead_hidden = 32");
    config.validate("test").unwrap();
    let report = mm_train::train(&config, false).unwrap();
    let (first, last) = (mean(&report.losses[..10]), mean(&report.losses[70..]));
    println!(
        "classify losses: {first:.3} -> {last:.3} (ln 48 = {:.3})",
        48f32.ln()
    );
    assert!(first > 3.0 && last < first - 0.5, "{:?}", report.losses);

    // The towers stay a CLIP checkpoint (every CLIP command reads them); the classifier's own
    // weights and config lie beside them.
    let ckpt = &report.checkpoint;
    for file in ["model.safetensors", "fusion.safetensors", "fusion.toml"] {
        assert!(ckpt.join(file).is_file(), "{file} missing");
    }
    let clip_names: Vec<String> = common::safetensors_tensors(&ckpt.join("model.safetensors"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        clip_names
            .iter()
            .any(|n| n.starts_with("text_model.encoder.layers.0"))
    );
    assert!(
        !clip_names
            .iter()
            .any(|n| n.starts_with("fusion") || n.starts_with("clip."))
    );
    let fusion_names: Vec<String> = common::safetensors_tensors(&ckpt.join("fusion.safetensors"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        fusion_names.iter().any(|n| n.contains("gated.gate")),
        "{fusion_names:?}"
    );

    // Reloaded, it predicts as trained: the CLI's eval measures it by the run's suites.
    let (ok, stdout, stderr) = common::mm_train(&[
        "zero-shot",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--classes",
        "red circle,blue square",
        &{
            let image = dir.path().join("x.png");
            common::save_shape(&image, 40);
            image.to_str().unwrap().to_string()
        },
    ]);
    assert!(
        ok,
        "the towers of a classifier checkpoint are a CLIP model: {stderr}{stdout}"
    );

    // `predict`: each input's class probabilities, most likely first.
    let image = dir.path().join("x.png");
    let ckpt_s = ckpt.to_str().unwrap();
    let image_s = image.to_str().unwrap();
    let (ok, stdout, stderr) = common::mm_train(&[
        "predict",
        "--checkpoint",
        ckpt_s,
        "--text",
        "a red circle",
        "--top-k",
        "48",
        image_s,
        image_s,
    ]);
    assert!(ok, "{stderr}");
    let probs = common::printed_probabilities(&stdout);
    assert_eq!(probs.len(), 96, "{stdout}");
    let total: f64 = probs[..48].iter().sum();
    assert!((total - 100.0).abs() < 0.1, "{total}: {stdout}");
    assert!(probs[..48].windows(2).all(|w| w[0] >= w[1]));
    assert!(stdout.contains("\"a red circle\""), "{stdout}");
    // Texts must pair with the images; a CLIP checkpoint has no classes.
    let (ok, _, stderr) = common::mm_train(&[
        "predict",
        "--checkpoint",
        ckpt_s,
        "--text",
        "a",
        "--text",
        "b",
        "--text",
        "c",
        image_s,
        image_s,
    ]);
    assert!(!ok && stderr.contains("3 texts for 2 images"), "{stderr}");
    let clip_run = dir.path().join("clip");
    mm_train::train(&common::tiny_config(&clip_run, 1), false).unwrap();
    let (ok, _, stderr) = common::mm_train(&[
        "predict",
        "--checkpoint",
        clip_run.to_str().unwrap(),
        "--text",
        "a",
        image_s,
    ]);
    assert!(!ok && stderr.contains("holds no classifier"), "{stderr}");
}

#[test]
fn a_classify_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let fusion = "stage = \"late\"\noperator = \"sum\"\nhead_hidden = 16";
    let whole = classify_config(&dir.path().join("whole"), 20, "", fusion);
    let full = mm_train::train(&whole, false).unwrap();
    // The same run continued in another directory from its step-10 checkpoint.
    let cut = classify_config(&dir.path().join("cut"), 20, "", fusion);
    let step_10 = dir.path().join("whole/checkpoints/step-000010");
    let resumed = mm_train::train_from(&cut, false, Some(&step_10)).unwrap();
    assert_eq!(full.losses[10..], resumed.losses[..]);
    let tensors = |run: &Path, file: &str| {
        common::safetensors_tensors(&run.join("checkpoints/step-000020").join(file))
    };
    for file in ["model.safetensors", "fusion.safetensors"] {
        assert_eq!(
            tensors(&dir.path().join("whole"), file),
            tensors(&dir.path().join("cut"), file),
            "{file}"
        );
    }
}

#[test]
fn the_matching_task_is_measured_by_accuracy_and_macro_f1() {
    let dir = tempfile::tempdir().unwrap();
    let config = classify_config(
        &dir.path().join("run"),
        4,
        "shapes_task = \"matching\"",
        "stage = \"early\"\noperator = \"attention\"\nheads = 2\nhead_hidden = 16",
    );
    let report = mm_train::train(&config, false).unwrap();
    let accuracy = report.metric("task/accuracy").unwrap();
    let f1 = report.metric("task/macro_f1").unwrap();
    assert!((0.0..=1.0).contains(&accuracy) && (0.0..=1.0).contains(&f1));

    // `eval` on the checkpoint measures the classifier by the run's own suite.
    let run = dir.path().join("run");
    let (ok, stdout, stderr) = common::mm_train(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("task: accuracy"), "{stdout}");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            run.join("checkpoints")
                .join(latest.trim())
                .join("eval.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        eval["metrics"]["task/accuracy"].as_f64(),
        Some(accuracy),
        "{eval}"
    );

    // The report shows the classifier's confusion matrix on the suite, its classes named.
    let (ok, _, stderr) = common::mm_train(&["report", run.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    let section = &html[html
        .find("<h2>Classifier: suite")
        .expect("classifier section")..];
    assert!(
        section.contains("<svg") && section.contains(">\nno\n</text>"),
        "{section}"
    );
    assert!(section.contains("<td>yes</td>"), "{section}");
}

#[test]
fn labels_outside_the_classes_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    let mut rows = String::from("filepath,title,label\n");
    for i in 0..24 {
        let image = dir.path().join(format!("img/{i}.png"));
        common::save_shape(&image, 20);
        let label = ["cat", "dog", "bird"][i % 3];
        // Row 5's text is empty: skipped and counted as a missing caption.
        let text = if i == 5 { "" } else { "a picture" };
        rows += &format!("img/{i}.png,{text},{label}\n");
    }
    std::fs::write(dir.path().join("rows.csv"), rows).unwrap();
    let data = format!(
        "source = \"csv\"\npath = \"{}\"",
        dir.path().join("rows.csv").display()
    );
    let run = dir.path().join("run");
    let config = classify_config(&run, 3, &data, "classes = [\"cat\", \"dog\"]");
    mm_train::train(&config, false).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"missing_label\""), "{metrics}");
    assert!(metrics.contains("\"missing_caption\":"), "{metrics}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.contains("label `bird` is not one of the 2 classes"),
        "{log}"
    );

    // Without a list, the classes are the labels of the data: three of them.
    let run = dir.path().join("run-all");
    let config = classify_config(&run, 1, &data, "");
    mm_train::train(&config, false).unwrap();
    let fusion = std::fs::read_to_string(run.join("checkpoints/step-000001/fusion.toml")).unwrap();
    assert!(
        fusion.contains("\"bird\"") && fusion.contains("num_classes = 3"),
        "{fusion}"
    );
}

#[test]
fn bad_label_setups_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.png");
    common::save_shape(&image, 20);
    let csv = dir.path().join("rows.csv");
    let data = format!("source = \"csv\"\npath = \"{}\"", csv.display());
    let run = |csv_text: &str, fusion: &str| {
        std::fs::write(&csv, csv_text).unwrap();
        let config = classify_config(&dir.path().join("run"), 1, &data, fusion);
        let _ = std::fs::remove_dir_all(dir.path().join("run"));
        format!("{:#}", mm_train::train(&config, false).unwrap_err())
    };
    // No label column.
    let err = run("filepath,title\na.png,x\n", "");
    assert!(
        err.contains("no column `label` (data.csv_label_key)"),
        "{err}"
    );
    // One class only.
    let err = run("filepath,title,label\na.png,x,cat\na.png,y,cat\n", "");
    assert!(
        err.contains("1 class") && err.contains("at least 2"),
        "{err}"
    );

    // Config errors name the key.
    let toml = |extra: &str| common::tiny_toml(&dir.path().join("r"), 1) + extra;
    let err = TrainConfig::from_toml(&toml("\n[fusion]\nstage = \"mid\"\n"), "run.toml")
        .and_then(|c| c.validate("run.toml").map(|_| c))
        .unwrap_err()
        .to_string();
    assert!(err.contains("key `fusion`"), "{err}");
    let bad = |fusion: &str| {
        let toml = classify_toml(&dir.path().join("r"), 1, "", fusion);
        TrainConfig::from_toml(&toml, "run.toml")
            .unwrap_err()
            .to_string()
    };
    let err = bad("classes = [\"a\", \"a\"]");
    assert!(
        err.contains("key `fusion.classes`") && err.contains("twice"),
        "{err}"
    );
    let err = bad("alpha = 1.5");
    assert!(err.contains("key `fusion.alpha`"), "{err}");
    let err = TrainConfig::from_toml(
        &common::tiny_toml(&dir.path().join("r"), 1)
            .replace("[data]\n", "[data]\nshapes_task = \"question\"\n"),
        "run.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("key `data.shapes_task`"), "{err}");
}

#[test]
fn cross_validation_trains_a_run_per_fold_and_reports_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    let mut rows = String::from("filepath,title,label\n");
    for i in 0..30 {
        let image = dir.path().join(format!("img/{i}.png"));
        common::save_shape(&image, 20);
        rows += &format!("img/{i}.png,text {i},{}\n", ["cat", "dog"][i % 2]);
    }
    std::fs::write(dir.path().join("rows.csv"), rows).unwrap();
    let data = format!(
        "source = \"csv\"\npath = \"{}\"",
        dir.path().join("rows.csv").display()
    );
    let config = dir.path().join("cv.toml");
    let root = dir.path().join("cv");
    std::fs::write(&config, classify_toml(&root, 2, &data, "head_hidden = 8")).unwrap();
    let (ok, stdout, stderr) =
        common::mm_train(&["cv", "--config", config.to_str().unwrap(), "--folds", "3"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3-fold cross-validation (2 classes)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fold/accuracy:") && stdout.contains("±"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("cv.json")).unwrap()).unwrap();
    let folds = report["metrics"]["fold/accuracy"]["folds"]
        .as_array()
        .unwrap();
    assert_eq!(folds.len(), 3);
    for k in 1..=3 {
        assert!(root.join(format!("fold-{k}/checkpoints/latest")).is_file());
    }
    // Every fold was measured on its own rows: together they are all 30.
    let logs: String = (1..=3)
        .map(|k| std::fs::read_to_string(root.join(format!("fold-{k}/train.log"))).unwrap())
        .collect();
    let measured: usize = logs
        .lines()
        .filter(|l| l.contains("eval suite fold:"))
        .map(|l| {
            let n = l.split(": ").nth(2).unwrap().split(' ').next().unwrap();
            n.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(measured, 30, "{logs}");

    // The built-in data cannot be split.
    std::fs::write(
        &config,
        classify_toml(&root, 2, "shapes_task = \"matching\"", ""),
    )
    .unwrap();
    let (ok, _, stderr) =
        common::mm_train(&["cv", "--config", config.to_str().unwrap(), "--folds", "3"]);
    assert!(!ok && stderr.contains("endless"), "{stderr}");
}

#[test]
fn frozen_towers_leave_only_the_head_to_train() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut config = classify_config(&run, 3, "", "head_hidden = 8");
    config.train.lock_image = true;
    config.train.lock_text = true;
    config.train.checkpoint_every = 1;
    config.train.keep_checkpoints = 5;
    config.validate("test").unwrap();
    mm_train::train(&config, false).unwrap();
    let at = |step: usize, file: &str| {
        common::safetensors_tensors(&run.join(format!("checkpoints/step-{step:06}")).join(file))
    };
    assert_eq!(
        at(1, "model.safetensors"),
        at(3, "model.safetensors"),
        "frozen towers moved"
    );
    assert_ne!(
        at(1, "fusion.safetensors"),
        at(3, "fusion.safetensors"),
        "the head should train"
    );
    // A CLIP run with both towers frozen would train nothing but the temperature.
    let mut clip = common::tiny_config(&run, 1);
    clip.train.lock_image = true;
    clip.train.lock_text = true;
    let err = clip.validate("run.toml").unwrap_err().to_string();
    assert!(err.contains("key `train.lock_text`"), "{err}");
}
