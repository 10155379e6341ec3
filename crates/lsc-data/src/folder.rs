//! An image folder: one subfolder per class (`root/<class>/<image>`), torchvision's
//! `ImageFolder` layout. [`ImageFolder`] implements [`Dataset`].
//!
//! Class folders are sorted by name and numbered 0, 1, ...; the images of a class are sorted by
//! file name; records are numbered class by class. Files whose extension is `jpg`, `jpeg` or
//! `png` (any case) are images; other files and names starting with `.` are ignored (and
//! counted). Image bytes are read when a record is read.

use crate::error::{DataError, RecordError};
use crate::fsutil::io_err;
use crate::shards::{Dataset, Record};
use std::path::{Path, PathBuf};

/// An image folder (see the module docs).
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    /// `(image path, label)`, in record order.
    entries: Vec<(PathBuf, u32)>,
    ignored: usize,
}

impl std::fmt::Debug for ImageFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFolder")
            .field("root", &self.root)
            .field("classes", &self.classes.len())
            .field("records", &self.entries.len())
            .finish()
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = std::fs::metadata(&path).map_err(io_err(&path))?.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl ImageFolder {
    /// Lists `root`: its subfolders are the classes. A root without class folders, or a class
    /// folder without images, is an error naming it.
    pub fn open(root: &Path) -> Result<ImageFolder, DataError> {
        let mut classes = Vec::new();
        let mut entries = Vec::new();
        let mut ignored = 0;
        for (name, path, is_dir) in sorted_entries(root)? {
            if !is_dir || name.starts_with('.') {
                ignored += 1;
                continue;
            }
            let label = u32::try_from(classes.len())
                .map_err(|_| DataError::InvalidArgument(format!("{}: more than 2^32 classes", root.display())))?;
            let before = entries.len();
            for (file, image, sub_is_dir) in sorted_entries(&path)? {
                if sub_is_dir || file.starts_with('.') || !is_image(&image) {
                    ignored += 1;
                    continue;
                }
                entries.push((image, label));
            }
            if entries.len() == before {
                return Err(DataError::Record {
                    location: path.display().to_string(),
                    kind: RecordError::EmptyClassFolder,
                });
            }
            classes.push(name);
        }
        if classes.is_empty() {
            return Err(DataError::InvalidArgument(format!(
                "{}: not an image folder (no class subfolders)",
                root.display()
            )));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            entries,
            ignored,
        })
    }

    /// The class folder names; class `c` is `classes()[c]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Every record's label, in record order.
    pub fn labels(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.1).collect()
    }

    /// Files and folders that were not taken as classes or images.
    pub fn ignored(&self) -> usize {
        self.ignored
    }

    /// The folder this set was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn record(&self, i: usize) -> Result<Record, DataError> {
        let Some((path, label)) = self.entries.get(i) else {
            return Err(DataError::OutOfRange {
                index: i,
                len: self.len(),
            });
        };
        let image = std::fs::read(path).map_err(|source| DataError::Record {
            location: path.display().to_string(),
            kind: RecordError::ImageFile {
                path: path.clone(),
                source,
            },
        })?;
        Ok(Record { image, label: *label })
    }

    fn locate(&self, i: usize) -> String {
        match self.entries.get(i) {
            Some((path, _)) => path.display().to_string(),
            None => format!("{}[{i}] (out of range)", self.root.display()),
        }
    }
}
