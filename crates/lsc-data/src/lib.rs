//! Training data for `lsc`: PLSC's base64 shard format, JPEG decoding and PLSC preprocessing,
//! the seeded distributed sampler, the prefetching batch loader, and dataset packing.
//!
//! * [`Base64Shards`] reads PLSC base64 shards (`<base64 of JPEG>\t<label>\n` per line) named by
//!   a `file_list.txt`; it implements [`Dataset`].
//! * [`decode_rgb`] decodes JPEG to RGB (HWC u8); [`to_chw_normalized`] converts to CHW f32 with
//!   PLSC's `(x - 127.5) / 128` and an optional horizontal flip.
//! * [`epoch_indices`] / [`Sampler`] give each rank its share of a per-epoch global permutation.
//! * [`epoch_loader`] turns a rank's indices into [`Batch`]es on a background thread.
//! * [`pack`] converts Fashion-MNIST (Debian's `dataset-fashion-mnist`) into shards, through
//!   [`write_shards`]; [`verify`] checks every record of a shard set.
//!
//! Every error about a record names its location: `file:line` (1-based) for text formats,
//! `file.rec:key K (offset O)` for RecordIO.

mod error; // defines: DataError, RecordError, ImageError
mod image; // defines: decode_rgb, to_chw_normalized
mod imagelist; // defines: ImageList, LABEL_TXT
mod loader; // defines: Batch, LoaderOptions, EpochLoader, epoch_loader, load_batch, flip_for
pub mod pack; // defines: fashion_mnist (IDX -> JPEG -> shards), read_idx, class_balanced_subset
mod recordio; // defines: RecordIo, IrRecord, FaceHeader, RECORDIO_MAGIC
mod sampler; // defines: Sampler, epoch_indices
mod shards; // defines: Dataset, Record, Base64Shards, write_shards, verify

pub use error::{DataError, ImageError, RecordError};
pub use image::{decode_rgb, to_chw_normalized};
pub use imagelist::{ImageList, LABEL_TXT};
pub use loader::{Batch, EpochLoader, LoaderOptions, epoch_loader, flip_for, len_batches, load_batch};
pub use recordio::{FaceHeader, IrRecord, RECORDIO_MAGIC, RecordIo};
pub use sampler::{Sampler, epoch_indices};
pub use shards::{Base64Shards, Dataset, FILE_LIST, Record, ShardSummary, VerifyReport, verify, write_shards};

#[cfg(test)]
mod testutil; // defines: TempDir, MemDataset, grey_jpeg
