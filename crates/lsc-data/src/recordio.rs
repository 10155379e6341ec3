//! MXNet RecordIO image sets (`train.rec` + `train.idx`), as insightface packs face datasets
//! and `im2rec` packs image folders: [`RecordIo`] implements [`Dataset`].
//!
//! Format (dmlc-core `RecordIOWriter`, MXNet `recordio.pack`), all little-endian:
//! * A record is one or more chunks: `u32` magic `0xced7230a`, `u32` length word (low 29 bits
//!   the chunk length, top 3 bits the continuation flag: 0 whole record, 1 first, 2 middle,
//!   3 last), the chunk bytes, and zero padding to a 4-byte boundary. The writer splits a payload
//!   at every 4-byte-aligned occurrence of the magic number and drops it; the reader puts the
//!   magic back between consecutive chunks.
//! * The payload is an image-record header (`flag u32`, `label f32`, `id u64`, `id2 u64`;
//!   24 bytes), then `flag` extra `f32` labels, then the encoded image. With `flag > 0` the class
//!   is the first extra label; with `flag == 0` it is the header's `label`.
//! * The `.idx` file has one `key\toffset` line per record (offset = first chunk's byte offset).
//!
//! insightface face sets start with a header record at key 0: `flag >= 2`, no image, labels
//! `[a, b]`. Then keys `1..a` are the images and keys `a..b` are one record per identity. When
//! key 0 is such a record, the dataset's records are exactly keys `1..a` (every one must be in
//! the index); otherwise (plain `im2rec` output) every key in the index is an image record.
//! Records are numbered in key order.
//!
//! Strictness: at open, every `.idx` line is checked (`key\toffset`, both unsigned integers,
//! keys unique, offset inside the `.rec`; blank lines and CRLF are accepted) and the header
//! record, if any, is read and checked. Chunks, the image-record header and the label (a
//! non-negative integer stored as `f32`) are checked when a record is read. Errors name the
//! record as `file.rec:key K (offset O)`, or `file.idx:line` for index lines.
//!
//! Records are read with positioned reads on one open file (no memory map), so any number of
//! loader threads can read at once.

use crate::error::{DataError, RecordError};
use crate::shards::{Dataset, Record};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The RecordIO magic number.
pub const RECORDIO_MAGIC: u32 = 0xced7_230a;

/// The size of MXNet's image-record header (`IRHeader`).
const IR_HEADER_LEN: usize = 24;

/// Low 29 bits of a length word: the chunk length.
const LEN_MASK: u32 = (1 << 29) - 1;

/// One decoded RecordIO payload: MXNet's image-record header, its extra labels and the image.
#[derive(Clone, Debug, PartialEq)]
pub struct IrRecord {
    /// The number of extra `f32` labels.
    pub flag: u32,
    /// The header's own label (0 when `flag > 0`, as MXNet's `pack` writes it).
    pub label: f32,
    pub id: u64,
    pub id2: u64,
    /// The `flag` extra labels.
    pub labels: Vec<f32>,
    /// The encoded image (empty in insightface's header and identity records).
    pub image: Vec<u8>,
}

impl IrRecord {
    /// Parses a payload: the 24-byte header, `flag` extra `f32` labels, then the image.
    pub fn parse(payload: &[u8]) -> Result<IrRecord, RecordError> {
        let short = |flag| RecordError::RecShortHeader {
            len: payload.len(),
            flag,
        };
        if payload.len() < IR_HEADER_LEN {
            return Err(short(u32_at(payload, 0).unwrap_or(0)));
        }
        let flag = u32_at(payload, 0).unwrap_or(0);
        let label = f32::from_bits(u32_at(payload, 4).unwrap_or(0));
        let id = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
        let id2 = u64::from_le_bytes(payload[16..24].try_into().unwrap_or_default());
        let labels_end = IR_HEADER_LEN as u64 + 4 * u64::from(flag);
        if labels_end > payload.len() as u64 {
            return Err(short(flag));
        }
        let labels_end = labels_end as usize;
        let labels = payload[IR_HEADER_LEN..labels_end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(IrRecord {
            flag,
            label,
            id,
            id2,
            labels,
            image: payload[labels_end..].to_vec(),
        })
    }

    /// The class label: the first extra label when `flag > 0`, else the header's label; it must
    /// be a non-negative integer that fits a `u32`.
    pub fn class(&self) -> Result<u32, RecordError> {
        match (self.flag, self.labels.first()) {
            (0, _) => float_to_u32(self.label),
            (_, Some(&x)) => float_to_u32(x),
            (flag, None) => Err(RecordError::RecShortHeader {
                len: IR_HEADER_LEN,
                flag,
            }),
        }
    }
}

/// A non-negative integer-valued `f32` as `u32`.
fn float_to_u32(x: f32) -> Result<u32, RecordError> {
    // `!(x >= 0.0)` also rejects NaN.
    if !(x >= 0.0) || x.fract() != 0.0 || x >= 4_294_967_296.0 {
        return Err(RecordError::FloatLabel(x));
    }
    Ok(x as u32)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// insightface's header record (key 0): images are keys `1..image_end`, identity records are
/// keys `image_end..identity_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaceHeader {
    pub image_end: u64,
    pub identity_end: u64,
}

/// An MXNet RecordIO image set read through its `.idx` (see the module docs).
pub struct RecordIo {
    rec: PathBuf,
    idx: PathBuf,
    file: File,
    file_len: u64,
    /// `(key, byte offset)` of every key in the index, sorted by key.
    index: Vec<(u64, u64)>,
    /// The dataset's records: `index[first..first + len]`.
    first: usize,
    len: usize,
    header: Option<FaceHeader>,
}

impl std::fmt::Debug for RecordIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordIo")
            .field("rec", &self.rec)
            .field("idx", &self.idx)
            .field("records", &self.len)
            .field("header", &self.header)
            .finish()
    }
}

impl RecordIo {
    /// Opens `rec` with the index beside it: the same path with extension `.idx`
    /// (`train.rec` -> `train.idx`).
    pub fn open(rec: &Path) -> Result<RecordIo, DataError> {
        RecordIo::open_with_index(rec, &rec.with_extension("idx"))
    }

    /// Opens `rec` with the index file `idx`; checks the index and the header record (see the
    /// module docs).
    pub fn open_with_index(rec: &Path, idx: &Path) -> Result<RecordIo, DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let file = File::open(rec).map_err(io(rec))?;
        let file_len = file.metadata().map_err(io(rec))?.len();
        let text = std::fs::read_to_string(idx).map_err(io(idx))?;
        let index = parse_index(&text, idx, rec, file_len)?;
        let len = index.len();
        let mut ds = RecordIo {
            rec: rec.to_path_buf(),
            idx: idx.to_path_buf(),
            file,
            file_len,
            index,
            first: 0,
            len,
            header: None,
        };
        ds.header = ds.read_face_header()?;
        if let Some(h) = ds.header {
            // Keys are unique and sorted, so keys 1..image_end are present exactly when they are
            // the image_end - 1 entries from key 1 on.
            let first = ds.index.partition_point(|&(key, _)| key < 1);
            let want = (h.image_end - 1) as usize;
            let run = ds.index[first..]
                .iter()
                .take(want)
                .zip(1u64..)
                .take_while(|&(&(key, _), expect)| key == expect)
                .count();
            if run < want {
                return Err(DataError::Record {
                    location: idx.display().to_string(),
                    kind: RecordError::MissingKey {
                        key: run as u64 + 1,
                        why: format!("the header record at key 0 makes keys 1..{} the images", h.image_end),
                    },
                });
            }
            (ds.first, ds.len) = (first, want);
        }
        Ok(ds)
    }

    /// The `.rec` file.
    pub fn rec_path(&self) -> &Path {
        &self.rec
    }

    /// The `.idx` file.
    pub fn idx_path(&self) -> &Path {
        &self.idx
    }

    /// insightface's header record, when key 0 is one.
    pub fn face_header(&self) -> Option<FaceHeader> {
        self.header
    }

    /// The RecordIO key of record `i < len`.
    pub fn key(&self, i: usize) -> Option<u64> {
        self.entry(i).map(|(key, _)| key)
    }

    /// `(key, offset)` of record `i < len`.
    fn entry(&self, i: usize) -> Option<(u64, u64)> {
        (i < self.len).then(|| self.index[self.first + i])
    }

    /// The byte offset of `key`, if it is in the index.
    fn offset_of(&self, key: u64) -> Option<u64> {
        let p = self.index.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        Some(self.index[p].1)
    }

    /// Reads and parses the record with RecordIO key `key` (any key in the index, e.g. an
    /// insightface identity record).
    pub fn read_key(&self, key: u64) -> Result<IrRecord, DataError> {
        let Some(offset) = self.offset_of(key) else {
            return Err(DataError::Record {
                location: self.idx.display().to_string(),
                kind: RecordError::MissingKey {
                    key,
                    why: "asked for by read_key".into(),
                },
            });
        };
        let error = |kind| DataError::Record {
            location: self.locate_key(key, offset),
            kind,
        };
        let payload = self.read_payload(offset).map_err(error)?;
        IrRecord::parse(&payload).map_err(error)
    }

    fn locate_key(&self, key: u64, offset: u64) -> String {
        format!("{}:key {key} (offset {offset})", self.rec.display())
    }

    /// Key 0 as insightface's header record: `flag >= 2`, no image bytes, labels `[a, b]` with
    /// `1 <= a <= b` integers. `None` when there is no key 0 or it is not such a record.
    fn read_face_header(&self) -> Result<Option<FaceHeader>, DataError> {
        let Some(offset) = self.offset_of(0) else {
            return Ok(None);
        };
        let r = self.read_key(0)?;
        if r.flag < 2 || !r.image.is_empty() {
            return Ok(None);
        }
        let bad = |why: String| DataError::Record {
            location: self.locate_key(0, offset),
            kind: RecordError::FaceHeader(why),
        };
        let (Some(&a), Some(&b)) = (r.labels.first(), r.labels.get(1)) else {
            return Ok(None);
        };
        let (image_end, identity_end) = match (float_to_u32(a), float_to_u32(b)) {
            (Ok(a), Ok(b)) => (u64::from(a), u64::from(b)),
            _ => return Err(bad(format!("bounds [{a}, {b}] are not non-negative integers"))),
        };
        if image_end < 1 || identity_end < image_end {
            return Err(bad(format!(
                "bounds [{image_end}, {identity_end}] are not 1 <= images end <= identities end"
            )));
        }
        Ok(Some(FaceHeader {
            image_end,
            identity_end,
        }))
    }

    /// Reads the record starting at byte `offset`, joining its chunks.
    fn read_payload(&self, offset: u64) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        let mut at = offset;
        let mut first = true;
        loop {
            let need = |end: u64| {
                if end > self.file_len {
                    Err(RecordError::RecTruncated {
                        at,
                        end,
                        len: self.file_len,
                    })
                } else {
                    Ok(())
                }
            };
            need(at + 8)?;
            let mut head = [0u8; 8];
            self.read_at(&mut head, at).map_err(|_| RecordError::RecTruncated {
                at,
                end: at + 8,
                len: self.file_len,
            })?;
            let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if magic != RECORDIO_MAGIC {
                return Err(RecordError::RecMagic { at, found: magic });
            }
            let word = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let (cflag, len) = (word >> 29, word & LEN_MASK);
            let last = match (first, cflag) {
                (true, 0) => true,
                (true, 1) | (false, 2) => false,
                (false, 3) => true,
                (true, _) => {
                    return Err(RecordError::RecChunkFlag {
                        at,
                        cflag,
                        expected: "0 (whole record) or 1 (first chunk)",
                    });
                }
                (false, _) => {
                    return Err(RecordError::RecChunkFlag {
                        at,
                        cflag,
                        expected: "2 (middle chunk) or 3 (last chunk) after a first chunk",
                    });
                }
            };
            let padded = u64::from(len).next_multiple_of(4);
            need(at + 8 + padded)?;
            let start = out.len();
            out.resize(start + len as usize, 0);
            self.read_at(&mut out[start..], at + 8)
                .map_err(|_| RecordError::RecTruncated {
                    at,
                    end: at + 8 + padded,
                    len: self.file_len,
                })?;
            if last {
                return Ok(out);
            }
            out.extend_from_slice(&RECORDIO_MAGIC.to_le_bytes());
            at += 8 + padded;
            first = false;
        }
    }

    /// Fills `buf` from byte `offset` of the `.rec`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        crate::fsutil::read_at(&self.file, buf, offset)
    }
}

/// Parses a `.idx` file: `(key, offset)` per non-blank line, sorted by key.
fn parse_index(text: &str, idx: &Path, rec: &Path, file_len: u64) -> Result<Vec<(u64, u64)>, DataError> {
    let line_error = |line: usize, why: String| DataError::Record {
        location: format!("{}:{line}", idx.display()),
        kind: RecordError::IndexLine(why),
    };
    // (key, offset, 1-based line)
    let mut entries: Vec<(u64, u64, usize)> = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| line_error(n + 1, why);
        let shown = || {
            let mut s: String = line.chars().take(40).collect();
            if line.chars().count() > 40 {
                s.push('…');
            }
            s
        };
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 2 {
            return Err(bad(format!("`{}` has {} tab-separated fields", shown(), fields.len())));
        }
        let (Ok(key), Ok(offset)) = (fields[0].trim().parse::<u64>(), fields[1].trim().parse::<u64>()) else {
            return Err(bad(format!("`{}` is not two unsigned integers", shown())));
        };
        if offset.saturating_add(8) > file_len {
            return Err(bad(format!(
                "offset {offset} of key {key} is past the end of {} ({file_len} bytes)",
                rec.display()
            )));
        }
        entries.push((key, offset, n + 1));
    }
    // Sorting by (key, line) puts a repeated key's first line first.
    entries.sort_unstable_by_key(|&(key, _, line)| (key, line));
    if let Some(w) = entries.windows(2).filter(|w| w[0].0 == w[1].0).min_by_key(|w| w[1].2) {
        return Err(line_error(w[1].2, format!("key {} is also on line {}", w[0].0, w[0].2)));
    }
    Ok(entries.into_iter().map(|(key, offset, _)| (key, offset)).collect())
}

impl Dataset for RecordIo {
    fn len(&self) -> usize {
        self.len
    }

    fn record(&self, i: usize) -> Result<Record, DataError> {
        let Some((key, offset)) = self.entry(i) else {
            return Err(DataError::OutOfRange {
                index: i,
                len: self.len(),
            });
        };
        let error = |kind| DataError::Record {
            location: self.locate_key(key, offset),
            kind,
        };
        let payload = self.read_payload(offset).map_err(error)?;
        let r = IrRecord::parse(&payload).map_err(error)?;
        let label = r.class().map_err(error)?;
        if r.image.is_empty() {
            return Err(error(RecordError::NoImage));
        }
        Ok(Record { image: r.image, label })
    }

    fn locate(&self, i: usize) -> String {
        match self.entry(i) {
            Some((key, offset)) => self.locate_key(key, offset),
            None => format!("{}[{i}] (out of range)", self.rec.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(flag: u32, label: f32, extra: &[f32], image: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&flag.to_le_bytes());
        p.extend_from_slice(&label.to_le_bytes());
        p.extend_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(&9u64.to_le_bytes());
        for x in extra {
            p.extend_from_slice(&x.to_le_bytes());
        }
        p.extend_from_slice(image);
        p
    }

    #[test]
    fn parses_header_labels_and_image() {
        let r = IrRecord::parse(&payload(0, 3.0, &[], b"jpg")).unwrap();
        assert_eq!((r.flag, r.id, r.id2, r.image.as_slice()), (0, 7, 9, &b"jpg"[..]));
        assert_eq!(r.class().unwrap(), 3);
        let r = IrRecord::parse(&payload(2, 0.0, &[5.0, 0.5], b"x")).unwrap();
        assert_eq!(r.labels, vec![5.0, 0.5]);
        assert_eq!(r.class().unwrap(), 5);
    }

    #[test]
    fn rejects_short_payloads_and_bad_labels() {
        assert!(matches!(
            IrRecord::parse(&[0; 10]),
            Err(RecordError::RecShortHeader { len: 10, .. })
        ));
        let mut p = payload(3, 0.0, &[1.0], b"");
        assert!(matches!(
            IrRecord::parse(&p),
            Err(RecordError::RecShortHeader { flag: 3, len: 28 })
        ));
        p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(IrRecord::parse(&p).is_err());
        for bad in [-1.0, 0.5, f32::NAN, f32::INFINITY, 5e9] {
            let r = IrRecord::parse(&payload(0, bad, &[], b"x")).unwrap();
            assert!(matches!(r.class(), Err(RecordError::FloatLabel(_))), "{bad}");
        }
        assert_eq!(float_to_u32(-0.0).unwrap(), 0);
    }
}
