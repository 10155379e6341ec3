//! Training data for `lsc`: PLSC's base64 shard format, insightface RecordIO, PLSC image lists
//! and image folders; JPEG and PNG decoding, PLSC preprocessing and augmentation; the seeded
//! distributed sampler, the prefetching batch loader; dataset packing, verification, the
//! external-memory shuffle, and face verification sets (`.bin`).
//!
//! * [`Base64Shards`], [`RecordIo`], [`ImageList`], [`ImageFolder`] implement [`Dataset`];
//!   [`open_dataset`] opens any of them by the path's shape; [`ReadOptions`] checks label ranges
//!   and skips bad lines.
//! * [`decode_rgb`] decodes JPEG or PNG to RGB (HWC u8); [`to_chw_normalized`] converts to CHW
//!   f32 with PLSC's `(x - 127.5) / 128` and an optional horizontal flip; [`resize_normalize`]
//!   and [`crop_for`] add bilinear resizing and the random resized crop.
//! * [`epoch_indices`] / [`Sampler`] give each rank its share of a per-epoch global permutation.
//! * [`epoch_loader`] / [`epoch_loader_with`] turn a rank's indices into [`Batch`]es on a
//!   background thread and a worker pool; [`Augment`] holds the optional stages.
//! * [`verify_dataset`] checks or summarises every record; [`pack`] writes shards from any
//!   dataset (and Fashion-MNIST) through [`ShardWriter`]; [`shuffle`] is the external-memory
//!   global shuffle; [`bin`] reads and writes face verification sets (`.bin`).
//!
//! Every error about a record names its location: `file:line` (1-based) for text formats,
//! `file.rec:key K (offset O)` for RecordIO.

mod augment; // defines: RandomCrop, Region, crop_for, resize_normalize
pub mod bin; // defines: VerificationSet, read_bin, write_bin, read_pair_list (pickle `.bin` files)
mod error; // defines: DataError, RecordError, ImageError
mod folder; // defines: ImageFolder
mod fsutil; // defines: read_at, AtomicFiles, write_atomic, Skipped
mod image; // defines: decode_rgb, decode_rgb_into, image_size, to_chw_normalized
mod imagelist; // defines: ImageList, LABEL_TXT
mod loader; // defines: Batch, LoaderOptions, Augment, EpochLoader, epoch_loader(_with), load_batch(_with), flip_for
pub mod pack; // defines: pack_dataset, fashion_mnist (IDX -> JPEG -> shards), read_idx, class_balanced_subset
mod recordio; // defines: RecordIo, IrRecord, FaceHeader, RECORDIO_MAGIC
mod sampler; // defines: Sampler, epoch_indices
mod shards; // defines: Dataset, Record, ReadOptions, Base64Shards, ShardWriter, write_shards
pub mod shuffle; // defines: shuffle_split (external-memory global shuffle into N parts)
mod verify; // defines: DatasetFormat, open_dataset, verify_dataset, VerifyReport

pub use augment::{RandomCrop, Region, crop_for, resize_normalize};
pub use error::{DataError, ImageError, RecordError};
pub use folder::ImageFolder;
pub use fsutil::Skipped;
pub use image::{ImageFormat, MAX_PIXELS, decode_rgb, decode_rgb_into, image_size, sniff, to_chw_normalized};
pub use imagelist::{ImageList, LABEL_TXT};
pub use loader::{
    Augment, Batch, EpochLoader, LoaderOptions, MAX_SUBSTITUTES, epoch_loader, epoch_loader_with, flip_for,
    len_batches, load_batch, load_batch_with,
};
pub use recordio::{FaceHeader, IrRecord, RECORDIO_MAGIC, RecordIo};
pub use sampler::{Sampler, epoch_indices};
pub use shards::{
    Base64Shards, Dataset, FILE_LIST, ReadOptions, Record, ShardSummary, ShardWriter, part_name, write_shards,
};
pub use verify::{ClassSummary, DatasetFormat, Opened, VerifyOptions, VerifyReport, open_dataset, verify_dataset};

#[cfg(test)]
mod testutil; // defines: TempDir, MemDataset, grey_jpeg
