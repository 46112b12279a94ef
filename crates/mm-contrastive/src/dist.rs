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

impl CommError {
    /// The block of a reduce-scatter over `world` ranks of a `len`-value buffer, or the error
    /// when the buffer does not split evenly.
    pub fn scatter_block(len: usize, world: usize) -> Result<usize, CommError> {
        match len.is_multiple_of(world) {
            true => Ok(len / world),
            false => Err(CommError {
                operation: "reduce_scatter",
                message: format!("{len} values do not split into {world} blocks"),
            }),
        }
    }

    /// Checks that `root` is a rank of a group of `world`.
    pub fn check_root(root: usize, world: usize) -> Result<(), CommError> {
        match root < world {
            true => Ok(()),
            false => Err(CommError {
                operation: "broadcast",
                message: format!("root {root} is not one of {world} ranks"),
            }),
        }
    }
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
    /// Ends every rank's process (MPI_Abort): a rank that cannot go on must not leave the
    /// others waiting in a collective. One process alone just exits.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
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
        CommError::check_root(root, 1)
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}

/// `n` ranks in one process, one per thread, exchanging buffers through shared memory: data
/// parallelism simulated without MPI (tests, and checking a run's maths on one machine).
/// Collectives reduce in rank order, so every rank gets bit-identical results. A rank that
/// waits a minute for the others (one panicked) gets an error instead of hanging.
pub struct ThreadRank {
    rank: usize,
    shared: std::sync::Arc<ThreadShared>,
}

struct ThreadShared {
    world_size: usize,
    /// Ranks arrived at the current barrier, and how many barriers have completed.
    arrived: std::sync::Mutex<(usize, u64)>,
    all_arrived: std::sync::Condvar,
    slots: std::sync::Mutex<Vec<Vec<f32>>>,
}

/// How long a [`ThreadRank`] waits for the others at a barrier.
const THREAD_RANK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl ThreadRank {
    /// The `n` ranks of one group; hand one to each thread.
    pub fn group(n: usize) -> Vec<ThreadRank> {
        let shared = std::sync::Arc::new(ThreadShared {
            world_size: n,
            arrived: std::sync::Mutex::new((0, 0)),
            all_arrived: std::sync::Condvar::new(),
            slots: std::sync::Mutex::new(vec![Vec::new(); n]),
        });
        (0..n)
            .map(|rank| ThreadRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Returns once every rank has called it, or an error after [`THREAD_RANK_TIMEOUT`].
    fn wait(&self, operation: &'static str) -> Result<(), CommError> {
        let shared = &self.shared;
        let mut arrived = shared.arrived.lock().unwrap_or_else(|p| p.into_inner());
        let generation = arrived.1;
        arrived.0 += 1;
        if arrived.0 == shared.world_size {
            *arrived = (0, generation + 1);
            shared.all_arrived.notify_all();
            return Ok(());
        }
        let deadline = std::time::Instant::now() + THREAD_RANK_TIMEOUT;
        while arrived.1 == generation {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(CommError {
                    operation,
                    message: format!(
                        "rank {}: the other ranks did not arrive within {THREAD_RANK_TIMEOUT:?}",
                        self.rank
                    ),
                });
            }
            arrived = shared
                .all_arrived
                .wait_timeout(arrived, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Every rank's buffer, in rank order.
    fn exchange(&self, operation: &'static str, local: &[f32]) -> Result<Vec<Vec<f32>>, CommError> {
        let lock = || match self.shared.slots.lock() {
            Ok(slots) => slots,
            Err(poisoned) => poisoned.into_inner(),
        };
        lock()[self.rank] = local.to_vec();
        self.wait(operation)?;
        let all = lock().clone();
        // Nobody writes the next round's slot before everyone has read this one.
        self.wait(operation)?;
        Ok(all)
    }

    fn sum_blocks(blocks: &[Vec<f32>], range: std::ops::Range<usize>) -> Vec<f32> {
        let mut sum = vec![0f32; range.len()];
        for block in blocks {
            for (s, x) in sum.iter_mut().zip(&block[range.clone()]) {
                *s += x;
            }
        }
        sum
    }
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world_size
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        Ok(self.exchange("all_gather", local)?.concat())
    }
    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<(), CommError> {
        let all = self.exchange("all_reduce", buffer)?;
        buffer.copy_from_slice(&Self::sum_blocks(&all, 0..buffer.len()));
        Ok(())
    }
    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError> {
        let block = CommError::scatter_block(buffer.len(), self.world_size())?;
        let all = self.exchange("reduce_scatter", buffer)?;
        Ok(Self::sum_blocks(
            &all,
            self.rank * block..(self.rank + 1) * block,
        ))
    }
    fn broadcast(&self, buffer: &mut [f32], root: usize) -> Result<(), CommError> {
        CommError::check_root(root, self.world_size())?;
        let all = self.exchange("broadcast", buffer)?;
        buffer.copy_from_slice(&all[root]);
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.wait("barrier")
    }
}

/// A communicator that adds up the time spent in its collectives (waiting for slower ranks
/// included): what a training step spends communicating.
pub struct Timed {
    inner: std::rc::Rc<dyn Communicator>,
    spent: std::cell::Cell<std::time::Duration>,
}

impl Timed {
    pub fn new(inner: std::rc::Rc<dyn Communicator>) -> Self {
        Self {
            inner,
            spent: Default::default(),
        }
    }

    /// Time spent in collectives since the last call.
    pub fn take_spent(&self) -> std::time::Duration {
        self.spent.take()
    }

    fn timed<T>(&self, collective: impl FnOnce(&dyn Communicator) -> T) -> T {
        let start = std::time::Instant::now();
        let result = collective(self.inner.as_ref());
        self.spent.set(self.spent.get() + start.elapsed());
        result
    }
}

impl Communicator for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        self.timed(|c| c.all_gather(local))
    }
    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<(), CommError> {
        self.timed(|c| c.all_reduce_sum(buffer))
    }
    fn reduce_scatter_sum(&self, buffer: &[f32]) -> Result<Vec<f32>, CommError> {
        self.timed(|c| c.reduce_scatter_sum(buffer))
    }
    fn broadcast(&self, buffer: &mut [f32], root: usize) -> Result<(), CommError> {
        self.timed(|c| c.broadcast(buffer, root))
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.timed(|c| c.barrier())
    }
    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
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

    #[test]
    fn thread_ranks_gather_reduce_and_scatter_in_rank_order() {
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRank::group(3)
                .into_iter()
                .map(|comm| {
                    scope.spawn(move || {
                        let r = comm.rank() as f32;
                        let gathered = comm.all_gather(&[r, 10.0 * r]).unwrap();
                        let mut sum = [r, 1.0];
                        comm.all_reduce_sum(&mut sum).unwrap();
                        let block = comm.reduce_scatter_sum(&[r, 2.0 * r, 3.0 * r]).unwrap();
                        let mut root = [r + 5.0];
                        comm.broadcast(&mut root, 2).unwrap();
                        comm.barrier().unwrap();
                        (gathered, sum, block, root)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (rank, (gathered, sum, block, root)) in results.into_iter().enumerate() {
            assert_eq!(gathered, [0.0, 0.0, 1.0, 10.0, 2.0, 20.0]);
            assert_eq!(sum, [3.0, 3.0]);
            // Sum over ranks of [r, 2r, 3r] is [3, 6, 9]; rank k gets element k.
            assert_eq!(block, [3.0 * (rank + 1) as f32]);
            assert_eq!(root, [7.0]);
        }
    }
}
