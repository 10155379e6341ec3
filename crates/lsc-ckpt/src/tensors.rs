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
    fn dtype(&self) -> &'static str {
        match self {
            Data::F32(_) => "F32",
            Data::Bf16(_) => "BF16",
            Data::U64(_) => "U64",
        }
    }
    fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
            Data::U64(v) => v.len(),
        }
    }
    fn nbytes(&self) -> usize {
        match self {
            Data::F32(v) => 4 * v.len(),
            Data::Bf16(v) => 2 * v.len(),
            Data::U64(v) => 8 * v.len(),
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

/// Writes `tensors` (and string `metadata`) to `path`; returns (bytes written, lsc64 hash).
/// Nothing is buffered beyond a small write buffer.
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(u64, String), CkptError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Err(CkptError::Tensor {
                path: path.display().to_string(),
                tensor: t.name.clone(),
                why: format!("shape {:?} needs {n} elements, has {}", t.shape, t.data.len()),
            });
        }
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_str(&t.name),
            t.data.dtype(),
            shape.join(","),
            off,
            off + t.data.nbytes()
        ));
        off += t.data.nbytes();
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
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut h = Hasher::default();
    let mut put = |b: &[u8], w: &mut std::io::BufWriter<std::fs::File>| -> Result<(), CkptError> {
        h.update(b);
        w.write_all(b).map_err(io_err(path))
    };
    put(&(header.len() as u64).to_le_bytes(), &mut w)?;
    put(header.as_bytes(), &mut w)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for t in tensors {
        macro_rules! stream {
            ($v:expr) => {
                for chunk in $v.chunks(8192) {
                    buf.clear();
                    for x in chunk {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    put(&buf, &mut w)?;
                }
            };
        }
        match &t.data {
            Data::F32(v) => stream!(v),
            Data::Bf16(v) => stream!(v),
            Data::U64(v) => stream!(v),
        }
    }
    let file = w.into_inner().map_err(|e| CkptError::Io {
        path: path.display().to_string(),
        err: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(path))?;
    Ok((8 + header.len() as u64 + off as u64, h.finish()))
}

/// A file's tensors by name, and its string metadata.
pub type Contents = (BTreeMap<String, NamedTensor>, BTreeMap<String, String>);

/// Reads every tensor of a safetensors file (checked by the `safetensors` crate), with the
/// string metadata.
pub fn read_safetensors(path: &Path) -> Result<Contents, CkptError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let corrupt = |why: String| CkptError::Corrupt {
        path: path.display().to_string(),
        why,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            safetensors::Dtype::F32 => Data::F32(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                    .collect(),
            ),
            safetensors::Dtype::BF16 => Data::Bf16(
                raw.chunks_exact(2)
                    .map(|c| u16::from_le_bytes(c.try_into().expect("2")))
                    .collect(),
            ),
            safetensors::Dtype::U64 => Data::U64(
                raw.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            ),
            other => {
                return Err(CkptError::Tensor {
                    path: path.display().to_string(),
                    tensor: name,
                    why: format!("unsupported dtype {other:?}"),
                });
            }
        };
        out.insert(
            name.clone(),
            NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((out, metadata))
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
