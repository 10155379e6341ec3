//! Opening any supported dataset by its shape on disk ([`open_dataset`]), and checking or
//! summarising every record of one ([`verify_dataset`]).

use crate::error::{DataError, RecordError};
use crate::folder::ImageFolder;
use crate::fsutil::Skipped;
use crate::image::{decode_rgb_into, image_size};
use crate::imagelist::{ImageList, LABEL_TXT};
use crate::recordio::RecordIo;
use crate::shards::{Base64Shards, Dataset, ReadOptions, check_label};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The on-disk dataset formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFormat {
    /// PLSC base64 shards: a `file_list.txt`, its directory, or one shard file.
    Shards,
    /// insightface / MXNet RecordIO: `NAME.rec` with `NAME.idx` beside it.
    RecordIo,
    /// PLSC's image-folder list: `label.txt` (or the directory holding it).
    ImageList,
    /// One subfolder per class.
    ImageFolder,
}

impl DatasetFormat {
    /// The format a path looks like: a `.rec` file is RecordIO; a `label.txt`, or a directory
    /// holding one, is an image list; anything else is base64 shards. (Image folders are never
    /// guessed: a directory without `file_list.txt` is more likely a mistake.)
    pub fn detect(path: &Path) -> DatasetFormat {
        if path.extension().is_some_and(|e| e == "rec") {
            DatasetFormat::RecordIo
        } else if path.file_name().is_some_and(|n| n == LABEL_TXT) || path.join(LABEL_TXT).is_file() {
            DatasetFormat::ImageList
        } else {
            DatasetFormat::Shards
        }
    }

    /// The format's name on the command line: `shards`, `rec`, `list`, `folder`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Shards => "shards",
            DatasetFormat::RecordIo => "rec",
            DatasetFormat::ImageList => "list",
            DatasetFormat::ImageFolder => "folder",
        }
    }

    /// Parses a [`DatasetFormat::name`].
    pub fn from_name(name: &str) -> Option<DatasetFormat> {
        [
            DatasetFormat::Shards,
            DatasetFormat::RecordIo,
            DatasetFormat::ImageList,
            DatasetFormat::ImageFolder,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

/// An opened dataset.
pub struct Opened {
    pub dataset: Arc<dyn Dataset>,
    pub format: DatasetFormat,
    /// Lines or shards left out at open under [`ReadOptions::skip_bad`].
    pub skipped: Skipped,
    /// Class names by label, where the format has them (image folders).
    pub class_names: Option<Vec<String>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("format", &self.format)
            .field("records", &self.dataset.len())
            .field("skipped", &self.skipped.count)
            .finish()
    }
}

/// Opens `path` as `format` ([`DatasetFormat::detect`] when `None`).
pub fn open_dataset(path: &Path, format: Option<DatasetFormat>, opts: &ReadOptions) -> Result<Opened, DataError> {
    let format = format.unwrap_or_else(|| DatasetFormat::detect(path));
    let (dataset, skipped, class_names): (Arc<dyn Dataset>, Skipped, _) = match format {
        DatasetFormat::Shards => {
            let mut ds = Base64Shards::open_with(path, opts)?;
            let skipped = std::mem::take(ds.skipped_mut());
            (Arc::new(ds), skipped, None)
        }
        DatasetFormat::RecordIo => (Arc::new(RecordIo::open(path)?), Skipped::default(), None),
        DatasetFormat::ImageList => {
            let mut ds = ImageList::open_with(path, opts)?;
            let skipped = std::mem::take(ds.skipped_mut());
            (Arc::new(ds), skipped, None)
        }
        DatasetFormat::ImageFolder => {
            let ds = ImageFolder::open(path)?;
            let names = ds.classes().to_vec();
            (Arc::new(ds), Skipped::default(), Some(names))
        }
    };
    Ok(Opened {
        dataset,
        format,
        skipped,
        class_names,
    })
}

/// What [`verify_dataset`] checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Labels must be `< num_classes`.
    pub num_classes: Option<usize>,
    /// Decode every image fully (`verify`); otherwise read only the image headers for their
    /// size (`stats`).
    pub decode: bool,
    /// Every image must be `(h, w)`.
    pub size: Option<(usize, usize)>,
}

/// What [`verify_dataset`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records looked at (good and bad).
    pub records: usize,
    /// Bad records.
    pub bad: usize,
    /// Good records per label.
    pub label_counts: BTreeMap<u32, usize>,
    /// Good records per image size `(h, w)`.
    pub sizes: BTreeMap<(usize, usize), usize>,
}

/// Images per class: the number of classes with at least one image, and the minimum, median
/// (lower median for an even count) and maximum images per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassSummary {
    pub classes: usize,
    pub min: usize,
    pub median: usize,
    pub max: usize,
}

impl VerifyReport {
    /// The class-frequency summary; `None` without good records.
    pub fn class_summary(&self) -> Option<ClassSummary> {
        let mut counts: Vec<usize> = self.label_counts.values().copied().collect();
        if counts.is_empty() {
            return None;
        }
        counts.sort_unstable();
        Some(ClassSummary {
            classes: counts.len(),
            min: counts[0],
            median: counts[(counts.len() - 1) / 2],
            max: counts[counts.len() - 1],
        })
    }
}

/// Records checked per parallel round (progress is reported between rounds).
const ROUND: usize = 2048;

/// Reads every record of `ds` (and decodes or sizes its image), calling `on_bad` for each bad
/// record, in record order, and `progress(done, total)` after every round of records.
pub fn verify_dataset(
    ds: &dyn Dataset,
    opts: &VerifyOptions,
    mut on_bad: impl FnMut(&DataError),
    mut progress: impl FnMut(usize, usize),
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let n = ds.len();
    let check = |i: usize, rgb: &mut Vec<u8>| -> Result<(u32, usize, usize), DataError> {
        let r = ds.record(i)?;
        let error = |kind| DataError::Record {
            location: ds.locate(i),
            kind,
        };
        let label = check_label(r.label, opts.num_classes).map_err(error)?;
        let (h, w) = if opts.decode {
            decode_rgb_into(&r.image, rgb)
        } else {
            image_size(&r.image)
        }
        .map_err(|e| error(RecordError::Image(e)))?;
        if let Some((want_h, want_w)) = opts.size
            && (h, w) != (want_h, want_w)
        {
            return Err(error(RecordError::Size {
                want_h,
                want_w,
                got_h: h,
                got_w: w,
            }));
        }
        Ok((label, h, w))
    };
    for start in (0..n).step_by(ROUND) {
        let end = (start + ROUND).min(n);
        let results: Vec<_> = (start..end)
            .into_par_iter()
            .map_init(Vec::new, |rgb, i| check(i, rgb))
            .collect();
        for r in results {
            report.records += 1;
            match r {
                Ok((label, h, w)) => {
                    *report.label_counts.entry(label).or_insert(0) += 1;
                    *report.sizes.entry((h, w)).or_insert(0) += 1;
                }
                Err(e) => {
                    report.bad += 1;
                    on_bad(&e);
                }
            }
        }
        progress(end, n);
    }
    report
}
