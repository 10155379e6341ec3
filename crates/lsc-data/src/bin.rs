//! Face verification sets: insightface's and PLSC's `.bin` files (lfw, cfp_fp, agedb_30, ...)
//! and PLSC 2's pair-list text form.
//!
//! A `.bin` is a Python pickle of `(bins, issame_list)`: `bins` a list of `2P` encoded images,
//! `issame_list` a list of `P` bools; pair `i` is images `2i` and `2i + 1`. Writers seen in
//! the wild, all read here:
//! * Python 2 (`BINSTRING` / `SHORT_BINSTRING` image strings);
//! * Python 3 at protocol 2, where `bytes` are written as `_codecs.encode(str, 'latin1')`
//!   (`GLOBAL` + `REDUCE`), and protocols 3 to 5 (`BINBYTES`, `FRAME`, `MEMOIZE`, ...);
//! * images as numpy `uint8` arrays (`cv2.imencode` output): `numpy.core.multiarray
//!   _reconstruct` (numpy 1) or `numpy._core.multiarray _reconstruct` (numpy 2) with a `BUILD`
//!   state, or at protocol 5 `numpy.core.numeric _frombuffer` / `numpy._core.numeric
//!   _frombuffer` over an in-band buffer; numpy `bool_` scalars in the same-ness list.
//!
//! The reader is a small pickle-opcode interpreter that understands only these: no code runs,
//! and any other `GLOBAL` is an error naming it. Every length is checked against the bytes
//! left, so a corrupt file is an error, never a huge allocation or a panic.
//!
//! [`write_bin`] writes protocol 3 (`BINBYTES` images, `NEWTRUE` / `NEWFALSE`), which
//! Python 3's `pickle.load` reads with or without `encoding='bytes'`.

use crate::error::DataError;
use crate::fsutil::{io_err, write_atomic};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A verification set: encoded images and, per pair, whether both show the same identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerificationSet {
    /// `2 * issame.len()` encoded images; pair `i` is `images[2i]`, `images[2i + 1]`.
    pub images: Vec<Vec<u8>>,
    pub issame: Vec<bool>,
}

impl VerificationSet {
    /// The number of pairs.
    pub fn pairs(&self) -> usize {
        self.issame.len()
    }

    /// Pair `i`: both images and whether they are the same identity.
    pub fn pair(&self, i: usize) -> Option<(&[u8], &[u8], bool)> {
        Some((
            self.images.get(2 * i)?,
            self.images.get(2 * i + 1)?,
            *self.issame.get(i)?,
        ))
    }
}

/// The callables a `.bin` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    CodecsEncode,
    Reconstruct,
    NdArray,
    Dtype,
    FromBuffer,
    Scalar,
}

fn global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("_codecs", "encode") => Global::CodecsEncode,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::Reconstruct,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::Scalar,
        ("numpy", "ndarray") => Global::NdArray,
        ("numpy", "dtype") => Global::Dtype,
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Global::FromBuffer,
        _ => return None,
    })
}

/// A pickled value (only the kinds `.bin` files use).
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Bytes(Rc<Vec<u8>>),
    Str(Rc<String>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Global(Global),
    /// A numpy dtype by its name (`u1`, `b1`, ...).
    Dtype(String),
    /// A numpy array: dtype name and raw bytes (`None` until `BUILD` fills it).
    Array(Rc<RefCell<ArrayState>>),
}

/// A numpy array under construction: its dtype name and raw bytes.
type ArrayState = (String, Option<Rc<Vec<u8>>>);

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Global(_) => "global",
            Value::Dtype(_) => "numpy dtype",
            Value::Array(_) => "numpy array",
        }
    }
}

/// The pickle machine's state.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

type R<T> = Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes needed at byte {}, {} left",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len64(&mut self) -> R<usize> {
        usize::try_from(self.u64()?).map_err(|_| "length overflows".to_string())
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated text argument")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "text argument is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow (below a MARK)".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&mut self) -> R<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("no MARK on the stack")?;
        if m > self.stack.len() {
            return Err("MARK above the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn bytes(&mut self, n: usize) -> R<Value> {
        Ok(Value::Bytes(Rc::new(self.take(n)?.to_vec())))
    }

    fn string(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "a unicode string that is not UTF-8")?;
        Ok(Value::Str(Rc::new(s.to_string())))
    }

    fn memo_put(&mut self, key: u64) -> R<()> {
        let v = self.stack.last().cloned().ok_or("PUT on an empty stack")?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("GET of unknown memo key {key}"))?;
        self.stack.push(v);
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> R<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to a {}", other.kind())),
        }
    }

    /// Runs to STOP and returns the result.
    fn run(&mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let op = self.u8().map_err(|_| "no STOP opcode at the end".to_string())?;
            let r = self.step(op);
            match r {
                Ok(true) => return self.pop(),
                Ok(false) => {}
                Err(e) => return Err(format!("byte {at} (opcode 0x{op:02x}): {e}")),
            }
        }
    }

    /// One opcode; `Ok(true)` at STOP.
    fn step(&mut self, op: u8) -> R<bool> {
        match op {
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} (this reader knows 0 to 5)"));
                }
            }
            0x95 => {
                self.u64()?; // FRAME: a length hint only
            }
            b'.' => return Ok(true),
            b'(' => self.marks.push(self.stack.len()),
            b']' => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.stack.push(Value::Tuple(Rc::new(items)));
            }
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'I' => {
                let v = match self.line()? {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    t => Value::Int(t.trim().parse().map_err(|_| format!("bad INT {t:?}"))?),
                };
                self.stack.push(v);
            }
            b'J' => {
                let v = self.u32()? as i32;
                self.stack.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v.into()));
            }
            b'M' => {
                let b = self.take(2)?;
                self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()));
            }
            0x8a => {
                let n = self.u8()? as usize;
                let b = self.take(n)?;
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes"));
                }
                let mut v: i64 = 0;
                for (k, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * k);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                self.stack.push(Value::Int(v));
            }
            b'T' => {
                let n = self.u32()? as usize;
                let v = self.bytes(n)?;
                self.stack.push(v);
            }
            b'U' | b'C' => {
                let n = self.u8()? as usize;
                let v = self.bytes(n)?;
                self.stack.push(v);
            }
            b'B' => {
                let n = self.u32()? as usize;
                let v = self.bytes(n)?;
                self.stack.push(v);
            }
            0x8e | 0x96 => {
                let n = self.len64()?;
                let v = self.bytes(n)?;
                self.stack.push(v);
            }
            b'X' => {
                let n = self.u32()? as usize;
                let v = self.string(n)?;
                self.stack.push(v);
            }
            0x8c => {
                let n = self.u8()? as usize;
                let v = self.string(n)?;
                self.stack.push(v);
            }
            0x8d => {
                let n = self.len64()?;
                let v = self.string(n)?;
                self.stack.push(v);
            }
            b'q' => {
                let k = self.u8()?;
                self.memo_put(k.into())?;
            }
            b'r' => {
                let k = self.u32()?;
                self.memo_put(k.into())?;
            }
            b'p' => {
                let k = self.line()?.parse::<u64>().map_err(|_| "bad PUT key")?;
                self.memo_put(k)?;
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?;
            }
            b'h' => {
                let k = self.u8()?;
                self.memo_get(k.into())?;
            }
            b'j' => {
                let k = self.u32()?;
                self.memo_get(k.into())?;
            }
            b'g' => {
                let k = self.line()?.parse::<u64>().map_err(|_| "bad GET key")?;
                self.memo_get(k)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(module, name).ok_or_else(|| {
                    format!("refusing GLOBAL {module}.{name}: a .bin holds only bytes, numpy uint8 arrays and bools")
                })?;
                self.stack.push(Value::Global(g));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let g = global(module, name).ok_or_else(|| {
                    format!(
                        "refusing STACK_GLOBAL {module}.{name}: a .bin holds only bytes, numpy uint8 arrays and bools"
                    )
                })?;
                self.stack.push(Value::Global(g));
            }
            b'R' => {
                let args = self.pop()?;
                let f = self.pop()?;
                let v = reduce(f, args)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?.clone();
                build(&target, state)?;
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
        Ok(false)
    }
}

fn tuple_items(v: &Value) -> R<&[Value]> {
    match v {
        Value::Tuple(t) => Ok(t),
        other => Err(format!("expected a tuple of arguments, got a {}", other.kind())),
    }
}

fn dtype_name(v: &Value) -> R<String> {
    match v {
        Value::Dtype(d) => Ok(d.clone()),
        other => Err(format!("expected a numpy dtype, got a {}", other.kind())),
    }
}

/// Calls an allowed global.
fn reduce(f: Value, args: Value) -> R<Value> {
    let Value::Global(g) = f else {
        return Err(format!("REDUCE on a {}, not an allowed global", f.kind()));
    };
    let args = tuple_items(&args)?;
    match (g, args) {
        (Global::CodecsEncode, [Value::Str(s), Value::Str(enc)])
            if enc.as_str() == "latin1" || enc.as_str() == "latin-1" =>
        {
            let mut out = Vec::with_capacity(s.len());
            for c in s.chars() {
                out.push(u8::try_from(c as u32).map_err(|_| format!("character U+{:04X} is not latin-1", c as u32))?);
            }
            Ok(Value::Bytes(Rc::new(out)))
        }
        (Global::Dtype, [Value::Str(name), ..]) => Ok(Value::Dtype(name.to_string())),
        (Global::Reconstruct, [Value::Global(Global::NdArray), _shape, _typecode]) => {
            Ok(Value::Array(Rc::new(RefCell::new((String::new(), None)))))
        }
        (Global::FromBuffer, [Value::Bytes(buf), dtype, _shape, _order]) => Ok(Value::Array(Rc::new(RefCell::new((
            dtype_name(dtype)?,
            Some(buf.clone()),
        ))))),
        (Global::Scalar, [dtype, Value::Bytes(raw)]) => match (dtype_name(dtype)?.as_str(), raw.as_slice()) {
            ("b1" | "bool", [b]) => Ok(Value::Bool(*b != 0)),
            (d, _) => Err(format!("numpy scalar of dtype {d} ({} bytes)", raw.len())),
        },
        (g, args) => Err(format!(
            "{g:?} called with ({})",
            args.iter().map(Value::kind).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// `BUILD`: sets a numpy array's state `(version, shape, dtype, is_fortran, raw data)`; a
/// dtype's state is accepted when it is byte order `|` or `<` or `=` (one-byte types).
fn build(target: &Value, state: Value) -> R<()> {
    match target {
        Value::Array(a) => {
            let items = tuple_items(&state)?;
            let [_version, _shape, dtype, _fortran, raw] = items else {
                return Err(format!("numpy array state of {} items (expected 5)", items.len()));
            };
            let raw = match raw {
                Value::Bytes(b) => b.clone(),
                other => return Err(format!("numpy array data is a {}, not bytes", other.kind())),
            };
            *a.borrow_mut() = (dtype_name(dtype)?, Some(raw));
            Ok(())
        }
        Value::Dtype(_) => Ok(()),
        other => Err(format!("BUILD on a {}", other.kind())),
    }
}

/// Parses a `.bin` pickle; `path` names the file in errors.
pub fn parse_bin(data: &[u8], path: &Path) -> Result<VerificationSet, DataError> {
    let bad = |reason: String| DataError::Bin {
        path: path.to_path_buf(),
        reason,
    };
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let top = m.run().map_err(bad)?;
    let items = match &top {
        Value::Tuple(t) if t.len() == 2 => t.clone(),
        Value::List(l) if l.borrow().len() == 2 => Rc::new(l.borrow().clone()),
        other => {
            return Err(bad(format!(
                "expected a pickled (images, issame) pair, got a {}",
                other.kind()
            )));
        }
    };
    let list = |v: &Value, what: &str| match v {
        Value::List(l) => Ok(l.borrow().clone()),
        Value::Tuple(t) => Ok(t.to_vec()),
        other => Err(bad(format!("{what} is a {}, not a list", other.kind()))),
    };
    let bins = list(&items[0], "the image list")?;
    let flags = list(&items[1], "the issame list")?;
    let mut images = Vec::with_capacity(bins.len());
    for (k, v) in bins.iter().enumerate() {
        let img = match v {
            Value::Bytes(b) => b.to_vec(),
            Value::Array(a) => match &*a.borrow() {
                (d, Some(raw)) if matches!(d.as_str(), "u1" | "uint8" | "i1" | "int8" | "b1") => raw.to_vec(),
                (d, Some(_)) => return Err(bad(format!("image {k} is a numpy array of dtype {d}, not uint8"))),
                (_, None) => return Err(bad(format!("image {k} is a numpy array without data"))),
            },
            other => return Err(bad(format!("image {k} is a {}, not bytes", other.kind()))),
        };
        images.push(img);
    }
    let mut issame = Vec::with_capacity(flags.len());
    for (k, v) in flags.iter().enumerate() {
        issame.push(match v {
            Value::Bool(b) => *b,
            Value::Int(0) => false,
            Value::Int(1) => true,
            other => return Err(bad(format!("issame {k} is a {}, not a bool", other.kind()))),
        });
    }
    if images.len() != 2 * issame.len() {
        return Err(bad(format!(
            "{} images for {} pairs (expected two images per pair)",
            images.len(),
            issame.len()
        )));
    }
    Ok(VerificationSet { images, issame })
}

/// Reads a `.bin` file (see the module docs).
pub fn read_bin(path: &Path) -> Result<VerificationSet, DataError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    parse_bin(&data, path)
}

/// The pickle (protocol 3) of a verification set: `(list of bytes, list of bools)`.
pub fn encode_bin(set: &VerificationSet) -> Vec<u8> {
    let mut out = vec![0x80, 3];
    out.push(b']');
    if !set.images.is_empty() {
        out.push(b'(');
        for img in &set.images {
            if img.len() < 256 {
                out.push(b'C');
                out.push(img.len() as u8);
            } else if let Ok(n) = u32::try_from(img.len()) {
                out.push(b'B');
                out.extend_from_slice(&n.to_le_bytes());
            } else {
                // Past 4 GiB: protocol 4's BINBYTES8 (readers of protocol 3 files know it).
                out.push(0x8e);
                out.extend_from_slice(&(img.len() as u64).to_le_bytes());
            }
            out.extend_from_slice(img);
        }
        out.push(b'e');
    }
    out.push(b']');
    if !set.issame.is_empty() {
        out.push(b'(');
        out.extend(set.issame.iter().map(|&s| if s { 0x88 } else { 0x89 }));
        out.push(b'e');
    }
    out.push(0x86);
    out.push(b'.');
    out
}

/// Writes a `.bin` (protocol 3 pickle, see [`encode_bin`]) through a temporary file.
pub fn write_bin(set: &VerificationSet, path: &Path) -> Result<(), DataError> {
    if set.images.len() != 2 * set.issame.len() {
        return Err(DataError::InvalidArgument(format!(
            "{} images for {} pairs",
            set.images.len(),
            set.issame.len()
        )));
    }
    write_atomic(path, &encode_bin(set))
}

/// Reads PLSC 2's pair list: lines `img1<TAB>img2<TAB>issame` (issame `0` or `1`; CRLF and blank
/// lines accepted), image paths relative to `root`. Errors name `list:line`.
pub fn read_pair_list(list: &Path, root: &Path) -> Result<VerificationSet, DataError> {
    let text = std::fs::read_to_string(list).map_err(io_err(list))?;
    let mut set = VerificationSet::default();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| DataError::Bin {
            path: PathBuf::from(format!("{}:{}", list.display(), n + 1)),
            reason,
        };
        let fields: Vec<&str> = line.split('\t').collect();
        let [a, b, same] = fields.as_slice() else {
            return Err(bad(format!(
                "expected `img1<TAB>img2<TAB>issame`, got {} tab-separated fields",
                fields.len()
            )));
        };
        let same = match same.trim() {
            "1" => true,
            "0" => false,
            other => return Err(bad(format!("issame `{}` is not 0 or 1", crate::shards::shorten(other)))),
        };
        for rel in [a, b] {
            let rel = Path::new(rel.trim());
            if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(bad(format!(
                    "image path {} must be relative to the image root, without `..`",
                    rel.display()
                )));
            }
            let path = root.join(rel);
            let img = std::fs::read(&path).map_err(|e| bad(format!("cannot read image {}: {e}", path.display())))?;
            crate::image_size(&img).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            set.images.push(img);
        }
        set.issame.push(same);
    }
    if set.issame.is_empty() {
        return Err(DataError::Bin {
            path: list.to_path_buf(),
            reason: "the pair list names no pair".into(),
        });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<VerificationSet, String> {
        parse_bin(bytes, Path::new("t.bin")).map_err(|e| e.to_string())
    }

    #[test]
    fn round_trips_our_writer() {
        let set = VerificationSet {
            images: vec![vec![1, 2, 3], vec![7; 300], vec![], vec![0xff; 256]],
            issame: vec![true, false],
        };
        assert_eq!(parse(&encode_bin(&set)).unwrap(), set);
        assert_eq!(
            parse(&encode_bin(&VerificationSet::default())).unwrap(),
            VerificationSet::default()
        );
        assert_eq!(set.pair(1), Some((&[0u8; 0][..], &[0xffu8; 256][..], false)));
        assert_eq!(set.pair(2), None);
    }

    #[test]
    fn refuses_code_and_corrupt_data() {
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        let e = parse(evil).unwrap_err();
        assert!(e.contains("refusing GLOBAL os.system"), "{e}");
        let e = parse(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err();
        assert!(e.contains("refusing STACK_GLOBAL builtins.eval"), "{e}");
        // Lengths beyond the data, missing STOP, garbage.
        assert!(parse(b"\x80\x03B\xff\xff\xff\x7f").unwrap_err().contains("truncated"));
        assert!(parse(b"\x80\x03]").unwrap_err().contains("no STOP"));
        assert!(parse(b"\x80\x03a.").unwrap_err().contains("underflow"));
        assert!(parse(b"\xfe").unwrap_err().contains("unsupported pickle opcode 0xfe"));
        assert!(parse(b"").is_err());
        // Wrong shapes.
        assert!(parse(b"\x80\x03]\x88\x86.").unwrap_err().contains("not a list"));
        let odd = b"\x80\x03](C\x01ae](\x88e\x86.";
        assert!(parse(odd).unwrap_err().contains("1 images for 1 pairs"));
        let e = parse(b"\x80\x03K\x05.").unwrap_err();
        assert!(e.starts_with("t.bin: expected a pickled (images, issame) pair"), "{e}");
        // Every prefix of a good pickle is an error, never a panic.
        let good = encode_bin(&VerificationSet {
            images: vec![vec![5; 10], vec![6; 400]],
            issame: vec![true],
        });
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_err(), "prefix {cut}");
        }
    }
}
