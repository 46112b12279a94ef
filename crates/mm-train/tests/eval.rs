//! The evaluation suites: retrieval ranks, the linear probe, and `mm-train eval` end to end.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use mm_train::eval::{Recall, linear_probe, retrieval};

fn matrix(rows: &[&[f32]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

#[test]
fn retrieval_ranks_and_recalls() {
    let device = Device::flex();
    // Image i is most similar to text i except image 2, whose caption ranks third; text 2's
    // image ranks second.
    let images = matrix(
        &[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[0.6, 0.5, 0.4]],
        &device,
    );
    let texts = matrix(
        &[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[0.0, 0.0, 1.0]],
        &device,
    );
    let report = retrieval(images, texts).unwrap();
    assert_eq!(report.pairs, 3);
    assert_eq!(
        report.image_to_text,
        Recall {
            r1: 2.0 / 3.0,
            r5: 1.0,
            r10: 1.0,
            median_rank: 1.0
        }
    );
    // Text 2 scores 0 against images 0 and 1, 0.4 against image 2: rank 1.
    assert_eq!(report.text_to_image.r1, 1.0);

    // A perfect match everywhere.
    let eye = matrix(&[&[1.0, 0.0], &[0.0, 1.0]], &device);
    let report = retrieval(eye.clone(), eye).unwrap();
    assert_eq!(report.image_to_text.median_rank, 1.0);
}

#[test]
fn the_linear_probe_separates_separable_classes() {
    let device = Device::flex();
    // Three classes along three axes, with deterministic jitter.
    let sample = |n: usize| {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let class = i % 3;
            let mut row = vec![0.05 * ((i * 7 % 11) as f32 / 11.0 - 0.5); 4];
            row[class] += 1.0;
            rows.extend(row);
            labels.push(class);
        }
        (
            Tensor::<2>::from_data(TensorData::new(rows, [n, 4]), &device),
            labels,
        )
    };
    let (train, train_labels) = sample(60);
    let (val, val_labels) = sample(30);
    let report = linear_probe((train, &train_labels), (val, &val_labels), 3, &device).unwrap();
    assert_eq!(report.val_accuracy, 1.0);
    assert_eq!(report.train_accuracy, 1.0);

    // Labels unrelated to the features: the probe cannot beat chance by much on held-out data.
    let (train, _) = sample(60);
    let (val, _) = sample(30);
    let shuffled: Vec<usize> = (0..60).map(|i| (i * 7 / 3) % 3).collect();
    let shuffled_val: Vec<usize> = (0..30).map(|i| (i * 5 / 2) % 3).collect();
    let report = linear_probe((train, &shuffled), (val, &shuffled_val), 3, &device).unwrap();
    assert!(report.val_accuracy < 0.7, "{}", report.val_accuracy);
}

#[test]
fn eval_command_writes_a_report_for_builtin_and_folder_sets() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let report = mm_train::train(&common::tiny_config(&run, 4), false).unwrap();
    let run_eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--samples",
            "96",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = common::mm_train(&args);
        assert!(ok, "{stderr}");
        stdout
    };
    let stdout = run_eval(&[]);
    assert!(
        stdout.contains("image -> text") && stdout.contains("linear probe"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.checkpoint.join("eval.json")).unwrap(),
    )
    .unwrap();
    let zs = &json["zero_shot"];
    assert_eq!(zs["images"], 96);
    assert_eq!(zs["per_class"].as_array().unwrap().len(), 48);
    let per_class_images: u64 = zs["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["images"].as_u64().unwrap())
        .sum();
    assert_eq!(per_class_images, 96);
    assert!(zs["top5"].as_f64().unwrap() >= zs["top1"].as_f64().unwrap());
    for way in ["image_to_text", "text_to_image"] {
        let r = &json["retrieval"][way];
        let (r1, r5, r10) = (
            r["r1"].as_f64().unwrap(),
            r["r5"].as_f64().unwrap(),
            r["r10"].as_f64().unwrap(),
        );
        assert!(r1 <= r5 && r5 <= r10 && r10 <= 1.0, "{r}");
        assert!(r["median_rank"].as_f64().unwrap() >= 1.0);
    }
    assert_eq!(json["linear_probe"]["val_images"], 96);

    // A folder per class: two classes of held-out shapes pictures.
    let folder = dir.path().join("classes");
    let data = mm_data::ShapesDataset::new(1, 16);
    let mut counts = [0; 2];
    for i in 0..400 {
        let sample = data.sample(mm_data::Split::HeldOut, i);
        let class = match sample.class {
            0 => "red_circle",
            1 => "red_square",
            _ => continue,
        };
        std::fs::create_dir_all(folder.join(class)).unwrap();
        sample
            .image
            .save(folder.join(class).join(format!("{i}.png")))
            .unwrap();
        counts[sample.class] += 1;
    }
    let out = dir.path().join("folder.json");
    run_eval(&[
        "--folder",
        folder.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    assert_eq!(json["zero_shot"]["classes"], 2);
    assert_eq!(json["zero_shot"]["per_class"][0]["class"], "red circle");
    assert_eq!(json["zero_shot"]["images"], counts[0] + counts[1]);
    assert!(json["retrieval"].is_null());

    // The same images as a labelled CSV, plus retrieval on the shipped shards.
    let mut csv = String::from("filepath,label\n");
    for class in ["red_circle", "red_square"] {
        let mut files: Vec<_> = std::fs::read_dir(folder.join(class))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        for file in files {
            csv += &format!("classes/{class}/{file},{}\n", class.replace('_', " "));
        }
    }
    std::fs::write(dir.path().join("labels.csv"), csv).unwrap();
    let shards = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/shards/shapes-{00000..00003}.tar");
    let out2 = dir.path().join("csv.json");
    run_eval(&[
        "--labels-csv",
        dir.path().join("labels.csv").to_str().unwrap(),
        "--pairs",
        shards.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let from_csv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2).unwrap()).unwrap();
    assert_eq!(
        from_csv["zero_shot"]["top1"], json["zero_shot"]["top1"],
        "CSV and folder are the same set"
    );
    assert_eq!(
        from_csv["zero_shot"]["per_class"],
        json["zero_shot"]["per_class"]
    );
    assert_eq!(from_csv["retrieval"]["pairs"], 96);
    assert!(
        from_csv["retrieval_dataset"]
            .as_str()
            .unwrap()
            .contains("4 WebDataset shard(s): first 96 pairs (0 skipped)")
    );
}

#[test]
fn report_renders_curves_eval_and_a_gallery() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut config = common::tiny_config(&run, 10);
    config.train.eval_every = 5;
    mm_train::train(&config, false).unwrap();
    let before = mm_train::report::write_report(&run, &burn::tensor::Device::flex())
        .unwrap()
        .0;
    let html = std::fs::read_to_string(&before).unwrap();
    assert!(
        html.contains("No eval.json yet"),
        "eval section before `mm-train eval`"
    );
    assert_eq!(
        html.matches("<svg").count(),
        6,
        "five training charts, one per suite"
    );
    assert!(html.contains("<h3>shapes</h3>"), "the default suite");
    assert!(html.contains("shapes/top1"));
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        4 + 3 * 3,
        "gallery thumbnails"
    );

    let (ok, _, stderr) = common::mm_train(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--samples",
        "48",
    ]);
    assert!(ok, "{stderr}");
    let html = std::fs::read_to_string(
        mm_train::report::write_report(&run, &burn::tensor::Device::flex())
            .unwrap()
            .0,
    )
    .unwrap();
    assert!(
        html.contains("Evaluation (step 10)") && html.contains("median rank"),
        "eval table"
    );

    let err = mm_train::report::write_report(dir.path(), &burn::tensor::Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("metrics.jsonl: not a run directory"), "{err}");
}
