//! [`Communicator`] over MPI (rsmpi): processes started by `mpiexec -n N` or Slurm's `srun`,
//! on one machine or many. Built with the `mpi` feature.
//!
//! Collectives are started non-blocking and polled: a waiting rank sleeps between polls
//! instead of spinning a core (which on a shared machine would slow the rank it waits for),
//! and a collective that waits past the timeout aborts the job with an error instead of
//! hanging forever (a rank stuck where its launcher cannot see it).

use std::time::{Duration, Instant};

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::request::{Request, Scope, scope};
use mpi::topology::{Communicator as _, SimpleCommunicator};

use mm_contrastive::dist::{CommError, Communicator};

/// The world communicator of an initialised MPI environment (finalised when dropped).
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    timeout: Duration,
    _universe: mpi::environment::Universe,
}

/// How long a waiting rank polls without sleeping: a step's collectives usually complete
/// within it.
const SPIN: Duration = Duration::from_millis(2);

impl MpiCommunicator {
    /// Initialises MPI; `None` when it is already initialised in this process. A collective
    /// that waits longer than `timeout` for the other ranks aborts every rank.
    pub fn init(timeout: Duration) -> Option<Self> {
        let universe = mpi::initialize()?;
        Some(Self {
            world: universe.world(),
            timeout,
            _universe: universe,
        })
    }

    /// Polls `request` until it completes, sleeping between polls; past the timeout, reports
    /// and aborts every rank (an unfinished MPI request cannot be abandoned safely).
    fn complete<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        operation: &str,
        mut request: Request<'a, D, S>,
    ) {
        let start = Instant::now();
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            let waited = start.elapsed();
            if waited > self.timeout {
                eprintln!(
                    "error: rank {} of {}: {operation} waited {:.0} s for the other ranks (train.collective_timeout_s = {}): a rank died or hangs; stopping every rank",
                    self.rank(),
                    self.world_size(),
                    waited.as_secs_f64(),
                    self.timeout.as_secs()
                );
                self.abort(3);
            }
            match waited < SPIN {
                true => std::hint::spin_loop(),
                false => std::thread::sleep(Duration::from_micros(500)),
            }
        }
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut all = vec![0f32; local.len() * self.world_size()];
        scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, local, &mut all[..]);
            self.complete("all_gather", request);
        });
        Ok(all)
    }

    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<(), CommError> {
        let local = buffer.to_vec();
        scope(|scope| {
            let request = self.world.immediate_all_reduce_into(
                scope,
                &local[..],
                buffer,
                SystemOperation::sum(),
            );
            self.complete("all_reduce", request);
        });
        Ok(())
    }

    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut block = vec![0f32; CommError::scatter_block(buffer.len(), self.world_size())?];
        scope(|scope| {
            let request = self.world.immediate_reduce_scatter_block_into(
                scope,
                buffer,
                &mut block[..],
                SystemOperation::sum(),
            );
            self.complete("reduce_scatter", request);
        });
        Ok(block)
    }

    fn broadcast(&self, buffer: &mut [f32], root: usize) -> Result<(), CommError> {
        CommError::check_root(root, self.world_size())?;
        let root = self.world.process_at_rank(root as i32);
        scope(|scope| {
            let request = root.immediate_broadcast_into(scope, buffer);
            self.complete("broadcast", request);
        });
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.complete("barrier", self.world.immediate_barrier());
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        // The launcher tears the job down on an abort, possibly before it has forwarded what
        // this rank just printed (its error): give it a moment.
        use std::io::Write;
        let _ = std::io::stderr().flush();
        std::thread::sleep(Duration::from_millis(500));
        self.world.abort(code)
    }
}
