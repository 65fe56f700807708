//! A connection's outbound queue: frames waiting for the socket, written with one `writev` per
//! flush, with the padding that puts every push at a 16-aligned stream offset computed at write
//! time (so dropping a queued frame never misaligns the ones after it). An entry may be two
//! pieces written as two iovecs: an MQTT PUBLISH is a per-connection header followed by the
//! payload every recipient shares.
//!
//! The queue is bounded in frames and in bytes (`outbound_queue_frames`,
//! `outbound_queue_bytes`), and so are control frames: a peer that sends but does not read must
//! not make the core buffer its answers without bound. A PONG replaces a queued unwritten PONG
//! (only the latest heartbeat answer matters, so a PING flood queues at most two: one being
//! written, one waiting); every other reply (MQTT SUBACK, PUBACK, UNSUBACK) must fit under both
//! bounds or is refused, and the caller closes the connection as a slow consumer. Only the
//! one-per-connection frames (login answer, GOAWAY, CLOSE) are queued regardless.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use bytes::Bytes;
use herald_protocol::frame::padding_for;

static PAD: [u8; 16] = [0; 16];

/// Most frames put in one `writev`.
const MAX_IOV: usize = 64;

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    /// Written right after `bytes` (a shared payload); usually empty.
    tail: Bytes,
    /// Starts at a 16-aligned offset (push frames).
    aligned: bool,
    /// Must not be dropped by the backpressure policy (ACK_REQUIRED pushes, control frames).
    persistent: bool,
    /// Padding chosen for this frame, fixed once its first byte is written.
    pad: u8,
    /// Bytes of `pad + bytes + tail` already written; 0 = not started (droppable, padding not fixed).
    written: u32,
    /// A PONG: replaced by a newer one while unwritten.
    pong: bool,
}

impl Entry {
    fn new(bytes: Bytes, tail: Bytes, aligned: bool, persistent: bool) -> Entry {
        Entry { bytes, tail, aligned, persistent, pad: 0, written: 0, pong: false }
    }

    /// Frame bytes (padding aside) counted against the byte bound.
    fn size(&self) -> usize {
        self.bytes.len() + self.tail.len()
    }
}

/// The queued frames and their size, boxed together so that an idle connection pays one
/// pointer for both.
#[derive(Debug, Default)]
struct Queue {
    q: VecDeque<Entry>,
    /// Sum of [`Entry::size`] over `q` (written parts included: a frame's memory is held until
    /// it is fully written).
    bytes: usize,
}

/// What [`Outbound::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    Yes,
    /// Queued after dropping the oldest unstarted non-persistent frame.
    DroppedOldest,
    /// Not queued: the frame is non-persistent and every queued frame is persistent.
    DroppedNew,
    /// Not queued: full of persistent frames and this one is persistent too.
    Full,
}

/// Result of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything written.
    Empty,
    /// The socket is full; wait for writability.
    Blocked,
    /// The socket failed (peer gone).
    Error,
}

/// Where a queue is written: a socket (its descriptor) or a QUIC stream.
pub(crate) trait WriteVectored {
    /// Writes a prefix of `iov`, in order; `WouldBlock` when nothing fits now.
    fn write_iov(&mut self, iov: &[libc::iovec]) -> std::io::Result<usize>;
}

impl WriteVectored for RawFd {
    fn write_iov(&mut self, iov: &[libc::iovec]) -> std::io::Result<usize> {
        // SAFETY: the caller's iovecs point at live bytes of the given lengths.
        let n = unsafe { libc::writev(*self, iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// Boxed and absent while empty: an idle connection pays one pointer for its queue.
    q: Option<Box<Queue>>,
    /// Bytes written on this connection so far (the stream offset of the next byte).
    offset: u64,
}

impl Outbound {
    pub(crate) fn len(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.q.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.q.as_ref().is_none_or(|q| q.q.is_empty())
    }

    /// Bytes of the queued frames (what the queue holds in memory, beyond its entries).
    pub(crate) fn bytes(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.bytes)
    }

    /// Queues a frame under the limits `max` (frames) and `max_bytes`, applying the drop policy.
    pub(crate) fn push(
        &mut self,
        bytes: Bytes,
        aligned: bool,
        persistent: bool,
        max: usize,
        max_bytes: usize,
    ) -> Queued {
        self.push_parts(bytes, Bytes::new(), aligned, persistent, max, max_bytes)
    }

    /// Like [`Outbound::push`], for a frame in two pieces written back to back.
    ///
    /// Over either limit, the oldest unstarted non-persistent frames are dropped until the new
    /// one fits (each drop is reported as one [`Queued::DroppedOldest`]: the outcome says that
    /// at least one was). A frame alone in the queue is always taken (a push is never larger
    /// than the frame limit, which the byte limit is not meant to undercut).
    pub(crate) fn push_parts(
        &mut self,
        bytes: Bytes,
        tail: Bytes,
        aligned: bool,
        persistent: bool,
        max: usize,
        max_bytes: usize,
    ) -> Queued {
        let mut outcome = Queued::Yes;
        let size = bytes.len() + tail.len();
        let q = self.q.get_or_insert_default();
        while !q.q.is_empty() && (q.q.len() >= max || q.bytes + size > max_bytes) {
            match q.q.iter().position(|e| !e.persistent && e.written == 0) {
                Some(i) => {
                    if let Some(e) = q.q.remove(i) {
                        q.bytes -= e.size();
                    }
                    outcome = Queued::DroppedOldest;
                }
                None if !persistent => return Queued::DroppedNew,
                None => return Queued::Full,
            }
        }
        q.bytes += size;
        q.q.push_back(Entry::new(bytes, tail, aligned, persistent));
        outcome
    }

    /// Queues a control frame regardless of the limits: only for the frames a connection gets
    /// once (login answer, GOAWAY, CLOSE).
    pub(crate) fn push_control(&mut self, bytes: Bytes) {
        let q = self.q.get_or_insert_default();
        q.bytes += bytes.len();
        q.q.push_back(Entry::new(bytes, Bytes::new(), false, true));
    }

    /// Whether a reply (MQTT SUBACK, PUBACK, ...) of `len` bytes fits under both limits; when it
    /// does not, the peer does not read its replies and the caller closes the connection. A
    /// reply is never dropped to make room, nor does it drop pushes.
    pub(crate) fn reply_fits(&self, len: usize, max: usize, max_bytes: usize) -> bool {
        self.len() < max && self.bytes() + len <= max_bytes
    }

    /// Queues a PONG, replacing a queued one that has not started to be written: only the
    /// latest answer matters, so a PING flood holds at most two (one being written).
    pub(crate) fn push_pong(&mut self, bytes: Bytes) {
        let q = self.q.get_or_insert_default();
        // Usually the last entry; the scan is bounded by the queue's limits.
        if let Some(e) = q.q.iter_mut().rev().find(|e| e.pong && e.written == 0) {
            q.bytes = q.bytes - e.bytes.len() + bytes.len();
            e.bytes = bytes;
            return;
        }
        q.bytes += bytes.len();
        let mut e = Entry::new(bytes, Bytes::new(), false, true);
        e.pong = true;
        q.q.push_back(e);
    }

    /// Forgets every queued frame (and the queue's memory); returns how many were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        self.q.take().map_or(0, |q| q.q.len())
    }

    /// Writes a control frame at once when nothing is queued ahead of it (a PONG or a login
    /// reply: one `send`, no queue memory), queueing what the socket does not take; otherwise
    /// queues it behind the rest. Returns the bytes written now, or `None` when the write failed
    /// (the peer is gone).
    pub(crate) fn send_control(&mut self, mut to: impl WriteVectored, bytes: Bytes) -> Option<usize> {
        if !self.is_empty() {
            self.push_control(bytes);
            return Some(0);
        }
        self.send_now(&mut to, bytes, false)
    }

    /// [`Outbound::send_control`] for a PONG: behind queued frames it replaces a waiting PONG
    /// ([`Outbound::push_pong`]); a PONG the socket took in part is finished first.
    pub(crate) fn send_pong(&mut self, mut to: impl WriteVectored, bytes: Bytes) -> Option<usize> {
        if !self.is_empty() {
            self.push_pong(bytes);
            return Some(0);
        }
        self.send_now(&mut to, bytes, true)
    }

    /// Writes `bytes` to an empty queue's peer at once; queues the rest.
    fn send_now(&mut self, to: &mut impl WriteVectored, bytes: Bytes, pong: bool) -> Option<usize> {
        let iov = [libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() }];
        let n = loop {
            // The iovec points into `bytes`, alive until the write returns.
            match to.write_iov(&iov) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 0,
                Err(_) => return None,
            }
        };
        self.offset += n as u64;
        if n < bytes.len() {
            self.push_control(bytes);
            if let Some(e) = self.q.as_mut().and_then(|q| q.q.front_mut()) {
                e.written = n as u32;
                e.pong = pong;
            }
        }
        Some(n)
    }

    /// Writes as much as `to` takes with one vectored write per round. Returns the outcome and
    /// the number of bytes written.
    pub(crate) fn flush(&mut self, mut to: impl WriteVectored) -> (Flushed, usize) {
        let mut total = 0;
        let Some(Queue { q, bytes }) = self.q.as_deref_mut() else { return (Flushed::Empty, 0) };
        while !q.is_empty() {
            let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV * 3];
            let mut n_iov = 0;
            let mut off = self.offset;
            for e in q.iter_mut() {
                if n_iov + 3 > iov.len() {
                    break;
                }
                if e.written == 0 {
                    e.pad = if e.aligned { padding_for(off).len() as u8 } else { 0 };
                }
                let pad = usize::from(e.pad);
                let done = e.written as usize;
                if done < pad {
                    let p = &PAD[done..pad];
                    iov[n_iov] = libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() };
                    n_iov += 1;
                }
                let head_done = done.saturating_sub(pad);
                if head_done < e.bytes.len() {
                    let body = &e.bytes[head_done..];
                    iov[n_iov] = libc::iovec { iov_base: body.as_ptr() as *mut _, iov_len: body.len() };
                    n_iov += 1;
                }
                let tail = &e.tail[head_done.saturating_sub(e.bytes.len()).min(e.tail.len())..];
                if !tail.is_empty() {
                    iov[n_iov] = libc::iovec { iov_base: tail.as_ptr() as *mut _, iov_len: tail.len() };
                    n_iov += 1;
                }
                off += (pad + e.bytes.len() + e.tail.len() - done) as u64;
            }
            // Every iovec points into a static padding buffer or into a `Bytes` held by
            // `q`, which is not touched until the write returns.
            let mut n = match to.write_iov(&iov[..n_iov]) {
                Ok(n) => n,
                Err(err) => {
                    return match err.kind() {
                        std::io::ErrorKind::WouldBlock => (Flushed::Blocked, total),
                        std::io::ErrorKind::Interrupted => continue,
                        _ => (Flushed::Error, total),
                    };
                }
            };
            total += n;
            self.offset += n as u64;
            while n > 0 {
                let Some(e) = q.front_mut() else { break };
                let left = usize::from(e.pad) + e.bytes.len() + e.tail.len() - e.written as usize;
                if n >= left {
                    n -= left;
                    *bytes -= e.size();
                    q.pop_front();
                } else {
                    e.written += n as u32;
                    n = 0;
                }
            }
            if q.front().is_some_and(|e| e.written > 0) {
                // Short write: the socket buffer is full.
                return (Flushed::Blocked, total);
            }
        }
        // An idle connection holds no queue memory.
        self.q = None;
        (Flushed::Empty, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_policy_prefers_oldest_non_persistent_then_refuses() {
        let mut o = Outbound::default();
        let f = |b: u8| Bytes::from(vec![b; 4]);
        assert_eq!(o.push(f(1), true, false, 2, usize::MAX), Queued::Yes);
        assert_eq!(o.push(f(2), true, true, 2, usize::MAX), Queued::Yes);
        assert_eq!(o.push(f(3), true, true, 2, usize::MAX), Queued::DroppedOldest);
        assert_eq!(o.push(f(4), true, false, 2, usize::MAX), Queued::DroppedNew);
        assert_eq!(o.push(f(5), true, true, 2, usize::MAX), Queued::Full);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_droppable_frames_until_the_new_one_fits() {
        let mut o = Outbound::default();
        let f = |b: u8, n: usize| Bytes::from(vec![b; n]);
        assert_eq!(o.push(f(1, 40), true, false, 8, 100), Queued::Yes);
        assert_eq!(o.push(f(2, 40), true, true, 8, 100), Queued::Yes);
        assert_eq!(o.bytes(), 80);
        // 80 + 30 > 100: the non-persistent frame goes.
        assert_eq!(o.push(f(3, 30), true, false, 8, 100), Queued::DroppedOldest);
        assert_eq!((o.len(), o.bytes()), (2, 70));
        assert_eq!(o.push(f(4, 40), true, false, 8, 100), Queued::DroppedOldest);
        assert_eq!((o.len(), o.bytes()), (2, 80));
        assert_eq!(o.push(f(5, 30), true, true, 8, 100), Queued::DroppedOldest);
        assert_eq!(o.push(f(6, 40), true, true, 8, 100), Queued::Full);
        assert_eq!(o.push(f(7, 40), true, false, 8, 100), Queued::DroppedNew);
        // A frame alone is always taken.
        o.clear();
        assert_eq!(o.push(f(8, 500), true, true, 8, 100), Queued::Yes);
    }

    #[test]
    fn a_pong_replaces_a_waiting_pong_and_replies_count_against_both_bounds() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let mut o = Outbound::default();
        o.push(Bytes::from_static(&[0x12; 16]), true, false, 8, usize::MAX);
        for nonce in 0..=255u8 {
            assert_eq!(o.send_pong(a.as_raw_fd(), Bytes::copy_from_slice(&[0x02, nonce])), Some(0));
        }
        assert_eq!((o.len(), o.bytes()), (2, 18), "one push and the latest PONG");
        assert!(o.reply_fits(6, 3, 24));
        assert!(!o.reply_fits(7, 3, 24), "over the byte bound");
        assert!(!o.reply_fits(1, 2, 24), "over the frame bound");
        assert_eq!(o.flush(a.as_raw_fd()), (Flushed::Empty, 18));
        assert_eq!(o.bytes(), 0);
        let mut got = [0u8; 18];
        use std::io::Read;
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got[16..], &[0x02, 255]);
    }

    #[test]
    fn control_frames_go_straight_out_and_an_idle_queue_holds_no_memory() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let mut o = Outbound::default();
        assert_eq!(o.send_control(a.as_raw_fd(), Bytes::from_static(&[0x02, 7])), Some(2));
        assert!(o.is_empty() && o.q.is_none());
        o.push(Bytes::from_static(&[0x12; 16]), true, false, 8, usize::MAX);
        // Behind a queued push: queued, then written in order with the push's padding.
        assert_eq!(o.send_control(a.as_raw_fd(), Bytes::from_static(&[0x02, 8])), Some(0));
        assert_eq!(o.flush(a.as_raw_fd()), (Flushed::Empty, 14 + 16 + 2));
        assert!(o.q.is_none());
        let mut got = [0u8; 34];
        use std::io::Read;
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &[0x02, 7]);
        assert_eq!(got[16], 0x12);
        assert_eq!(&got[32..], &[0x02, 8]);
    }

    #[test]
    fn two_piece_frames_are_written_whole_and_in_order() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let mut o = Outbound::default();
        let shared = Bytes::from_static(b"payload");
        o.push_parts(Bytes::from_static(b"h1:"), shared.clone(), false, true, 8, usize::MAX);
        o.push_control(Bytes::from_static(b"|"));
        o.push_parts(Bytes::from_static(b"h2:"), shared, false, false, 8, usize::MAX);
        assert_eq!(o.flush(a.as_raw_fd()), (Flushed::Empty, 21));
        let mut got = [0u8; 21];
        use std::io::Read;
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"h1:payload|h2:payload");
    }

    #[test]
    fn flush_pads_pushes_to_16_byte_offsets() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd;
        let mut o = Outbound::default();
        o.push_control(Bytes::from_static(&[0x02, 7]));
        o.push(Bytes::from_static(&[0x12; 20]), true, false, 8, usize::MAX);
        o.push_control(Bytes::from_static(&[0x02, 8]));
        o.push(Bytes::from_static(&[0x12; 16]), true, false, 8, usize::MAX);
        assert_eq!(o.flush(a.as_raw_fd()), (Flushed::Empty, 2 + 14 + 20 + 2 + 10 + 16));
        let mut got = [0u8; 64];
        use std::io::Read;
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got[..2], &[0x02, 7]);
        assert!(got[2..16].iter().all(|&x| x == 0));
        assert_eq!(got[16], 0x12);
        assert_eq!(&got[36..38], &[0x02, 8]);
        assert!(got[38..48].iter().all(|&x| x == 0));
        assert_eq!(got[48], 0x12);
    }
}
