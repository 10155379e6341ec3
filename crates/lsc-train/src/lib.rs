//! The trainer: builds the backbone, the class-sharded head and the data pipeline from a
//! [`Config`], and runs data-parallel backbone + model-parallel head training over a
//! `Communicator` (ranks as threads of this process, or world size 1).
//!
//! The key decision: each rank runs the same step function; everything that crosses ranks
//! goes through the `Communicator` (embedding all-gather inside the head, backbone gradient
//! all-reduce here), so other engines (MPI, NCCL) slot in without touching the loop.

pub mod checkpoint; // defines: save, load (a whole run, every rank), Position
mod config; // defines: Config and its sections, DEFAULTS, ConfigError
mod progress; // defines: Progress (live progress line), Summary (final JSON line)
mod trainer; // defines: train, train_rank, evaluate, TrainError

pub use config::{Config, ConfigError, DEFAULTS, DataConfig, TrainConfig};
pub use progress::{Progress, Summary};
pub use trainer::{BackboneFactory, TrainError, default_backbone, evaluate, train, train_on, train_with};
