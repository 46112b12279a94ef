//! The `mm-train` command line.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::module::Module;
use clap::{Args, Parser, Subcommand};

use crate::checkpoint;
use crate::config::{Overrides, TrainConfig};
use crate::device::DeviceArg;
use crate::precision::Precision;
use crate::zero_shot::ZeroShotClassifier;

#[derive(Parser, Debug)]
#[command(
    name = "mm-train",
    version,
    about = "Train CLIP models and run them zero-shot"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Training options (training is the default action).
    #[command(flatten)]
    pub train: TrainArgs,
}

impl Cli {
    /// The command line, with `--version` also saying which kernels this CPU gets; refuses an
    /// `MM_MAX_ISA` that names no kernel build.
    pub fn parse_with_kernels() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        // clap takes a &'static str; the line is made once per process.
        let version = format!(
            "{}\n{}",
            env!("CARGO_PKG_VERSION"),
            mm_kernels::isa::describe()
        );
        let mut command = Cli::command().version(&*version.leak());
        if let Err(error) = mm_kernels::isa::check_cap() {
            command
                .error(clap::error::ErrorKind::InvalidValue, error)
                .exit();
        }
        let matches = command.get_matches_mut();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.format(&mut command).exit())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (the default action).
    Train(TrainArgs),
    /// Classify images into free-text classes with a checkpoint (mm or Hugging Face).
    ZeroShot(ZeroShotArgs),
    /// Convert a Hugging Face CLIP directory into an mm checkpoint.
    ImportHf(ImportHfArgs),
    /// Write an mm checkpoint as a Hugging Face CLIP directory.
    ExportHf(ExportHfArgs),
    /// Read a dataset once, decoding every image, and count what is usable.
    DataCheck(crate::data_check::DataCheckArgs),
    /// Embeddings of every image (and/or caption) of a folder, CSV file or shard set, written
    /// as safetensors or .npy with their keys; resumable.
    Embed(crate::embed::EmbedArgs),
    /// Zero-shot, retrieval and linear-probe evaluation of a checkpoint; writes eval.json.
    Eval(EvalArgs),
    /// Render RUN_DIR/report.html: training curves, eval results, a retrieval gallery.
    Report(ReportArgs),
    /// Class probabilities of (image, text) inputs from a fusion classifier's checkpoint.
    Predict(crate::predict::PredictArgs),
    /// k-fold cross-validation of a classify config: a run per fold, mean ± std of its metrics.
    Cv(crate::cv::CvArgs),
    /// Describe images with a CoCa checkpoint, or continue a prompt about each (VQA).
    Caption(crate::caption::CaptionArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run directory (with metrics.jsonl and checkpoints/).
    pub run_dir: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// An mm checkpoint, a run directory (its latest checkpoint), or an HF CLIP directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A folder per class to classify (default: the built-in held-out shapes).
    #[arg(long, conflicts_with = "labels_csv")]
    pub folder: Option<PathBuf>,
    /// A CSV/TSV of labelled images to classify (columns --csv-img-key, --csv-label-key).
    #[arg(long)]
    pub labels_csv: Option<PathBuf>,
    /// Image-caption pairs for retrieval: shard patterns, a .csv/.tsv, or a folder with .txt
    /// captions (default: the built-in held-out pairs, when classifying the built-in set).
    #[arg(long, num_args = 1..)]
    pub pairs: Vec<String>,
    /// CSV column with image paths (--labels-csv, --pairs).
    #[arg(long, default_value = "filepath")]
    pub csv_img_key: String,
    /// Class names, one per line: names of the --folder class folders in sorted order, or
    /// what --labels-csv labels are (names in it or 0-based indices into it).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// CSV column with labels (--labels-csv).
    #[arg(long, default_value = "label")]
    pub csv_label_key: String,
    /// CSV column with captions (--pairs).
    #[arg(long, default_value = "title")]
    pub csv_caption_key: String,
    /// CSV separator (default: `,` for .csv, tab otherwise).
    #[arg(long)]
    pub csv_separator: Option<String>,
    /// Held-out images of the built-in data (also the probe's training-set size), or the
    /// retrieval pairs read from --pairs.
    #[arg(long, default_value_t = 960, value_parser = clap::value_parser!(u64).range(1..=crate::suite::MAX_SUITE_SAMPLES as u64))]
    pub samples: u64,
    /// Seed of the built-in data (default: the checkpoint's run seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompt template(s), ensembled (default: the run's eval templates).
    #[arg(long = "template")]
    pub templates: Vec<String>,
    /// Where to write the JSON report (default: eval.json in an mm checkpoint's directory;
    /// nothing is written into an HF or open_clip directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A CoCa's captions: beam width (1: greedy decoding).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=crate::captioner::MAX_BEAMS as u64))]
    pub beams: u64,
    /// A CoCa's captions: beam search scores a text by log p / length^this.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// Compute in fp32, or bf16 (bf16 GEMMs with f32 sums on Flex; a bf16 copy of the model
    /// on GPUs).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct ImportHfArgs {
    /// An HF CLIP directory: config.json, model.safetensors, tokenizer.json (or vocab.json +
    /// merges.txt), and optionally preprocessor_config.json.
    pub dir: PathBuf,
    /// The checkpoint directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct ExportHfArgs {
    /// An mm checkpoint directory, or a run directory (its latest checkpoint is used).
    pub checkpoint: PathBuf,
    /// The HF directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// Config file; a bare name is also looked up in `configs/`.
    #[arg(long, default_value = "configs/tiny_shapes.toml")]
    pub config: PathBuf,
    /// Override `train.steps`.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override `train.batch_size`.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override `optim.lr`.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Override `output_dir`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Override `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override `device` (flex, wgpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
    /// Set any config key, e.g. `--set objective=siglip --set train.accum_freq=4` (repeat;
    /// dotted keys name tables; values are TOML, or else strings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Continue the run from a checkpoint: `latest` (the output_dir's newest good one), a run
    /// directory, or a checkpoint directory.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar (log lines go to stderr instead).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct ZeroShotArgs {
    /// An mm checkpoint, a run directory (its latest checkpoint), or an HF CLIP directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Comma-separated class names, e.g. "red circle,blue square".
    #[arg(long, required_unless_present = "classes_file")]
    pub classes: Option<String>,
    /// A file with one class name per line.
    #[arg(long, conflicts_with = "classes")]
    pub classes_file: Option<PathBuf>,
    /// Prompt template(s); `{}` is replaced by the class name. Repeat to ensemble.
    #[arg(long = "template")]
    pub templates: Vec<String>,
    /// Classes printed per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    /// Compute in fp32, or bf16 (bf16 GEMMs with f32 sums on Flex; a bf16 copy of the model
    /// on GPUs).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Images to classify (any format the `image` crate reads).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Train(args)) => run_train(args),
        Some(Command::ZeroShot(args)) => run_zero_shot(args),
        Some(Command::Predict(args)) => crate::predict::run(args),
        Some(Command::Caption(args)) => crate::caption::run(args),
        Some(Command::Cv(args)) => crate::cv::run(args).map(|_| ()),
        Some(Command::ImportHf(args)) => {
            let ckpt = crate::hf::import(&args.dir, &args.out, &args.device.device()?)?;
            println!(
                "imported {} ({} parameters) into {}",
                args.dir.display(),
                ckpt.model.num_params(),
                args.out.display()
            );
            Ok(())
        }
        Some(Command::DataCheck(args)) => crate::data_check::run(&args),
        Some(Command::Embed(args)) => crate::embed::run(&args),
        Some(Command::Eval(args)) => run_eval(args),
        Some(Command::Report(args)) => {
            let (path, skipped) =
                crate::report::write_report(&args.run_dir, &args.device.device()?)?;
            for note in skipped {
                eprintln!("warning: {note}");
            }
            println!("wrote {}", path.display());
            Ok(())
        }
        Some(Command::ExportHf(args)) => {
            let ckpt = crate::hf::export(&args.checkpoint, &args.out, &args.device.device()?)?;
            println!("exported {} to {}", ckpt.dir.display(), args.out.display());
            Ok(())
        }
        None => run_train(cli.train),
    }
}

fn run_train(args: TrainArgs) -> Result<()> {
    let mut config = TrainConfig::load_with(&args.config, &args.settings)?;
    config.apply(&Overrides {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        output_dir: args.output_dir,
        seed: args.seed,
        device: args.device,
    });
    config.validate(&format!(
        "{} (with command-line overrides)",
        args.config.display()
    ))?;
    let show_progress = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let resume = args.resume.map(|r| {
        if r.as_os_str() == "latest" {
            config.output_dir.clone()
        } else {
            r
        }
    });
    let comm = crate::launch::communicator(std::time::Duration::from_secs(
        config.train.collective_timeout_s,
    ))?;
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 1 {
        crate::run::train_from(&config, show_progress, resume.as_deref())?;
        return Ok(());
    }
    config.device = crate::launch::rank_device(&config.device, crate::launch::local_rank(), world);
    if let Some(threads) = crate::launch::share_cores()
        && rank == 0
    {
        eprintln!(
            "{world} ranks: {threads} compute thread(s) each on a shared machine (set RAYON_NUM_THREADS to choose)"
        );
    }
    if let Err(error) =
        crate::run::train_ranks(&config, show_progress, resume.as_deref(), comm.clone())
    {
        // The other ranks would wait for this one in their next collective: stop them all.
        eprintln!("error: rank {rank} of {world}: {error:#}; stopping every rank");
        comm.abort(1);
    }
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let device = args.device.device()?;
    let mut ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let _precision = ckpt.enter_inference(args.precision, &device);
    // An mm checkpoint keeps its report beside it; a directory mm did not write (HF,
    // open_clip) is the user's, and gets nothing written into it.
    let out = args.out.clone().or_else(|| {
        ckpt.state
            .imported_from
            .is_none()
            .then(|| ckpt.dir.join("eval.json"))
    });
    // Without a set named here, a run that configured eval suites (or trained on other data
    // than the built-in set) is measured by its own suites, never by the built-in task.
    let named = args.folder.is_some() || args.labels_csv.is_some() || !args.pairs.is_empty();
    let default_shapes = |c: &TrainConfig| {
        c.eval.suites.is_empty()
            && c.data.source == mm_data::SourceKind::Shapes
            && c.data.shapes_task == mm_data::ShapesTask::Pairs
    };
    if let Some(config) = ckpt
        .train_config
        .as_ref()
        .filter(|c| !named && !default_shapes(c))
    {
        let suites = crate::suite::RunSuites::load(
            &config.eval,
            (&config.data, config.objective),
            config.seed,
            ckpt.model_config.vision.image_size,
        )?;
        let classifier = crate::checkpoint::load_fusion(&ckpt.dir, ckpt.model.clone(), &device)?;
        let captioner = ckpt.captioner();
        let measuring = crate::suite::Measuring {
            model: &ckpt.model,
            classifier: classifier.as_ref(),
            captioner: captioner.as_ref(),
            tokenizer: &ckpt.tokenizer,
            context_length: ckpt.model_config.text.context_length,
            objective: config.objective,
            loss_batch: config.train.contrastive_batch() * ckpt.state.world_size.unwrap_or(1),
        };
        let report =
            crate::suite::SuitesReport::measure(&ckpt.dir, ckpt.state.step, &suites, &measuring)?;
        print!("{}", report.table());
        return write_report(&report, out.as_deref(), &ckpt.dir);
    }
    let templates = if args.templates.is_empty() {
        ckpt.templates()
    } else {
        args.templates.clone()
    };
    let seed = args
        .seed
        .or(ckpt.train_config.as_ref().map(|c| c.seed))
        .unwrap_or(0);
    let separator = |path: &Path| {
        mm_data::csv_separator(args.csv_separator.as_deref(), path)
            .map_err(|e| anyhow::anyhow!("--csv-separator {e}"))
    };
    let limit = crate::suite::MAX_SUITE_SAMPLES;
    let classes = args
        .classes
        .as_deref()
        .map(crate::eval::LabelledImages::read_class_names)
        .transpose()?;
    let data = match (&args.folder, &args.labels_csv) {
        (Some(folder), _) => {
            let set = crate::eval::LabelledImages::from_folder(folder, limit)?;
            crate::eval::EvalData::Labelled {
                set: match classes {
                    Some(names) => set.renamed(names)?,
                    None => set,
                },
                name: folder.display().to_string(),
            }
        }
        (None, Some(csv)) => {
            let columns = mm_data::CsvColumns {
                image: args.csv_img_key.clone(),
                caption: args.csv_label_key.clone(),
                label: None,
                separator: separator(csv)?,
            };
            crate::eval::EvalData::Labelled {
                set: crate::eval::LabelledImages::from_csv(csv, &columns, classes, limit)?,
                name: csv.display().to_string(),
            }
        }
        (None, None) => {
            // Held-out and probe-training images are generated and kept decoded.
            let image = 3 * (ckpt.model_config.vision.image_size as u64).pow(2);
            crate::memory::check_fits(
                2 * args.samples * image,
                &format!("evaluating on {} built-in images", args.samples),
            )
            .map_err(anyhow::Error::msg)?;
            // Drawn as the run's own held-out pictures were.
            let placement = ckpt
                .train_config
                .as_ref()
                .map_or_else(Default::default, |c| c.data.shapes_placement);
            crate::eval::EvalData::Shapes {
                seed,
                samples: args.samples as usize,
                placement,
            }
        }
    };
    let pairs = if args.pairs.is_empty() {
        None
    } else {
        let config = crate::data_check::infer_source(
            &args.pairs,
            &args.csv_img_key,
            &args.csv_caption_key,
            args.csv_separator.clone(),
            mm_data::DEFAULT_MAX_IMAGE_PIXELS,
        );
        if let Err((key, message)) = config.check() {
            bail!("--pairs: {key}: {message}");
        }
        Some(crate::eval::PairedSet::from_source(
            &config,
            args.samples as usize,
            ckpt.model_config.vision.image_size,
        )?)
    };
    let decoding = (args.beams as usize, args.length_penalty);
    let report = crate::eval::evaluate(&ckpt, data, pairs, &templates, decoding, &device)?;
    print!("{}", report.table());
    write_report(&report, out.as_deref(), &ckpt.dir)
}

/// Writes `mm-train eval`'s JSON report to `out`, or says why it was not written.
fn write_report(
    report: &impl serde::Serialize,
    out: Option<&Path>,
    checkpoint: &Path,
) -> Result<()> {
    let Some(out) = out else {
        println!(
            "\nnot written: {} is not an mm checkpoint, so nothing is written into it (--out FILE saves the report)",
            checkpoint.display()
        );
        return Ok(());
    };
    let json = serde_json::to_string_pretty(report)? + "\n";
    checkpoint::write_file_atomically(out, json.as_bytes())?;
    println!("\nwrote {}", out.display());
    Ok(())
}

fn class_list(args: &ZeroShotArgs) -> Result<Vec<String>> {
    let classes = match (&args.classes, &args.classes_file) {
        (Some(classes), _) => crate::eval::class_names(&classes.replace(',', "\n")),
        (None, Some(path)) => crate::eval::LabelledImages::read_class_names(path)?,
        (None, None) => Vec::new(),
    };
    if classes.is_empty() {
        bail!(
            "the class list is empty: give --classes \"a,b,...\" or a --classes-file with one class per line"
        );
    }
    Ok(classes)
}

fn run_zero_shot(args: ZeroShotArgs) -> Result<()> {
    let classes = class_list(&args)?;
    let device = args.device.device()?;
    let mut ckpt = checkpoint::load(&args.checkpoint, &device)?;
    let _precision = ckpt.enter_inference(args.precision, &device);
    let templates = if args.templates.is_empty() {
        ckpt.templates()
    } else {
        args.templates.clone()
    };
    let context_length = ckpt.model_config.text.context_length;
    let classifier = ZeroShotClassifier::new(
        &ckpt.model,
        &ckpt.tokenizer,
        &classes,
        &templates,
        context_length,
    )?;
    crate::predict::print_top_classes(
        &args.images,
        (ckpt.model_config.vision.image_size, &device),
        &classes,
        args.top_k as usize,
        &format!("{}: the model", ckpt.dir.display()),
        |_, pixels| Ok(classifier.probabilities(&ckpt.model, pixels)),
        |_, path| path.display().to_string(),
    )
}
