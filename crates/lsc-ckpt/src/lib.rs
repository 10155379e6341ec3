//! Checkpoints: a directory of safetensors files plus a TOML manifest.
//!
//! Layout of one checkpoint, `ROOT/step-000000930/`:
//! - `manifest.toml`: format version, step and epoch, class count, embedding size, world size,
//!   each head shard's class range and file, dtypes, the resolved config, and the size and
//!   hash of every file;
//! - `backbone.safetensors`: backbone parameters, BN statistics and their momentum;
//! - `head.rank00000-of-00002.safetensors` …: one file per head shard (weights, momentum,
//!   bias);
//! - `trainer.safetensors`: the trainer state (step counters, per-epoch losses).
//!
//! The key decision: a save is written into `ROOT/.tmp-step-…/` and renamed to its final name
//! only when every file and the manifest are on disk, so a crash at any moment leaves the
//! previous checkpoints loadable and never a half-written one under a final name.
//! Plain safetensors files mean PyTorch and the Hugging Face tools read the tensors as they are.

pub mod crash; // defines: point (fault injection for the kill -9 tests)
mod hash; // defines: Hasher (lsc64, the file checksum)
mod manifest; // defines: Manifest, FileEntry, ShardEntry
mod remote; // defines: Store, HadoopStore, DirStore, Retry, publish, pull_newest
mod store; // defines: begin/commit of a save, latest, rotate, load checks
mod tensors; // defines: write_safetensors (streaming), read_safetensors, Tensor data types

pub use hash::{Hasher, hash_file};
pub use manifest::{FORMAT, FileEntry, MANIFEST, Manifest, ShardEntry, VERSION};
pub use remote::{DirStore, HadoopStore, Retry, Store, publish, pull_newest};
pub use store::{PendingSave, checkpoint_dirs, latest, load_manifest, record_file, rotate, step_dir_name};
pub use tensors::{
    Data, Dtype, NamedTensor, Sink, TensorFile, TensorInfo, TensorSpec, read_safetensors, write_safetensors,
    write_safetensors_with,
};

/// A checkpoint that could not be written or read. Every message names the file and, where
/// it applies, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: {why}")]
    Corrupt { path: String, why: String },
    #[error("{path}: tensor {tensor}: {why}")]
    Tensor { path: String, tensor: String, why: String },
    #[error("{what}: failed after {attempts} attempts: {last}")]
    Remote { what: String, attempts: u32, last: String },
    #[error("{path}: no checkpoint found (expected a step-N directory with a manifest.toml)")]
    NotFound { path: String },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CkptError + '_ {
    move |err| CkptError::Io {
        path: path.display().to_string(),
        err,
    }
}
