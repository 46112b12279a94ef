//! `objective = "coca"`: a small CoCa trains (both losses fall), checkpoints its decoder,
//! accumulates exactly, captions from the command line; the config and caption errors.

mod common;

use mm_data::ClipBatch;
use mm_encoders::CocaModel;
use mm_train::TrainConfig;
use mm_train::start::Startable;
use mm_train::task::Trainee;

/// The tiny test config as a CoCa: attentional pooler, text class token, a 1-layer decoder.
fn coca_toml(dir: &std::path::Path, steps: usize) -> String {
    common::coca_toml(dir, steps)
}

fn coca_config(dir: &std::path::Path, steps: usize) -> TrainConfig {
    let config = TrainConfig::from_toml(&coca_toml(dir, steps), "coca test").unwrap();
    config.validate("coca test").unwrap();
    config
}

#[test]
fn accumulated_micro_batches_give_the_big_batch_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let config = coca_config(dir.path(), 1);
    let start = CocaModel::start(&config).unwrap();
    let learner = start.learner;
    let big = common::shapes_batches(&start.model_config, 1).remove(0);
    assert!(
        big.input_ids.contains(&0),
        "padded with the model's pad id 0"
    );
    let micro: Vec<ClipBatch> = (0..4)
        .map(|i| common::rows_of(&big, 4 * i..4 * (i + 1)))
        .collect();
    let (loss_big, grads_big) = learner.gradients(std::slice::from_ref(&big)).unwrap();
    let (loss_acc, grads_acc) = learner.gradients(&micro).unwrap();
    assert!(
        (loss_big - loss_acc).abs() < 1e-4,
        "{loss_big} vs {loss_acc}"
    );
    let (worst, scale) = common::compare_grads(&learner.model, &grads_big, &grads_acc);
    println!("coca: max |grad(16) - grad(4 x 4)| = {worst:.2e} (largest {scale:.2e})");
    assert!(worst <= 2e-5, "accumulated gradients differ by {worst}");
    // Every decoder parameter learns.
    let decoder_grads = grads_big
        .get::<2>(learner.model.text_decoder.text_projection.weight.id)
        .expect("the output projection has a gradient");
    assert!(decoder_grads.abs().max().into_scalar::<f32>() > 0.0);
}

#[test]
fn a_coca_run_learns_checkpoints_its_decoder_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = coca_config(&run, 30);
    let report = mm_train::train(&config, false).unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!("coca loss {first:.3} -> {last:.3}; {report:?}");
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    let ckpt_dir = run.join("checkpoints/step-000030");
    assert!(ckpt_dir.join("text_decoder.safetensors").exists());
    let ckpt = mm_train::checkpoint::load(&run, &burn::tensor::Device::flex()).unwrap();
    assert_eq!(
        ckpt.tokenizer.pad_id(),
        0,
        "the run pads with the model's pad id"
    );
    assert!(ckpt.model_config.multimodal.is_some());
    // Its default suites: the shapes suite and the captions suite, measured at the end.
    let eval = &ckpt.state.eval;
    for metric in [
        "shapes/top1",
        "captions/cider_d",
        "captions/bleu4",
        "captions/colour_and_shape",
    ] {
        let value = eval
            .get(metric)
            .unwrap_or_else(|| panic!("{metric}: {eval:?}"));
        assert!(value.is_finite() && *value >= 0.0, "{metric} = {value}");
    }
    let model = ckpt.coca().unwrap();
    assert!(model.captioner().is_some());

    // The command line: a caption per image; zero-shot reads the same checkpoint's towers.
    let image = dir.path().join("shape.png");
    common::save_shape(&image, 40);
    let run_arg = run.to_str().unwrap();
    let image_arg = image.to_str().unwrap();
    let (ok, stdout, stderr) = common::mm_train(&[
        "caption",
        "--checkpoint",
        run_arg,
        "--strategy",
        "greedy",
        "--max-tokens",
        "6",
        image_arg,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("{image_arg}: ")), "{stdout}");
    let (ok, stdout, stderr) = common::mm_train(&[
        "caption",
        "--checkpoint",
        run_arg,
        "--prompt",
        "a photo of",
        "--beams",
        "3",
        image_arg,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(image_arg), "{stdout}");
    let (ok, _, stderr) = common::mm_train(&[
        "zero-shot",
        "--checkpoint",
        run_arg,
        "--classes",
        "red circle,blue square",
        image_arg,
    ]);
    assert!(ok, "{stderr}");

    // `eval` adds caption metrics (beam search here), and the report a caption gallery.
    let (ok, stdout, stderr) = common::mm_train(&[
        "eval",
        "--checkpoint",
        run_arg,
        "--samples",
        "24",
        "--beams",
        "2",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("captions (24 images, beam search of 2") && stdout.contains("CIDEr-D"),
        "{stdout}"
    );
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt_dir.join("eval.json")).unwrap())
            .unwrap();
    let scores = &eval["captions"]["scores"];
    assert_eq!(scores["images"], 24, "{eval}");
    assert!(scores["cider_d"].as_f64().unwrap() >= 0.0, "{eval}");
    assert!(scores["attributes"]["colour_and_shape"].is_f64(), "{eval}");
    let (ok, _, stderr) = common::mm_train(&["report", run_arg]);
    assert!(ok, "{stderr}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        html.contains("<h2>Caption gallery</h2>"),
        "no caption gallery"
    );

    // Bad input: an empty prompt, a prompt longer than the context, a CLIP checkpoint.
    for (args, message) in [
        (vec!["--prompt", "  "], "--prompt is empty"),
        (
            vec!["--prompt", &"word ".repeat(30)],
            "nothing is left to generate",
        ),
        (vec!["--max-tokens", "50"], "--max-tokens 50"),
        (vec!["--strategy", "sample", "--top-p", "0"], "top_p"),
    ] {
        let mut all = vec!["caption", "--checkpoint", run_arg];
        all.extend(args);
        all.push(image_arg);
        let (ok, _, stderr) = common::mm_train(&all);
        assert!(!ok && stderr.contains(message), "{all:?}: {stderr}");
    }
    let clip_run = dir.path().join("clip");
    mm_train::train(&common::tiny_config(&clip_run, 10), false).unwrap();
    let (ok, _, stderr) = common::mm_train(&[
        "caption",
        "--checkpoint",
        clip_run.to_str().unwrap(),
        image_arg,
    ]);
    assert!(
        !ok && stderr.contains("without a caption decoder"),
        "{stderr}"
    );
}

#[test]
fn a_coca_fine_tuned_on_questions_answers_them_by_prompting() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vqa");
    // A context that holds every question with its answer.
    let toml = coca_toml(&run, 10)
        .replace("context_length = 12", "context_length = 24")
        .replace(
            "[data]",
            "[data]\nshapes_task = \"question\"\ntext_format = \"question_answer\"",
        );
    let config = TrainConfig::from_toml(&toml, "vqa test").unwrap();
    config.validate("vqa test").unwrap();
    // The texts it trains on are questions and their answers.
    let mut source = config.data.open_epoch(config.seed, 0, 16).unwrap();
    let pair = source.next().unwrap().unwrap();
    assert!(
        pair.caption.starts_with("question: ")
            && pair
                .caption
                .ends_with(&format!(" answer: {}", pair.label.unwrap())),
        "{}",
        pair.caption
    );
    // Batches give each row's prompt: the decoder learns the answer and end token only.
    let tokenizer = mm_data::ClipTokenizer::openai().with_pad_id(0).unwrap();
    let batcher = mm_data::Batcher::new(tokenizer.clone(), 16, 24).with_question_answers(true);
    let mut source = config.data.open_epoch(config.seed, 0, 16).unwrap();
    let batch = batcher
        .next_batch(source.as_mut(), &mut 0, 4)
        .unwrap()
        .unwrap();
    for row in 0..4 {
        let ids = &batch.input_ids[row * 24..(row + 1) * 24];
        let answer: Vec<u32> = ids[batch.prompt_lengths[row]..]
            .iter()
            .copied()
            .take_while(|&id| id != tokenizer.eot_id())
            .collect();
        assert_eq!(
            tokenizer.decode(&answer).unwrap().trim(),
            batch.labels[row].as_deref().unwrap(),
            "{}",
            batch.captions[row]
        );
    }
    mm_train::train(&config, false).unwrap();
    let ckpt = mm_train::checkpoint::load(&run, &burn::tensor::Device::flex()).unwrap();
    // Its default suite asks the held-out questions.
    let accuracy = ckpt.state.eval["answers/accuracy"];
    assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
    let image = dir.path().join("shape.png");
    common::save_shape(&image, 40);
    let (ok, stdout, stderr) = common::mm_train(&[
        "caption",
        "--checkpoint",
        run.to_str().unwrap(),
        "--strategy",
        "greedy",
        "--question",
        "what colour is the star?",
        image.to_str().unwrap(),
    ]);
    assert!(ok && stdout.contains("shape.png: "), "{stderr}");
    let (ok, _, stderr) = common::mm_train(&[
        "caption",
        "--checkpoint",
        run.to_str().unwrap(),
        "--question",
        " ",
        image.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("--question is empty"), "{stderr}");
    let (ok, stdout, stderr) = common::mm_train(&["eval", "--checkpoint", run.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("answers: accuracy"), "{stdout}");
    assert!(
        stdout.contains("(chance 7.1%: 14 answers) on 48 questions;"),
        "{stdout}"
    );
}

#[test]
fn coca_configs_that_cannot_work_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let coca = coca_toml(dir.path(), 10);
    let clip = common::tiny_toml(dir.path(), 10);
    for (text, key) in [
        (
            clip.replace("seed = 3", "seed = 3\nobjective = \"coca\""),
            "model",
        ),
        (coca.replace("objective = \"coca\"", ""), "objective"),
        (
            format!("{clip}\n[coca]\ncaption_loss_weight = 1.0\n"),
            "coca",
        ),
        (
            format!("{coca}\n[coca]\ncaption_loss_weight = -1.0\n"),
            "coca.caption_loss_weight",
        ),
        (
            coca.replace("[train]", "[train]\npatch_dropout = 0.5"),
            "train.patch_dropout",
        ),
        // A built-in task as text needs its questions and answers as text.
        (
            coca.replace("[data]", "[data]\nshapes_task = \"question\""),
            "data.shapes_task",
        ),
        (
            coca.replace("[data]", "[data]\ntext_format = \"question_answer\""),
            "data.text_format",
        ),
        (
            clip.replace(
                "[data]",
                "[data]\nshapes_task = \"question\"\ntext_format = \"question_answer\"",
            )
            .replace("seed = 3", "seed = 3\nobjective = \"classify\""),
            "data.text_format",
        ),
        // Suites that generate text measure a CoCa.
        (
            format!("{clip}\n[[eval.suites]]\nkind = \"captions\"\n"),
            "eval.suites[0].kind",
        ),
        (
            format!("{coca}\n[[eval.suites]]\nkind = \"captions\"\nbeams = 0\n"),
            "eval.suites[0].beams",
        ),
        (
            format!("{coca}\n[[eval.suites]]\nkind = \"answers\"\n"),
            "eval.suites[0].data",
        ),
    ] {
        let err = TrainConfig::from_toml(&text, "x.toml")
            .and_then(|c| c.validate("x.toml").map(|_| c))
            .err()
            .unwrap_or_else(|| panic!("accepted: {key}"));
        assert!(
            err.to_string().contains(&format!("`{key}`")),
            "{key}: {err}"
        );
    }
}

#[test]
fn caption_metrics_match_pycocoevalcap() {
    use mm_train::caption_metrics::{bleu, cider_d};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/caption_metrics/pycocoevalcap.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for corpus in fixture["corpora"].as_array().unwrap() {
        let name = corpus["name"].as_str().unwrap();
        let cases = corpus["cases"].as_array().unwrap();
        let candidates: Vec<String> = cases
            .iter()
            .map(|c| c["candidate"].as_str().unwrap().to_string())
            .collect();
        let references: Vec<Vec<String>> = cases
            .iter()
            .map(|c| {
                c["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect()
            })
            .collect();
        let ours = bleu(&candidates, &references);
        for (k, (a, b)) in ours.iter().zip(floats(&corpus["bleu"])).enumerate() {
            assert!((a - b).abs() < 1e-9, "{name}: BLEU-{} {a} vs {b}", k + 1);
        }
        let per_image = cider_d(&candidates, &references);
        for (i, (a, b)) in per_image
            .iter()
            .zip(floats(&corpus["cider_d_per_image"]))
            .enumerate()
        {
            assert!(
                (a - b).abs() < 1e-9,
                "{name}: CIDEr-D of image {i}: {a} vs {b}"
            );
        }
        let mean = per_image.iter().sum::<f64>() / per_image.len() as f64;
        let expected = corpus["cider_d"].as_f64().unwrap();
        assert!(
            (mean - expected).abs() < 1e-9,
            "{name}: {mean} vs {expected}"
        );
        println!(
            "{name}: BLEU-4 {:.4}, CIDEr-D {mean:.4} (pycocoevalcap {expected:.4})",
            ours[3]
        );
    }
}
