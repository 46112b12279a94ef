//! The binary's user-facing behaviour: zero-shot output and one-line errors.

mod common;

use common::mm_train;

fn assert_one_line_error(stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{stderr}"
    );
}

#[test]
fn zero_shot_prints_ranked_classes_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    mm_train::train(&common::tiny_config(&run, 3), false).unwrap();
    let image = dir.path().join("shape.png");
    common::save_shape(&image, 40);
    let (run, image) = (run.to_str().unwrap(), image.to_str().unwrap());

    let classify = |precision: &str| {
        mm_train(&[
            "zero-shot",
            "--checkpoint",
            run,
            "--classes",
            "red circle, blue square,green star",
            "--template",
            "a photo of a {}",
            "--precision",
            precision,
            image,
        ])
    };
    let (ok, stdout, stderr) = classify("fp32");
    assert!(ok, "{stderr}");
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines[0], image);
    assert_eq!(lines.len(), 4);
    let probs = common::printed_probabilities(&stdout);
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{stdout}");
    assert!((probs.iter().sum::<f64>() - 100.0).abs() < 0.1, "{stdout}");
    for class in ["red circle", "blue square", "green star"] {
        assert!(stdout.contains(class));
    }

    // bf16 inference (bf16 GEMMs) ranks the classes as fp32 does, to within bf16 rounding.
    let (ok, bf16_stdout, stderr) = classify("bf16");
    assert!(ok, "{stderr}");
    let bf16_probs = common::printed_probabilities(&bf16_stdout);
    assert_eq!(bf16_probs.len(), probs.len());
    for (a, b) in probs.iter().zip(&bf16_probs) {
        assert!((a - b).abs() < 1.0, "fp32 {stdout} vs bf16 {bf16_stdout}");
    }
    let (ok, _, stderr) = mm_train(&[
        "zero-shot",
        "--checkpoint",
        run,
        "--classes",
        "a,b",
        "--precision",
        "fp8",
        image,
    ]);
    assert!(
        !ok && stderr.contains("'fp8'") && stderr.contains("possible values"),
        "{stderr}"
    );

    let classes_file = dir.path().join("classes.txt");
    std::fs::write(&classes_file, "red circle\n\nblue square\n").unwrap();
    let (ok, stdout, _) = mm_train(&[
        "zero-shot",
        "--checkpoint",
        run,
        "--classes-file",
        classes_file.to_str().unwrap(),
        "--top-k",
        "1",
        image,
    ]);
    assert!(ok);
    assert_eq!(stdout.lines().count(), 2);

    let (ok, _, stderr) = mm_train(&[
        "zero-shot",
        "--checkpoint",
        "/no/such/ckpt",
        "--classes",
        "a,b",
        image,
    ]);
    assert!(!ok);
    assert_one_line_error(&stderr, "/no/such/ckpt");

    let (ok, _, stderr) = mm_train(&["zero-shot", "--checkpoint", run, "--classes", " , ", image]);
    assert!(!ok);
    assert_one_line_error(&stderr, "class list is empty");

    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (ok, _, stderr) = mm_train(&[
        "zero-shot",
        "--checkpoint",
        run,
        "--classes",
        "a,b",
        corrupt.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_one_line_error(&stderr, "corrupt.png");
}

#[test]
fn training_config_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let text = toml::to_string(&common::tiny_config(dir.path(), 2))
        .unwrap()
        .replace("[optim]", "[optim]\nmomentum = 0.9");
    std::fs::write(&config, text).unwrap();
    let (ok, _, stderr) = mm_train(&["--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert_one_line_error(&stderr, "key `optim.momentum`");

    let (ok, _, stderr) = mm_train(&["--config", "/no/such.toml"]);
    assert!(!ok);
    assert_one_line_error(&stderr, "/no/such.toml");

    let (ok, _, stderr) = mm_train(&["--config", config.to_str().unwrap(), "--device", "wgpu:x"]);
    assert!(!ok);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
