//! The crate's error types. A record's error names its location as `file:line` (1-based).

use std::path::PathBuf;

/// Errors from opening, reading, loading or writing datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bad record; `location` is `file:line` (1-based) or a dataset's own [`locate`] string.
    ///
    /// [`locate`]: crate::Dataset::locate
    #[error("{location}: {kind}")]
    Record { location: String, kind: RecordError },
    /// A line of a `file_list.txt` names a shard that cannot be read.
    #[error("{location}: cannot read shard {}: {source}", shard.display())]
    Shard {
        location: String,
        shard: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A directory given as a dataset has no `file_list.txt`.
    #[error("{}: not a shard set (no file_list.txt in this directory)", dir.display())]
    NoFileList { dir: PathBuf },
    /// A `file_list.txt` that names no shard.
    #[error("{}: the file list names no shard", path.display())]
    EmptyFileList { path: PathBuf },
    /// A malformed IDX file (Fashion-MNIST / MNIST format).
    #[error("{}: {reason}", path.display())]
    Idx { path: PathBuf, reason: String },
    /// JPEG encoding failed while packing.
    #[error("{what}: JPEG encoding failed: {source}")]
    Encode {
        what: String,
        #[source]
        source: jpeg_encoder::EncodingError,
    },
    /// A sample index past the end of the dataset.
    #[error("sample index {index} is out of range for a dataset of {len} records")]
    OutOfRange { index: usize, len: usize },
    /// An invalid argument (batch size 0, zero shards, quality out of range, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A malformed verification set (`.bin` pickle or pair list).
    #[error("{}: {reason}", path.display())]
    Bin { path: PathBuf, reason: String },
    /// The loader's background thread panicked.
    #[error("the batch loader thread panicked: {0}")]
    LoaderPanicked(String),
}

/// What is wrong with one record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("empty line (every line must be `<base64 image>\\t<label>`)")]
    EmptyLine,
    #[error("no tab: expected `<base64 image>\\t<label>`")]
    MissingTab,
    #[error("more than one tab: expected `<base64 image>\\t<label>`")]
    ExtraField,
    #[error("empty base64 image field")]
    EmptyImage,
    #[error("label `{0}` is not an unsigned 32-bit integer")]
    BadLabel(String),
    #[error("label {label} is outside 0..{num_classes} (num_classes)")]
    LabelRange { label: u32, num_classes: usize },
    #[error("empty file: a shard must hold at least one record")]
    EmptyFile,
    #[error("cannot read the record: {0}")]
    Read(std::io::Error),
    #[error("bad base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("{0}")]
    Image(#[from] ImageError),
    #[error("image is {got_h}x{got_w} (HxW) but the loader expects {want_h}x{want_w} (resizing is off)")]
    Size {
        want_h: usize,
        want_w: usize,
        got_h: usize,
        got_w: usize,
    },
    // MXNet RecordIO (`.rec` + `.idx`, see `recordio`): the record's location is
    // `file.rec:key K (offset O)`, or `file.idx:line` for index lines.
    #[error("bad RecordIO magic 0x{found:08x} at byte {at} (expected 0xced7230a)")]
    RecMagic { at: u64, found: u32 },
    #[error("RecordIO chunk at byte {at} has continuation flag {cflag}; expected {expected}")]
    RecChunkFlag {
        at: u64,
        cflag: u32,
        expected: &'static str,
    },
    #[error("truncated RecordIO record: the chunk at byte {at} needs bytes up to {end}; the file has {len}")]
    RecTruncated { at: u64, end: u64, len: u64 },
    #[error("RecordIO payload of {len} bytes is shorter than its header (24 bytes + 4 x flag {flag} labels)")]
    RecShortHeader { len: usize, flag: u32 },
    #[error("label {0} is not a non-negative integer")]
    FloatLabel(f32),
    #[error("the record holds no image bytes")]
    NoImage,
    #[error("bad insightface header record (key 0): {0}")]
    FaceHeader(String),
    #[error("bad index line (expected `<key>\\t<byte offset>`): {0}")]
    IndexLine(String),
    #[error("key {key} is not in the index ({why})")]
    MissingKey { key: u64, why: String },
    // PLSC image-folder lists (`label.txt`, see `imagelist`): the location is `label.txt:line`.
    #[error("expected `<relative path> <label>`: {0}")]
    ListLine(String),
    // Image folders (see `folder`): the location is the class folder.
    #[error("a class folder with no .jpg, .jpeg or .png image (every subfolder is a class; remove it or add images)")]
    EmptyClassFolder,
    #[error("cannot read image {}: {source}", path.display())]
    ImageFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Errors from decoding an encoded image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("empty image data")]
    Empty,
    #[error("bad JPEG: {0}")]
    Jpeg(#[from] zune_jpeg::errors::DecodeErrors),
    #[error("bad JPEG: decoder produced {got} bytes for a {h}x{w} RGB image")]
    Size { got: usize, h: usize, w: usize },
    #[error("bad PNG: {0}")]
    Png(#[from] zune_png::error::PngDecodeErrors),
    #[error("not a JPEG or PNG image (first bytes {0})")]
    Format(String),
    #[error("bad image: the headers give no dimensions")]
    NoDimensions,
    #[error("bad image: {h}x{w} (HxW) is empty or larger than 8192x8192 pixels")]
    Dimensions { h: usize, w: usize },
    #[error("bad PNG: unsupported colour type {0}")]
    Colorspace(String),
    #[error("bad image: the decoder panicked: {0}")]
    Panic(String),
}

/// A panic payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
