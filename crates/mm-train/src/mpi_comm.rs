//! [`Communicator`] over MPI (rsmpi): processes started by `mpiexec -n N` or Slurm's `srun`,
//! on one machine or many. Built with the `mpi` feature.

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::topology::{Communicator as _, SimpleCommunicator};

use mm_contrastive::dist::{CommError, Communicator};

/// The world communicator of an initialised MPI environment (finalised when dropped).
pub struct MpiCommunicator {
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

impl MpiCommunicator {
    /// Initialises MPI; `None` when it is already initialised in this process.
    pub fn init() -> Option<Self> {
        let universe = mpi::initialize()?;
        Some(Self {
            world: universe.world(),
            _universe: universe,
        })
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
        self.world.all_gather_into(local, &mut all[..]);
        Ok(all)
    }

    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<(), CommError> {
        let local = buffer.to_vec();
        self.world
            .all_reduce_into(&local[..], buffer, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError> {
        let world = self.world_size();
        if !buffer.len().is_multiple_of(world) {
            return Err(CommError {
                operation: "reduce_scatter",
                message: format!("{} values do not split into {world} blocks", buffer.len()),
            });
        }
        let mut block = vec![0f32; buffer.len() / world];
        self.world
            .reduce_scatter_block_into(buffer, &mut block[..], SystemOperation::sum());
        Ok(block)
    }

    fn broadcast(&self, buffer: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.world_size() {
            return Err(CommError {
                operation: "broadcast",
                message: format!("root {root} is not one of {} ranks", self.world_size()),
            });
        }
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(buffer);
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }
}
