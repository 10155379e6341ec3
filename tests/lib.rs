//! Helpers for the workspace-level tests: where the committed data sets live.

use std::path::PathBuf;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits below the root")
        .to_path_buf()
}

/// The committed real Fashion-MNIST subset (6,000 train / 1,000 test images).
pub fn mini_dataset() -> PathBuf {
    repo_root().join("datasets/fashion-mnist-mini")
}
