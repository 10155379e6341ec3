//! A TCP rendezvous on `std::net` only: rank 0 hands one small blob (an NCCL unique id) to
//! every other rank of a job.
//!
//! Rank 0 listens on the rendezvous address; ranks 1 … n−1 connect (retrying until rank 0
//! listens) and send a header (magic, protocol version, their rank and the world size); rank 0
//! checks that each rank appears once and that every rank agrees on the world size, then sends
//! the blob to all of them and closes. Everything is bounded by a timeout: a rank that never
//! shows up, or a rank 0 that never listens, is a [`CommError::Timeout`] naming the rank and
//! `"rendezvous"`, never a hang.
//!
//! The address comes from `LSC_RENDEZVOUS=host:port` (rank 0 binds `host:port` as given, so use
//! an address of rank 0's host that the others reach, or `0.0.0.0:port`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::CommError;

/// The environment variable naming the rendezvous address, `host:port`.
pub const RENDEZVOUS_ENV: &str = "LSC_RENDEZVOUS";

const OP: &str = "rendezvous";
const MAGIC: [u8; 4] = *b"LSCR";
const VERSION: u32 = 1;
/// Longest blob accepted (an NCCL unique id is 128 bytes).
const MAX_BLOB: usize = 1 << 16;

fn invalid(rank: usize, why: String) -> CommError {
    CommError::Invalid { rank, op: OP, why }
}

fn timeout(rank: usize, t0: Instant) -> CommError {
    CommError::Timeout {
        rank,
        op: OP,
        secs: t0.elapsed().as_secs_f64(),
    }
}

/// Hands `blob` to ranks 1 … `world`−1 as they connect to `listener` (rank 0's side).
pub fn serve(listener: &TcpListener, world: usize, blob: &[u8], limit: Duration) -> Result<(), CommError> {
    let t0 = Instant::now();
    if blob.len() > MAX_BLOB {
        return Err(invalid(
            0,
            format!("a blob of {} bytes is more than {MAX_BLOB}", blob.len()),
        ));
    }
    let io = |e: std::io::Error| invalid(0, format!("listening: {e}"));
    listener.set_nonblocking(true).map_err(io)?;
    let mut joined: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut waiting = world.saturating_sub(1);
    let mut pause = Duration::from_millis(1);
    while waiting > 0 {
        let (mut s, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if t0.elapsed() >= limit {
                    let missing: Vec<usize> = (1..world).filter(|&q| joined[q].is_none()).collect();
                    return Err(CommError::Aborted {
                        rank: 0,
                        op: OP,
                        why: format!(
                            "timed out after {:.1} s: rank(s) {missing:?} never connected",
                            t0.elapsed().as_secs_f64()
                        ),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(io(e)),
        };
        s.set_nonblocking(false).map_err(io)?;
        s.set_read_timeout(Some(limit.saturating_sub(t0.elapsed()).max(Duration::from_millis(1))))
            .map_err(io)?;
        let mut h = [0u8; 16];
        s.read_exact(&mut h)
            .map_err(|e| invalid(0, format!("reading the header from {peer}: {e}")))?;
        let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        if h[..4] != MAGIC || word(4) != VERSION {
            return Err(invalid(0, format!("{peer} is not an lsc rendezvous client")));
        }
        let (rank, their_world) = (word(8) as usize, word(12) as usize);
        if their_world != world {
            return Err(invalid(
                0,
                format!("rank {rank} ({peer}) says the world has {their_world} ranks; rank 0 says {world}"),
            ));
        }
        if rank == 0 || rank >= world {
            return Err(invalid(0, format!("{peer} claims rank {rank} of a world of {world}")));
        }
        if joined[rank].is_some() {
            return Err(invalid(
                0,
                format!("rank {rank} connected twice (the second from {peer})"),
            ));
        }
        joined[rank] = Some(s);
        waiting -= 1;
    }
    for (q, s) in joined.iter_mut().enumerate() {
        if let Some(s) = s {
            let mut msg = (blob.len() as u32).to_le_bytes().to_vec();
            msg.extend_from_slice(blob);
            s.write_all(&msg)
                .map_err(|e| invalid(0, format!("sending to rank {q}: {e}")))?;
        }
    }
    Ok(())
}

/// Fetches rank 0's blob from `addr` as `rank` of `world` (ranks 1 … `world`−1), retrying the
/// connection until rank 0 listens or `limit` passes.
pub fn fetch(addr: &str, rank: usize, world: usize, limit: Duration) -> Result<Vec<u8>, CommError> {
    let t0 = Instant::now();
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| invalid(rank, format!("{RENDEZVOUS_ENV}={addr}: {e}")))?
        .collect();
    let mut pause = Duration::from_millis(5);
    let mut s = loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(timeout(rank, t0));
        }
        if let Some(s) = addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, left.min(Duration::from_secs(5))).ok())
        {
            break s;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(200));
    };
    let io = |e: std::io::Error| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            timeout(rank, t0)
        } else {
            invalid(rank, format!("talking to rank 0 at {addr}: {e}"))
        }
    };
    s.set_read_timeout(Some(limit.saturating_sub(t0.elapsed()).max(Duration::from_millis(1))))
        .map_err(io)?;
    let mut h = MAGIC.to_vec();
    for w in [VERSION, rank as u32, world as u32] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    s.write_all(&h).map_err(io)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            invalid(
                rank,
                format!("rank 0 at {addr} closed the connection (see rank 0's error)"),
            )
        } else {
            io(e)
        }
    })?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BLOB {
        return Err(invalid(rank, format!("rank 0 sent a blob of {len} bytes")));
    }
    let mut blob = vec![0u8; len];
    s.read_exact(&mut blob).map_err(io)?;
    Ok(blob)
}

/// Every rank's call: rank 0 binds `addr`, makes the blob with `make` and serves it; the
/// others fetch it. Returns the blob on every rank.
pub fn exchange(
    addr: &str,
    rank: usize,
    world: usize,
    make: impl FnOnce() -> Result<Vec<u8>, CommError>,
    limit: Duration,
) -> Result<Vec<u8>, CommError> {
    if rank >= world {
        return Err(invalid(rank, format!("rank {rank} outside world size {world}")));
    }
    if rank > 0 {
        return fetch(addr, rank, world, limit);
    }
    let listener =
        TcpListener::bind(addr).map_err(|e| invalid(0, format!("{RENDEZVOUS_ENV}={addr}: cannot listen: {e}")))?;
    let blob = make()?;
    serve(&listener, world, &blob, limit)?;
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    #[test]
    fn every_rank_gets_the_blob() {
        for world in [1, 2, 4] {
            let (l, addr) = listener();
            let blob: Vec<u8> = (0..128).map(|i| i as u8 ^ 0x5a).collect();
            let got = std::thread::scope(|s| {
                let peers: Vec<_> = (1..world)
                    .rev() // connect out of rank order
                    .map(|r| {
                        let addr = addr.clone();
                        s.spawn(move || fetch(&addr, r, world, Duration::from_secs(10)))
                    })
                    .collect();
                serve(&l, world, &blob, Duration::from_secs(10)).unwrap();
                peers
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap())
                    .collect::<Vec<_>>()
            });
            assert!(got.iter().all(|b| *b == blob), "world {world}");
        }
    }

    #[test]
    fn exchange_binds_on_rank_0() {
        // A free port: bind, read it, release it.
        let addr = listener().1;
        let got = std::thread::scope(|s| {
            let h: Vec<_> = (0..3)
                .map(|r| {
                    let addr = addr.clone();
                    s.spawn(move || exchange(&addr, r, 3, || Ok(b"id".to_vec()), Duration::from_secs(10)))
                })
                .collect();
            h.into_iter().map(|h| h.join().unwrap().unwrap()).collect::<Vec<_>>()
        });
        assert_eq!(got, vec![b"id".to_vec(); 3]);
    }

    #[test]
    fn a_missing_rank_times_out_on_both_sides() {
        let (l, addr) = listener();
        let t = Instant::now();
        let e = std::thread::scope(|s| {
            let one = s.spawn(|| fetch(&addr, 1, 3, Duration::from_secs(10)));
            let e = serve(&l, 3, b"x", Duration::from_millis(300)).unwrap_err();
            // Rank 0 gave up and dropped the connection: rank 1 learns at once.
            let e1 = one.join().unwrap().unwrap_err();
            assert!(e1.to_string().contains("closed the connection"), "{e1}");
            e
        });
        assert!(e.to_string().contains("rank(s) [2] never connected"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // No rank 0 at all.
        let addr = listener().1;
        let e = fetch(&addr, 1, 2, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                e,
                CommError::Timeout {
                    rank: 1,
                    op: "rendezvous",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn disagreements_are_named() {
        let (l, addr) = listener();
        let e = std::thread::scope(|s| {
            s.spawn(|| fetch(&addr, 1, 3, Duration::from_secs(5)));
            serve(&l, 2, b"x", Duration::from_secs(5)).unwrap_err()
        });
        assert!(
            e.to_string().contains("rank 1 (") && e.to_string().contains("says the world has 3 ranks"),
            "{e}"
        );
        let (l, addr) = listener();
        let e = std::thread::scope(|s| {
            s.spawn(|| fetch(&addr, 1, 3, Duration::from_secs(5)));
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                fetch(&addr, 1, 3, Duration::from_secs(5))
            });
            serve(&l, 3, b"x", Duration::from_secs(5)).unwrap_err()
        });
        assert!(e.to_string().contains("rank 1 connected twice"), "{e}");
        assert!(exchange("127.0.0.1:1", 2, 2, || Ok(vec![]), Duration::from_secs(1)).is_err());
    }
}
