//! The batch loader: decodes and augments a rank's samples into `[B, 3, H, W]` batches on a
//! background thread, the samples of each batch in parallel on a pool of worker threads (the
//! loader's own rayon pool with [`Augment::workers`] threads, or the global pool), with at most
//! `prefetch` batches ready ahead of the consumer.

use crate::augment::{RandomCrop, Region, crop_for, resize_normalize};
use crate::error::{DataError, RecordError, panic_message};
use crate::image::decode_rgb_into;
use crate::shards::Dataset;
use lsc_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// A preprocessed batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, 3, H, W]`, RGB, `(x - 127.5) / 128`.
    pub images: Tensor,
    pub labels: Vec<u32>,
    /// The dataset index of each sample (with [`Augment::skip_bad`], a bad sample's index is
    /// replaced by the one that stood in for it).
    pub indices: Vec<usize>,
    /// With [`Augment::skip_bad`]: the errors of the records that were skipped, as
    /// `file:line: reason`, in batch order.
    pub skipped: Vec<String>,
}

/// How [`epoch_loader`] builds batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// The output size. Without [`Augment::resize`] or a crop, every image must be exactly
    /// `height x width` (as in PLSC).
    pub height: usize,
    pub width: usize,
    /// Random horizontal flip with p = 0.5 (see [`flip_for`]).
    pub flip: bool,
    /// Drop a final batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the flip coins and crops (use the run's seed).
    pub seed: u64,
    /// Batches prepared ahead of the consumer (channel bound; 0 still prepares one).
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    /// PLSC's training defaults: 112x112 faces, flip on; batch 64, drop_last, prefetch 2.
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            height: 112,
            width: 112,
            flip: true,
            drop_last: true,
            seed: 0,
            prefetch: 2,
        }
    }
}

impl LoaderOptions {
    fn validate(&self) -> Result<(), DataError> {
        if self.batch_size == 0 || self.height == 0 || self.width == 0 {
            return Err(DataError::InvalidArgument(format!(
                "loader batch size, height and width must be positive (got {}, {}, {})",
                self.batch_size, self.height, self.width
            )));
        }
        Ok(())
    }
}

/// The loader's optional stages beyond PLSC's decode, flip and normalise (all off by default,
/// which is PLSC's behaviour).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Augment {
    /// Resize every image (or its crop) to `height x width`, bilinear with half-pixel centres.
    /// Off: an image of another size is an error naming its record.
    pub resize: bool,
    /// A random resized crop per sample (see [`crop_for`]), resized to `height x width`.
    pub crop: Option<RandomCrop>,
    /// Replace a record that cannot be read, decoded or checked by the next good one in
    /// dataset order (index + 1, + 2, ... wrapping, at most [`MAX_SUBSTITUTES`] tries) and
    /// report it in [`Batch::skipped`], instead of failing the batch.
    pub skip_bad: bool,
    /// Labels must be `< num_classes`.
    pub num_classes: Option<usize>,
    /// Decoding threads of the loader's own pool; 0 uses the global rayon pool.
    pub workers: usize,
}

/// How many following records [`Augment::skip_bad`] tries in place of a bad one.
pub const MAX_SUBSTITUTES: usize = 64;

impl Augment {
    fn validate(&self) -> Result<(), DataError> {
        if let Some(c) = &self.crop {
            c.validate().map_err(DataError::InvalidArgument)?;
        }
        if self.num_classes == Some(0) {
            return Err(DataError::InvalidArgument("num_classes must be positive".into()));
        }
        Ok(())
    }
}

/// The number of batches `samples` indices make: `samples / batch_size` with `drop_last`,
/// else `ceil(samples / batch_size)`; 0 when `batch_size == 0`.
pub fn len_batches(samples: usize, batch_size: usize, drop_last: bool) -> usize {
    match (batch_size, drop_last) {
        (0, _) => 0,
        (b, true) => samples / b,
        (b, false) => samples.div_ceil(b),
    }
}

/// The flip coin of dataset sample `index` in `epoch`: `Rng::stream(mixed seed, index).coin()`,
/// where the mixed seed combines `seed` and `epoch`. It depends on nothing else, so batches do
/// not depend on thread scheduling, batch size or rank.
pub fn flip_for(seed: u64, epoch: u64, index: usize) -> bool {
    const FLIP_SALT: u64 = 0xF11F_5EED_0D1C_E5A1;
    let mixed = seed ^ FLIP_SALT ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Rng::stream(mixed, index as u64).coin()
}

/// Reads, decodes, checks and augments dataset sample `i` into `out` (`3 * H * W` values);
/// returns its label.
fn prepare(
    ds: &dyn Dataset,
    i: usize,
    opts: &LoaderOptions,
    aug: &Augment,
    epoch: u64,
    rgb: &mut Vec<u8>,
    out: &mut [f32],
) -> Result<u32, DataError> {
    let record = ds.record(i)?;
    let error = |kind| DataError::Record {
        location: ds.locate(i),
        kind,
    };
    if let Some(n) = aug.num_classes
        && record.label as usize >= n
    {
        return Err(error(RecordError::LabelRange {
            label: record.label,
            num_classes: n,
        }));
    }
    let (ih, iw) = decode_rgb_into(&record.image, rgb).map_err(|e| error(RecordError::Image(e)))?;
    let (h, w) = (opts.height, opts.width);
    let region = match &aug.crop {
        Some(c) => crop_for(c, opts.seed, epoch, i, ih, iw),
        None if aug.resize || (ih, iw) == (h, w) => Region::full(ih, iw),
        None => {
            return Err(error(RecordError::Size {
                want_h: h,
                want_w: w,
                got_h: ih,
                got_w: iw,
            }));
        }
    };
    let flip = opts.flip && flip_for(opts.seed, epoch, i);
    resize_normalize(rgb, ih, iw, region, h, w, flip, out);
    Ok(record.label)
}

/// Loads, decodes and preprocesses the samples `indices` into one batch, in parallel on the
/// current rayon pool, with PLSC's preprocessing only ([`Augment::default`]).
pub fn load_batch(ds: &dyn Dataset, indices: &[usize], opts: &LoaderOptions, epoch: u64) -> Result<Batch, DataError> {
    load_batch_with(ds, indices, opts, &Augment::default(), epoch)
}

/// Loads, decodes, checks and augments the samples `indices` into one batch, in parallel on
/// the current rayon pool. Without `skip_bad` the first failing sample (in `indices` order) is
/// the error; a decoded image that is not `opts.height x opts.width` while resizing is off is
/// an error naming its record and both sizes.
pub fn load_batch_with(
    ds: &dyn Dataset,
    indices: &[usize],
    opts: &LoaderOptions,
    aug: &Augment,
    epoch: u64,
) -> Result<Batch, DataError> {
    opts.validate()?;
    aug.validate()?;
    let (h, w) = (opts.height, opts.width);
    let per = 3 * h * w;
    let mut data = vec![0.0f32; indices.len() * per];
    type Sample = (u32, usize, Vec<String>);
    let results: Vec<Result<Sample, DataError>> = data
        .par_chunks_mut(per)
        .zip(indices.par_iter())
        .map_init(Vec::new, |rgb, (out, &i)| {
            let first = match prepare(ds, i, opts, aug, epoch, rgb, out) {
                Ok(label) => return Ok((label, i, Vec::new())),
                Err(e) if !aug.skip_bad || matches!(e, DataError::OutOfRange { .. }) => return Err(e),
                Err(e) => e,
            };
            let mut skipped = vec![first.to_string()];
            let n = ds.len();
            for k in 1..=MAX_SUBSTITUTES.min(n.saturating_sub(1)) {
                let j = (i + k) % n;
                match prepare(ds, j, opts, aug, epoch, rgb, out) {
                    Ok(label) => return Ok((label, j, skipped)),
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            Err(DataError::InvalidArgument(format!(
                "{first}; and none of the {} records after it could stand in (skip_bad)",
                skipped.len() - 1
            )))
        })
        .collect();
    let mut labels = Vec::with_capacity(indices.len());
    let mut used = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for r in results {
        let (label, i, s) = r?;
        labels.push(label);
        used.push(i);
        skipped.extend(s);
    }
    let images =
        Tensor::from_vec(&[indices.len(), 3, h, w], data).expect("the batch buffer holds B * 3 * H * W values");
    Ok(Batch {
        images,
        labels,
        indices: used,
        skipped,
    })
}

/// An epoch's batches, prepared on a background thread. Yields `Err` at most once, then ends.
/// Dropping it early stops the thread (after the batch it is working on) and joins it.
pub struct EpochLoader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pending: Option<DataError>,
    batches: usize,
    done: bool,
}

impl std::fmt::Debug for EpochLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochLoader")
            .field("batches", &self.batches)
            .field("done", &self.done)
            .finish()
    }
}

/// Starts loading `indices` (e.g. from [`epoch_indices`](crate::epoch_indices)) in order, in
/// batches of `opts.batch_size`, with at most `opts.prefetch` batches ready ahead, with PLSC's
/// preprocessing only ([`Augment::default`]). Invalid options come back as the iterator's only
/// item.
pub fn epoch_loader(ds: Arc<dyn Dataset>, indices: Vec<usize>, opts: LoaderOptions, epoch: u64) -> EpochLoader {
    epoch_loader_with(ds, indices, opts, Augment::default(), epoch)
}

/// [`epoch_loader`] with the optional stages of `aug` (resize, random crop, skip bad records,
/// label range, the worker pool).
pub fn epoch_loader_with(
    ds: Arc<dyn Dataset>,
    indices: Vec<usize>,
    opts: LoaderOptions,
    aug: Augment,
    epoch: u64,
) -> EpochLoader {
    let batches = len_batches(indices.len(), opts.batch_size, opts.drop_last);
    let stop = Arc::new(AtomicBool::new(false));
    let pool = match opts.validate().and_then(|()| aug.validate()).and_then(|()| {
        (aug.workers > 0)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(aug.workers)
                    .thread_name(|k| format!("lsc-data-worker-{k}"))
                    .build()
                    .map_err(|e| DataError::InvalidArgument(format!("starting {} loader workers: {e}", aug.workers)))
            })
            .transpose()
    }) {
        Ok(pool) => pool,
        Err(e) => {
            return EpochLoader {
                rx: None,
                handle: None,
                stop,
                pending: Some(e),
                batches: 0,
                done: false,
            };
        }
    };
    let (tx, rx) = sync_channel(opts.prefetch);
    let thread_stop = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("lsc-data-loader".into())
        .spawn(move || {
            for chunk in indices.chunks(opts.batch_size).take(batches) {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                let load = || load_batch_with(ds.as_ref(), chunk, &opts, &aug, epoch);
                let batch = match &pool {
                    Some(pool) => pool.install(load),
                    None => load(),
                };
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        })
        .expect("spawning the data loader thread");
    EpochLoader {
        rx: Some(rx),
        handle: Some(handle),
        stop,
        pending: None,
        batches,
        done: false,
    }
}

impl EpochLoader {
    /// The number of batches this epoch yields when nothing fails.
    pub fn len_batches(&self) -> usize {
        self.batches
    }

    fn finish(&mut self) -> Option<Result<Batch, DataError>> {
        self.done = true;
        self.rx = None;
        let handle = self.handle.take()?;
        match handle.join() {
            Ok(()) => None,
            Err(payload) => Some(Err(DataError::LoaderPanicked(panic_message(payload.as_ref())))),
        }
    }
}

impl Iterator for EpochLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        match self.rx.as_ref()?.recv() {
            Ok(Ok(batch)) => Some(Ok(batch)),
            Ok(Err(e)) => {
                self.finish();
                Some(Err(e))
            }
            Err(_) => self.finish(),
        }
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None; // unblocks a pending send
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{crop_for, resize_normalize};
    use crate::image::{decode_rgb, to_chw_normalized};
    use crate::shards::Record;
    use crate::testutil::{MemDataset, grey_jpeg};
    use std::time::{Duration, Instant};

    fn dataset(n: usize, h: usize, w: usize) -> Arc<MemDataset> {
        Arc::new(MemDataset(
            (0..n)
                .map(|i| Record {
                    image: grey_jpeg(h, w, i),
                    label: 100 + i as u32,
                })
                .collect(),
        ))
    }

    fn opts(batch_size: usize, h: usize, w: usize, drop_last: bool) -> LoaderOptions {
        LoaderOptions {
            batch_size,
            height: h,
            width: w,
            flip: true,
            drop_last,
            seed: 11,
            prefetch: 2,
        }
    }

    /// The plain per-sample reference of one preprocessed image.
    fn reference(ds: &MemDataset, i: usize, o: &LoaderOptions, epoch: u64) -> Vec<f32> {
        let (rgb, h, w) = decode_rgb(&ds.0[i].image).unwrap();
        let mut out = vec![0.0; 3 * h * w];
        to_chw_normalized(&rgb, h, w, o.flip && flip_for(o.seed, epoch, i), &mut out);
        out
    }

    #[test]
    fn batches_cover_indices_in_order() {
        let ds = dataset(10, 6, 5);
        let indices = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
        for (drop_last, sizes) in [(false, vec![4, 4, 2]), (true, vec![4, 4])] {
            let o = opts(4, 6, 5, drop_last);
            let loader = epoch_loader(ds.clone(), indices.clone(), o.clone(), 2);
            assert_eq!(loader.len_batches(), sizes.len());
            let batches: Vec<Batch> = loader.map(Result::unwrap).collect();
            assert_eq!(batches.iter().map(|b| b.labels.len()).collect::<Vec<_>>(), sizes);
            let seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
            assert_eq!(seen, indices[..seen.len()]);
            for b in &batches {
                assert_eq!(b.images.shape(), &[b.indices.len(), 3, 6, 5]);
                for (k, &i) in b.indices.iter().enumerate() {
                    assert_eq!(b.labels[k], 100 + i as u32);
                    let per = 3 * 6 * 5;
                    assert_eq!(&b.images.data()[k * per..(k + 1) * per], &reference(&ds, i, &o, 2)[..]);
                }
            }
        }
        assert_eq!(len_batches(10, 4, false), 3);
        assert_eq!(len_batches(10, 4, true), 2);
        assert_eq!(len_batches(8, 4, false), 2);
        assert_eq!(len_batches(3, 0, false), 0);
    }

    #[test]
    fn independent_of_thread_count() {
        let ds = dataset(24, 8, 8);
        let indices: Vec<usize> = (0..24).rev().collect();
        let o = opts(24, 8, 8, false);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| load_batch(ds.as_ref(), &indices, &o, 5).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
        let from_loader = epoch_loader(ds.clone(), indices.clone(), o.clone(), 5)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(one, from_loader);
        // Some samples are flipped and some are not, and epochs differ.
        let flips: Vec<bool> = indices.iter().map(|&i| flip_for(11, 5, i)).collect();
        assert!(flips.iter().any(|&f| f) && flips.iter().any(|&f| !f));
        let other: Vec<bool> = indices.iter().map(|&i| flip_for(11, 6, i)).collect();
        assert_ne!(flips, other);
        let heads = (0..10_000).filter(|&i| flip_for(3, 0, i)).count();
        assert!((4_700..5_300).contains(&heads), "{heads}");
    }

    #[test]
    fn dropping_mid_epoch_returns_promptly() {
        let ds = dataset(256, 28, 28);
        let indices: Vec<usize> = (0..256).collect();
        let mut o = opts(8, 28, 28, true);
        o.prefetch = 1;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut loader = epoch_loader(ds, indices, o, 0);
            loader.next().unwrap().unwrap();
            std::thread::sleep(Duration::from_millis(50)); // let the producer block on a full channel
            let t = Instant::now();
            drop(loader);
            done_tx.send(t.elapsed()).unwrap();
        });
        let took = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("dropping the loader hung");
        assert!(took < Duration::from_secs(2), "drop took {took:?}");
    }

    #[test]
    fn wrong_size_and_bad_options_are_errors() {
        let mut records: Vec<Record> = (0..6)
            .map(|i| Record {
                image: grey_jpeg(6, 5, i),
                label: i as u32,
            })
            .collect();
        records[4].image = grey_jpeg(28, 28, 0);
        records[2].image = b"garbage".to_vec();
        let ds: Arc<dyn Dataset> = Arc::new(MemDataset(records));
        let mut loader = epoch_loader(ds.clone(), vec![0, 1, 4, 2], opts(2, 6, 5, false), 0);
        loader.next().unwrap().unwrap();
        let e = loader.next().unwrap().unwrap_err().to_string();
        assert!(
            e.starts_with("mem:5: image is 28x28") && e.contains("expects 6x5"),
            "{e}"
        );
        assert!(loader.next().is_none(), "the loader ends after an error");
        // In one batch the first failing sample in index order is reported.
        let e = load_batch(ds.as_ref(), &[0, 2, 4], &opts(3, 6, 5, false), 0).unwrap_err();
        assert!(e.to_string().starts_with("mem:3: not a JPEG or PNG"), "{e}");
        let e = load_batch(ds.as_ref(), &[0, 6], &opts(3, 6, 5, false), 0).unwrap_err();
        assert!(matches!(e, DataError::OutOfRange { index: 6, len: 6 }), "{e}");
        let mut loader = epoch_loader(ds, vec![0, 1], opts(0, 6, 5, false), 0);
        assert!(matches!(loader.next(), Some(Err(DataError::InvalidArgument(_)))));
        assert!(loader.next().is_none());
    }

    #[test]
    fn resize_crop_and_workers_are_deterministic_per_sample() {
        let ds = dataset(12, 20, 16);
        let indices: Vec<usize> = (0..12).rev().collect();
        let o = opts(6, 10, 8, false);
        // Resizing off: a size mismatch is an error.
        let e = load_batch(ds.as_ref(), &indices, &o, 0).unwrap_err();
        assert!(e.to_string().contains("resizing is off"), "{e}");
        let resize = Augment {
            resize: true,
            ..Augment::default()
        };
        let crop = Augment {
            crop: Some(RandomCrop::default()),
            ..Augment::default()
        };
        for aug in [resize, crop] {
            let one = load_batch_with(ds.as_ref(), &indices, &o, &aug, 3).unwrap();
            assert_eq!(one.images.shape(), &[12, 3, 10, 8]);
            // Each sample equals its own reference: decode, crop region, resize, flip.
            for (k, &i) in one.indices.iter().enumerate() {
                let (rgb, h, w) = decode_rgb(&ds.0[i].image).unwrap();
                let region = match &aug.crop {
                    Some(c) => crop_for(c, o.seed, 3, i, h, w),
                    None => Region::full(h, w),
                };
                let mut want = vec![0.0; 3 * 10 * 8];
                resize_normalize(&rgb, h, w, region, 10, 8, flip_for(o.seed, 3, i), &mut want);
                assert_eq!(&one.images.data()[k * 240..(k + 1) * 240], &want[..]);
            }
            // The same bits on a loader with its own pool of 1 or 3 workers, in batches of 6.
            for workers in [1, 3] {
                let a = Augment { workers, ..aug.clone() };
                let batches: Vec<Batch> = epoch_loader_with(ds.clone(), indices.clone(), o.clone(), a, 3)
                    .map(Result::unwrap)
                    .collect();
                let data: Vec<f32> = batches.iter().flat_map(|b| b.images.data().to_vec()).collect();
                assert_eq!(data, one.images.data());
            }
            assert_ne!(
                load_batch_with(ds.as_ref(), &indices, &o, &aug, 4).unwrap().images,
                one.images
            );
        }
        let bad = Augment {
            crop: Some(RandomCrop {
                scale: (0.5, 2.0),
                ..RandomCrop::default()
            }),
            ..Augment::default()
        };
        let mut loader = epoch_loader_with(ds, indices, o, bad, 0);
        assert!(matches!(loader.next(), Some(Err(DataError::InvalidArgument(_)))));
    }

    #[test]
    fn skip_bad_replaces_bad_records_and_reports_them() {
        let mut records: Vec<Record> = (0..8)
            .map(|i| Record {
                image: grey_jpeg(6, 5, i),
                label: i as u32,
            })
            .collect();
        records[2].image = b"garbage".to_vec();
        records[3].image = grey_jpeg(9, 9, 0);
        records[5].label = 9;
        let ds: Arc<dyn Dataset> = Arc::new(MemDataset(records));
        let aug = Augment {
            skip_bad: true,
            num_classes: Some(10),
            ..Augment::default()
        };
        let o = opts(4, 6, 5, false);
        let b = load_batch_with(ds.as_ref(), &[2, 0, 5, 7], &o, &aug, 0).unwrap();
        // 2 (bad image) and 3 (wrong size) are skipped for 4; 5 is fine below 10 classes.
        assert_eq!(b.indices, [4, 0, 5, 7]);
        assert_eq!(b.labels, [4, 0, 9, 7]);
        assert_eq!(b.skipped.len(), 2);
        assert!(b.skipped[0].starts_with("mem:3: not a JPEG or PNG"), "{:?}", b.skipped);
        assert!(b.skipped[1].starts_with("mem:4: image is 9x9"), "{:?}", b.skipped);
        // A label out of range is bad too; without skip_bad it fails the batch.
        let strict = Augment {
            num_classes: Some(8),
            ..Augment::default()
        };
        let e = load_batch_with(ds.as_ref(), &[5], &o, &strict, 0).unwrap_err();
        assert_eq!(e.to_string(), "mem:6: label 9 is outside 0..8 (num_classes)");
        let skip8 = Augment {
            num_classes: Some(8),
            ..aug
        };
        let b = load_batch_with(ds.as_ref(), &[5], &o, &skip8, 0).unwrap();
        assert_eq!((b.indices.as_slice(), b.skipped.len()), (&[6][..], 1));
        // Nothing good to stand in: an error.
        let all_bad: Arc<dyn Dataset> = Arc::new(MemDataset(vec![
            Record {
                image: b"x".to_vec(),
                label: 0
            };
            3
        ]));
        let e = load_batch_with(all_bad.as_ref(), &[1], &o, &skip8, 0).unwrap_err();
        assert!(e.to_string().contains("none of the 2 records after it"), "{e}");
    }
}
