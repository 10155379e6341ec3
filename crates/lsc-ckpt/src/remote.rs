//! Remote checkpoint stores: a mirror of the local checkpoint root that saves are pushed to
//! and that a run pulls the newest checkpoint from at start (PLSC's `fs_checkpoint_dir`).
//!
//! * [`HadoopStore`]: HDFS (or any Hadoop file system) through `hadoop fs -put/-get/-ls/-mv`,
//!   with a configurable binary, `fs.default.name` and user. Hadoop 2 takes the user from
//!   `HADOOP_USER_NAME` (PLSC's `-D hadoop.job.ugi=user,passwd` is ignored by it), so that is
//!   how the user is passed.
//! * [`DirStore`]: another directory (a mounted network file system, a second disk).
//!
//! Both are atomic the same way local saves are: a checkpoint is copied to `.tmp-step-N`
//! in the remote directory, checked (every file's size), and renamed to `step-N`, so the
//! remote side never shows a half-copied checkpoint under a final name. Every operation is
//! retried with exponential backoff and then reported with the command and its output.

use crate::{CkptError, MANIFEST, io_err, step_dir_name};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where checkpoints are mirrored. `push` returns only once the remote copy is confirmed
/// complete, so a caller may then delete its local copy.
pub trait Store: Send + Sync {
    /// A one-line description for messages (`hdfs://host:9000/ckpt as user lsc`).
    fn describe(&self) -> String;
    /// Copies the local checkpoint directory `dir` (named `step-N`) to the store.
    fn push(&self, dir: &Path) -> Result<(), CkptError>;
    /// The steps of the checkpoints the store holds, oldest first.
    fn steps(&self) -> Result<Vec<u64>, CkptError>;
    /// Copies the store's `step-N` into `local_root/step-N` (atomically) and returns its path.
    fn pull(&self, step: u64, local_root: &Path) -> Result<PathBuf, CkptError>;
    /// Removes the store's checkpoint of `step`.
    fn remove(&self, step: u64) -> Result<(), CkptError>;
}

/// How often and how patiently a store operation is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; it doubles on each further one.
    pub backoff: Duration,
}

impl Retry {
    fn run<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, String>) -> Result<T, CkptError> {
        let mut wait = self.backoff;
        let mut errors = Vec::new();
        for attempt in 0..=self.retries {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    errors.push(e);
                    if attempt < self.retries {
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                }
            }
        }
        Err(CkptError::Remote {
            what: what.to_string(),
            attempts: self.retries + 1,
            last: errors.pop().unwrap_or_default(),
        })
    }
}

/// The step of a checkpoint directory name (`step-000000930` → 930).
fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Sizes of the regular files directly in `dir`, by name.
fn local_sizes(dir: &Path) -> Result<Vec<(String, u64)>, CkptError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let md = e.metadata().map_err(io_err(dir))?;
        if md.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), md.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Fetches checkpoint `step` with `fetch(tmp)` into `local_root/.pull-step-N` (retried, a
/// stale one removed first), checks it, and renames it to `local_root/step-N`.
fn pull_into(
    local_root: &Path,
    step: u64,
    retry: &Retry,
    what: &str,
    mut fetch: impl FnMut(&Path) -> Result<(), String>,
) -> Result<PathBuf, CkptError> {
    std::fs::create_dir_all(local_root).map_err(io_err(local_root))?;
    let tmp = local_root.join(format!(".pull-{}", step_dir_name(step)));
    retry.run(what, || {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        fetch(&tmp)
    })?;
    adopt(&tmp, local_root, step)
}

/// Checks a pulled checkpoint and renames it from `tmp` to `local_root/step-N`.
fn adopt(tmp: &Path, local_root: &Path, step: u64) -> Result<PathBuf, CkptError> {
    crate::load_manifest(tmp, true)?;
    let dest = local_root.join(step_dir_name(step));
    if dest.exists() {
        std::fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
        return Ok(dest);
    }
    std::fs::rename(tmp, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// A Hadoop file system through the `hadoop fs` command.
#[derive(Clone, Debug)]
pub struct HadoopStore {
    /// The `hadoop` executable.
    pub bin: PathBuf,
    /// `fs.default.name`, e.g. `hdfs://namenode:9000` ("" for the client's default).
    pub fs_name: String,
    /// Passed as `HADOOP_USER_NAME` ("" to leave the environment's).
    pub user: String,
    /// The remote directory that holds the `step-N` checkpoints.
    pub dir: String,
    pub retry: Retry,
}

impl HadoopStore {
    fn remote(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.trim_end_matches('/'))
    }

    /// Runs `hadoop fs [-D fs.default.name=…] ARGS` once; Err holds the command and its output.
    fn fs(&self, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new(&self.bin);
        c.arg("fs");
        if !self.fs_name.is_empty() {
            c.args(["-D", &format!("fs.default.name={}", self.fs_name)]);
        }
        c.args(args);
        if !self.user.is_empty() {
            c.env("HADOOP_USER_NAME", &self.user);
        }
        let shown = format!("{} fs {}", self.bin.display(), args.join(" "));
        let o = c.output().map_err(|e| format!("`{shown}`: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
            Err(format!(
                "`{shown}` exited with {}: {}",
                o.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }

    /// `-ls` of a remote directory: (name, size, is_dir) of each entry; a missing directory is
    /// empty.
    fn ls(&self, path: &str) -> Result<Vec<(String, u64, bool)>, String> {
        let out = match self.fs(&["-ls", path]) {
            Ok(o) => o,
            Err(e) if e.contains("No such file or directory") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // `drwxr-xr-x   - user group          0 2026-12-03 22:00 /dir/step-000000001`
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // Entries only: log lines a client may print on stdout are skipped.
                let perms = f
                    .first()
                    .is_some_and(|p| p.len() >= 10 && (p.starts_with('d') || p.starts_with('-')));
                if f.len() < 8 || !perms {
                    return None;
                }
                let name = f[7..].join(" ");
                let name = name.rsplit('/').next().unwrap_or("").to_string();
                Some((name, f[4].parse().ok()?, f[0].starts_with('d')))
            })
            .collect())
    }
}

impl Store for HadoopStore {
    fn describe(&self) -> String {
        let mut s = format!("{}{}", self.fs_name, self.dir);
        if !self.user.is_empty() {
            s += &format!(" as user {}", self.user);
        }
        s
    }

    fn push(&self, dir: &Path) -> Result<(), CkptError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (tmp, dest) = (self.remote(&format!(".tmp-{name}")), self.remote(&name));
        let local = local_sizes(dir)?;
        let src = dir.display().to_string();
        self.retry.run(&format!("pushing {src} to {}", self.describe()), || {
            self.fs(&["-mkdir", "-p", &self.dir])?;
            let top = self.ls(&self.dir)?;
            if top.iter().any(|e| e.0 == format!(".tmp-{name}")) {
                self.fs(&["-rm", "-r", "-f", "-skipTrash", &tmp])?;
            }
            self.fs(&["-put", &src, &tmp])?;
            let mut remote: Vec<(String, u64)> = self.ls(&tmp)?.into_iter().map(|e| (e.0, e.1)).collect();
            remote.sort();
            if remote != local {
                return Err(format!("{tmp} holds {remote:?} after the upload, not {local:?}"));
            }
            if top.iter().any(|e| e.0 == name) {
                self.fs(&["-rm", "-r", "-f", "-skipTrash", &dest])?;
            }
            self.fs(&["-mv", &tmp, &dest])?;
            Ok(())
        })
    }

    fn steps(&self) -> Result<Vec<u64>, CkptError> {
        let mut v: Vec<u64> = self
            .retry
            .run(&format!("listing {}", self.describe()), || self.ls(&self.dir))?
            .into_iter()
            .filter(|e| e.2)
            .filter_map(|e| step_of(&e.0))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn pull(&self, step: u64, local_root: &Path) -> Result<PathBuf, CkptError> {
        let remote = self.remote(&step_dir_name(step));
        let what = format!("pulling {remote} from {}", self.describe());
        pull_into(local_root, step, &self.retry, &what, |tmp| {
            self.fs(&["-get", &remote, &tmp.display().to_string()])?;
            if !tmp.join(MANIFEST).is_file() {
                return Err(format!("{remote} has no {MANIFEST}"));
            }
            Ok(())
        })
    }

    fn remove(&self, step: u64) -> Result<(), CkptError> {
        let remote = self.remote(&step_dir_name(step));
        self.retry
            .run(&format!("removing {remote} from {}", self.describe()), || {
                self.fs(&["-rm", "-r", "-f", "-skipTrash", &remote]).map(|_| ())
            })
    }
}

/// A directory used as a store (a mounted network file system, another disk).
#[derive(Clone, Debug)]
pub struct DirStore {
    pub dir: PathBuf,
    pub retry: Retry,
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for e in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", from.display()))?;
        if e.file_type().map_err(|e| e.to_string())?.is_file() {
            let dst = to.join(e.file_name());
            std::fs::copy(e.path(), &dst)
                .map_err(|err| format!("{} → {}: {err}", e.path().display(), dst.display()))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|err| format!("{}: {err}", dst.display()))?;
        }
    }
    Ok(())
}

impl Store for DirStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn push(&self, dir: &Path) -> Result<(), CkptError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (tmp, dest) = (self.dir.join(format!(".tmp-{name}")), self.dir.join(&name));
        let local = local_sizes(dir)?;
        self.retry
            .run(&format!("pushing {} to {}", dir.display(), self.describe()), || {
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
                }
                copy_dir(dir, &tmp)?;
                let remote = local_sizes(&tmp).map_err(|e| e.to_string())?;
                if remote != local {
                    return Err(format!(
                        "{} holds {remote:?} after the copy, not {local:?}",
                        tmp.display()
                    ));
                }
                if dest.exists() {
                    std::fs::remove_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                }
                std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))
            })
    }

    fn steps(&self) -> Result<Vec<u64>, CkptError> {
        self.retry.run(&format!("listing {}", self.describe()), || {
            if !self.dir.exists() {
                return Ok(Vec::new());
            }
            let mut v = Vec::new();
            for e in std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))? {
                let e = e.map_err(|e| e.to_string())?;
                if let Some(s) = step_of(&e.file_name().to_string_lossy())
                    && e.path().join(MANIFEST).is_file()
                {
                    v.push(s);
                }
            }
            v.sort_unstable();
            Ok(v)
        })
    }

    fn pull(&self, step: u64, local_root: &Path) -> Result<PathBuf, CkptError> {
        let src = self.dir.join(step_dir_name(step));
        let what = format!("pulling {}", src.display());
        pull_into(local_root, step, &self.retry, &what, |tmp| copy_dir(&src, tmp))
    }

    fn remove(&self, step: u64) -> Result<(), CkptError> {
        let p = self.dir.join(step_dir_name(step));
        self.retry.run(&format!("removing {}", p.display()), || {
            std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))
        })
    }
}

/// After a save to `local_root`: pushes `dir` to `store` (when there is one), then applies
/// `keep_last` to the store and to the local root. Local checkpoints are removed only after the
/// push is confirmed, so a failed upload keeps every local copy.
pub fn publish(local_root: &Path, dir: &Path, store: Option<&dyn Store>, keep_last: usize) -> Result<(), CkptError> {
    if let Some(s) = store {
        s.push(dir)?;
        if keep_last > 0 {
            let steps = s.steps()?;
            if steps.len() > keep_last {
                for &st in &steps[..steps.len() - keep_last] {
                    s.remove(st)?;
                }
            }
        }
    }
    crate::rotate(local_root, keep_last)?;
    Ok(())
}

/// Before loading: when `store` holds a checkpoint newer than the newest under `local_root`,
/// pulls it there. Returns the pulled directory, if any.
pub fn pull_newest(local_root: &Path, store: &dyn Store) -> Result<Option<PathBuf>, CkptError> {
    let Some(&newest) = store.steps()?.last() else {
        return Ok(None);
    };
    let local = crate::checkpoint_dirs(local_root)?.last().map(|d| d.0);
    if local.is_some_and(|l| l >= newest) {
        return Ok(None);
    }
    store.pull(newest, local_root).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_store_mirrors_atomically_and_an_unreachable_one_is_retried_then_reported() {
        let t = std::env::temp_dir().join(format!("lsc-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let (local, remote) = (t.join("local"), t.join("remote"));
        let retry = Retry {
            retries: 2,
            backoff: Duration::from_millis(1),
        };
        let store = DirStore {
            dir: remote.clone(),
            retry: retry.clone(),
        };
        for step in [1u64, 2, 3] {
            let dir = local.join(step_dir_name(step));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("x.bin"), vec![step as u8; 10]).unwrap();
            let m = crate::Manifest {
                format: crate::FORMAT.into(),
                version: crate::VERSION,
                step,
                epoch: 0,
                step_in_epoch: step,
                num_classes: 1,
                emb_dim: 1,
                world_size: 0,
                head_dtype: "f32".into(),
                file_dtype: "f32".into(),
                shards: vec![],
                files: vec![crate::FileEntry {
                    name: "x.bin".into(),
                    bytes: 10,
                    hash: crate::hash_file(&dir.join("x.bin")).unwrap().1,
                }],
                config: String::new(),
            };
            m.write(&dir).unwrap();
            publish(&local, &dir, Some(&store), 2).unwrap();
        }
        assert_eq!(store.steps().unwrap(), vec![2, 3]);
        assert_eq!(
            crate::checkpoint_dirs(&local)
                .unwrap()
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        // A fresh machine pulls the newest.
        let fresh = t.join("fresh");
        let got = pull_newest(&fresh, &store).unwrap().unwrap();
        assert_eq!(got, fresh.join(step_dir_name(3)));
        assert_eq!(std::fs::read(got.join("x.bin")).unwrap(), vec![3u8; 10]);
        assert!(pull_newest(&fresh, &store).unwrap().is_none(), "already newest");
        // An unreachable store: retried, then reported; the local copies stay.
        let bad = HadoopStore {
            bin: "/no/such/hadoop".into(),
            fs_name: "hdfs://127.0.0.1:1".into(),
            user: "u".into(),
            dir: "/ckpt".into(),
            retry,
        };
        let dir = local.join(step_dir_name(3));
        let e = publish(&local, &dir, Some(&bad), 1).unwrap_err().to_string();
        assert!(e.contains("3 attempts") && e.contains("/no/such/hadoop"), "{e}");
        assert_eq!(
            crate::checkpoint_dirs(&local).unwrap().len(),
            2,
            "nothing deleted locally"
        );
        std::fs::remove_dir_all(&t).unwrap();
    }
}
