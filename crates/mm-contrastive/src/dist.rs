//! The collectives that data-parallel contrastive training needs (open_clip's
//! `gather_features` and gradient all-reduce), behind mm's own small trait: MPI (mm-train's
//! `mpi` feature) implements it today, and NCCL or a burn-native backend can later, without
//! touching the losses or the trainer. Buffers are flat host `f32` slices: one call moves a
//! whole bucket of tensors, not one tensor at a time.

/// A collective that failed: a rank died or the transport broke. Callers stop training.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct CommError {
    pub operation: &'static str,
    pub message: String,
}

/// The processes that train one model together. Every rank calls each collective in the same
/// order with buffers of the same length.
pub trait Communicator {
    /// This process's index, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank's `local` (all of one length), concatenated in rank order.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError>;
    /// The element-wise sum over ranks, in place on every rank.
    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<(), CommError>;
    /// The element-wise sum over ranks of `buffer` (`world_size` equal blocks), of which this
    /// rank receives block `rank()`.
    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError>;
    /// Rank `root`'s `buffer` on every rank.
    fn broadcast(&self, buffer: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has reached it.
    fn barrier(&self) -> Result<(), CommError>;
}

/// One process alone: every collective is the identity, so single-process training runs the
/// same code path as data-parallel training.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(local.to_vec())
    }
    fn all_reduce_sum(&self, _buffer: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(buffer.to_vec())
    }
    fn broadcast(&self, _buffer: &mut [f32], root: usize) -> Result<(), CommError> {
        match root {
            0 => Ok(()),
            _ => Err(CommError {
                operation: "broadcast",
                message: format!("root {root} is not a rank of a 1-process group"),
            }),
        }
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_collectives_are_the_identity() {
        let comm = SingleProcess;
        assert_eq!((comm.rank(), comm.world_size()), (0, 1));
        assert_eq!(comm.all_gather(&[1.0, 2.0]).unwrap(), [1.0, 2.0]);
        let mut buffer = [3.0, -4.0];
        comm.all_reduce_sum(&mut buffer).unwrap();
        comm.broadcast(&mut buffer, 0).unwrap();
        assert_eq!(buffer, [3.0, -4.0]);
        assert_eq!(comm.reduce_scatter_sum(&buffer).unwrap(), [3.0, -4.0]);
        let err = comm.broadcast(&mut buffer, 1).unwrap_err().to_string();
        assert!(err.contains("broadcast") && err.contains("root 1"), "{err}");
        comm.barrier().unwrap();
    }
}
