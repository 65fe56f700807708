//! The physical floor: the same fan-out as a bare non-blocking `send(2)` loop, one syscall per
//! frame, over as many loopback TCP connections as Herald serves, to the same worker processes,
//! in the same run. Herald's figures divided by these say how close it gets to what this
//! machine's kernel allows for one frame per segment.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_protocol::frame::{self, FRAME_ALIGN, PushFlags, PushHeader};
use herald_protocol::payload::{DataEntry, PushPayload};

use crate::clock::now_ns;
use crate::pool::Pool;
use crate::worker::T_NS_KEY;

/// Sender threads: one per core, as Herald runs one runtime per core.
fn sender_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A push frame as Herald would send it (body of `body_bytes`, send time in the data), padded
/// to a multiple of 16 so the next one starts aligned.
pub fn frame_bytes(seq: u32, body_bytes: usize, t_ns: u64) -> Vec<u8> {
    let payload = PushPayload {
        push_id: u64::from(seq),
        created_ms: t_ns / 1_000_000,
        title: None,
        body: (body_bytes > 0).then(|| "x".repeat(body_bytes)),
        data: vec![DataEntry { key: T_NS_KEY.into(), value: t_ns.to_string() }],
        collapse_key: None,
    }
    .to_bytes();
    let header = PushHeader { flags: PushFlags::default(), ttl_secs: 0, stream: 1, seq: seq.max(1) };
    let mut v = frame::encode_push(header, &payload).map(|b| b.to_vec()).unwrap_or_default();
    v.resize(v.len().next_multiple_of(FRAME_ALIGN), frame::T_PAD);
    v
}

/// The sender side: one accepted socket per worker connection.
#[derive(Debug)]
pub struct Floor {
    socks: Vec<TcpStream>,
}

impl Floor {
    /// Opens `n` connections from the workers (their shares) to a listener of this process.
    pub fn open(pool: &mut Pool, n: usize) -> anyhow::Result<Floor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: re-listening on a listening socket only raises its backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        let addr = match listener.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => anyhow::bail!("floor listener is not IPv4"),
        };
        let acceptor = std::thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
            let mut socks = Vec::with_capacity(n);
            while socks.len() < n {
                let (s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                socks.push(s);
            }
            Ok(socks)
        });
        let shares: Vec<usize> = distribute(n, &pool.shares);
        let up = pool.floor_connect(addr, &shares)?;
        anyhow::ensure!(up == n, "only {up} of {n} floor connections came up");
        let socks = acceptor.join().map_err(|_| anyhow::anyhow!("floor acceptor panicked"))??;
        Ok(Floor { socks })
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Sends `count` frames of `body_bytes` to every connection, frame after frame, one
    /// `send(2)` per frame, on one thread per core. Returns the time the first frame was
    /// stamped (ns since the epoch).
    pub fn blast(&self, count: u32, body_bytes: usize) -> anyhow::Result<u64> {
        let threads = sender_threads().min(self.socks.len().max(1));
        let fds: Vec<RawFd> = self.socks.iter().map(AsRawFd::as_raw_fd).collect();
        let chunk = fds.len().div_ceil(threads).max(1);
        let start = now_ns();
        std::thread::scope(|s| {
            for part in fds.chunks(chunk) {
                s.spawn(move || send_loop(part, count, body_bytes));
            }
        });
        Ok(start)
    }

    /// The ceiling rather than the floor: every connection gets all `count` frames (stamped
    /// once, now) in as few `send(2)` calls as its socket takes, i.e. perfect coalescing, one
    /// thread per core. What this machine's kernel and receivers allow at best for a burst.
    pub fn blast_coalesced(&self, count: u32, body_bytes: usize) -> anyhow::Result<u64> {
        let threads = sender_threads().min(self.socks.len().max(1));
        let fds: Vec<RawFd> = self.socks.iter().map(AsRawFd::as_raw_fd).collect();
        let chunk = fds.len().div_ceil(threads).max(1);
        let start = now_ns();
        let buf: Vec<u8> = (0..count).flat_map(|k| frame_bytes(k + 1, body_bytes, start)).collect();
        std::thread::scope(|s| {
            for part in fds.chunks(chunk) {
                let buf = &buf;
                s.spawn(move || coalesced_loop(part, buf));
            }
        });
        Ok(start)
    }
}

fn coalesced_loop(fds: &[RawFd], buf: &[u8]) {
    let mut sent = vec![0usize; fds.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut behind = false;
        for (j, &fd) in fds.iter().enumerate() {
            while sent[j] < buf.len() {
                let f = &buf[sent[j]..];
                // SAFETY: `f` is a live slice; `fd` is an open socket owned by the floor.
                let n = unsafe {
                    libc::send(fd, f.as_ptr().cast(), f.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
                sent[j] += n as usize;
            }
            behind |= sent[j] < buf.len();
        }
        if !behind {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Splits `n` like the workers' shares are split.
fn distribute(n: usize, shares: &[usize]) -> Vec<usize> {
    let total: usize = shares.iter().sum::<usize>().max(1);
    let mut out: Vec<usize> = shares.iter().map(|s| n * s / total).collect();
    let mut left = n - out.iter().sum::<usize>();
    for o in out.iter_mut() {
        if left == 0 {
            break;
        }
        *o += 1;
        left -= 1;
    }
    out
}

fn send_loop(fds: &[RawFd], count: u32, body_bytes: usize) {
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(count as usize);
    let mut sent = vec![0usize; fds.len()];
    for k in 0..count {
        frames.push(frame_bytes(k + 1, body_bytes, now_ns()));
        let len = frames[0].len();
        for (j, &fd) in fds.iter().enumerate() {
            advance(fd, &mut sent[j], &frames, len, k as usize + 1);
        }
    }
    let len = frames.first().map_or(0, Vec::len);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut behind = false;
        for (j, &fd) in fds.iter().enumerate() {
            if sent[j] < len * count as usize {
                advance(fd, &mut sent[j], &frames, len, count as usize);
                behind |= sent[j] < len * count as usize;
            }
        }
        if !behind {
            return;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Sends frames `..upto` on `fd` from byte `*sent`, one `send(2)` per frame, until done or the
/// socket is full.
fn advance(fd: RawFd, sent: &mut usize, frames: &[Vec<u8>], len: usize, upto: usize) {
    while *sent < upto * len {
        let f = &frames[*sent / len][*sent % len..];
        // SAFETY: `f` is a live slice; `fd` is an open socket owned by the floor.
        let n =
            unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n <= 0 {
            return;
        }
        *sent += n as usize;
    }
}

/// Builds one frame to learn its size on the wire (for reports).
pub fn wire_bytes(body_bytes: usize) -> anyhow::Result<usize> {
    let f = frame_bytes(1, body_bytes, now_ns());
    (!f.is_empty()).then_some(f.len()).context("encoding a floor frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_frames_decode_as_timed_pushes() {
        let t = 1_700_000_000_123_456_789;
        let mut buf = bytes::BytesMut::from(&frame_bytes(7, 256, t)[..]);
        assert_eq!(buf.len() % FRAME_ALIGN, 0);
        let Some(herald_protocol::Frame::Push(p)) = herald_protocol::frame::decode(&mut buf).unwrap() else {
            panic!("not a push")
        };
        let got = PushPayload::from_bytes(&p.payload).unwrap();
        assert_eq!(got.data[0].value, t.to_string());
        assert_eq!(got.body.unwrap().len(), 256);
        assert_eq!(distribute(10, &[5, 5, 2]), vec![5, 4, 1]);
    }
}
