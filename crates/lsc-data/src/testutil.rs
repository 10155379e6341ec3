//! Test helpers: a self-deleting temporary directory, an in-memory dataset and JPEG makers.

use crate::{DataError, Dataset, Record};
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lsc-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A grey `h x w` JPEG whose pixels depend on `seed`.
pub fn grey_jpeg(h: usize, w: usize, seed: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..h * w)
        .map(|i| ((i % w) * 5 + (i / w) * 3 + seed * 29) as u8)
        .collect();
    crate::pack::encode_grey_jpeg(&pixels, h, w, 95).unwrap()
}

/// Records held in memory; `locate` is `mem:<i+1>`.
pub struct MemDataset(pub Vec<Record>);

impl Dataset for MemDataset {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn record(&self, i: usize) -> Result<Record, DataError> {
        self.0.get(i).cloned().ok_or(DataError::OutOfRange {
            index: i,
            len: self.0.len(),
        })
    }

    fn locate(&self, i: usize) -> String {
        format!("mem:{}", i + 1)
    }
}
