//! A process's place in a data-parallel job: how many ranks its launcher (`mpiexec`, `srun`)
//! started, which one it is on its machine, the communicator it trains with and the device
//! it uses.

use std::rc::Rc;
use std::time::Duration;

use anyhow::Result;
use mm_contrastive::dist::{Communicator, SingleProcess};

/// The environment variables launchers set: ranks in the job, and this rank's index among
/// the ranks of its machine (MPICH/Hydra and Slurm's PMI-2, Open MPI, Slurm).
const WORLD_SIZE_VARS: [&str; 2] = ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"];
const LOCAL_RANK_VARS: [&str; 3] = [
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
];

/// Ranks on this machine (MPICH/Hydra, Open MPI, Slurm).
const LOCAL_SIZE_VARS: [&str; 3] = [
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_NTASKS_PER_NODE",
];

fn env_number(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// Ranks of the job this process was launched in, when a launcher says so.
pub fn launched_ranks() -> Option<usize> {
    env_number(&WORLD_SIZE_VARS)
}

/// This rank's index among the ranks on its machine (0 when not launched as a job): which
/// GPU it takes.
pub fn local_rank() -> usize {
    env_number(&LOCAL_RANK_VARS).unwrap_or(0)
}

/// Ranks sharing a machine split its cores: each computes with `cores / local ranks` threads
/// (at least one), instead of every rank starting a thread per core and all of them
/// fighting for the same cores. Returns the thread count, or `None` when this process is
/// alone on its machine or `RAYON_NUM_THREADS` decides.
pub fn share_cores() -> Option<usize> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let local = env_number(&LOCAL_SIZE_VARS).filter(|&n| n > 1)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / local).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok()?;
    Some(threads)
}

/// The device rank `local_rank` uses for a configured `device`: `{local_rank}` in the name is
/// replaced (`cuda:{local_rank}`), and a bare `cuda` in a job of several ranks means one GPU
/// per rank on each machine. `flex` and `wgpu` are the same for every rank.
pub fn rank_device(device: &str, local_rank: usize, world_size: usize) -> String {
    let device = device.replace("{local_rank}", &local_rank.to_string());
    match (device.as_str(), world_size) {
        ("cuda", 2..) => format!("cuda:{local_rank}"),
        _ => device,
    }
}

/// The ranks this process trains with: MPI's world when launched by `mpiexec`/`srun` (with
/// the `mpi` feature), this process alone otherwise. A collective that waits longer than
/// `timeout` stops every rank.
pub fn communicator(timeout: Duration) -> Result<Rc<dyn Communicator>> {
    match launched_ranks() {
        Some(2..) => mpi_world(timeout),
        _ => Ok(Rc::new(SingleProcess)),
    }
}

#[cfg(feature = "mpi")]
fn mpi_world(timeout: Duration) -> Result<Rc<dyn Communicator>> {
    match crate::mpi_comm::MpiCommunicator::init(timeout) {
        Some(comm) => Ok(Rc::new(comm)),
        None => anyhow::bail!("MPI was already initialised in this process"),
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_world(_timeout: Duration) -> Result<Rc<dyn Communicator>> {
    anyhow::bail!(
        "started as one of {} ranks (by mpiexec or srun), but this mm-train was built without MPI: build it with `cargo build --release -p mm-train --features mpi` (see README, Training on many machines)",
        launched_ranks().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_takes_its_own_gpu() {
        assert_eq!(rank_device("cuda", 3, 8), "cuda:3");
        assert_eq!(rank_device("cuda", 0, 1), "cuda");
        assert_eq!(rank_device("cuda:{local_rank}", 2, 4), "cuda:2");
        assert_eq!(rank_device("cuda:1", 2, 4), "cuda:1");
        assert_eq!(rank_device("flex", 5, 8), "flex");
        assert_eq!(rank_device("wgpu", 1, 2), "wgpu");
    }
}
