//! `mm-train data-check`: one full pass over a dataset, every image decoded, counts printed.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use mm_data::{
    Batcher, ClipTokenizer, DataConfig, Paths, SampleErrorKind, SourceKind, TrainTransform,
};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

#[derive(Args, Debug)]
pub struct DataCheckArgs {
    /// WebDataset shard patterns (`data/{00000..00009}.tar`, globs), a .csv/.tsv file, or an
    /// image folder. Without paths, the [data] table of --config is checked.
    pub paths: Vec<String>,
    /// A training config whose [data] table to check.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Errors listed per kind.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub examples: u64,
}

/// How dataset paths given on a command line are read (`data-check`, `embed`).
#[derive(Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceArgs {
    /// CSV column with image paths.
    #[arg(long, default_value = "filepath")]
    pub csv_img_key: String,
    /// CSV column with captions.
    #[arg(long, default_value = "title")]
    pub csv_caption_key: String,
    /// CSV separator (default: `,` for .csv, tab otherwise).
    #[arg(long)]
    pub csv_separator: Option<String>,
    /// Images declaring more pixels are skipped unread and counted as too large.
    #[arg(long, default_value_t = mm_data::DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
}

impl SourceArgs {
    /// The [data] table for `paths` (see [`infer_source`]).
    pub fn data_config(&self, paths: &[String]) -> DataConfig {
        infer_source(
            paths,
            &self.csv_img_key,
            &self.csv_caption_key,
            self.csv_separator.clone(),
            self.max_image_pixels,
        )
    }
}

/// The [data] table the arguments describe: the config's, or one inferred from the paths.
fn data_config(args: &DataCheckArgs) -> Result<(DataConfig, usize)> {
    if args.paths.is_empty() {
        let Some(config) = &args.config else {
            bail!("give dataset paths or --config");
        };
        let config = TrainConfig::load(config)?;
        let image_size = match &config.model {
            Some(spec) => spec.resolve()?.vision.image_size,
            None => 224,
        };
        return Ok((config.data, image_size));
    }
    Ok((args.source.data_config(&args.paths), 224))
}

/// The [data] table for paths given on a command line: one folder is an image folder, a .csv
/// (`,`) or .tsv (tab) file a CSV source, anything else WebDataset shard patterns.
pub fn infer_source(
    paths: &[String],
    csv_img_key: &str,
    csv_caption_key: &str,
    csv_separator: Option<String>,
    max_image_pixels: u64,
) -> DataConfig {
    let first = Path::new(&paths[0]);
    let ext = first
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let source = if paths.len() == 1 && first.is_dir() {
        SourceKind::Folder
    } else if ext == "csv" || ext == "tsv" {
        SourceKind::Csv
    } else {
        SourceKind::Webdataset
    };
    DataConfig {
        source,
        path: Some(Paths::Many(paths.to_vec())),
        csv_img_key: csv_img_key.into(),
        csv_caption_key: csv_caption_key.into(),
        csv_separator,
        max_image_pixels,
        shuffle_buffer: 0,
        ..DataConfig::default()
    }
}

pub fn run(args: &DataCheckArgs) -> Result<()> {
    let (config, image_size) = data_config(args)?;
    if let Err((key, message)) = config.check() {
        bail!("key `{key}`: {message}");
    }
    let mut source = config.open_epoch(0, 0, image_size)?;
    if config.source == SourceKind::Shapes {
        bail!("the built-in shapes data is endless and generated: nothing to check");
    }
    let batcher = Batcher::new(ClipTokenizer::openai(), image_size, 77)
        .with_transform(TrainTransform::CenterCrop, 0)
        .with_image_limits(config.image_limits());
    println!("{}", source.describe());
    let report = batcher.scan(source.as_mut(), args.examples as usize);
    let skipped = report.skipped.total();
    println!("  usable samples   {:>9}", report.good);
    println!("  skipped          {skipped:>9}");
    for kind in SampleErrorKind::ALL {
        let count = report.skipped.count(kind);
        println!("    {:<16} {count:>7}", kind.name());
        for example in report.skipped.examples(kind) {
            println!("      {}: {}", example.location, example.message);
        }
    }
    if report.good == 0 {
        bail!("no usable samples");
    }
    Ok(())
}
