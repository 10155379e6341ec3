//! File helpers shared by the readers and writers: positioned reads, atomic output files, and
//! the skipped-record tally.

use crate::error::DataError;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + use<> {
    let path = path.to_path_buf();
    move |source| DataError::Io { path, source }
}

/// Fills `buf` from byte `offset` of `file` (a positioned read: no shared cursor, so any number
/// of threads can read one open file at once).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt as _;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt as _;
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match file.seek_read(buf, offset) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    #[cfg(not(any(unix, windows)))]
    {
        compile_error!("lsc-data needs positioned reads (unix or windows)");
    }
}

/// Output files written under temporary names (`NAME.tmp` beside each final name) and renamed
/// into place by [`AtomicFiles::commit`] only after all are complete and synced; dropping it
/// uncommitted removes the temporary files, so an error never leaves a half-written file under
/// a final name.
pub(crate) struct AtomicFiles {
    finals: Vec<PathBuf>,
    temps: Vec<PathBuf>,
    writers: Vec<Option<std::io::BufWriter<File>>>,
    committed: bool,
}

impl AtomicFiles {
    /// Creates the temporary files for `finals` (their directories must exist).
    pub(crate) fn create(finals: Vec<PathBuf>, buffer: usize) -> Result<AtomicFiles, DataError> {
        let temps: Vec<PathBuf> = finals
            .iter()
            .map(|f| {
                let mut name = f.file_name().unwrap_or_default().to_os_string();
                name.push(".tmp");
                f.with_file_name(name)
            })
            .collect();
        let mut files = AtomicFiles {
            finals,
            temps: Vec::new(),
            writers: Vec::new(),
            committed: false,
        };
        for t in temps {
            let f = File::create(&t).map_err(io_err(&t))?;
            files.temps.push(t);
            files.writers.push(Some(std::io::BufWriter::with_capacity(buffer, f)));
        }
        Ok(files)
    }

    pub(crate) fn len(&self) -> usize {
        self.finals.len()
    }

    /// Appends `bytes` to file `k`.
    pub(crate) fn write(&mut self, k: usize, bytes: &[u8]) -> Result<(), DataError> {
        let w = self.writers[k].as_mut().expect("writer open until commit");
        w.write_all(bytes).map_err(io_err(&self.temps[k]))
    }

    /// Flushes and syncs every file, then renames each to its final name.
    pub(crate) fn commit(mut self) -> Result<Vec<PathBuf>, DataError> {
        for (w, t) in self.writers.iter_mut().zip(&self.temps) {
            let file = w
                .take()
                .expect("writer open until commit")
                .into_inner()
                .map_err(|e| io_err(t)(e.into_error()))?;
            file.sync_all().map_err(io_err(t))?;
        }
        for (t, f) in self.temps.iter().zip(&self.finals) {
            std::fs::rename(t, f).map_err(io_err(f))?;
        }
        self.committed = true;
        Ok(std::mem::take(&mut self.finals))
    }
}

impl Drop for AtomicFiles {
    fn drop(&mut self) {
        if !self.committed {
            self.writers.clear();
            for t in &self.temps {
                let _ = std::fs::remove_file(t);
            }
        }
    }
}

/// Writes `text` to `path` through `path.tmp` and a rename.
pub(crate) fn write_atomic(path: &Path, text: &[u8]) -> Result<(), DataError> {
    let mut f = AtomicFiles::create(vec![path.to_path_buf()], 1 << 16)?;
    f.write(0, text)?;
    f.commit()?;
    Ok(())
}

/// Records skipped under `skip_bad`: how many, and the first [`Skipped::KEPT`] errors.
#[derive(Debug, Default)]
pub struct Skipped {
    pub count: usize,
    pub first: Vec<DataError>,
}

impl Skipped {
    /// How many errors are kept for reporting.
    pub const KEPT: usize = 100;

    pub(crate) fn push(&mut self, e: DataError) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            self.first.push(e);
        }
    }

    /// `e` as an error, or (with `skip_bad`) counted here and Ok.
    pub(crate) fn skip_or_fail(&mut self, e: DataError, skip_bad: bool) -> Result<(), DataError> {
        if !skip_bad {
            return Err(e);
        }
        self.push(e);
        Ok(())
    }

    pub(crate) fn extend(&mut self, other: Skipped) {
        self.count += other.count;
        let room = Self::KEPT.saturating_sub(self.first.len());
        self.first.extend(other.first.into_iter().take(room));
    }
}
