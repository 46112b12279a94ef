//! Eval suites on the user's own data: a run on WebDataset shards measures a held-out shard
//! and a labelled CSV, keeps its best checkpoint by the chosen metric, reports those suites,
//! and never draws a picture of the built-in data. No test in this file may draw one: the
//! count of drawn pictures is per process.

use std::path::{Path, PathBuf};

use mm_train::TrainConfig;
use mm_train::eval::LabelledImages;

mod common;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// The tests' tiny model trained on shards 0-2 of `assets/shards`, evaluated every 10 steps as
/// `eval` says, keeping one checkpoint besides the best.
fn shards_config(run: &Path, steps: usize, eval: &str) -> TrainConfig {
    let data = format!(
        "[data]\nsource = \"webdataset\"\npath = \"{}/shards/shapes-{{00000..00002}}.tar\"\nshuffle_buffer = 50\n",
        assets().display()
    );
    let text = common::tiny_toml(run, steps)
        .replacen("[data]\n", &data, 1)
        .replacen(
            "keep_checkpoints = 2",
            "keep_checkpoints = 1\neval_every = 10",
            1,
        )
        .replacen("[eval]\n        heldout_samples = 48", eval, 1);
    TrainConfig::from_toml(&text, "suites.toml").unwrap()
}

fn suites(select: &str) -> String {
    let assets = assets();
    format!(
        r#"
        [eval]
        select = "{select}"
        [[eval.suites]]
        kind = "pairs"
        name = "val"
        source = "webdataset"
        path = "{assets}/shards/shapes-00003.tar"
        samples = 48
        [[eval.suites]]
        kind = "zero_shot"
        name = "labelled"
        source = "csv"
        path = "{assets}/labelled/labels.csv"
        classes = "{assets}/shapes_classes.txt"
        samples = 48
        "#,
        assets = assets.display()
    )
}

#[test]
fn a_run_on_shards_is_measured_by_its_own_suites_and_never_by_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = shards_config(&run, 40, &suites("val/loss"));
    let report = mm_train::train(&config, false).unwrap();

    // Both suites were measured, at steps 10..40, under their own names; no shapes suite.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["eval"].is_object())
        .collect();
    assert_eq!(evals.len(), 4);
    for record in &evals {
        let keys: Vec<&String> = record["eval"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 7 + 3, "{keys:?}");
        assert!(
            keys.iter()
                .all(|k| k.starts_with("val/") || k.starts_with("labelled/"))
        );
        let loss = record["eval"]["val/loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        let top1 = record["eval"]["labelled/top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1));
    }
    assert_eq!(report.eval.len(), 10);
    assert_eq!(
        report.metric("val/loss"),
        evals[3]["eval"]["val/loss"].as_f64()
    );

    // The best checkpoint by validation loss (lower is better) survives pruning beside the
    // newest one.
    let losses: Vec<(u64, f64)> = evals
        .iter()
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["eval"]["val/loss"].as_f64().unwrap(),
            )
        })
        .collect();
    let best = losses.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    let mut kept: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    let mut expected = vec![format!("step-{best:06}"), "step-000040".to_string()];
    expected.sort();
    expected.dedup();
    assert_eq!(kept, expected, "losses {losses:?}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join(format!("checkpoints/step-{best:06}/state.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["selected_by"], "val/loss");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.contains("keeping the best checkpoint by val/loss (lower is better)"),
        "{log}"
    );
    assert!(log.contains("labelled: zero-shot top-1"), "{log}");
    assert!(!log.contains("shapes"), "{log}");

    // TensorBoard has the suites' scalars.
    let events = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("tfevents"))
        .unwrap();
    let bytes = std::fs::read(events).unwrap();
    let count = |tag: &[u8]| bytes.windows(tag.len()).filter(|w| *w == tag).count();
    assert_eq!(count(b"eval/val/loss"), 4);
    assert_eq!(count(b"eval/labelled/top1"), 4);

    // The report shows those suites and draws its gallery from the held-out shard.
    let (page, _) = mm_train::report::write_report(&run, &burn::tensor::Device::flex()).unwrap();
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<h3>val</h3>") && html.contains("<h3>labelled</h3>"));
    assert!(html.contains("Eval suite <code>val</code>"));
    assert!(html.contains("kept by <code>val/loss</code>"));
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        4 + 3 * 3,
        "gallery thumbnails"
    );

    // Nothing of the above drew a single built-in picture.
    assert_eq!(mm_data::shapes::pictures_drawn(), 0);

    // `mm-train eval` on the run measures the run's suites (not the built-in task) and the
    // report shows what it wrote.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(["eval", "--checkpoint", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("labelled: zero-shot top-1") && stdout.contains("val: loss"));
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/step-000040/eval.json")).unwrap(),
    )
    .unwrap();
    let measured = eval["metrics"].as_object().unwrap();
    assert_eq!(measured.len(), 10);
    assert_eq!(
        measured["val/loss"].as_f64(),
        report.metric("val/loss"),
        "the same weights, the same suite: the same loss"
    );
    let (page, _) = mm_train::report::write_report(&run, &burn::tensor::Device::flex()).unwrap();
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("The run's suites, measured by"));
}

#[test]
fn without_suites_a_run_on_other_data_measures_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = shards_config(&run, 10, "");
    let report = mm_train::train(&config, false).unwrap();
    assert!(report.eval.is_empty());
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("no eval suites"), "{log}");
    assert_eq!(mm_data::shapes::pictures_drawn(), 0);
}

#[test]
fn labelled_csv_labels_are_class_names_or_indices() {
    let dir = tempfile::tempdir().unwrap();
    let image = assets().join("labelled/images/00000.jpg");
    std::fs::copy(&image, dir.path().join("a.jpg")).unwrap();
    let classes = ["cat".to_string(), "dog".into(), "hot dog".into()];
    let columns = mm_data::CsvColumns {
        image: "filepath".into(),
        caption: "label".into(),
        label: None,
        separator: b',',
    };
    let csv = dir.path().join("l.csv");
    std::fs::write(&csv, "filepath,label\na.jpg,dog\na.jpg,2\na.jpg,cat\n").unwrap();
    let set = LabelledImages::from_csv(&csv, &columns, Some(classes.to_vec()), 10).unwrap();
    assert_eq!(set.labels, [1, 2, 0]);
    assert_eq!(set.class_names, classes);
    // Without a class list, the distinct labels, sorted.
    let set = LabelledImages::from_csv(&csv, &columns, None, 2).unwrap();
    assert_eq!(set.class_names, ["2", "dog"]);
    assert_eq!(set.labels, [1, 0]);

    std::fs::write(&csv, "filepath,label\na.jpg,dog\na.jpg,3\n").unwrap();
    let err = LabelledImages::from_csv(&csv, &columns, Some(classes.to_vec()), 10)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("row 2") && err.contains("\"3\"") && err.contains("below 3"),
        "{err}"
    );

    // A folder per class, named by a class list in folder order; a list of the wrong length
    // is refused.
    for class in ["n01", "n02"] {
        std::fs::create_dir_all(dir.path().join("folder").join(class)).unwrap();
        std::fs::copy(&image, dir.path().join("folder").join(class).join("x.jpg")).unwrap();
    }
    let set = LabelledImages::from_folder(&dir.path().join("folder"), 10).unwrap();
    assert_eq!(set.class_names, ["n01", "n02"]);
    let named = set.renamed(vec!["cat".into(), "dog".into()]).unwrap();
    assert_eq!(named.class_names, ["cat", "dog"]);
    let set = LabelledImages::from_folder(&dir.path().join("folder"), 10).unwrap();
    let err = set.renamed(classes.to_vec()).err().unwrap().to_string();
    assert!(err.contains("3 class names for 2 class folders"), "{err}");
    assert_eq!(mm_data::shapes::pictures_drawn(), 0);
}
