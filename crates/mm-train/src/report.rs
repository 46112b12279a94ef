//! `mm-train report RUN_DIR`: a self-contained HTML page (inline SVG charts, inline PNG
//! thumbnails) to look at a run instead of reading its logs: loss, learning rate, temperature
//! and throughput curves, the run's eval suites (latest values, headline metric over steps),
//! the latest `eval.json`, and a retrieval gallery on the run's own held-out pairs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use burn::tensor::Device;
use mm_data::{ImageInput, ImageLimits, decode_input};
use plotters::prelude::*;
use serde_json::Value;

use crate::checkpoint;
use crate::eval::{encode_images, encode_texts};
use crate::suite::{RunSuites, Suite};

/// One metric over steps, from metrics.jsonl (`group`: the record's object holding it, as
/// `eval`, or none for top-level training metrics).
fn series(records: &[Value], group: Option<&str>, key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| {
            let holder = group.map_or(r, |g| &r[g]);
            Some((r["step"].as_f64()?, holder[key].as_f64()?))
        })
        .collect()
}

/// A line chart as an SVG string.
fn chart(title: &str, points: &[(f64, f64)], color: &RGBColor) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (460, 240)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (x0, x1) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        // A flat or one-point series still gets a readable axis.
        let pad = ((y1 - y0) * 0.05).max(y1.abs() * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if points.len() < 20 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// A confusion matrix as an SVG heat map: rows the true class, columns the predicted one,
/// shaded by the share of the row, with the counts written in.
fn confusion_svg(names: &[String], confusion: &[Vec<usize>]) -> Result<String> {
    let n = names.len();
    let cell = (480 / n.max(1)).clamp(12, 48) as i32;
    let label = 110;
    let side = label + cell * n as i32 + 10;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (side as u32, side as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let font = ("sans-serif", (cell / 3).clamp(8, 13)).into_font();
        for (t, row) in confusion.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = count as f64 / total;
                let (x, y) = (label + cell * p as i32, label + cell * t as i32);
                let shade = (255.0 * (1.0 - share)) as u8;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    RGBColor(shade, shade, 255).filled(),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                if count > 0 {
                    let color = if share > 0.5 { &WHITE } else { &BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + 3, y + cell / 3),
                        font.clone().color(color),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            root.draw(&Text::new(
                names[t].clone(),
                (4, label + cell * t as i32 + cell / 3),
                font.clone(),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for (p, name) in names.iter().enumerate() {
            root.draw(&Text::new(
                name.clone(),
                (label + cell * p as i32 + cell / 3, label - 4),
                font.clone().transform(FontTransform::Rotate270),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// Classes beyond which a confusion matrix is no longer readable (nor small: its cells grow
/// with the square of the classes).
const MAX_CONFUSION_CLASSES: usize = 64;

/// For a classifier's run: each task suite's accuracy, macro-F1, per-class F1 and confusion
/// matrix at the latest checkpoint.
fn classifier_section(
    ckpt: &crate::Checkpoint,
    classifier: &mm_encoders::FusionClassifier,
    suites: &[Suite],
) -> Result<String> {
    let mut html = String::new();
    let names = &classifier.fusion.config.class_names;
    for suite in suites {
        let Some(set) = suite.labelled_pairs() else {
            continue;
        };
        let (truth, predicted, skipped) = set.predict(
            classifier,
            &ckpt.tokenizer,
            ckpt.model_config.text.context_length,
            ckpt.model_config.vision.image_size,
        )?;
        let scores = crate::classify::ClassMetrics::new(&truth, &predicted, names.len());
        let _ = write!(
            html,
            "<h2>Classifier: suite <code>{}</code></h2><p>{}: accuracy {:.1}%, macro-F1 {:.3} on {} pairs ({skipped} skipped). Rows: true class; columns: predicted.</p>",
            escape(&suite.name),
            escape(&set.name),
            100.0 * scores.accuracy,
            scores.macro_f1,
            truth.len()
        );
        if names.len() <= MAX_CONFUSION_CLASSES {
            html += &confusion_svg(names, &scores.confusion_matrix())?;
        } else {
            let _ = write!(
                html,
                "<p>(No confusion matrix: {} classes, at most {MAX_CONFUSION_CLASSES} are drawn.)</p>",
                names.len()
            );
        }
        html += "<table><tr><th>class</th><th>F1</th><th>pairs</th></tr>";
        for (c, name) in names.iter().enumerate() {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
                escape(name),
                scores.per_class_f1[c],
                scores.support[c]
            );
        }
        html += "</table>";
    }
    Ok(html)
}

/// Thumbnails fit a square of this many pixels.
const THUMBNAIL: u32 = 96;

/// An image as an inline PNG fitting [`THUMBNAIL`] pixels; small pictures are scaled up by a
/// whole factor with nearest neighbour so that they stay sharp.
fn thumbnail(image: &image::DynamicImage) -> Result<String> {
    let image = image.to_rgb8();
    let side = image.width().max(image.height()).max(1);
    let (width, height, filter) = if side < THUMBNAIL {
        let zoom = THUMBNAIL / side;
        let filter = image::imageops::FilterType::Nearest;
        (image.width() * zoom, image.height() * zoom, filter)
    } else {
        let fit = |d: u32| ((d as u64 * THUMBNAIL as u64 / side as u64) as u32).max(1);
        let filter = image::imageops::FilterType::Triangle;
        (fit(image.width()), fit(image.height()), filter)
    };
    let big = image::imageops::resize(&image, width, height, filter);
    let mut png = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(format!(
        "<img src=\"data:image/png;base64,{}\" width=\"{}\">",
        base64::engine::general_purpose::STANDARD.encode(png),
        big.width()
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Retrieval among the first `n` held-out pairs of `suite`: a few images with their top-3
/// captions, and a few captions with their top-3 images. The true match is marked.
fn gallery(ckpt: &crate::Checkpoint, suite: &Suite, n: usize) -> Result<String> {
    let size = ckpt.model_config.vision.image_size;
    let pairs = suite.gallery_pairs(n);
    let inputs: Vec<ImageInput> = pairs.iter().map(|(image, _)| image.clone()).collect();
    let encoded = encode_images(&ckpt.model, &inputs, size)?;
    let captions: Vec<String> =
        encoded.select(&pairs.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
    let pictures: Vec<ImageInput> = encoded.select(&inputs);
    let n = captions.len();
    let texts = encode_texts(
        &ckpt.model,
        &ckpt.tokenizer,
        &captions,
        ckpt.model_config.text.context_length,
    )?;
    let scores = encoded
        .embeddings
        .matmul(texts.transpose())
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let top = |row: Vec<f32>| {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        order.truncate(3);
        order
    };
    let picture = |i: usize| -> Result<String> {
        let location = format!("{} pair {i}", suite.name);
        let image = decode_input(&pictures[i], &location, ImageLimits::default())?;
        thumbnail(&image)
    };
    let mut html = format!(
        "<h2>Retrieval gallery</h2><p>Eval suite <code>{}</code>: {}; among its first {n} pairs; ✔ marks the true match.</p><h3>Image → text</h3><table>",
        escape(&suite.name),
        escape(&suite.description)
    );
    for q in 0..4.min(n) {
        let hits = top(scores[q * n..(q + 1) * n].to_vec());
        let _ = write!(html, "<tr><td>{}</td><td><ol>", picture(q)?);
        for h in hits {
            let mark = if h == q { " ✔" } else { "" };
            let _ = write!(html, "<li>{}{mark}</li>", escape(&captions[h]));
        }
        html += "</ol></td></tr>";
    }
    html += "</table><h3>Text → image</h3><table>";
    for q in (4..7).filter(|&q| q < n) {
        let column: Vec<f32> = (0..n).map(|i| scores[i * n + q]).collect();
        let _ = write!(
            html,
            "<tr><td class=\"query\">{}</td>",
            escape(&captions[q])
        );
        for h in top(column) {
            let mark = if h == q { "✔" } else { "" };
            let _ = write!(html, "<td>{}<br>{mark}</td>", picture(h)?);
        }
        html += "</tr>";
    }
    html += "</table>";
    Ok(html)
}

/// The eval suites' section: each suite's metrics at the last evaluation, and a chart of each
/// suite's headline metric over steps.
/// The first `n` images of a captions or answers suite with what the CoCa says of each
/// (greedy), beside the expected text.
fn caption_gallery(
    ckpt: &crate::Checkpoint,
    coca: &mm_encoders::CocaModel,
    suite: &Suite,
    n: usize,
) -> Result<String> {
    let ctx = ckpt.model_config.text.context_length;
    let tokenizer = &ckpt.tokenizer;
    // Questions too long for the context are left out of the gallery.
    let (examples, prompts): (Vec<_>, Vec<_>) = suite
        .generation_examples(n)
        .into_iter()
        .filter_map(|example| {
            let prompt = example
                .1
                .as_deref()
                .map(mm_data::TextFormat::question_prompt);
            let ids = crate::captioner::prompt_ids(tokenizer, prompt.as_deref(), ctx).ok()?;
            Some((example, ids))
        })
        .unzip();
    let images: Vec<ImageInput> = examples.iter().map(|e| e.0.clone()).collect();
    let generation = crate::captioner::GenerationArgs::beams(1, 1.0).generation(
        tokenizer.eot_id(),
        prompts.iter().map(Vec::len).max().unwrap_or(1),
        ctx,
    )?;
    let described = crate::captioner::describe_images(
        coca,
        tokenizer,
        (&images, ckpt.model_config.vision.image_size),
        &prompts,
        (&generation, ctx),
    )?;
    let mut html = format!(
        "<h2>Caption gallery</h2><p>Eval suite <code>{}</code>: {}; greedy decoding.</p><table><tr><th>image</th>{}<th>generated</th><th>expected</th></tr>",
        escape(&suite.name),
        escape(&suite.description),
        if examples.iter().any(|e| e.1.is_some()) {
            "<th>question</th>"
        } else {
            ""
        }
    );
    for (&i, text) in described.kept.iter().zip(described.outputs.concat()) {
        let (image, question, expected) = &examples[i];
        let image = decode_input(
            image,
            &format!("{} #{i}", suite.name),
            ImageLimits::default(),
        )?;
        let _ = write!(html, "<tr><td>{}</td>", thumbnail(&image)?);
        if let Some(question) = question {
            let _ = write!(html, "<td>{}</td>", escape(question));
        }
        let mark = if text.trim() == expected.trim() {
            " ✔"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<td>{}{mark}</td><td>{}</td></tr>",
            escape(&text),
            escape(expected)
        );
    }
    html += "</table>";
    Ok(html)
}

fn suites_section(
    records: &[Value],
    configs: &[crate::suite::SuiteConfig],
    suites: &[Suite],
    selected: Option<&str>,
) -> Result<String> {
    let mut html = String::from("<h2>Eval suites</h2>");
    if configs.is_empty() {
        html += "<p>This run has no eval suites (<code>[[eval.suites]]</code>).</p>";
        return Ok(html);
    }
    if let Some(metric) = selected {
        let _ = write!(
            html,
            "<p>The best checkpoint is kept by <code>{}</code>.</p>",
            escape(metric)
        );
    }
    let last = records.iter().rev().find(|r| r["eval"].is_object());
    let mut charts = String::from("<div class=\"charts\">");
    for (config, suite) in configs.iter().zip(suites) {
        let name = config.name();
        let _ = write!(
            html,
            "<h3>{}</h3><p>{}</p><table><tr>",
            escape(name),
            escape(&suite.description)
        );
        for metric in config.metrics() {
            let _ = write!(html, "<th>{metric}</th>");
        }
        html += "</tr><tr>";
        for metric in config.metrics() {
            let value = last.and_then(|r| r["eval"][format!("{name}/{metric}")].as_f64());
            let cell = match value {
                None => "–".to_string(),
                Some(v) if metric == "loss" => format!("{v:.4}"),
                Some(v) => format!("{:.1}%", 100.0 * v),
            };
            let _ = write!(html, "<td>{cell}</td>");
        }
        html += "</tr></table>";
        let headline = format!("{name}/{}", config.metrics()[0]);
        let points = series(records, Some("eval"), &headline);
        if !points.is_empty() {
            charts += &chart(&headline, &points, &GREEN)?;
        }
    }
    html += &charts;
    html += "</div>";
    Ok(html)
}

/// The records of a `metrics.jsonl`, and a note per line that is not a JSON object (a run
/// killed mid-write leaves a partial last line; a damaged file may hold bytes that are not
/// even text): such lines are skipped, never fatal.
fn read_metrics(path: &Path) -> Result<(Vec<Value>, Vec<String>)> {
    let bytes = mm_data::regular_file::read_capped(path, MAX_METRICS_BYTES)
        .with_context(|| format!("{}: not a run directory", path.display()))?;
    let (mut records, mut skipped) = (Vec::new(), Vec::new());
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            skipped.push(format!(
                "{} line {}: not UTF-8 text, skipped",
                path.display(),
                i + 1
            ));
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(record) if record.is_object() => records.push(record),
            Ok(_) => skipped.push(format!(
                "{} line {}: not a JSON object",
                path.display(),
                i + 1
            )),
            Err(e) => skipped.push(format!(
                "{} line {}: invalid JSON ({}), skipped",
                path.display(),
                i + 1,
                e.to_string().split(" at line").next().unwrap_or_default()
            )),
        }
    }
    Ok((records, skipped))
}

/// Whether an eval.json is a run's suites (`SuitesReport`) rather than the full evaluation.
fn eval_has_metrics(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| v["metrics"].is_object())
}

/// metrics.jsonl is read whole; a line per logged step is ~200 bytes.
const MAX_METRICS_BYTES: u64 = 1 << 30;

/// Writes `RUN_DIR/report.html` (atomically) and returns its path and a note per skipped
/// metrics line.
pub fn write_report(run_dir: &Path, device: &Device) -> Result<(PathBuf, Vec<String>)> {
    let metrics_path = run_dir.join("metrics.jsonl");
    let (records, skipped) = read_metrics(&metrics_path)?;
    if records.is_empty() {
        bail!("{}: no metrics yet", metrics_path.display());
    }
    let ckpt = checkpoint::load(run_dir, device)?;
    let config = ckpt
        .train_config
        .clone()
        .with_context(|| format!("{}: no training config", ckpt.dir.display()))?;
    let RunSuites {
        configs,
        suites,
        selection,
    } = RunSuites::load(
        &config.eval,
        (&config.data, config.objective),
        config.seed,
        ckpt.model_config.vision.image_size,
    )?;
    let selected = selection.map(|s| s.metric);

    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mm run report</title><style>\
         body{font-family:sans-serif;margin:2em;max-width:1000px} .charts{display:flex;flex-wrap:wrap;gap:8px}\
         table{border-collapse:collapse} td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}\
         td.query{max-width:260px} ol{margin:0}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>Run {}</h1><p>Latest checkpoint: {} (step {}). {} logged steps.</p>",
        escape(&run_dir.display().to_string()),
        escape(&ckpt.dir.display().to_string()),
        ckpt.state.step,
        records.iter().filter(|r| r.get("loss").is_some()).count()
    );
    html += "<h2>Training</h2><div class=\"charts\">";
    for (key, title, color) in [
        ("loss", "loss", BLUE),
        ("lr", "learning rate", RED),
        ("logit_scale", "logit scale (log of 1/temperature)", MAGENTA),
        ("alpha", "fusion weight α of the image side", GREEN),
        ("grad_norm", "gradient norm", CYAN),
        ("samples_per_sec", "samples/s", BLACK),
    ] {
        let points = series(&records, None, key);
        if !points.is_empty() {
            html += &chart(title, &points, &color)?;
        }
    }
    html += "</div>";
    html += &suites_section(&records, &configs, &suites, selected.as_deref())?;
    if let Some(classifier) = crate::checkpoint::load_fusion(&ckpt.dir, ckpt.model.clone(), device)?
    {
        html += &classifier_section(&ckpt, &classifier, &suites)?;
    }

    for note in &skipped {
        let _ = write!(html, "<p><em>{}</em></p>", escape(note));
    }
    match mm_data::regular_file::read_text(&ckpt.dir.join("eval.json")) {
        Ok(eval) if eval_has_metrics(&eval) => {
            let eval: Value = serde_json::from_str(&eval).context("eval.json")?;
            let _ = write!(
                html,
                "<h2>Evaluation (step {})</h2><p>The run's suites, measured by <code>mm-train eval</code>.</p><table><tr><th>metric</th><th>value</th></tr>",
                eval["step"]
            );
            for (name, value) in eval["metrics"].as_object().into_iter().flatten() {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{:.4}</td></tr>",
                    escape(name),
                    value.as_f64().unwrap_or(f64::NAN)
                );
            }
            html += "</table>";
        }
        Ok(eval) => {
            let eval: Value = serde_json::from_str(&eval).context("eval.json")?;
            let pct = |v: &Value| {
                v.as_f64()
                    .map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
            };
            let _ = write!(
                html,
                "<h2>Evaluation (step {})</h2><p>{}</p><table><tr><th>zero-shot top-1</th><th>top-5</th><th>mean per class</th><th>linear probe</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
                eval["step"],
                escape(eval["dataset"].as_str().unwrap_or("")),
                pct(&eval["zero_shot"]["top1"]),
                pct(&eval["zero_shot"]["top5"]),
                pct(&eval["zero_shot"]["mean_per_class"]),
                pct(&eval["linear_probe"]["val_accuracy"]),
            );
            if eval["retrieval"].is_object() {
                html += "<table><tr><th>retrieval</th><th>R@1</th><th>R@5</th><th>R@10</th><th>median rank</th></tr>";
                for (name, key) in [
                    ("image → text", "image_to_text"),
                    ("text → image", "text_to_image"),
                ] {
                    let r = &eval["retrieval"][key];
                    let _ = write!(
                        html,
                        "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        pct(&r["r1"]),
                        pct(&r["r5"]),
                        pct(&r["r10"]),
                        r["median_rank"]
                    );
                }
                html += "</table>";
            }
        }
        Err(_) => {
            html += "<h2>Evaluation</h2><p>No eval.json yet: run <code>mm-train eval --checkpoint RUN_DIR</code>.</p>"
        }
    }
    if let Some(coca) = ckpt.captioner() {
        match suites.iter().find(|s| !s.generation_examples(1).is_empty()) {
            Some(suite) => html += &caption_gallery(&ckpt, &coca, suite, 12)?,
            None => {
                html += "<h2>Caption gallery</h2><p>No eval suite of this run generates text (add a <code>captions</code> or <code>answers</code> suite).</p>"
            }
        }
    }
    match suites.iter().find(|s| !s.gallery_pairs(1).is_empty()) {
        Some(suite) => html += &gallery(&ckpt, suite, 200)?,
        None => {
            html += "<h2>Retrieval gallery</h2><p>No eval suite of this run has image-caption pairs.</p>"
        }
    }
    html += "</body></html>\n";

    let out = run_dir.join("report.html");
    checkpoint::write_file_atomically(&out, html.as_bytes())?;
    Ok((out, skipped))
}
