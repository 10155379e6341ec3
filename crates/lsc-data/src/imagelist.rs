//! PLSC image-folder training data (`plsc/utils/jpeg_reader.py`): a `label.txt` naming one
//! image file and its class per line. [`ImageList`] implements [`Dataset`].
//!
//! Each line is `<relative path><whitespace><label>` (e.g. `images/00000000.jpg 0`), split on
//! whitespace as PLSC's `strip().split()` does, so paths cannot contain spaces. Paths are
//! relative to the list file's directory (absolute paths are used as they are).
//!
//! Strictness: CRLF line ends, surrounding whitespace and a missing final newline are accepted;
//! blank lines are skipped. At open, every line must have exactly two fields, the label must be
//! a `u32`, and the image must be an existing regular file; the first bad line fails the open,
//! naming `label.txt:line` (1-based). Image bytes are read when a record is read.

use crate::error::{DataError, RecordError};
use crate::fsutil::Skipped;
use crate::shards::{Dataset, ReadOptions, Record, check_label};
use std::path::{Path, PathBuf};

/// The name of PLSC's image list in a dataset directory.
pub const LABEL_TXT: &str = "label.txt";

/// One list entry.
struct Entry {
    path: PathBuf,
    label: u32,
    /// 1-based line in the list file.
    line: usize,
}

/// A PLSC image-folder list (see the module docs). Records are numbered in line order.
pub struct ImageList {
    list: PathBuf,
    entries: Vec<Entry>,
    skipped: Skipped,
}

impl std::fmt::Debug for ImageList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageList")
            .field("list", &self.list)
            .field("records", &self.entries.len())
            .finish()
    }
}

impl ImageList {
    /// Opens a list file, or a directory holding `label.txt`; checks every line and that every
    /// image exists.
    pub fn open(path: &Path) -> Result<ImageList, DataError> {
        ImageList::open_with(path, &ReadOptions::default())
    }

    /// [`ImageList::open`] with a label range check and optional skipping of bad lines
    /// (counted in [`ImageList::skipped`]). A list with no entries is an error.
    pub fn open_with(path: &Path, opts: &ReadOptions) -> Result<ImageList, DataError> {
        let list = if path.is_dir() {
            path.join(LABEL_TXT)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&list).map_err(|source| DataError::Io {
            path: list.clone(),
            source,
        })?;
        let base = list.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut entries = Vec::new();
        let mut skipped = Skipped::default();
        for (n, line) in text.split('\n').enumerate() {
            let line_no = n + 1;
            let error = |kind| DataError::Record {
                location: format!("{}:{line_no}", list.display()),
                kind,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let checked = (|| {
                let [rel, label] = fields.as_slice() else {
                    return Err(error(RecordError::ListLine(format!(
                        "`{}` has {} whitespace-separated fields",
                        shorten(line.trim()),
                        fields.len()
                    ))));
                };
                let label = label
                    .parse::<u32>()
                    .map_err(|_| error(RecordError::BadLabel(shorten(label))))
                    .and_then(|l| check_label(l, opts.num_classes).map_err(error))?;
                let path = base.join(rel);
                let checked = std::fs::metadata(&path).and_then(|m| {
                    if m.is_file() {
                        Ok(())
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "not a regular file",
                        ))
                    }
                });
                if let Err(source) = checked {
                    return Err(error(RecordError::ImageFile { path, source }));
                }
                Ok(Entry {
                    path,
                    label,
                    line: line_no,
                })
            })();
            match checked {
                Ok(entry) => entries.push(entry),
                Err(e) if opts.skip_bad => skipped.push(e),
                Err(e) => return Err(e),
            }
        }
        if entries.is_empty() && skipped.count == 0 {
            return Err(DataError::Record {
                location: list.display().to_string(),
                kind: RecordError::ListLine("the list names no image".into()),
            });
        }
        Ok(ImageList { list, entries, skipped })
    }

    /// What [`ReadOptions::skip_bad`] left out at open.
    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    pub(crate) fn skipped_mut(&mut self) -> &mut Skipped {
        &mut self.skipped
    }

    /// The list file.
    pub fn list_path(&self) -> &Path {
        &self.list
    }

    /// The image file of record `i < len`.
    pub fn image_path(&self, i: usize) -> Option<&Path> {
        self.entries.get(i).map(|e| e.path.as_path())
    }

    /// Every record's label, in record order.
    pub fn labels(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.label).collect()
    }
}

/// At most 40 characters of `s`, with `…` when cut.
fn shorten(s: &str) -> String {
    let mut shown: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        shown.push('…');
    }
    shown
}

impl Dataset for ImageList {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn record(&self, i: usize) -> Result<Record, DataError> {
        let Some(e) = self.entries.get(i) else {
            return Err(DataError::OutOfRange {
                index: i,
                len: self.len(),
            });
        };
        let image = std::fs::read(&e.path).map_err(|source| DataError::Record {
            location: self.locate(i),
            kind: RecordError::ImageFile {
                path: e.path.clone(),
                source,
            },
        })?;
        Ok(Record { image, label: e.label })
    }

    fn locate(&self, i: usize) -> String {
        match self.entries.get(i) {
            Some(e) => format!("{}:{}", self.list.display(), e.line),
            None => format!("{}[{i}] (out of range)", self.list.display()),
        }
    }
}
