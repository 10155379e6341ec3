//! The batch loader: decodes and preprocesses a rank's samples into `[B, 3, H, W]` batches on a
//! background thread, the samples of each batch in parallel with rayon.

use crate::error::{DataError, RecordError, panic_message};
use crate::image::{decode_rgb, to_chw_normalized};
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
    /// The dataset index of each sample.
    pub indices: Vec<usize>,
}

/// How [`epoch_loader`] builds batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Every image must be exactly `height x width` (no resizing, as in PLSC).
    pub height: usize,
    pub width: usize,
    /// Random horizontal flip with p = 0.5 (see [`flip_for`]).
    pub flip: bool,
    /// Drop a final batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the flip coins (use the run's seed).
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

/// Loads, decodes and preprocesses the samples `indices` into one batch, in parallel on the
/// current rayon pool. The first failing sample (in `indices` order) is the error; a decoded
/// image that is not `opts.height x opts.width` is an error naming its record and both sizes.
pub fn load_batch(ds: &dyn Dataset, indices: &[usize], opts: &LoaderOptions, epoch: u64) -> Result<Batch, DataError> {
    opts.validate()?;
    let (h, w) = (opts.height, opts.width);
    let per = 3 * h * w;
    let mut data = vec![0.0f32; indices.len() * per];
    let results: Vec<Result<u32, DataError>> = data
        .par_chunks_mut(per)
        .zip(indices.par_iter())
        .map(|(out, &i)| {
            let record = ds.record(i)?;
            let error = |kind| DataError::Record {
                location: ds.locate(i),
                kind,
            };
            let (rgb, ih, iw) = decode_rgb(&record.image).map_err(|e| error(RecordError::Image(e)))?;
            if (ih, iw) != (h, w) {
                return Err(error(RecordError::Size {
                    want_h: h,
                    want_w: w,
                    got_h: ih,
                    got_w: iw,
                }));
            }
            let flip = opts.flip && flip_for(opts.seed, epoch, i);
            to_chw_normalized(&rgb, h, w, flip, out);
            Ok(record.label)
        })
        .collect();
    let labels = results.into_iter().collect::<Result<Vec<u32>, _>>()?;
    let images =
        Tensor::from_vec(&[indices.len(), 3, h, w], data).expect("the batch buffer holds B * 3 * H * W values");
    Ok(Batch {
        images,
        labels,
        indices: indices.to_vec(),
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
/// batches of `opts.batch_size`, with at most `opts.prefetch` batches ready ahead.
/// Invalid options come back as the iterator's only item.
pub fn epoch_loader(ds: Arc<dyn Dataset>, indices: Vec<usize>, opts: LoaderOptions, epoch: u64) -> EpochLoader {
    let batches = len_batches(indices.len(), opts.batch_size, opts.drop_last);
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = opts.validate() {
        return EpochLoader {
            rx: None,
            handle: None,
            stop,
            pending: Some(e),
            batches: 0,
            done: false,
        };
    }
    let (tx, rx) = sync_channel(opts.prefetch);
    let thread_stop = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("lsc-data-loader".into())
        .spawn(move || {
            for chunk in indices.chunks(opts.batch_size).take(batches) {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                let batch = load_batch(ds.as_ref(), chunk, &opts, epoch);
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
        assert!(e.to_string().starts_with("mem:3: bad JPEG"), "{e}");
        let e = load_batch(ds.as_ref(), &[0, 6], &opts(3, 6, 5, false), 0).unwrap_err();
        assert!(matches!(e, DataError::OutOfRange { index: 6, len: 6 }), "{e}");
        let mut loader = epoch_loader(ds, vec![0, 1], opts(0, 6, 5, false), 0);
        assert!(matches!(loader.next(), Some(Err(DataError::InvalidArgument(_)))));
        assert!(loader.next().is_none());
    }
}
