//! Data-parallel training across real processes on MPI (`cargo test -p mm-train --features
//! mpi --test mpi`; `bash scripts/ensure_mpi.sh` first): the collectives (the test re-runs
//! itself under `mpiexec -n 3`), `mpiexec -n 2` and `-n 4` training to the weights of one
//! process on the global batch, a killed rank stopping the job and the run resuming exactly,
//! and a hung rank stopping every rank after the collective timeout.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mm_contrastive::dist::Communicator;
use mm_train::mpi_comm::MpiCommunicator;

const CHILD: &str = "MM_MPI_TEST_CHILD";

#[test]
fn collectives_agree_across_three_processes() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let out = std::process::Command::new("mpiexec")
        .args(["-n", "3"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "collectives_agree_across_three_processes",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("mpiexec (bash scripts/ensure_mpi.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for rank in 0..3 {
        assert!(
            text.contains(&format!("rank {rank} of 3: collectives ok")),
            "{text}"
        );
    }
}

fn child() {
    let comm =
        MpiCommunicator::init(std::time::Duration::from_secs(60)).expect("MPI initialises once");
    let (rank, n) = (comm.rank(), comm.world_size());
    assert_eq!(n, 3);
    let r = rank as f32;

    assert_eq!(
        comm.all_gather(&[r, 10.0 + r]).unwrap(),
        [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
    );

    let mut sum = [1.0, r, -r];
    comm.all_reduce_sum(&mut sum).unwrap();
    assert_eq!(sum, [3.0, 3.0, -3.0]);

    // Block i of every rank's buffer holds (i + 1) * (rank + 1): the sum over ranks is 6 (i + 1).
    let buffer: Vec<f32> = (0..6).map(|i| (i / 2 + 1) as f32 * (r + 1.0)).collect();
    let block = comm.reduce_scatter_sum(&buffer).unwrap();
    assert_eq!(block, [6.0 * (r + 1.0); 2]);
    assert!(
        comm.reduce_scatter_sum(&[1.0; 4]).is_err(),
        "4 values in 3 blocks"
    );

    let mut weights = if rank == 2 { [7.0, 8.0] } else { [0.0, 0.0] };
    comm.broadcast(&mut weights, 2).unwrap();
    assert_eq!(weights, [7.0, 8.0]);
    assert!(comm.broadcast(&mut weights, 3).is_err(), "no rank 3");

    comm.barrier().unwrap();
    println!("rank {rank} of {n}: collectives ok");
}

/// `mpiexec -n N mm-train --config CONFIG ARGS...` (the binary built with this test's features).
fn mpiexec(n: usize, config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("mpiexec");
    command
        .args(["-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_mm-train"))
        .args(["--config", config.to_str().unwrap(), "--no-progress"])
        .args(args);
    command
}

fn write_config(path: &Path, config: &mm_train::TrainConfig) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

/// Largest |a - b| over all weights, relative to the largest |a|.
fn relative_difference(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) -> f32 {
    let floats = |bytes: &[u8]| -> Vec<f32> {
        bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (mut worst, mut scale) = (0f32, 0f32);
    for ((name_a, a), (name_b, b)) in a.iter().zip(b) {
        assert_eq!(name_a, name_b);
        for (x, y) in floats(a).into_iter().zip(floats(b)) {
            worst = worst.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    worst / scale
}

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn ranks_under_mpiexec_train_the_model_of_one_process_on_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 6;
    let mut config = common::tiny_config(&dir.path().join("one"), steps);
    config.train.eval_every = 0;
    mm_train::train(&config, false).unwrap();
    let want = common::final_tensors(&config.output_dir, steps);

    for (ranks, local_loss) in [(2, false), (4, false), (2, true)] {
        let mut ranked = config.clone();
        ranked.output_dir = dir.path().join(format!("ranks{ranks}-{local_loss}"));
        ranked.train.batch_size = 16 / ranks;
        ranked.train.local_loss = local_loss;
        let file = dir.path().join(format!("ranks{ranks}-{local_loss}.toml"));
        write_config(&file, &ranked);
        let out = mpiexec(ranks, &file, &[]).output().unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        let got = common::final_tensors(&ranked.output_dir, steps);
        let difference = relative_difference(&want, &got);
        println!(
            "{ranks} ranks x {} (local_loss {local_loss}) vs 1 x 16: weights after {steps} steps differ by {difference:.2e} (relative)",
            16 / ranks
        );
        assert!(difference <= 1e-5, "{ranks} ranks: {difference}");

        // One run: rank 0 alone wrote the log and the checkpoints, with every rank's position.
        let log = std::fs::read_to_string(ranked.output_dir.join("train.log")).unwrap();
        assert_eq!(log.matches("done:").count(), 1, "{log}");
        assert!(
            log.contains(&format!("x {ranks} ranks (global batch 16")),
            "{log}"
        );
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                ranked
                    .output_dir
                    .join(format!("checkpoints/step-{steps:06}/state.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(state["world_size"], ranks);
        let per_rank = (steps * 16 / ranks) as u64;
        assert_eq!(
            state["data_positions"],
            serde_json::json!(vec![per_rank; ranks])
        );
    }
}

/// The process id of rank `rank` of the `mm-train` job writing to `run`.
fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let wanted = format!("PMI_RANK={rank}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            if !cmdline.contains("mm-train") || !cmdline.contains(run.to_str()?) {
                return None;
            }
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let environ = String::from_utf8_lossy(&environ);
            environ.split('\0').any(|v| v == wanted).then_some(pid)
        })
}

/// Starts `command` and waits until `run` has a checkpoint at `step` or later.
fn start_and_wait_for_checkpoint(command: &mut Command, run: &Path, step: usize) -> Child {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while common::latest_step(run).is_none_or(|s| s < step) {
        assert!(Instant::now() < deadline, "no checkpoint at step {step}");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Waits for `child` to exit; returns its output and how long that took.
fn wait_at_most(mut child: Child, limit: Duration) -> (std::process::Output, Duration) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < limit,
            "the job still runs {limit:?} after a rank stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), start.elapsed())
}

#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 200;
    let config_for = |name: &str| {
        let mut config = common::tiny_config(&dir.path().join(name), steps);
        config.train.batch_size = 8;
        config.train.checkpoint_every = 10;
        config.train.keep_checkpoints = 3;
        config.train.eval_every = 0;
        let file = dir.path().join(format!("{name}.toml"));
        write_config(&file, &config);
        (config.output_dir, file)
    };
    let (reference, file) = config_for("reference");
    let out = mpiexec(2, &file, &[]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    let (run, file) = config_for("killed");
    let child = start_and_wait_for_checkpoint(&mut mpiexec(2, &file, &[]), &run, 20);
    let pid = rank_pid(&run, 1).expect("rank 1 is running");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let (out, took) = wait_at_most(child, Duration::from_secs(60));
    let text = output_text(&out);
    println!("rank 1 killed: the job ended {took:.2?} later");
    assert!(!out.status.success(), "{text}");
    // The launcher reports the job's end: the killed rank (signal 9), or first the rank that
    // found its peer gone (MPICH's transport aborts it: signal 6).
    assert!(
        text.contains("BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES"),
        "{text}"
    );
    let killed_at = common::latest_step(&run).unwrap();
    assert!(killed_at < steps, "killed too late to test anything");

    // Resumed on the same number of ranks: every rank continues where it was.
    let out = mpiexec(2, &file, &["--resume", "latest"]).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        common::final_tensors(&reference, steps) == common::final_tensors(&run, steps),
        "resumed after step {killed_at}: weights differ from the uninterrupted run"
    );
}

#[test]
fn a_hung_rank_stops_every_rank_after_the_collective_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::tiny_config(&dir.path().join("hung"), 1_000_000);
    config.train.batch_size = 8;
    config.train.eval_every = 0;
    config.train.collective_timeout_s = 3;
    let file = dir.path().join("hung.toml");
    write_config(&file, &config);
    let run = config.output_dir.clone();
    let child = start_and_wait_for_checkpoint(&mut mpiexec(2, &file, &[]), &run, 10);
    // Stopped, not dead: the launcher sees nothing wrong; the timeout must.
    let pid = rank_pid(&run, 1).expect("rank 1 is running");
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    let (out, took) = wait_at_most(child, Duration::from_secs(60));
    let text = output_text(&out);
    println!("rank 1 stopped: the job ended {took:.2?} later");
    assert!(!out.status.success());
    assert!(
        text.contains("rank 0 of 2") && text.contains("train.collective_timeout_s = 3"),
        "{text}"
    );
}

#[test]
fn a_rank_that_fails_stops_every_rank_with_its_error() {
    // Even rows (rank 0's share) have a picture, odd rows (rank 1's) do not: rank 1 alone
    // meets a broken source.
    let dir = tempfile::tempdir().unwrap();
    common::save_shape(&dir.path().join("good.png"), 16);
    let rows: String = (0..40)
        .map(|i| match i % 2 {
            0 => format!("good.png,a picture {i}\n"),
            _ => format!("missing-{i}.png,no picture {i}\n"),
        })
        .collect();
    let csv = dir.path().join("pairs.csv");
    std::fs::write(&csv, format!("filepath,title\n{rows}")).unwrap();
    let mut config = common::tiny_config(&dir.path().join("run"), 5);
    config.data.source = mm_data::SourceKind::Csv;
    config.data.path = Some(mm_data::Paths::One(csv.display().to_string()));
    config.data.shuffle_buffer = 0;
    config.data.max_consecutive_skips = 5;
    config.train.batch_size = 2;
    config.eval.suites.clear();
    let file = dir.path().join("run.toml");
    write_config(&file, &config);
    let child = mpiexec(2, &file, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, took) = wait_at_most(child, Duration::from_secs(60));
    let text = output_text(&out);
    println!("rank 1 failed: the job ended after {took:.2?}");
    assert!(!out.status.success());
    assert!(
        text.contains("error: rank 1 of 2")
            && text.contains("samples in a row were unusable")
            && text.contains("stopping every rank"),
        "{text}"
    );
}
