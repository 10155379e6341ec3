//! `lsc64`: the checksum of checkpoint files. Four independent 64-bit multiply-rotate lanes
//! over little-endian words, so it runs at memory speed; it detects corruption and truncation,
//! it is not a cryptographic hash.

use std::io::Read;
use std::path::Path;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Incremental lsc64.
#[derive(Clone, Debug)]
pub struct Hasher {
    lanes: [u64; 4],
    tail: Vec<u8>,
    len: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            lanes: [P1, P2, P1 ^ P2, P1.wrapping_add(P2)],
            tail: Vec::new(),
            len: 0,
        }
    }
}

impl Hasher {
    #[inline]
    fn mix(lane: u64, w: u64) -> u64 {
        (lane ^ w).wrapping_mul(P1).rotate_left(31).wrapping_mul(P2)
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.tail.is_empty() {
            let need = 32 - self.tail.len();
            let take = need.min(bytes.len());
            self.tail.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tail.len() < 32 {
                return;
            }
            let t = std::mem::take(&mut self.tail);
            self.block(&t);
        }
        let mut chunks = bytes.chunks_exact(32);
        for c in &mut chunks {
            self.block(c);
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    #[inline]
    fn block(&mut self, c: &[u8]) {
        for (l, w) in self.lanes.iter_mut().zip(c.chunks_exact(8)) {
            *l = Self::mix(*l, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
    }

    /// The hash as 16 hex digits.
    pub fn finish(&self) -> String {
        let mut h = self.len.wrapping_mul(P2);
        for (i, b) in self.tail.iter().enumerate() {
            h = Self::mix(h, (*b as u64) << (8 * (i % 8)) | (i as u64) << 56);
        }
        for l in self.lanes {
            h = Self::mix(h, l);
        }
        format!("{:016x}", h ^ (h >> 29))
    }
}

/// The lsc64 of a whole file, read in 4 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(u64, String), crate::CkptError> {
    let mut f = std::fs::File::open(path).map_err(crate::io_err(path))?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).map_err(crate::io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((h.len, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_one_shot_and_detects_changes() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut one = Hasher::default();
        one.update(&data);
        for split in [0, 1, 31, 32, 33, 500, 999] {
            let mut h = Hasher::default();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finish(), one.finish(), "split {split}");
        }
        let mut flipped = data.clone();
        flipped[517] ^= 1;
        let mut h = Hasher::default();
        h.update(&flipped);
        assert_ne!(h.finish(), one.finish());
        let mut short = Hasher::default();
        short.update(&data[..999]);
        assert_ne!(short.finish(), one.finish());
    }
}
