//! `mm-train cv`: k-fold cross-validation of a classify config: one run per fold, trained on
//! the other folds and measured on its own, then each metric's mean and standard deviation.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::config::TrainConfig;
use crate::suite::{SuiteConfig, TaskSuite};
use crate::task::Objective;

/// Folds a cross-validation may have.
pub const MAX_FOLDS: usize = 100;

#[derive(Args, Debug)]
pub struct CvArgs {
    /// A training config with `objective = "classify"` on a dataset of files.
    #[arg(long)]
    pub config: PathBuf,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Where the folds' runs go (`DIR/fold-1`, ...) and `cv.json` (default: the config's
    /// `output_dir`).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// Each fold's metrics and their mean and standard deviation.
#[derive(Clone, Debug)]
pub struct CvReport {
    /// `(metric, value per fold)`, in the suite's order.
    pub metrics: Vec<(String, Vec<f64>)>,
}

impl CvReport {
    /// Mean and (sample) standard deviation of a metric over the folds.
    pub fn mean_std(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = match values.len() {
            0 | 1 => 0.0,
            _ => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0),
        };
        (mean, var.sqrt())
    }
}

/// The config of fold `index`: trained on the other folds, measured on this one, with the
/// class list of the whole data (so every fold's classifier has the same outputs).
pub fn fold_config(
    config: &TrainConfig,
    classes: &[String],
    index: usize,
    folds: usize,
    root: &std::path::Path,
) -> TrainConfig {
    let mut fold = config.clone();
    fold.output_dir = root.join(format!("fold-{}", index + 1));
    let mut fusion = fold.fusion.clone().unwrap_or_default();
    fusion.classes = classes.to_vec();
    fusion.classes_file = None;
    fold.fusion = Some(fusion);
    let part = |held_out| {
        Some(mm_data::Fold {
            index,
            of: folds,
            held_out,
        })
    };
    fold.data.fold = part(false);
    let mut held_out = fold.data.clone();
    held_out.fold = part(true);
    fold.eval.suites = vec![SuiteConfig::Task(TaskSuite {
        name: "fold".into(),
        samples: None,
        data: Some(held_out),
    })];
    fold.eval.select = None;
    fold
}

pub fn run(args: CvArgs) -> Result<CvReport> {
    let config = TrainConfig::load(&args.config)?;
    if config.objective != Objective::Classify {
        bail!(
            "{}: cross-validation trains classifiers: set objective = \"classify\"",
            args.config.display()
        );
    }
    if config.data.source == mm_data::SourceKind::Shapes {
        bail!(
            "{}: the built-in data is endless (it has its own held-out split): cross-validation splits a dataset of files",
            args.config.display()
        );
    }
    if !(2..=MAX_FOLDS).contains(&args.folds) {
        bail!("--folds {}: between 2 and {MAX_FOLDS}", args.folds);
    }
    let root = args.output_dir.unwrap_or_else(|| config.output_dir.clone());
    let classes = crate::start::class_names(&config)?;
    let mut metrics: Vec<(String, Vec<f64>)> = Vec::new();
    for index in 0..args.folds {
        let fold = fold_config(&config, &classes, index, args.folds, &root);
        fold.validate(&args.config.display().to_string())?;
        eprintln!(
            "fold {} of {}: {}",
            index + 1,
            args.folds,
            fold.output_dir.display()
        );
        let report = crate::run::train(&fold, true)
            .with_context(|| format!("fold {} of {}", index + 1, args.folds))?;
        for (name, value) in report.eval {
            match metrics.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => metrics.push((name, vec![value])),
            }
        }
    }
    let report = CvReport { metrics };
    let mut summary = serde_json::Map::new();
    println!(
        "{}-fold cross-validation ({} classes):",
        args.folds,
        classes.len()
    );
    for (name, values) in &report.metrics {
        let (mean, std) = CvReport::mean_std(values);
        println!("  {name}: {mean:.4} ± {std:.4}  (folds: {values:.4?})");
        summary.insert(
            name.clone(),
            json!({"mean": mean, "std": std, "folds": values}),
        );
    }
    let out = root.join("cv.json");
    let text = serde_json::to_string_pretty(&json!({
        "folds": args.folds,
        "classes": classes,
        "metrics": summary,
    }))? + "\n";
    crate::checkpoint::write_file_atomically(&out, text.as_bytes())?;
    println!("wrote {}", out.display());
    Ok(report)
}
