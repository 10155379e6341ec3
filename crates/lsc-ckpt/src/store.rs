//! Saving atomically into a checkpoint root, finding the latest checkpoint, rotation, and the
//! load-time checks.
//!
//! A save: [`PendingSave::begin`] makes `ROOT/.tmp-step-N/`; every writer (one per rank)
//! writes its files there and records each with [`record_file`] (a small `NAME.entry` file,
//! so ranks in other processes can report theirs too); [`PendingSave::commit`] gathers the
//! entries into the manifest, syncs, and renames the directory to `ROOT/step-N`.

use crate::manifest::MANIFEST;
use crate::{CkptError, FileEntry, Manifest, hash_file, io_err};
use std::path::{Path, PathBuf};

/// The directory name of the checkpoint after `step` steps.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// A save in progress: files go into `tmp`, which [`PendingSave::commit`] renames to `dest`.
#[derive(Debug, Clone)]
pub struct PendingSave {
    pub tmp: PathBuf,
    pub dest: PathBuf,
}

fn sync_dir(dir: &Path) -> Result<(), CkptError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn with_prefix(dest: &Path, prefix: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(dest).join(format!("{prefix}{name}"))
}

impl PendingSave {
    /// The pending save of `step` under `root` (nothing is created; see [`PendingSave::begin`]).
    pub fn at(root: &Path, step: u64) -> PendingSave {
        PendingSave::to(&root.join(step_dir_name(step)))
    }

    /// The pending save of a checkpoint whose final directory is `dest`.
    pub fn to(dest: &Path) -> PendingSave {
        PendingSave {
            tmp: with_prefix(dest, ".tmp-"),
            dest: dest.to_path_buf(),
        }
    }

    /// Creates the temporary directory of `step` under `root` (removing a stale one left by a
    /// crash).
    pub fn begin(root: &Path, step: u64) -> Result<PendingSave, CkptError> {
        PendingSave::begin_to(&root.join(step_dir_name(step)))
    }

    /// [`PendingSave::begin`] for any final directory `dest`.
    pub fn begin_to(dest: &Path) -> Result<PendingSave, CkptError> {
        let p = PendingSave::to(dest);
        let root = parent_of(dest);
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        recover(&root)?;
        if p.tmp.exists() {
            std::fs::remove_dir_all(&p.tmp).map_err(io_err(&p.tmp))?;
        }
        crate::crash::point("mkdir");
        std::fs::create_dir(&p.tmp).map_err(io_err(&p.tmp))?;
        Ok(p)
    }

    /// Writes the manifest with every recorded file, then renames the directory into place.
    pub fn commit(self, mut manifest: Manifest) -> Result<PathBuf, CkptError> {
        let mut files = Vec::new();
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&self.tmp).map_err(io_err(&self.tmp))? {
            let path = e.map_err(io_err(&self.tmp))?.path();
            if path.extension().is_some_and(|x| x == "entry") {
                let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                let entry: FileEntry = toml::from_str(&text).map_err(|err| CkptError::Corrupt {
                    path: path.display().to_string(),
                    why: err.to_string(),
                })?;
                let file = self.tmp.join(&entry.name);
                let len = std::fs::metadata(&file).map_err(io_err(&file))?.len();
                if len != entry.bytes {
                    return Err(CkptError::Corrupt {
                        path: file.display().to_string(),
                        why: format!("{len} bytes on disk, {} recorded", entry.bytes),
                    });
                }
                files.push(entry);
                entries.push(path);
            }
        }
        for path in entries {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        manifest.files = files;
        crate::crash::point("manifest");
        manifest.write(&self.tmp)?;
        sync_dir(&self.tmp)?;
        let dest = &self.dest;
        let root = parent_of(dest);
        crate::crash::point("rename");
        if dest.exists() {
            // A re-save of the same directory: move the old one aside first, so that the final
            // name always holds a complete checkpoint (`recover` puts it back after a crash
            // between the two renames).
            let old = with_prefix(dest, ".old-");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(dest, &old).map_err(io_err(dest))?;
            crate::crash::point("rename-over");
            std::fs::rename(&self.tmp, dest).map_err(io_err(dest))?;
            crate::crash::point("remove-old");
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&self.tmp, dest).map_err(io_err(dest))?;
        }
        sync_dir(&root)?;
        crate::crash::point("committed");
        Ok(dest.clone())
    }
}

/// Repairs what a crash can leave in a checkpoint root: an `.old-X` directory whose `X` is
/// missing (a crash between the two renames of a re-save) is renamed back; a `.del-X` (a
/// rotation cut short) is removed.
fn recover(root: &Path) -> Result<(), CkptError> {
    for e in std::fs::read_dir(root).map_err(io_err(root))? {
        let path = e.map_err(io_err(root))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if let Some(orig) = name.strip_prefix(".old-") {
            let dest = root.join(orig);
            if dest.exists() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else if path.join(MANIFEST).is_file() {
                std::fs::rename(&path, &dest).map_err(io_err(&dest))?;
            }
        } else if name.starts_with(".del-") {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Records a written file of a pending save (its size and hash, for the manifest).
pub fn record_file(tmp: &Path, name: &str, bytes: u64, hash: &str) -> Result<(), CkptError> {
    let entry = FileEntry {
        name: name.to_string(),
        bytes,
        hash: hash.to_string(),
    };
    let path = tmp.join(format!("{name}.entry"));
    crate::crash::point("entry");
    std::fs::write(&path, toml::to_string(&entry).expect("entry serialises")).map_err(io_err(&path))
}

/// Every complete checkpoint under `root` (a `step-N` directory with a manifest), oldest first.
pub fn checkpoint_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>, CkptError> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(root).map_err(io_err(root))? {
        let path = e.map_err(io_err(root))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // `.old-step-N` is a complete checkpoint moved aside by a re-save that crashed before
        // its replacement was in place.
        let (old, plain) = match name.strip_prefix(".old-") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if let Some(step) = plain.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok())
            && path.join(MANIFEST).is_file()
            && !(old && root.join(plain).join(MANIFEST).is_file())
        {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>, CkptError> {
    Ok(checkpoint_dirs(root)?.pop().map(|(_, p)| p))
}

/// Deletes all but the newest `keep_last` checkpoints (0 keeps all).
pub fn rotate(root: &Path, keep_last: usize) -> Result<Vec<PathBuf>, CkptError> {
    let dirs = checkpoint_dirs(root)?;
    let mut removed = Vec::new();
    if keep_last == 0 || dirs.len() <= keep_last {
        return Ok(removed);
    }
    for (_, p) in &dirs[..dirs.len() - keep_last] {
        // Renamed out of the checkpoint namespace first, so that a crash mid-removal never
        // leaves a half-deleted directory under a checkpoint's name.
        let del = with_prefix(p, ".del-");
        crate::crash::point("rotate");
        std::fs::rename(p, &del).map_err(io_err(p))?;
        std::fs::remove_dir_all(&del).map_err(io_err(&del))?;
        removed.push(p.clone());
    }
    Ok(removed)
}

/// Reads a checkpoint's manifest and checks every file's size and hash. `path` is a
/// checkpoint directory, or a root whose latest checkpoint is taken.
pub fn load_manifest(path: &Path, verify: bool) -> Result<(PathBuf, Manifest), CkptError> {
    let dir = if path.join(MANIFEST).is_file() {
        path.to_path_buf()
    } else {
        latest(path)?.ok_or_else(|| CkptError::NotFound {
            path: path.display().to_string(),
        })?
    };
    let m = Manifest::read(&dir)?;
    if verify {
        for f in &m.files {
            let p = dir.join(&f.name);
            let (bytes, hash) = hash_file(&p)?;
            if bytes != f.bytes || hash != f.hash {
                return Err(CkptError::Corrupt {
                    path: p.display().to_string(),
                    why: format!(
                        "checksum mismatch: {bytes} bytes with hash {hash}, the manifest says {} bytes with hash {}",
                        f.bytes, f.hash
                    ),
                });
            }
        }
        for s in &m.shards {
            if m.file(&s.file).is_none() {
                return Err(CkptError::Corrupt {
                    path: dir.join(MANIFEST).display().to_string(),
                    why: format!(
                        "shard of rank {} names {} which is not in the file list",
                        s.rank, s.file
                    ),
                });
            }
        }
    }
    Ok((dir, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NamedTensor, write_safetensors};

    fn manifest(step: u64) -> Manifest {
        Manifest {
            format: crate::FORMAT.into(),
            version: crate::VERSION,
            step,
            epoch: 0,
            step_in_epoch: step,
            num_classes: 4,
            emb_dim: 2,
            world_size: 0,
            head_dtype: "f32".into(),
            file_dtype: "f32".into(),
            shards: vec![],
            files: vec![],
            config: "seed = 0\n".into(),
        }
    }

    fn save(root: &Path, step: u64, v: f32) -> PathBuf {
        let p = PendingSave::begin(root, step).unwrap();
        let (n, h) = write_safetensors(
            &p.tmp.join("a.safetensors"),
            &[NamedTensor::f32("x", &[2], vec![v, v])],
            &Default::default(),
        )
        .unwrap();
        record_file(&p.tmp, "a.safetensors", n, &h).unwrap();
        p.commit(manifest(step)).unwrap()
    }

    #[test]
    fn save_commit_latest_rotate_and_verify() {
        let root = std::env::temp_dir().join(format!("lsc-ckpt-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (s, v) in [(5, 1.0), (10, 2.0), (15, 3.0)] {
            save(&root, s, v);
        }
        // A crashed save leaves only a temporary directory: ignored.
        std::fs::create_dir_all(root.join(".tmp-step-000000020")).unwrap();
        assert_eq!(latest(&root).unwrap().unwrap(), root.join("step-000000015"));
        let (dir, m) = load_manifest(&root, true).unwrap();
        assert_eq!(
            (dir.file_name().unwrap().to_str().unwrap(), m.step, m.files.len()),
            ("step-000000015", 15, 1)
        );
        assert_eq!(rotate(&root, 2).unwrap().len(), 1);
        assert_eq!(
            checkpoint_dirs(&root).unwrap().iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![10, 15]
        );
        // Re-saving a step replaces it whole.
        save(&root, 15, 9.0);
        // Corruption is named.
        let f = root.join("step-000000015/a.safetensors");
        let mut b = std::fs::read(&f).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&f, b).unwrap();
        let e = load_manifest(&root, true).unwrap_err().to_string();
        assert!(e.contains("a.safetensors") && e.contains("checksum mismatch"), "{e}");
        let e = load_manifest(&root.join("nope"), true).unwrap_err().to_string();
        assert!(e.contains("no checkpoint found"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
