//! Safetensors files: a streaming writer (no copy of the tensors) and a checked reader.
//!
//! Format: an 8-byte little-endian header length, a JSON header
//! `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, …, "__metadata__": {..}}`
//! padded with spaces to a multiple of 8 bytes, then the tensors' little-endian bytes.

use crate::{CkptError, Hasher, io_err};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Tensor elements.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    U64(Vec<u64>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
            Data::U64(v) => v.len(),
        }
    }
}

/// A named tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

impl NamedTensor {
    pub fn f32(name: impl Into<String>, shape: &[usize], data: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: Data::F32(data),
        }
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Element type of a tensor in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    U64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::Bf16 => "BF16",
            Dtype::U64 => "U64",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
            Dtype::U64 => 8,
        }
    }
}

impl Data {
    fn kind(&self) -> Dtype {
        match self {
            Data::F32(_) => Dtype::F32,
            Data::Bf16(_) => Dtype::Bf16,
            Data::U64(_) => Dtype::U64,
        }
    }
}

/// The name, type and shape of a tensor the streaming writer is about to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }
    fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Where [`write_safetensors_with`]'s callback puts a tensor's elements, in order and in as
/// many calls as it likes. Every call hashes and writes through a 1 MiB buffer.
pub struct Sink<'a> {
    w: std::io::BufWriter<std::fs::File>,
    h: Hasher,
    path: &'a Path,
    written: usize,
    buf: Vec<u8>,
}

impl Sink<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), CkptError> {
        crate::crash::point("write");
        self.h.update(b);
        self.written += b.len();
        self.w.write_all(b).map_err(io_err(self.path))
    }

    fn put_le<const N: usize, T: Copy>(&mut self, v: &[T], le: impl Fn(T) -> [u8; N]) -> Result<(), CkptError> {
        let mut buf = std::mem::take(&mut self.buf);
        for chunk in v.chunks((1 << 16) / N) {
            buf.clear();
            for &x in chunk {
                buf.extend_from_slice(&le(x));
            }
            self.put(&buf)?;
        }
        self.buf = buf;
        Ok(())
    }

    /// On little-endian machines the values' memory is already the file's byte order: it is
    /// written as it is, 1 MiB at a time.
    #[cfg(target_endian = "little")]
    fn put_raw<T: Copy>(&mut self, v: &[T]) -> Result<(), CkptError> {
        // SAFETY: f32 and u16 (the only callers' types) have no padding and every byte of
        // them is initialised; the byte view lives only for this call.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
        for chunk in bytes.chunks(1 << 20) {
            self.put(chunk)?;
        }
        Ok(())
    }

    pub fn f32s(&mut self, v: &[f32]) -> Result<(), CkptError> {
        #[cfg(target_endian = "little")]
        return self.put_raw(v);
        #[cfg(not(target_endian = "little"))]
        return self.put_le(v, f32::to_le_bytes);
    }
    /// bf16 bit patterns.
    pub fn bf16s(&mut self, v: &[u16]) -> Result<(), CkptError> {
        #[cfg(target_endian = "little")]
        return self.put_raw(v);
        #[cfg(not(target_endian = "little"))]
        return self.put_le(v, u16::to_le_bytes);
    }
    pub fn u64s(&mut self, v: &[u64]) -> Result<(), CkptError> {
        self.put_le(v, u64::to_le_bytes)
    }
}

/// Writes `tensors` (and string `metadata`) to `path`; returns (bytes written, lsc64 hash).
/// Nothing is buffered beyond a small write buffer.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(u64, String), CkptError> {
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Err(CkptError::Tensor {
                path: path.display().to_string(),
                tensor: t.name.clone(),
                why: format!("shape {:?} needs {n} elements, has {}", t.shape, t.data.len()),
            });
        }
    }
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.data.kind(), &t.shape))
        .collect();
    write_safetensors_with(path, &specs, metadata, |i, sink| match &tensors[i].data {
        Data::F32(v) => sink.f32s(v),
        Data::Bf16(v) => sink.bf16s(v),
        Data::U64(v) => sink.u64s(v),
    })
}

/// Writes a safetensors file whose tensors' bytes come from `fill(i, sink)`, called once per
/// spec in order, so a tensor can be streamed from anywhere (another file's memory map, a
/// store converted tile by tile) without being held whole. Returns (bytes, lsc64 hash); a
/// callback that writes the wrong number of bytes is an error naming the tensor.
pub fn write_safetensors_with(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut fill: impl FnMut(usize, &mut Sink) -> Result<(), CkptError>,
) -> Result<(u64, String), CkptError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    for t in specs {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_str(&t.name),
            t.dtype.name(),
            shape.join(","),
            off,
            off + t.nbytes()
        ));
        off += t.nbytes();
    }
    if !metadata.is_empty() {
        let m: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        entries.push(format!("\"__metadata__\":{{{}}}", m.join(",")));
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    crate::crash::point("create");
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut sink = Sink {
        w: std::io::BufWriter::with_capacity(1 << 20, file),
        h: Hasher::default(),
        path,
        written: 0,
        buf: Vec::with_capacity(1 << 16),
    };
    sink.put(&(header.len() as u64).to_le_bytes())?;
    sink.put(header.as_bytes())?;
    for (i, t) in specs.iter().enumerate() {
        let before = sink.written;
        fill(i, &mut sink)?;
        if sink.written - before != t.nbytes() {
            return Err(CkptError::Tensor {
                path: path.display().to_string(),
                tensor: t.name.clone(),
                why: format!(
                    "{} bytes written for shape {:?} {}, which needs {}",
                    sink.written - before,
                    t.shape,
                    t.dtype.name(),
                    t.nbytes()
                ),
            });
        }
    }
    let Sink { w, h, written, .. } = sink;
    let file = w.into_inner().map_err(|e| CkptError::Io {
        path: path.display().to_string(),
        err: e.into_error(),
    })?;
    crate::crash::point("fsync");
    file.sync_all().map_err(io_err(path))?;
    Ok((written as u64, h.finish()))
}

/// A tensor's place in a [`TensorFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    start: usize,
    end: usize,
}

/// A safetensors file opened through a memory map: its header is parsed and checked (by the
/// `safetensors` crate) up front, and tensors or row ranges of them are read on demand, so a
/// shard far larger than memory can be sliced without being loaded.
pub struct TensorFile {
    path: std::path::PathBuf,
    map: memmap2::Mmap,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile").field("path", &self.path).finish()
    }
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile, CkptError> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: checkpoint files are written once under a temporary name and never modified
        // in place after the rename; a concurrent truncation by another program is outside
        // what this reader guards against (as with every mmap reader).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let corrupt = |why: String| CkptError::Corrupt {
            path: path.display().to_string(),
            why,
        };
        let st = safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| corrupt(e.to_string()))?;
        let metadata: BTreeMap<String, String> = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let base = map.as_ptr() as usize;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => Dtype::F32,
                safetensors::Dtype::BF16 => Dtype::Bf16,
                safetensors::Dtype::U64 => Dtype::U64,
                other => {
                    return Err(CkptError::Tensor {
                        path: path.display().to_string(),
                        tensor: name,
                        why: format!("unsupported dtype {other:?}"),
                    });
                }
            };
            let start = view.data().as_ptr() as usize - base;
            let info = TensorInfo {
                dtype,
                shape: view.shape().to_vec(),
                start,
                end: start + view.data().len(),
            };
            tensors.insert(name, info);
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// Every tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, CkptError> {
        self.tensors.get(name).ok_or_else(|| CkptError::Tensor {
            path: self.path.display().to_string(),
            tensor: name.to_string(),
            why: "not in the file".into(),
        })
    }

    /// A tensor's raw little-endian bytes.
    pub fn bytes(&self, name: &str) -> Result<&[u8], CkptError> {
        let i = self.info(name)?;
        Ok(&self.map[i.start..i.end])
    }

    /// Reads a whole tensor.
    pub fn read(&self, name: &str) -> Result<NamedTensor, CkptError> {
        let i = self.info(name)?;
        let raw = &self.map[i.start..i.end];
        let data = match i.dtype {
            Dtype::F32 => Data::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            Dtype::Bf16 => Data::Bf16(
                raw.chunks_exact(2)
                    .map(|c| u16::from_le_bytes(c.try_into().expect("2")))
                    .collect(),
            ),
            Dtype::U64 => Data::U64(
                raw.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
        };
        Ok(NamedTensor {
            name: name.to_string(),
            shape: i.shape.clone(),
            data,
        })
    }

    /// Rows `rows` (along the first dimension) of an F32 or BF16 tensor, as f32 into `out`
    /// (whose length must be the rows' element count). A 1-D tensor has one element per row.
    pub fn rows_f32(&self, name: &str, rows: std::ops::Range<usize>, out: &mut [f32]) -> Result<(), CkptError> {
        let i = self.info(name)?;
        let bad = |why: String| CkptError::Tensor {
            path: self.path.display().to_string(),
            tensor: name.to_string(),
            why,
        };
        let n0 = i.shape.first().copied().unwrap_or(1);
        let per: usize = i.shape.iter().skip(1).product();
        if rows.start > rows.end || rows.end > n0 {
            return Err(bad(format!("rows {rows:?} asked of shape {:?}", i.shape)));
        }
        if out.len() != rows.len() * per {
            return Err(bad(format!(
                "rows {rows:?} of shape {:?} are {} values, the destination holds {}",
                i.shape,
                rows.len() * per,
                out.len()
            )));
        }
        let sz = i.dtype.size();
        let raw = &self.map[i.start + rows.start * per * sz..i.start + rows.end * per * sz];
        match i.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes(c.try_into().expect("4"));
                }
            }
            Dtype::Bf16 => {
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes(c.try_into().expect("2")) as u32) << 16);
                }
            }
            Dtype::U64 => return Err(bad("U64, not a float tensor".into())),
        }
        self.release(i.start + rows.start * per * sz, raw.len());
        Ok(())
    }

    /// Drops the pages of `len` bytes at `offset` from this process's resident set once they
    /// have been copied out, so streaming a shard through the map holds one tile, not the file.
    /// The map is a read-only shared file map: the pages stay in the page cache and a later
    /// access faults the same bytes back in.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if len > 0 {
            // SAFETY: see above; no reference into the map is invalidated, since re-reading a
            // dropped page of a read-only shared file map gives the same bytes.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }
}

/// A file's tensors by name, and its string metadata.
pub type Contents = (BTreeMap<String, NamedTensor>, BTreeMap<String, String>);

/// Reads every tensor of a safetensors file (checked by the `safetensors` crate), with the
/// string metadata.
pub fn read_safetensors(path: &Path) -> Result<Contents, CkptError> {
    let f = TensorFile::open(path)?;
    let mut out = BTreeMap::new();
    for name in f.tensors().keys() {
        out.insert(name.clone(), f.read(name)?);
    }
    Ok((out, f.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_reference_reader() {
        let dir = std::env::temp_dir().join(format!("lsc-ckpt-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.safetensors");
        let ts = vec![
            NamedTensor::f32(
                "layer1.0.conv1.weight",
                &[2, 3],
                vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0],
            ),
            NamedTensor {
                name: "head.weight".into(),
                shape: vec![3],
                data: Data::Bf16(vec![0x3f80, 0xc000, 1]),
            },
            NamedTensor {
                name: "quote\"name".into(),
                shape: vec![1],
                data: Data::U64(vec![u64::MAX]),
            },
            NamedTensor::f32("empty", &[0, 4], vec![]),
        ];
        let meta: BTreeMap<String, String> = [("format".to_string(), "lsc".to_string())].into();
        let (n, h) = write_safetensors(&p, &ts, &meta).unwrap();
        assert_eq!(n, std::fs::metadata(&p).unwrap().len());
        assert_eq!(crate::hash_file(&p).unwrap(), (n, h));
        let (back, m) = read_safetensors(&p).unwrap();
        assert_eq!(m, meta);
        for t in &ts {
            assert_eq!(&back[&t.name], t);
        }
        let e = write_safetensors(&p, &[NamedTensor::f32("bad", &[2, 2], vec![1.0])], &meta)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor bad") && e.contains("[2, 2]"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(
            read_safetensors(&p)
                .unwrap_err()
                .to_string()
                .contains("not a valid safetensors")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
