//! Hostile input, through the release binary: every case must end promptly with a one-line
//! error naming the key, file or sample (or skip and count the sample), never panic, hang or
//! exhaust memory, and never write outside its run directory or lose a checkpoint.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run of the binary did.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// Exit 1 with exactly one `error: ...` line on stderr that contains every needle.
    fn assert_error(&self, needles: &[&str]) {
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert_eq!(
            self.code, 1,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{}", self.stderr);
        for needle in needles {
            assert!(
                errors[0].contains(needle),
                "{needle:?} not in {}",
                errors[0]
            );
        }
    }

    fn assert_ok(&self) {
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
    }
}

/// Runs `mm-train ARGS` in `cwd`, killing it (and failing the test) if it outlives `limit`.
fn run_in(cwd: &Path, args: &[&str], limit: Duration) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mm-train {args:?} hung for {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const LIMIT: Duration = Duration::from_secs(120);

/// A scratch directory that a case runs in; `finish` checks that the case wrote nothing
/// but its run directory (`run/`).
struct Scratch {
    dir: tempfile::TempDir,
    before: Vec<String>,
}

impl Scratch {
    /// `files` are created before the listing that `finish` compares against.
    fn new(files: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let before = Self::listing(dir.path());
        Self { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A config file `name` holding the tiny test config (run dir `run`), edited by `edit`.
    fn config(&self, name: &str, steps: usize, edit: impl Fn(String) -> String) -> String {
        let text = edit(common::tiny_toml(Path::new("run"), steps));
        std::fs::write(self.path().join(name), text).unwrap();
        name.to_string()
    }

    fn run(&self, args: &[&str]) -> Outcome {
        run_in(self.path(), args, LIMIT)
    }

    /// Nothing appeared beside the inputs except the run directory.
    fn finish(self) {
        let after = Self::listing(self.path());
        let extra: Vec<&String> = after
            .iter()
            // Configs the case wrote are inputs too.
            .filter(|n| !self.before.contains(n) && n.as_str() != "run" && !n.ends_with(".toml"))
            .collect();
        assert!(
            extra.is_empty(),
            "written outside the run directory: {extra:?}"
        );
    }
}

/// A config file name, an edit of the tiny config, and what the error must say.
type ConfigCase = (&'static str, fn(String) -> String, &'static [&'static str]);

/// Each case's config is refused promptly, with an error naming the file and what the case
/// says, before a run directory exists.
fn assert_refused(s: &Scratch, cases: impl IntoIterator<Item = ConfigCase>) {
    for (name, edit, needles) in cases {
        let config = s.config(name, 3, edit);
        let start = Instant::now();
        let out = s.run(&["--config", &config]);
        out.assert_error(&[needles, &[name]].concat());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name}: {:?}",
            start.elapsed()
        );
        assert!(!s.path().join("run").exists(), "{name}: a run directory");
    }
}

/// `key = value` lines set in a table of the tiny config.
fn set(text: String, table: &str, lines: &str) -> String {
    text.replacen(&format!("[{table}]"), &format!("[{table}]\n{lines}"), 1)
}

/// Replaces `from` (which must be there) in the config text.
fn replace(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the config");
    text.replacen(from, to, 1)
}

fn write_png(path: &Path, seed: u64) {
    mm_data::ShapesDataset::new(seed, 24)
        .sample(mm_data::Split::Train, 0)
        .image
        .save(path)
        .unwrap();
}

/// A CSV `data.csv` (comma-separated) of `rows` (image path, caption), and its [data] keys.
fn csv(dir: &Path, rows: &[(&str, &str)]) {
    let mut text = String::from("filepath,title\n");
    for (image, caption) in rows {
        text += &format!("{image},{caption}\n");
    }
    std::fs::write(dir.join("data.csv"), text).unwrap();
}

fn csv_data(text: String) -> String {
    set(
        text,
        "data",
        "source = \"csv\"\npath = \"data.csv\"\nshuffle_buffer = 0",
    )
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
}

// ---- Panics: every value that reaches a kernel or a tensor op is validated first ----

#[test]
fn values_that_would_panic_are_config_errors_naming_the_key() {
    let s = Scratch::new(|_| {});
    let cases: [ConfigCase; 6] = [
        (
            "heldout.toml",
            |t| replace(t, "heldout_samples = 48", "heldout_samples = 0"),
            &["eval.heldout_samples", "at least 1"],
        ),
        (
            "mlp.toml",
            |t| replace(t, "intermediate_size = 64", "intermediate_size = 0"),
            &["intermediate_size", "must be positive"],
        ),
        (
            "empty_dir.toml",
            |t| replace(t, "output_dir = \"run\"", "output_dir = \"\""),
            &["output_dir", "empty"],
        ),
        (
            "eps.toml",
            |t| set(t, "model.vision", "layer_norm_eps = -1.0"),
            &["vision.layer_norm_eps"],
        ),
        (
            "vocab.toml",
            |t| {
                replace(
                    t,
                    "vocab_size = 49408",
                    "vocab_size = 1000\neos_token_id = 2",
                )
            },
            &["text.vocab_size", "49408"],
        ),
        (
            "clip.toml",
            |t| replace(t, "grad_clip_norm = 1.0", "grad_clip_norm = inf"),
            &["optim.grad_clip_norm"],
        ),
    ];
    assert_refused(&s, cases);
    // Command-line values are checked by the parser.
    for (args, flag) in [
        (
            &["eval", "--checkpoint", "x", "--samples", "0"][..],
            "--samples",
        ),
        (
            &[
                "zero-shot",
                "--checkpoint",
                "x",
                "--classes",
                "a",
                "--top-k",
                "0",
                "x.png",
            ][..],
            "--top-k",
        ),
    ] {
        let out = s.run(args);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && !out.stderr.contains("panicked"),
            "{}",
            out.stderr
        );
    }
    s.finish();
}

/// The tiny config with `suites` appended after its `[eval]` table (the last one).
fn with_suites(text: String, suites: &str) -> String {
    format!("{text}\n{suites}\n")
}

#[test]
fn eval_suite_mistakes_are_config_errors_naming_the_key() {
    let s = Scratch::new(|_| {});
    let cases: [ConfigCase; 8] = [
        (
            "kind.toml",
            |t| with_suites(t, "[[eval.suites]]\nkind = \"imagenet\"\nname = \"x\""),
            &["eval.suites", "imagenet"],
        ),
        (
            "field.toml",
            |t| with_suites(t, "[[eval.suites]]\nkind = \"shapes\"\nsample = 3"),
            &["eval.suites", "sample"],
        ),
        (
            "twice.toml",
            |t| {
                with_suites(
                    t,
                    "[[eval.suites]]\nkind = \"shapes\"\n[[eval.suites]]\nkind = \"shapes\"",
                )
            },
            &["eval.suites[1].name", "names two suites"],
        ),
        (
            "select.toml",
            |t| set(t, "eval", "select = \"shapes/accuracy\""),
            &["eval.select", "shapes/accuracy", "shapes/top1"],
        ),
        (
            "pairs.toml",
            |t| {
                with_suites(
                    t,
                    "[[eval.suites]]\nkind = \"pairs\"\nname = \"val\"\nsource = \"shapes\"\npath = \"x\"",
                )
            },
            &["eval.suites[0].source", "kind = \"shapes\""],
        ),
        (
            "braces.toml",
            |t| {
                with_suites(
                    t,
                    "[[eval.suites]]\nkind = \"pairs\"\nname = \"val\"\nsource = \"webdataset\"\npath = \"{0..99999999}.tar\"",
                )
            },
            &["eval.suites[0].path"],
        ),
        (
            "template.toml",
            |t| {
                with_suites(
                    t,
                    "[[eval.suites]]\nkind = \"zero_shot\"\nname = \"cls\"\nsource = \"csv\"\npath = \"l.csv\"\ntemplates = [\"a photo\"]",
                )
            },
            &["eval.suites[0].templates", "{}"],
        ),
        (
            "samples.toml",
            |t| with_suites(t, "[[eval.suites]]\nkind = \"shapes\"\nsamples = 0"),
            &["eval.suites[0].samples", "at least 1"],
        ),
    ];
    assert_refused(&s, cases);
    s.finish();
}

#[test]
fn eval_fails_after_the_final_checkpoint_never_before_it() {
    // A run whose last step both checkpoints and evaluates keeps its checkpoint, with the
    // evaluation's accuracy recorded in it.
    let s = Scratch::new(|_| {});
    let config = s.config("run.toml", 4, |t| {
        replace(t, "checkpoint_every = 10", "checkpoint_every = 2")
    });
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.path().join("run/checkpoints/step-000004/state.json")).unwrap(),
    )
    .unwrap();
    assert!(state["eval"]["shapes/top1"].is_number(), "{state}");
    assert_eq!(state["selected_by"], "shapes/top1");

    // Resuming a finished run has nothing to do; a checkpoint past train.steps is refused.
    let out = s.run(&["--config", &config, "--resume", "latest", "--no-progress"]);
    out.assert_ok();
    assert!(
        out.stderr.contains("already finished at step 4"),
        "{}",
        out.stderr
    );
    let out = s.run(&["--config", &config, "--resume", "latest", "--steps", "3"]);
    out.assert_error(&["step 4", "past train.steps = 3"]);
    s.finish();
}

// ---- Hangs ----

#[test]
fn a_stream_with_nothing_usable_ends_with_an_error_naming_it() {
    let s = Scratch::new(|dir| {
        let rows: Vec<(String, String)> = (0..1200)
            .map(|i| (format!("missing/{i}.png"), format!("caption {i}")))
            .collect();
        let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        csv(dir, &rows);
    });
    let config = s.config("run.toml", 3, csv_data);
    let out = s.run(&["--config", &config, "--no-progress"]);
    out.assert_error(&[
        "data.csv",
        "samples in a row were unusable",
        "missing_image",
    ]);

    // The same column for image and caption is caught before reading anything.
    let config = s.config("same.toml", 3, |t| {
        set(csv_data(t), "data", "csv_caption_key = \"filepath\"")
    });
    s.run(&["--config", &config])
        .assert_error(&["data.csv_caption_key", "same column"]);
    s.finish();
}

#[test]
fn fifos_and_devices_are_skipped_or_refused_without_blocking() {
    let s = Scratch::new(|dir| {
        for i in 0..20 {
            write_png(&dir.join(format!("{i}.png")), i);
        }
        mkfifo(&dir.join("x.jpg"));
        let mut rows: Vec<(String, &str)> =
            (0..20).map(|i| (format!("{i}.png"), "a shape")).collect();
        rows.insert(3, ("x.jpg".into(), "a fifo"));
        rows.insert(5, ("/dev/zero".into(), "endless zeros"));
        let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        csv(dir, &rows);
        mkfifo(&dir.join("shard.tar"));
    });
    let config = s.config("run.toml", 2, csv_data);
    let out = s.run(&["--config", &config, "--no-progress"]);
    out.assert_ok();
    assert!(
        out.stderr.contains("x.jpg: not a regular file (a FIFO)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("/dev/zero: not a regular file (a device)"),
        "{}",
        out.stderr
    );

    // A FIFO shard is named for what it is, not "no such file".
    let out = s.run(&["data-check", "shard.tar"]);
    out.assert_error(&["shard.tar", "not a regular file (a FIFO)"]);
    // Thousands of decoding threads are refused.
    let config = s.config("workers.toml", 2, |t| set(t, "data", "workers = 100000"));
    s.run(&["--config", &config])
        .assert_error(&["data.workers", "at most 256"]);
    s.finish();
}

// ---- Unbounded memory ----

#[test]
fn sizes_beyond_any_real_model_or_this_machine_are_refused_before_allocating() {
    let s = Scratch::new(|_| {});
    let cases: [ConfigCase; 6] = [
        (
            "width.toml",
            |t| replace(t, "width = 32", "width = 1000000"),
            &["vision.width", "beyond any real model"],
        ),
        (
            "image.toml",
            |t| replace(t, "image_size = 16", "image_size = 1048576"),
            &["vision.image_size", "beyond any real model"],
        ),
        (
            // Within every per-key cap, but 3.3 billion parameters: more than this machine.
            "memory.toml",
            |t| {
                let t = replace(t, "width = 32", "width = 4096");
                let t = replace(t, "layers = 1", "layers = 48");
                replace(t, "heads = 2", "heads = 32")
            },
            &["model", "parameters", "GiB of memory"],
        ),
        (
            "shuffle.toml",
            |t| set(t, "data", "shuffle_buffer = 1000000000000"),
            &["data.shuffle_buffer", "at most"],
        ),
        (
            "prefetch.toml",
            |t| replace(t, "[data]", "[data]\nprefetch = 1000000000"),
            &["data.prefetch", "at most"],
        ),
        (
            "shards.toml",
            |t| {
                set(
                    t,
                    "data",
                    "source = \"webdataset\"\npath = \"s/{0..999999999}.tar\"",
                )
            },
            &["data.path", "expands to more than 1000000 paths"],
        ),
    ];
    assert_refused(&s, cases);
    s.finish();
}

#[test]
fn huge_captions_and_files_cost_no_memory() {
    let s = Scratch::new(|dir| {
        for i in 0..16 {
            write_png(&dir.join(format!("{i}.png")), i);
        }
        // A sparse 5 GB "image" and a 20 MB caption.
        let big = std::fs::File::create(dir.join("big.png")).unwrap();
        big.set_len(5 << 30).unwrap();
        let long_caption = "word ".repeat(4 << 20);
        let mut rows: Vec<(String, String)> = (0..16)
            .map(|i| (format!("{i}.png"), "a shape".to_string()))
            .collect();
        rows.insert(2, ("big.png".into(), "too big".into()));
        rows.insert(4, ("3.png".into(), long_caption));
        let endless = std::fs::File::create(dir.join("endless.csv")).unwrap();
        endless.set_len(1 << 30).unwrap();
        let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        csv(dir, &rows);
    });
    let config = s.config("run.toml", 2, csv_data);
    let out = s.run(&["--config", &config, "--no-progress"]);
    out.assert_ok();
    assert!(
        out.stderr.contains("image_too_large") && out.stderr.contains("big.png"),
        "{}",
        out.stderr
    );
    // A CSV that is one endless line (a sparse 1 GB file) is refused after 64 MiB.
    let out = s.run(&["data-check", "endless.csv"]);
    out.assert_error(&["endless.csv", "a row longer than 67108864 bytes"]);
    // The largest child process stayed small (a 20 MB caption tokenised whole takes ~8 GB).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak_mib = usage.ru_maxrss / 1024;
    assert!(peak_mib < 3000, "a child peaked at {peak_mib} MiB");
    s.finish();
}

// ---- Two runs, one directory ----

#[test]
fn a_second_run_into_a_busy_directory_is_refused() {
    let s = Scratch::new(|_| {});
    let config = s.config("run.toml", 100_000, |t| t);
    let mut first = Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args(["--config", &config, "--no-progress"])
        .current_dir(s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = s.path().join("run/.lock");
    let start = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            start.elapsed() < LIMIT,
            "the first run never took its directory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = first.id().to_string();
    let out = s.run(&["--config", &config, "--no-progress"]);
    out.assert_error(&["run is in use by another mm-train run", &pid]);
    let out = s.run(&["--config", &config, "--resume", "latest"]);
    out.assert_error(&["in use by another mm-train run"]);
    first.kill().unwrap();
    first.wait().unwrap();
    // The lock goes with the process: no stale lock blocks the next run in that directory.
    let _ = std::fs::remove_dir_all(s.path().join("run/checkpoints"));
    let config = s.config("short.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    s.finish();
}

#[test]
fn stale_temporary_checkpoints_are_removed_on_start_and_resume() {
    let s = Scratch::new(|_| {});
    let config = s.config("run.toml", 4, |t| {
        replace(t, "checkpoint_every = 10", "checkpoint_every = 2")
    });
    let out = s.run(&["--config", &config, "--steps", "2", "--no-progress"]);
    out.assert_ok();
    // What kill -9 leaves mid-checkpoint: a half-written directory and a half-written `latest`.
    let stale = s.path().join("run/checkpoints/.step-000004.tmp-99999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(s.path().join("run/checkpoints/.latest.tmp"), "step-0000").unwrap();
    let out = s.run(&["--config", &config, "--resume", "latest", "--no-progress"]);
    out.assert_ok();
    assert!(!stale.exists() && !s.path().join("run/checkpoints/.latest.tmp").exists());
    assert!(
        out.stderr.contains(".step-000004.tmp-99999"),
        "{}",
        out.stderr
    );
    s.finish();
}

// ---- Errors that mislead ----

#[test]
fn a_diverging_run_names_the_step_and_keeps_only_good_checkpoints() {
    let s = Scratch::new(|dir| write_png(&dir.join("x.png"), 1));
    // A learning rate of 1e30: the first update blows the weights up, the second step's loss
    // is not finite.
    let config = s.config("run.toml", 5, |t| {
        let t = replace(t, "lr = 3e-3", "lr = 1e30");
        let t = replace(t, "warmup_steps = 2", "warmup_steps = 0");
        replace(t, "checkpoint_every = 10", "checkpoint_every = 1")
    });
    let out = s.run(&["--config", &config, "--no-progress"]);
    out.assert_error(&[
        "step 2: the loss is",
        "diverged-step-000001",
        "no checkpoint with a finite loss exists",
    ]);
    let checkpoints = s.path().join("run/checkpoints");
    assert!(checkpoints.join("diverged-step-000001").is_dir());
    assert!(!checkpoints.join("step-000001").exists());
    assert!(!checkpoints.join("latest").exists());
    // The diverged weights (finite, ~1e30) give NaN scores: an error, not `NaN%`.
    let out = s.run(&[
        "zero-shot",
        "--checkpoint",
        "run/checkpoints/diverged-step-000001",
        "--classes",
        "a,b",
        "x.png",
    ]);
    out.assert_error(&["NaN or infinite scores"]);
    // Weights that are NaN themselves are refused when loaded, naming the tensor.
    let diverged = checkpoints.join("diverged-step-000001/model.safetensors");
    let bytes = std::fs::read(&diverged).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let nan: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let n = view.data().len() / 4;
            let bytes = std::iter::repeat_n(f32::NAN.to_le_bytes(), n)
                .flatten()
                .collect();
            (name, bytes, view.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = nan
        .iter()
        .map(|(name, bytes, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes);
            (name.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &diverged).unwrap();
    let out = s.run(&[
        "zero-shot",
        "--checkpoint",
        "run/checkpoints/diverged-step-000001",
        "--classes",
        "a,b",
        "x.png",
    ]);
    out.assert_error(&["model.safetensors", "holds NaN or infinite values"]);
    s.finish();
}

#[test]
fn a_broken_latest_pointer_is_refused_not_followed() {
    let s = Scratch::new(|dir| write_png(&dir.join("x.png"), 1));
    let config = s.config("run.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let latest = s.path().join("run/checkpoints/latest");
    for (content, needle) in [
        ("../../../etc", "not a checkpoint of this run"),
        ("step-000900", "not a complete checkpoint"),
    ] {
        std::fs::write(&latest, content).unwrap();
        let out = s.run(&[
            "zero-shot",
            "--checkpoint",
            "run",
            "--classes",
            "a,b",
            "x.png",
        ]);
        out.assert_error(&["checkpoints/latest", needle]);
    }
    std::fs::remove_file(&latest).unwrap();
    mkfifo(&latest);
    let out = s.run(&[
        "zero-shot",
        "--checkpoint",
        "run",
        "--classes",
        "a,b",
        "x.png",
    ]);
    out.assert_error(&["latest", "a FIFO"]);
    s.finish();
}

/// A tar of `members` (name, bytes), with `declared` overriding one member's header size.
fn tar_bytes(members: &[(&str, Vec<u8>)], declared: Option<(&str, u64)>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_path(name).unwrap();
        if let Some((big, size)) = declared
            && big == *name
        {
            header.set_size(size);
        }
        header.set_cksum();
        builder.append(&header, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn png_bytes(seed: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let image = mm_data::ShapesDataset::new(seed, 24)
        .sample(mm_data::Split::Train, 0)
        .image;
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

#[test]
fn bad_shards_and_images_are_counted_by_what_is_wrong() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let s = Scratch::new(|dir| {
        // A gzip-compressed copy of a shipped shard.
        let tar = std::fs::read(repo.join("assets/shards/shapes-00000.tar")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        std::fs::write(dir.join("a.tar.gz"), gz.finish().unwrap()).unwrap();
        // A shard whose second member declares 8 GB.
        let members = [
            ("0.png", png_bytes(0)),
            ("0.txt", b"a shape".to_vec()),
            ("1.png", png_bytes(1)),
            ("1.txt", b"another".to_vec()),
        ];
        std::fs::write(
            dir.join("huge.tar"),
            tar_bytes(&members, Some(("1.png", 8 << 30))),
        )
        .unwrap();
        // A JPEG cut to a third, beside a whole one.
        let mut jpeg = Vec::new();
        mm_data::ShapesDataset::new(1, 64)
            .sample(mm_data::Split::Train, 0)
            .image
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        std::fs::create_dir(dir.join("pics")).unwrap();
        std::fs::write(dir.join("pics/whole.jpg"), &jpeg).unwrap();
        std::fs::write(dir.join("pics/whole.txt"), "whole").unwrap();
        std::fs::write(dir.join("pics/cut.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
        std::fs::write(dir.join("pics/cut.txt"), "cut").unwrap();
    });
    let out = s.run(&["data-check", "a.tar.gz"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("usable samples         100"),
        "{}",
        out.stdout
    );

    let out = s.run(&["data-check", "huge.tar"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("usable samples           1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("huge.tar:1: tar member 1.png declares 8589934592 bytes"),
        "{}",
        out.stdout
    );

    let out = s.run(&["data-check", "pics"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("usable samples           1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("truncated JPEG"), "{}", out.stdout);
    s.finish();
}

#[test]
fn eval_skips_unreadable_images_by_path_and_reports_nan_checkpoints() {
    let s = Scratch::new(|dir| {
        for class in ["red_circle", "blue_square"] {
            std::fs::create_dir_all(dir.join("set").join(class)).unwrap();
            for i in 0..3 {
                write_png(&dir.join(format!("set/{class}/{i}.png")), i);
            }
        }
        std::fs::write(dir.join("set/red_circle/broken.png"), b"not a png").unwrap();
    });
    let config = s.config("run.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let out = s.run(&[
        "eval",
        "--checkpoint",
        "run",
        "--folder",
        "set",
        "--out",
        "run/eval.json",
    ]);
    out.assert_ok();
    assert!(
        out.stdout.contains("skipped 1 unreadable image"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("set/red_circle/broken.png"),
        "{}",
        out.stdout
    );
    // zero-shot classifies the readable images and fails (exit 1) naming the other.
    let out = s.run(&[
        "zero-shot",
        "--checkpoint",
        "run",
        "--classes",
        "a,b",
        "set/red_circle/0.png",
        "set/red_circle/broken.png",
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout.contains("set/red_circle/0.png"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("broken.png"), "{}", out.stderr);
    s.finish();
}

#[test]
fn report_names_the_line_of_a_bad_metrics_record() {
    let s = Scratch::new(|_| {});
    let config = s.config("run.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let metrics = s.path().join("run/metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    let lines = text.lines().count();
    text += "{\"step\": 3, \"loss\": 1.0\n"; // cut off mid-write
    std::fs::write(&metrics, text).unwrap();
    let out = s.run(&["report", "run"]);
    out.assert_ok();
    let needle = format!("metrics.jsonl line {}: invalid JSON", lines + 1);
    assert!(
        out.stderr.contains(&needle),
        "{needle:?} not in {}",
        out.stderr
    );
    s.finish();
}

// ---- Inconsistencies ----

#[test]
fn a_csv_file_is_comma_separated_for_every_command() {
    let s = Scratch::new(|dir| {
        for i in 0..8 {
            write_png(&dir.join(format!("{i}.png")), i);
        }
        let rows: Vec<(String, &str)> = (0..8).map(|i| (format!("{i}.png"), "a shape")).collect();
        let rows: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), *b)).collect();
        csv(dir, &rows);
    });
    let out = s.run(&["data-check", "data.csv"]);
    out.assert_ok();
    assert!(
        out.stdout.contains("usable samples           8"),
        "{}",
        out.stdout
    );
    let config = s.config("run.toml", 2, csv_data);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    s.finish();
}

#[test]
fn every_command_takes_a_device_and_names_a_bad_one() {
    let s = Scratch::new(|dir| write_png(&dir.join("x.png"), 1));
    let config = s.config("run.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let commands: [&[&str]; 5] = [
        &["eval", "--checkpoint", "run"],
        &[
            "zero-shot",
            "--checkpoint",
            "run",
            "--classes",
            "a,b",
            "x.png",
        ],
        &["report", "run"],
        &["export-hf", "run", "--out", "run/hf"],
        &["import-hf", "run/hf", "--out", "run/back"],
    ];
    for command in commands {
        let bogus = [command, &["--device", "tpu9"]].concat();
        s.run(&bogus).assert_error(&["tpu9"]);
        let flex = [command, &["--device", "flex"]].concat();
        s.run(&flex).assert_ok();
    }
    s.finish();
}

// ---- Classify, CoCa, embed and checkpoints of every kind ----

/// The tiny config as a CoCa run (`common::coca_toml` with run directory `run`).
fn coca(_: String) -> String {
    common::coca_toml(Path::new("run"), 3)
}

#[test]
fn new_sizes_and_nonsense_settings_are_config_errors_naming_the_key() {
    let s = Scratch::new(|_| {});
    let cases: [ConfigCase; 5] = [
        (
            "head.toml",
            |t| format!("objective = \"classify\"\n{t}\n[fusion]\nhead_hidden = 1000000000\n"),
            &["fusion.head_hidden", "65536"],
        ),
        (
            "coca_zero.toml",
            |t| {
                format!(
                    "{}\n[coca]\ncontrastive_loss_weight = 0.0\ncaption_loss_weight = 0.0\n",
                    coca(t)
                )
            },
            &["key `coca`", "both loss weights are 0"],
        ),
        (
            "coca_huge.toml",
            |t| format!("{}\n[coca]\ncaption_loss_weight = 1e30\n", coca(t)),
            &["coca.caption_loss_weight", "10000"],
        ),
        (
            "context.toml",
            |t| replace(t, "context_length = 12", "context_length = 4"),
            &["text.context_length", "at least 8"],
        ),
        (
            "overflow.toml",
            |t| replace(t, "steps = 3", "steps = 18446744073709551615"),
            &["overflow.toml"],
        ),
    ];
    assert_refused(&s, cases);
    // A number beyond TOML's integers on the command line is that number's error.
    let config = s.config("run.toml", 3, |t| t);
    let out = s.run(&[
        "--config",
        &config,
        "--set",
        "train.early_stop_patience=18446744073709551615",
    ]);
    out.assert_error(&["train.early_stop_patience", "not a TOML number"]);
    assert!(!s.path().join("run").exists());
    s.finish();
}

#[test]
fn init_from_a_model_beyond_memory_is_refused_before_anything_is_written() {
    let s = Scratch::new(|_| {});
    let base = s.config("base.toml", 1, |t| t);
    s.run(&["--config", &base, "--no-progress"]).assert_ok();
    std::fs::write(
        s.path().join("big.toml"),
        "output_dir = \"run2\"\ninit_from = \"run\"\n[optim]\nlr = 1e-3\n[train]\nsteps = 2\nbatch_size = 1000000\n",
    )
    .unwrap();
    let out = s.run(&["--config", "big.toml"]);
    out.assert_error(&["init_from = run", "memory"]);
    assert!(!s.path().join("run2").exists(), "a run directory");
    s.finish();
}

#[test]
fn inference_sizes_are_capped_with_errors_naming_them() {
    let s = Scratch::new(|dir| {
        write_png(&dir.join("x.png"), 1);
        let many: Vec<String> = (0..300_000).map(|i| format!("class {i}")).collect();
        std::fs::write(dir.join("many.txt"), many.join("\n")).unwrap();
        let some: Vec<String> = (0..5000).map(|i| format!("class {i}")).collect();
        std::fs::write(dir.join("some.txt"), some.join("\n")).unwrap();
    });
    let config = s.config("run.toml", 1, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let zero_shot = |classes: &str, templates: usize| {
        let mut args: Vec<String> = [
            "zero-shot",
            "--checkpoint",
            "run",
            "--classes-file",
            classes,
        ]
        .map(String::from)
        .to_vec();
        for i in 0..templates {
            args.extend(["--template".into(), format!("picture {i} of {{}}")]);
        }
        args.push("x.png".into());
        s.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    zero_shot("many.txt", 1).assert_error(&["300000 classes", "at most 10000"]);
    zero_shot("some.txt", 200).assert_error(&["1000000 prompts", "at most 100000"]);
    // Beam widths that multiply the rows decoded are refused by the parser.
    for args in [
        &["caption", "--checkpoint", "run", "--beams", "256", "x.png"][..],
        &["eval", "--checkpoint", "run", "--beams", "64"][..],
    ] {
        let out = s.run(args);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.contains("--beams") && out.stderr.contains("16"),
            "{}",
            out.stderr
        );
    }
    s.finish();
}

#[test]
fn a_classifier_with_nothing_to_learn_or_other_classes_is_refused() {
    let s = Scratch::new(|dir| {
        for i in 0..8 {
            write_png(&dir.join(format!("{i}.png")), i);
        }
        let mut text = String::from("filepath,title,label\n");
        for i in 0..8 {
            text += &format!("{i}.png,a shape,{}\n", ["cat", "dog"][i % 2]);
        }
        std::fs::write(dir.join("data.csv"), text).unwrap();
    });
    let classify = |classes: &'static str| {
        move |t: String| {
            let t = csv_data(t);
            format!(
                "objective = \"classify\"\n{t}\n[fusion]\nhead_hidden = 8\nclasses = {classes}\n"
            )
        }
    };
    // No row's label is a class: an error, not a run that learns nothing.
    let none = s.config("none.toml", 3, classify("[\"bird\", \"fish\"]"));
    s.run(&["--config", &none, "--no-progress"])
        .assert_error(&["refused", "is not one of the 2 classes"]);
    std::fs::remove_dir_all(s.path().join("run")).unwrap();
    // A classifier resumes only with the classes it was trained on.
    let first = s.config("first.toml", 2, classify("[\"cat\", \"dog\"]"));
    s.run(&["--config", &first, "--no-progress"]).assert_ok();
    let other = s.config("other.toml", 4, classify("[\"dog\", \"cat\"]"));
    s.run(&["--config", &other, "--no-progress", "--resume", "latest"])
        .assert_error(&["trained on 2 classes", "\"cat\""]);
    s.finish();
}

/// `path`'s safetensors file with `extra` added (name, f32 values).
fn with_extra_tensor(path: &Path, extra: &str) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = file.tensors();
    let one = 1.0f32.to_le_bytes();
    views.push((
        extra.into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &one).unwrap(),
    ));
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// `path`'s safetensors file with its first tensor named twice in the header.
fn with_duplicate_name(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let entries: Vec<String> = header
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
        .collect();
    let first = entries
        .iter()
        .find(|e| !e.starts_with("\"__metadata__\""))
        .unwrap();
    let mut json = format!("{{{},{}}}", entries.join(","), first).into_bytes();
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + length..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn checkpoints_that_do_not_match_their_config_are_refused_naming_the_file() {
    let s = Scratch::new(|dir| write_png(&dir.join("x.png"), 1));
    // Two vision layers, so that a model.toml declaring one is a truncation.
    let config = s.config("run.toml", 1, |t| {
        let t = format!("objective = \"classify\"\n{t}\n[fusion]\nhead_hidden = 8\n");
        replace(t, "layers = 1", "layers = 2")
    });
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let step = s.path().join("run/checkpoints/step-000001");
    let copy = |name: &str| {
        let to = s.path().join(format!("run/{name}"));
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(&step).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
        to
    };
    let zero_shot = |dir: &Path| {
        s.run(&[
            "zero-shot",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--classes",
            "a,b",
            "x.png",
        ])
    };
    let fewer = copy("fewer");
    let text = std::fs::read_to_string(fewer.join("model.toml")).unwrap();
    std::fs::write(
        fewer.join("model.toml"),
        text.replacen("layers = 2", "layers = 1", 1),
    )
    .unwrap();
    zero_shot(&fewer).assert_error(&["model.safetensors", "unexpected tensor", "layers.1"]);
    let twice = copy("twice");
    with_duplicate_name(&twice.join("model.safetensors"));
    zero_shot(&twice).assert_error(&["model.safetensors", "appears twice"]);
    let extra = copy("extra");
    with_extra_tensor(&extra.join("fusion.safetensors"), "head.extra");
    s.run(&[
        "predict",
        "--checkpoint",
        extra.to_str().unwrap(),
        "--text",
        "a",
        "x.png",
    ])
    .assert_error(&["fusion.safetensors", "unexpected tensor `head.extra`"]);
    s.finish();
}

#[test]
fn foreign_directories_get_errors_about_what_is_wrong_and_nothing_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let s = Scratch::new(|dir| {
        write_png(&dir.join("x.png"), 1);
        let hf = dir.join("hf");
        std::fs::create_dir(&hf).unwrap();
        for entry in std::fs::read_dir(repo.join("fixtures/hf/quick_gelu_legacy_eos")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, hf.join(path.file_name().unwrap())).unwrap();
        }
        let empty = dir.join("empty_hf");
        std::fs::create_dir(&empty).unwrap();
        std::fs::copy(
            hf.join("model.safetensors"),
            empty.join("model.safetensors"),
        )
        .unwrap();
        std::fs::write(empty.join("config.json"), "{}").unwrap();
        let oc = dir.join("oc");
        std::fs::create_dir(&oc).unwrap();
        std::fs::write(
            oc.join("open_clip_config.json"),
            "{\"embed_dim\": \"wide\"}",
        )
        .unwrap();
        std::fs::write(oc.join("open_clip_model.safetensors"), b"").unwrap();
        std::fs::create_dir_all(dir.join("fifos/cat")).unwrap();
        for name in ["a", "b"] {
            mkfifo(&dir.join(format!("fifos/cat/{name}.png")));
            std::fs::write(dir.join(format!("fifos/cat/{name}.txt")), "a cat").unwrap();
        }
    });
    let zero_shot = |dir: &str| {
        s.run(&[
            "zero-shot",
            "--checkpoint",
            dir,
            "--classes",
            "a,b",
            "x.png",
        ])
    };
    zero_shot("empty_hf").assert_error(&["config.json", "model_type"]);
    zero_shot("oc").assert_error(&["open_clip_config.json", "embed_dim"]);
    // eval of a directory mm did not write writes nothing into it.
    let before = Scratch::listing(&s.path().join("hf"));
    let out = s.run(&["eval", "--checkpoint", "hf", "--samples", "8"]);
    out.assert_ok();
    assert!(out.stdout.contains("not written"), "{}", out.stdout);
    assert_eq!(Scratch::listing(&s.path().join("hf")), before);
    // A failed import leaves no output, nor the folders above it.
    s.run(&["import-hf", "empty_hf", "--out", "made/up/ckpt"])
        .assert_error(&["model_type"]);
    assert!(!s.path().join("made").exists());
    // Data that is only FIFOs says what was wrong with it.
    let config = s.config("fifo.toml", 2, |t| {
        set(t, "data", "source = \"folder\"\npath = \"fifos\"")
    });
    s.run(&["--config", &config, "--no-progress"])
        .assert_error(&["unusable", "b.png", "a FIFO"]);
    std::fs::remove_dir_all(s.path().join("run")).unwrap();
    // A metrics line that is not even text is skipped, like malformed JSON.
    let config = s.config("run.toml", 2, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    let metrics = s.path().join("run/metrics.jsonl");
    let mut bytes = std::fs::read(&metrics).unwrap();
    bytes.extend(b"\xff\xfe not text\n");
    std::fs::write(&metrics, bytes).unwrap();
    let out = s.run(&["report", "run"]);
    out.assert_ok();
    assert!(
        out.stderr.contains("not UTF-8 text, skipped"),
        "{}",
        out.stderr
    );
    s.finish();
}

#[test]
fn output_piped_into_a_reader_that_stops_early_ends_quietly() {
    let s = Scratch::new(|dir| {
        for i in 0..4 {
            write_png(&dir.join(format!("{i}.png")), i);
        }
    });
    let config = s.config("run.toml", 1, |t| t);
    s.run(&["--config", &config, "--no-progress"]).assert_ok();
    // `mm-train zero-shot ... | head -1`: the reader closes the pipe after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mm-train"))
        .args([
            "zero-shot",
            "--checkpoint",
            "run",
            "--classes",
            "a,b,c",
            "--top-k",
            "3",
        ])
        .args(["0.png", "1.png", "2.png", "3.png"])
        .current_dir(s.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    s.finish();
}

/// An instruction-set cap that names no kernel build is refused by name, with the values it
/// takes; a valid one shows in `--version`.
#[test]
fn an_unknown_isa_cap_is_refused() {
    let run = |cap: &str| {
        Command::new(env!("CARGO_BIN_EXE_mm-train"))
            .arg("--version")
            .env("MM_MAX_ISA", cap)
            .output()
            .unwrap()
    };
    let bad = run("sse9");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("MM_MAX_ISA=\"sse9\"") && stderr.contains("avx2"),
        "{stderr}"
    );
    let good = run("scalar");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success());
    assert!(stdout.contains("kernels: scalar"), "{stdout}");
}
