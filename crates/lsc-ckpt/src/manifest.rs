//! The manifest: what a checkpoint holds, in TOML.

use crate::{CkptError, io_err};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "lsc-checkpoint";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.toml";

/// One file of the checkpoint, with its size and lsc64 hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub hash: String,
}

/// One head shard: the rank that saved it and its class range `[class_start, class_end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub rank: u64,
    pub class_start: u64,
    pub class_end: u64,
    pub file: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Global training steps done.
    pub step: u64,
    /// Epochs completed, and steps done in the epoch under way.
    pub epoch: u64,
    pub step_in_epoch: u64,
    pub num_classes: u64,
    pub emb_dim: u64,
    /// Ranks at save time.
    pub world_size: u64,
    /// Storage type of the head weights and momentum in training (`f32` or `bf16`).
    pub head_dtype: String,
    /// Storage type of the tensors in the files.
    pub file_dtype: String,
    pub shards: Vec<ShardEntry>,
    pub files: Vec<FileEntry>,
    /// The resolved training config (TOML text).
    pub config: String,
}

impl Manifest {
    pub(crate) fn write(&self, dir: &Path) -> Result<(), CkptError> {
        let path = dir.join(MANIFEST);
        let text = toml::to_string(self).expect("manifest serialises");
        let tmp = dir.join(".manifest.toml.tmp");
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        crate::crash::point("manifest-sync");
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Parses `dir/manifest.toml` and checks the format and version (not the files).
    pub fn read(dir: &Path) -> Result<Manifest, CkptError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| CkptError::Corrupt {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(CkptError::Corrupt {
                path: path.display().to_string(),
                why: format!(
                    "format {} version {} (this build reads {FORMAT} version {VERSION})",
                    m.format, m.version
                ),
            });
        }
        let bad = |why: String| CkptError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        if m.shards.len() as u64 != m.world_size {
            return Err(bad(format!(
                "world_size = {} but {} shard(s) are listed",
                m.world_size,
                m.shards.len()
            )));
        }
        for (key, v) in [("head_dtype", &m.head_dtype), ("file_dtype", &m.file_dtype)] {
            if v != "f32" && v != "bf16" {
                return Err(bad(format!("{key} = {v:?}: expected \"f32\" or \"bf16\"")));
            }
        }
        if let Some((r, s)) = m.shards.iter().enumerate().find(|(r, s)| s.rank != *r as u64) {
            return Err(bad(format!("shard {r} is listed as rank {}", s.rank)));
        }
        Ok(m)
    }

    /// The file entry called `name`.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }
}
