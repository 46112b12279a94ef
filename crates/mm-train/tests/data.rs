//! Real-format data through the trainer and the `data-check` command.

mod common;

use common::mm_train;

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped sample shards plus one shard of broken samples, as a pattern list.
fn shards_with_bad_samples(dir: &Path) -> Vec<String> {
    let bad = dir.join("bad.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&bad).unwrap());
    let good_png = {
        let mut bytes = Vec::new();
        image::DynamicImage::new_rgb8(20, 20)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let members: [(&str, &[u8]); 6] = [
        ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        ("broken.txt", b"a broken image"),
        ("lonely.png", &good_png),
        ("fine.png", &good_png),
        ("fine.txt", b"a black square"),
        ("orphan.txt", b"no image here"),
    ];
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    }
    tar.finish().unwrap();
    vec![
        repo()
            .join("assets/shards/shapes-{00000..00003}.tar")
            .display()
            .to_string(),
        bad.display().to_string(),
    ]
}

#[test]
fn data_check_counts_every_kind_and_names_examples() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shards_with_bad_samples(dir.path());
    let (ok, stdout, stderr) = mm_train(&["data-check", &shards[0], &shards[1]]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("5 WebDataset shard(s)"), "{stdout}");
    let count = |label: &str| -> usize {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap();
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(count("usable samples"), 401);
    assert_eq!(count("skipped"), 3);
    assert_eq!(count("bad_image"), 1);
    assert_eq!(count("missing_caption"), 1);
    assert_eq!(count("missing_image"), 1);
    assert!(stdout.contains("bad.tar:broken:"), "{stdout}");
    assert!(
        stdout.contains("bad.tar:orphan: caption without an image"),
        "{stdout}"
    );

    let (ok, _, stderr) = mm_train(&[
        "data-check",
        &format!("{}/missing-{{0..1}}.tar", dir.path().display()),
    ]);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("missing-0.tar: no such file"),
        "{stderr}"
    );
}

#[test]
fn training_from_shards_skips_and_reports_bad_samples() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shards_with_bad_samples(dir.path());
    let mut config = common::tiny_config(&dir.path().join("run"), 12);
    config.data = mm_data::DataConfig {
        source: mm_data::SourceKind::Webdataset,
        path: Some(mm_data::Paths::Many(shards)),
        shuffle_buffer: 50,
        workers: 2,
        ..mm_data::DataConfig::default()
    };
    config.train.checkpoint_every = 0;
    config.validate("test").unwrap();
    let report = mm_train::train(&config, false).unwrap();
    assert_eq!(report.losses.len(), 12);

    // 12 steps x 16 = 192 samples out of 404 items: the bad shard may or may not have been
    // reached, so the check is that whatever was skipped is reported, by kind and location.
    let log = std::fs::read_to_string(dir.path().join("run/train.log")).unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics
        .lines()
        .rfind(|l| l.contains("\"loss\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let skipped: u64 = last["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        skipped as usize,
        log.matches("skipped sample: ").count(),
        "{log}"
    );

    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.checkpoint.join("state.json")).unwrap(),
    )
    .unwrap();
    let position = state["data_position"].as_u64().unwrap();
    assert_eq!(
        position,
        12 * 16 + skipped,
        "every item pulled is a trained sample or a skipped one"
    );
}

#[test]
fn a_whole_run_over_bad_data_skips_everything_bad() {
    // Only the bad shard: one good sample per pass, so every batch cycles through many epochs
    // of broken ones. Training goes on; each kind is listed a few times, then only counted.
    let dir = tempfile::tempdir().unwrap();
    let shards = shards_with_bad_samples(dir.path());
    let mut config = common::tiny_config(&dir.path().join("run"), 2);
    config.data = mm_data::DataConfig {
        source: mm_data::SourceKind::Webdataset,
        path: Some(mm_data::Paths::One(shards[1].clone())),
        shuffle_buffer: 0,
        ..mm_data::DataConfig::default()
    };
    config.train.batch_size = 4;
    config.eval.heldout_samples = 8;
    let report = mm_train::train(&config, false).unwrap();
    assert_eq!(report.losses.len(), 2);
    let log = std::fs::read_to_string(dir.path().join("run/train.log")).unwrap();
    assert!(log.contains("skipped sample: bad_image"), "{log}");
    assert!(
        log.contains("(further bad_image samples are counted, not listed)"),
        "{log}"
    );
}

#[test]
fn missing_data_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(&dir.path().join("run"), 2);
    config.data.source = mm_data::SourceKind::Csv;
    config.data.path = Some(mm_data::Paths::One(
        dir.path().join("pairs.csv").display().to_string(),
    ));
    let err = format!("{:#}", mm_train::train(&config, false).err().unwrap());
    assert!(err.contains("pairs.csv"), "{err}");
    config.data.path = None;
    let err = config.validate("run.toml").unwrap_err().to_string();
    assert!(
        err.contains("run.toml: key `data.path`: required for source = Csv"),
        "{err}"
    );
}
