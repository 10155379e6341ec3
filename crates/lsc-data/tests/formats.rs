//! The MXNet RecordIO and PLSC image-list readers against fixtures written by an independent
//! writer (`tests/fixtures/make_fixtures.py`, Python stdlib), plus corrupt variants made here.

use lsc_data::{
    DataError, Dataset, FaceHeader, ImageList, LoaderOptions, RECORDIO_MAGIC, RecordError, RecordIo, decode_rgb,
    load_batch,
};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn jpeg(k: usize) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("imagelist/images/img{k}.jpg"))).unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lsc-data-formats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn face_rec() -> Vec<u8> {
    std::fs::read(fixtures().join("face/train.rec")).unwrap()
}

fn face_idx() -> String {
    std::fs::read_to_string(fixtures().join("face/train.idx")).unwrap()
}

fn plain_rec() -> Vec<u8> {
    std::fs::read(fixtures().join("plain/data.rec")).unwrap()
}

fn plain_idx() -> String {
    std::fs::read_to_string(fixtures().join("plain/data.idx")).unwrap()
}

/// `(key, offset)` pairs of an index text.
fn offsets(idx: &str) -> Vec<(u64, u64)> {
    idx.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, o) = l.split_once('\t').unwrap();
            (k.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

fn offset_of(idx: &str, key: u64) -> u64 {
    offsets(idx).into_iter().find(|&(k, _)| k == key).unwrap().1
}

fn record_error(e: DataError) -> (String, RecordError) {
    match e {
        DataError::Record { location, kind } => (location, kind),
        other => panic!("expected a record error, got {other:?}"),
    }
}

fn assert_28x28(image: &[u8]) {
    let (_, h, w) = decode_rgb(image).unwrap();
    assert_eq!((h, w), (28, 28));
}

#[test]
fn face_set_reads_image_keys_only() {
    let rec = fixtures().join("face/train.rec");
    let ds = RecordIo::open(&rec).unwrap();
    assert_eq!(ds.idx_path(), fixtures().join("face/train.idx"));
    assert_eq!(
        ds.face_header(),
        Some(FaceHeader {
            image_end: 7,
            identity_end: 10
        })
    );
    assert_eq!(ds.len(), 6);
    let idx = face_idx();
    let mut labels = Vec::new();
    for i in 0..ds.len() {
        let key = i as u64 + 1;
        assert_eq!(ds.key(i), Some(key));
        assert_eq!(
            ds.locate(i),
            format!("{}:key {key} (offset {})", rec.display(), offset_of(&idx, key))
        );
        let r = ds.record(i).unwrap();
        assert_28x28(&r.image);
        if key != 5 {
            assert_eq!(r.image, jpeg(i), "key {key}");
        }
        labels.push(r.label);
    }
    assert_eq!(labels, [0, 0, 1, 1, 2, 2]);
    assert_eq!(ds.locate(0), format!("{}:key 1 (offset 40)", rec.display()));
    assert!(ds.locate(6).contains("out of range"));
    assert!(matches!(ds.record(6), Err(DataError::OutOfRange { index: 6, len: 6 })));
}

#[test]
fn face_set_split_record_rejoins_at_the_magic() {
    let ds = RecordIo::open(&fixtures().join("face/train.rec")).unwrap();
    // Key 5 was written as four chunks (flags 1, 2, 2, 3; one middle chunk empty).
    let rec = face_rec();
    let at = offset_of(&face_idx(), 5) as usize;
    let word = u32::from_le_bytes(rec[at + 4..at + 8].try_into().unwrap());
    assert_eq!(word >> 29, 1, "the fixture's key 5 starts a split record");

    let r = ds.record(4).unwrap();
    assert_eq!(r.label, 2);
    let original = jpeg(4);
    // SOI, a COM segment holding the planted magics, then the original JPEG after its SOI.
    assert_eq!(&r.image[..4], &[0xff, 0xd8, 0xff, 0xfe]);
    let com_len = u16::from_be_bytes([r.image[4], r.image[5]]) as usize;
    assert_eq!(&r.image[4 + com_len..], &original[2..]);
    let magic = RECORDIO_MAGIC.to_le_bytes();
    let comment = &r.image[6..4 + com_len];
    assert_eq!(comment.windows(4).filter(|w| *w == magic).count(), 4);
    assert!(comment.starts_with(b"mm"));
    assert!(comment.ends_with(b"end"));
    assert_eq!(decode_rgb(&r.image).unwrap().0, decode_rgb(&original).unwrap().0);
}

#[test]
fn face_set_extra_labels_and_identity_records() {
    let ds = RecordIo::open(&fixtures().join("face/train.rec")).unwrap();
    let r = ds.read_key(3).unwrap();
    assert_eq!((r.flag, r.id), (3, 3));
    assert_eq!(r.labels, [1.0, 0.25, 7.5]);
    assert_eq!(r.class().unwrap(), 1);
    assert_eq!(r.image, jpeg(2));
    let header = ds.read_key(0).unwrap();
    assert_eq!(
        (header.flag, header.labels.as_slice(), header.image.len()),
        (2, &[7.0, 10.0][..], 0)
    );
    for (ident, key) in (7..10).enumerate() {
        let r = ds.read_key(key).unwrap();
        let start = 1.0 + 2.0 * ident as f32;
        assert_eq!(r.labels, [start, start + 2.0]);
        assert!(r.image.is_empty());
    }
    let (location, kind) = record_error(ds.read_key(42).unwrap_err());
    assert!(location.ends_with("train.idx"), "{location}");
    assert!(matches!(kind, RecordError::MissingKey { key: 42, .. }));
}

#[test]
fn plain_im2rec_set_reads_every_key() {
    let rec = fixtures().join("plain/data.rec");
    let ds = RecordIo::open(&rec).unwrap();
    assert_eq!(ds.face_header(), None);
    assert_eq!(ds.len(), 5);
    let idx = plain_idx();
    for i in 0..5 {
        let r = ds.record(i).unwrap();
        assert_eq!(r.label, 4 - i as u32);
        assert_eq!(r.image, jpeg(5 - i));
        assert_28x28(&r.image);
        assert_eq!(
            ds.locate(i),
            format!("{}:key {i} (offset {})", rec.display(), offset_of(&idx, i as u64))
        );
    }
    // Key 0 has a label array and an image: an image record whose class is the first label.
    let r0 = ds.read_key(0).unwrap();
    assert_eq!((r0.flag, r0.labels.as_slice()), (2, &[4.0, 9.0][..]));
}

#[test]
fn records_follow_key_order_and_tolerate_blank_and_crlf_idx_lines() {
    let tmp = TempDir::new("order");
    let rec = tmp.write("data.rec", plain_rec());
    let mut lines: Vec<String> = plain_idx()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.reverse();
    let idx = tmp.write("other.idx", format!("\n{}\r\n\r\n  \n", lines.join("\r\n\n")));
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!((0..5).map(|i| ds.key(i).unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(ds.record(1).unwrap().label, 3);
}

#[test]
fn works_with_the_batch_loader_and_concurrent_reads() {
    let ds = RecordIo::open(&fixtures().join("face/train.rec")).unwrap();
    let opts = LoaderOptions {
        batch_size: 6,
        height: 28,
        width: 28,
        ..LoaderOptions::default()
    };
    let batch = load_batch(&ds, &[5, 4, 3, 2, 1, 0], &opts, 0).unwrap();
    assert_eq!(batch.labels, [2, 2, 1, 1, 0, 0]);
    let expect: Vec<_> = (0..6).map(|i| ds.record(i).unwrap()).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (ds, expect) = (&ds, &expect);
            s.spawn(move || {
                for round in 0..20 {
                    let i = (t + round) % 6;
                    assert_eq!(&ds.record(i).unwrap(), &expect[i]);
                }
            });
        }
    });
}

#[test]
fn corrupt_magic_names_the_record_and_the_chunk() {
    let tmp = TempDir::new("magic");
    let idx_text = face_idx();
    let idx = tmp.write("train.idx", &idx_text);
    // The first chunk of key 1.
    let mut bytes = face_rec();
    let at = offset_of(&idx_text, 1) as usize;
    bytes[at] ^= 0xff;
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let e = ds.record(0).unwrap_err();
    let text = e.to_string();
    let (location, kind) = record_error(e);
    assert_eq!(location, format!("{}:key 1 (offset {at})", rec.display()));
    assert!(
        matches!(kind, RecordError::RecMagic { at: a, .. } if a == at as u64),
        "{kind:?}"
    );
    assert!(text.contains("train.rec:key 1") && text.contains("magic"), "{text}");
    assert!(ds.record(1).is_ok(), "other records still read");

    // A continuation chunk of key 5 (the second chunk starts after 8 + 32 bytes).
    let mut bytes = face_rec();
    let at5 = offset_of(&idx_text, 5) as usize;
    bytes[at5 + 40] ^= 0x01;
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (location, kind) = record_error(ds.record(4).unwrap_err());
    assert!(
        location.ends_with(&format!("train.rec:key 5 (offset {at5})")),
        "{location}"
    );
    assert!(
        matches!(kind, RecordError::RecMagic { at, .. } if at == at5 as u64 + 40),
        "{kind:?}"
    );

    // The header record's magic: the open fails, naming key 0.
    let mut bytes = face_rec();
    bytes[1] = 0;
    let rec = tmp.write("train.rec", &bytes);
    let (location, kind) = record_error(RecordIo::open_with_index(&rec, &idx).unwrap_err());
    assert!(location.ends_with("train.rec:key 0 (offset 0)"), "{location}");
    assert!(matches!(kind, RecordError::RecMagic { at: 0, .. }));
}

#[test]
fn bad_continuation_flags_are_errors() {
    let tmp = TempDir::new("cflag");
    let idx_text = face_idx();
    let idx = tmp.write("train.idx", &idx_text);
    // Key 1 claims to be a middle chunk.
    let mut bytes = face_rec();
    let at = offset_of(&idx_text, 1) as usize;
    bytes[at + 7] = (bytes[at + 7] & 0x1f) | (2 << 5);
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (_, kind) = record_error(ds.record(0).unwrap_err());
    assert!(matches!(kind, RecordError::RecChunkFlag { cflag: 2, .. }), "{kind:?}");
    // Key 5's last chunk claims to be a first chunk.
    let mut bytes = face_rec();
    let at5 = offset_of(&idx_text, 5) as usize;
    let last = at5 + 40 + 8 + 8 + 8; // chunks of 32, 0 and 8 bytes precede it
    assert_eq!(bytes[last + 7] >> 5, 3);
    bytes[last + 7] = (bytes[last + 7] & 0x1f) | (1 << 5);
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (_, kind) = record_error(ds.record(4).unwrap_err());
    assert!(
        matches!(kind, RecordError::RecChunkFlag { cflag: 1, at, .. } if at == last as u64),
        "{kind:?}"
    );
}

#[test]
fn truncated_records_are_errors() {
    let tmp = TempDir::new("truncated");
    let idx_text = plain_idx();
    let idx = tmp.write("data.idx", &idx_text);
    let bytes = plain_rec();
    let rec = tmp.write("data.rec", &bytes[..bytes.len() - 10]);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    assert!(ds.record(3).is_ok());
    let e = ds.record(4).unwrap_err();
    let text = e.to_string();
    let (location, kind) = record_error(e);
    let at = offset_of(&idx_text, 4);
    assert!(
        location.ends_with(&format!("data.rec:key 4 (offset {at})")),
        "{location}"
    );
    assert!(
        matches!(kind, RecordError::RecTruncated { at: a, .. } if a == at),
        "{kind:?}"
    );
    assert!(text.contains("truncated"), "{text}");

    // A length word claiming more than the file holds (no huge allocation, an error).
    let mut bytes = plain_rec();
    let at1 = offset_of(&idx_text, 1) as usize;
    bytes[at1 + 4..at1 + 8].copy_from_slice(&((1u32 << 29) - 1).to_le_bytes());
    let rec = tmp.write("data.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (_, kind) = record_error(ds.record(1).unwrap_err());
    assert!(matches!(kind, RecordError::RecTruncated { .. }), "{kind:?}");

    // Truncated inside the split record: the keys past the end fail the open at their idx line.
    let bytes = face_rec();
    let face_idx = tmp.write("train.idx", face_idx());
    let cut = offset_of(&self::face_idx(), 5) as usize + 60;
    let rec = tmp.write("train.rec", &bytes[..cut]);
    let (location, kind) = record_error(RecordIo::open_with_index(&rec, &face_idx).unwrap_err());
    assert_eq!(location, format!("{}:7", face_idx.display()));
    assert!(matches!(kind, RecordError::IndexLine(_)), "{kind:?}");
    // With only keys 0..5 indexed the open fails for the missing image key 6.
    let short: String = self::face_idx().lines().take(6).map(|l| format!("{l}\n")).collect();
    let short_idx = tmp.write("short.idx", short);
    let (location, kind) = record_error(RecordIo::open_with_index(&rec, &short_idx).unwrap_err());
    assert!(location.ends_with("short.idx"), "{location}");
    assert!(matches!(kind, RecordError::MissingKey { key: 6, .. }), "{kind:?}");
}

#[test]
fn truncated_split_record_is_an_error() {
    let tmp = TempDir::new("split-truncated");
    let idx_text = face_idx();
    let at5 = offset_of(&idx_text, 5);
    // A plain index (no key 0) over the face file, cut inside key 5's last chunk.
    let idx = tmp.write("cut.idx", format!("5\t{at5}\n"));
    let bytes = face_rec();
    let rec = tmp.write("train.rec", &bytes[..at5 as usize + 100]);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (location, kind) = record_error(ds.record(0).unwrap_err());
    assert!(
        location.ends_with(&format!("train.rec:key 5 (offset {at5})")),
        "{location}"
    );
    assert!(
        matches!(kind, RecordError::RecTruncated { at, .. } if at == at5 + 64),
        "{kind:?}"
    );
}

#[test]
fn bad_idx_lines_name_the_line() {
    let tmp = TempDir::new("idx");
    let rec = tmp.write("train.rec", face_rec());
    let cases: [(&str, usize); 6] = [
        ("0\t0\n1\t40\n2\tforty\n", 3),
        ("0\t0\n\n1 40\n", 3),
        ("0\t0\n1\t40\t7\n", 2),
        ("-1\t0\n", 1),
        ("0\t0\n1\t40\n0\t0\n", 3),
        ("0\t0\n1\t999999\n", 2),
    ];
    for (text, line) in cases {
        let idx = tmp.write("train.idx", text);
        let e = RecordIo::open(&rec).unwrap_err();
        let shown = e.to_string();
        let (location, kind) = record_error(e);
        assert_eq!(location, format!("{}:{line}", idx.display()), "{text:?}");
        assert!(matches!(kind, RecordError::IndexLine(_)), "{kind:?}");
        assert!(shown.contains(&format!("train.idx:{line}: bad index line")), "{shown}");
    }
    let missing = RecordIo::open_with_index(&rec, &tmp.path().join("nope.idx")).unwrap_err();
    assert!(matches!(missing, DataError::Io { ref path, .. } if path.ends_with("nope.idx")));
    let missing = RecordIo::open(&tmp.path().join("nope.rec")).unwrap_err();
    assert!(matches!(missing, DataError::Io { ref path, .. } if path.ends_with("nope.rec")));
}

#[test]
fn negative_and_fractional_labels_name_the_key() {
    let tmp = TempDir::new("labels");
    let idx_text = plain_idx();
    let idx = tmp.write("data.idx", &idx_text);
    let at1 = offset_of(&idx_text, 1) as usize;
    for bad in [-1.0f32, 1.5, f32::NAN] {
        let mut bytes = plain_rec();
        // Chunk head (8), then IRHeader flag (4), then the label.
        bytes[at1 + 12..at1 + 16].copy_from_slice(&bad.to_le_bytes());
        let rec = tmp.write("data.rec", &bytes);
        let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
        let e = ds.record(1).unwrap_err();
        let text = e.to_string();
        let (location, kind) = record_error(e);
        assert!(
            location.ends_with(&format!("data.rec:key 1 (offset {at1})")),
            "{location}"
        );
        assert!(
            matches!(kind, RecordError::FloatLabel(x) if x.to_bits() == bad.to_bits()),
            "{kind:?}"
        );
        assert!(text.contains("is not a non-negative integer"), "{text}");
    }
    // The first extra label of a flag > 0 record (face key 3).
    let face_idx_text = face_idx();
    let face_idx = tmp.write("train.idx", &face_idx_text);
    let at3 = offset_of(&face_idx_text, 3) as usize;
    let mut bytes = face_rec();
    bytes[at3 + 8 + 24..at3 + 8 + 28].copy_from_slice(&(-2.0f32).to_le_bytes());
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &face_idx).unwrap();
    let (location, kind) = record_error(ds.record(2).unwrap_err());
    assert!(location.contains("key 3"), "{location}");
    assert!(matches!(kind, RecordError::FloatLabel(-2.0)), "{kind:?}");
}

#[test]
fn bad_face_header_and_short_payloads_are_errors() {
    let tmp = TempDir::new("header");
    let idx = tmp.write("train.idx", face_idx());
    // Header bounds [7.5, 10].
    let mut bytes = face_rec();
    bytes[8 + 24..8 + 28].copy_from_slice(&7.5f32.to_le_bytes());
    let rec = tmp.write("train.rec", &bytes);
    let (location, kind) = record_error(RecordIo::open_with_index(&rec, &idx).unwrap_err());
    assert!(location.ends_with("train.rec:key 0 (offset 0)"), "{location}");
    assert!(matches!(kind, RecordError::FaceHeader(_)), "{kind:?}");
    // Header bounds [7, 3] (identities end before images end).
    let mut bytes = face_rec();
    bytes[8 + 28..8 + 32].copy_from_slice(&3.0f32.to_le_bytes());
    let rec = tmp.write("train.rec", &bytes);
    let (_, kind) = record_error(RecordIo::open_with_index(&rec, &idx).unwrap_err());
    assert!(matches!(kind, RecordError::FaceHeader(_)), "{kind:?}");
    // A flag claiming more extra labels than the payload holds (key 1).
    let idx_text = face_idx();
    let at1 = offset_of(&idx_text, 1) as usize;
    let mut bytes = face_rec();
    bytes[at1 + 8..at1 + 12].copy_from_slice(&1000u32.to_le_bytes());
    let rec = tmp.write("train.rec", &bytes);
    let ds = RecordIo::open_with_index(&rec, &idx).unwrap();
    let (_, kind) = record_error(ds.record(0).unwrap_err());
    assert!(
        matches!(kind, RecordError::RecShortHeader { flag: 1000, .. }),
        "{kind:?}"
    );
    // An identity record indexed as an image (plain index, no key 0): no image bytes.
    let plain = tmp.write("ident.idx", format!("7\t{}\n", offset_of(&idx_text, 7)));
    let ds = RecordIo::open_with_index(&tmp.write("train.rec", face_rec()), &plain).unwrap();
    let (location, kind) = record_error(ds.record(0).unwrap_err());
    assert!(location.contains("key 7"), "{location}");
    assert!(matches!(kind, RecordError::NoImage), "{kind:?}");
}

#[test]
fn image_list_reads_label_txt() {
    let list = fixtures().join("imagelist/label.txt");
    let ds = ImageList::open(&list).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.labels(), [0, 1, 2, 3, 4, 5]);
    // Line 3 is blank; line 4 ends in CRLF; line 7 has no final newline.
    let lines = [1, 2, 4, 5, 6, 7];
    for i in 0..6 {
        let r = ds.record(i).unwrap();
        assert_eq!(r.label, i as u32);
        assert_eq!(r.image, jpeg(i));
        assert_28x28(&r.image);
        assert_eq!(ds.locate(i), format!("{}:{}", list.display(), lines[i]));
        assert_eq!(
            ds.image_path(i).unwrap(),
            fixtures().join(format!("imagelist/images/img{i}.jpg"))
        );
    }
    assert!(matches!(ds.record(6), Err(DataError::OutOfRange { .. })));
    // A directory opens its label.txt.
    let dir = ImageList::open(&fixtures().join("imagelist")).unwrap();
    assert_eq!(dir.list_path(), list);
    assert_eq!(dir.len(), 6);
}

#[test]
fn image_list_errors_name_the_line() {
    let tmp = TempDir::new("imagelist");
    std::fs::create_dir_all(tmp.path().join("images")).unwrap();
    for k in [0, 1, 2] {
        tmp.write(&format!("images/img{k}.jpg"), jpeg(k));
    }
    type Case = (&'static str, usize, fn(&RecordError) -> bool);
    let cases: [Case; 5] = [
        (
            "images/img0.jpg 0\n\nimages/img3.jpg 3\n",
            3,
            |k| matches!(k, RecordError::ImageFile { path, .. } if path.ends_with("images/img3.jpg")),
        ),
        ("images/img0.jpg 0\nimages/img1.jpg\n", 2, |k| {
            matches!(k, RecordError::ListLine(_))
        }),
        ("images/img0.jpg 0 7\n", 1, |k| matches!(k, RecordError::ListLine(_))),
        ("images/img0.jpg 0\r\nimages/img1.jpg -1\r\n", 2, |k| {
            matches!(k, RecordError::BadLabel(_))
        }),
        ("images 0\n", 1, |k| matches!(k, RecordError::ImageFile { .. })),
    ];
    for (text, line, check) in cases {
        let list = tmp.write("label.txt", text);
        let e = ImageList::open(&list).unwrap_err();
        let shown = e.to_string();
        let (location, kind) = record_error(e);
        assert_eq!(location, format!("{}:{line}", list.display()), "{text:?}");
        assert!(check(&kind), "{text:?}: {kind:?}");
        assert!(shown.contains(&format!("label.txt:{line}: ")), "{shown}");
    }
    // An image removed after open: the read names the line and the file.
    let list = tmp.write("label.txt", "images/img0.jpg 0\nimages/img2.jpg 2\n");
    let ds = ImageList::open(&list).unwrap();
    std::fs::remove_file(tmp.path().join("images/img2.jpg")).unwrap();
    assert_eq!(ds.record(0).unwrap().image, jpeg(0));
    let (location, kind) = record_error(ds.record(1).unwrap_err());
    assert_eq!(location, format!("{}:2", list.display()));
    assert!(matches!(kind, RecordError::ImageFile { .. }));
    // No list file at all.
    let e = ImageList::open(&tmp.path().join("missing.txt")).unwrap_err();
    assert!(matches!(e, DataError::Io { ref path, .. } if path.ends_with("missing.txt")));
}
