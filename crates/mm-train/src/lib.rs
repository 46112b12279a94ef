//! mm's trainer: config, learner loop, checkpoints and zero-shot evaluation. The `mm-train`
//! binary is a thin command line over this library.

pub mod allocator;
pub mod caption;
pub mod caption_metrics;
pub mod captioner;
pub mod checkpoint;
pub mod classify;
pub mod cli;
pub mod coca;
pub mod config;
pub mod cv;
pub mod data_check;
pub mod device;
pub mod embed;
pub mod eval;
pub mod hf;
pub mod image_chunks;
pub mod launch;
pub mod learner;
pub mod memory;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod optim;
pub mod param_path;
pub mod precision;
pub mod predict;
pub mod replicas;
pub mod report;
pub mod run;
pub mod run_dir;
pub mod start;
pub mod suite;
pub mod task;
pub mod zero_shot;

pub use checkpoint::{Checkpoint, CheckpointParts, CheckpointState};
pub use config::{Overrides, TrainConfig};
pub use device::parse_device;
pub use learner::Learner;
pub use run::{TrainReport, train, train_from, train_ranks};
pub use start::{StartingPoint, starting_point};
pub use zero_shot::ZeroShotClassifier;
