//! The MPI communicator across real processes: the test re-runs itself under `mpiexec -n 3`
//! (`cargo test -p mm-train --features mpi --test mpi`; `bash scripts/ensure_mpi.sh` first).
#![cfg(feature = "mpi")]

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
    let comm = MpiCommunicator::init().expect("MPI initialises once");
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
