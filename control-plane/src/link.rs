//! The link server: one TCP connection per gateway node, `LINK` frames carrying
//! `herald_protocol::link::LinkMessage`s (see that module for the conversation).
//!
//! Per connection a reader task decodes and applies messages to the core, and a writer task
//! drains the node's bounded outbound [`LinkQueue`] (filled by the core under its lock),
//! tracking the stream offset for alignment padding and coalescing queued messages into one
//! write. When the core marked the node behind (its queue was full), the writer tells the core
//! once the queue is down to half its bound, and the core resyncs the node.
//!
//! Liveness: the writer sends a `Heartbeat` when it has written nothing for
//! `link_heartbeat_secs`; the connection ends when the node has sent nothing, or a write has
//! not completed, for `link_dead_after_secs` (plus TCP keepalive). Every message is split under
//! the frame limit before it is encoded ([`LinkMessage::split`]); one that still cannot be
//! encoded ends the connection (logged, counted) so the node reconnects and resyncs. A node id
//! already held by a live link is refused (`Refused`), never swapped back and forth.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use herald_protocol::frame::{Decoder, Frame};
use herald_protocol::link::{
    LINK_PART_BYTES, LINK_VERSION, LinkMessage, MAX_LINK_FRAME_BYTES, PublishOutcome, PublishResult,
    TerminalPublish,
};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::core::Published;
use crate::queue::LinkQueue;
use crate::{Shared, now_ms};

/// How long a new connection has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries (100 ms apart) of a Hello whose node id is held by another link, before refusing.
const DUPLICATE_GRACE_TRIES: usize = 10;
/// Bytes of queued messages written in one go.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Accepts gateway nodes until `shutdown`.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let every = Duration::from_secs(shared.config.link_heartbeat_secs.max(1));
                    let ka = socket2::TcpKeepalive::new().with_time(every).with_interval(every);
                    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka) {
                        tracing::warn!(%peer, error = %e, "cannot set TCP keepalive on a link");
                    }
                    tokio::spawn(connection(shared.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "link accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = crate::stopped(&mut stop) => return,
        }
    }
}

/// Reads link messages from one node.
/// Read buffers larger than this are freed once the message in them is decoded.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    scratch: AlignedVec,
}

impl Reader {
    /// The next message; `Ok(None)` at a clean end of stream.
    async fn next(&mut self) -> anyhow::Result<Option<LinkMessage>> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                let Frame::Link(link) = frame else {
                    anyhow::bail!("unexpected non-link frame on the link");
                };
                let msg = LinkMessage::decode(&link, &mut self.scratch)?;
                // One large batch (a burst's receipts) must not leave its size allocated for
                // the life of the link.
                if self.scratch.capacity() > KEEP_BUFFER_BYTES {
                    self.scratch = AlignedVec::new();
                }
                if self.buf.capacity() > KEEP_BUFFER_BYTES && self.buf.len() <= KEEP_BUFFER_BYTES {
                    // What is left (the start of the next frame) moves to a buffer of its own,
                    // so the large one is freed with the message.
                    self.buf = BytesMut::from(&self.buf[..]);
                }
                return Ok(Some(msg));
            }
            self.buf.reserve(64 * 1024);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buf)? {
                    Some(_) => anyhow::bail!("frame at end of stream"),
                    None => Ok(None),
                };
            }
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let (rd, wr) = stream.into_split();
    let mut reader = Reader {
        half: rd,
        buf: BytesMut::with_capacity(64 * 1024),
        decoder: Decoder::new(MAX_LINK_FRAME_BYTES),
        scratch: AlignedVec::new(),
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(LinkMessage::Hello(h)))) => h,
        Ok(Ok(other)) => {
            tracing::warn!(%peer, ?other, "link peer did not start with Hello");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "link peer sent garbage before Hello");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "link peer sent no Hello in time");
            return;
        }
    };
    if hello.link_version != LINK_VERSION {
        tracing::warn!(%peer, version = hello.link_version, "link version refused");
        return;
    }
    let node = hello.node_id.clone();
    let queue = Arc::new(
        LinkQueue::new(shared.config.link_queue_messages).with_max_bytes(shared.config.link_queue_bytes),
    );
    // A node that reconnects at once (it dropped its old link) may say Hello before this side
    // has read the old link's end: give the old link a moment to go before refusing.
    let mut hello_result = shared.fire(|core| core.node_hello(&hello, queue.clone()));
    for _ in 0..DUPLICATE_GRACE_TRIES {
        if hello_result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        hello_result = shared.fire(|core| core.node_hello(&hello, queue.clone()));
    }
    let conn = match hello_result {
        Ok(conn) => conn,
        Err(reason) => {
            shared.metrics.link_refused.inc();
            tracing::error!(%peer, %node, %reason, "gateway node refused");
            refuse(wr, reason).await;
            return;
        }
    };
    tracing::info!(%peer, %node, conn, "gateway node connected");
    let dead_after = Duration::from_secs(shared.config.link_dead_after_secs.max(1));
    let mut writer = tokio::spawn(write_loop(wr, queue.clone(), shared.clone(), node.clone(), conn));
    loop {
        // Back-pressure: what a message changes must be committed; while the store is behind,
        // stop reading (the gateway's writes, then its own bounded queues, wait).
        tokio::select! {
            () = shared.committer_room() => {}
            () = crate::stopped(&mut shutdown) => break,
        }
        let msg = tokio::select! {
            m = tokio::time::timeout(dead_after, reader.next()) => match m {
                Ok(m) => m,
                Err(_) => {
                    shared.metrics.link_timeouts.inc();
                    tracing::warn!(%node, dead_after_secs = dead_after.as_secs(), "gateway node sent nothing for the deadline; dropping its link");
                    break;
                }
            },
            // The writer ends on a write error or timeout, or a message it cannot encode.
            _ = &mut writer => break,
            () = crate::stopped(&mut shutdown) => break,
        };
        match msg {
            Ok(Some(m)) => {
                if !apply(&shared, &queue, &node, conn, m) {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%node, error = %e, "link read failed");
                break;
            }
        }
    }
    shared.fire(|core| core.node_gone(&node, conn));
    queue.close();
    writer.abort();
    tracing::info!(%node, conn, "gateway node disconnected");
}

/// Applies one message from a node; false ends the connection (protocol violation).
fn apply(shared: &Arc<Shared>, queue: &Arc<LinkQueue>, node: &str, conn: u64, msg: LinkMessage) -> bool {
    match msg {
        LinkMessage::Presence(changes) => {
            let now = now_ms();
            shared.fire(|core| core.presence_changes(node, conn, changes, now));
        }
        LinkMessage::Receipts(rs) => shared.fire(|core| core.receipts(&rs)),
        LinkMessage::Reports(rs) => shared.fire(|core| core.reports(&rs)),
        LinkMessage::Stats(s) => shared.fire(|core| core.node_stats(node, conn, s)),
        LinkMessage::Publish(p) => terminal_publish(shared, queue, p),
        LinkMessage::Heartbeat => {}
        other => {
            tracing::warn!(%node, ?other, "gateway sent a control-plane message");
            return false;
        }
    }
    true
}

/// A terminal's message: accepted on the core now (so one node's messages are numbered in the
/// order it sent them), answered once durable when the gateway asked for an answer.
fn terminal_publish(shared: &Arc<Shared>, queue: &Arc<LinkQueue>, p: TerminalPublish) {
    let reply = p.reply;
    let (default_ttl, max_ttl) = (shared.config.default_ttl_secs, shared.config.max_ttl_secs);
    let now = now_ms();
    let answer = move |queue: &LinkQueue, outcome| {
        if let Some(reference) = reply {
            queue.control(LinkMessage::PublishResult(PublishResult { reference, outcome }));
        }
    };
    let submitted = shared.submit(|core| {
        Ok(match core.terminal_publish(p, default_ttl, max_ttl, now)? {
            Published::Push(id) => (Some(id), vec![id]),
            Published::Waiting => (None, Vec::new()),
        })
    });
    match submitted {
        Err(outcome) => answer(queue, outcome),
        // A waiting will never asks for an answer.
        Ok((None, _)) => {}
        Ok((Some(push_id), durable)) => {
            let Some(rx) = durable else {
                answer(queue, PublishOutcome::Accepted { push_id });
                return;
            };
            let queue = queue.clone();
            tokio::spawn(async move {
                let outcome = match rx.await {
                    Ok(true) => PublishOutcome::Accepted { push_id },
                    _ => PublishOutcome::Unavailable,
                };
                answer(&queue, outcome);
            });
        }
    }
}

/// Writes `buf`; false ends the link: a write error, or the node not taking the bytes within
/// `dead_after` (it stopped reading).
async fn write(
    wr: &mut OwnedWriteHalf,
    buf: &[u8],
    dead_after: Duration,
    shared: &Shared,
    node: &str,
) -> bool {
    match tokio::time::timeout(dead_after, wr.write_all(buf)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            shared.metrics.link_timeouts.inc();
            tracing::warn!(%node, "gateway node did not read its link for the deadline; dropping it");
            false
        }
    }
}

/// Tells a node why it may not connect, then closes.
async fn refuse(mut wr: OwnedWriteHalf, reason: String) {
    let mut buf = BytesMut::new();
    if LinkMessage::Refused(reason).encode(0, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&buf)).await;
    }
    let _ = wr.shutdown().await;
}

/// Messages taken from the queue per write (a write also stops at `WRITE_BATCH_BYTES`).
const WRITE_BATCH_MESSAGES: usize = 256;

async fn write_loop(
    mut wr: OwnedWriteHalf,
    queue: Arc<LinkQueue>,
    shared: Arc<Shared>,
    node: String,
    conn: u64,
) {
    let mut offset: u64 = 0;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(WRITE_BATCH_MESSAGES);
    let mut parts = Vec::new();
    let heartbeat = Duration::from_secs(shared.config.link_heartbeat_secs.max(1));
    let dead_after = Duration::from_secs(shared.config.link_dead_after_secs.max(1));
    loop {
        match tokio::time::timeout(heartbeat, queue.pop(&mut batch, WRITE_BATCH_MESSAGES)).await {
            Ok(true) => {}
            Ok(false) => break,
            // Nothing to write for a heartbeat interval: say we are alive.
            Err(_) => batch.push(LinkMessage::Heartbeat),
        }
        for msg in batch.drain(..) {
            msg.split(LINK_PART_BYTES, &mut parts);
            for part in parts.drain(..) {
                match part.encode(offset, &mut buf) {
                    Ok(n) => offset += n as u64,
                    Err(e) => {
                        // Fatal for this link: the node reconnects and gets everything again.
                        shared.metrics.link_encode_failures.inc();
                        tracing::error!(%node, error = %e, message = ?std::mem::discriminant(&part), "cannot encode a link message; dropping the link");
                        return;
                    }
                }
                if buf.len() >= WRITE_BATCH_BYTES {
                    if !write(&mut wr, &buf, dead_after, &shared, &node).await {
                        return;
                    }
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            if !write(&mut wr, &buf, dead_after, &shared, &node).await {
                return;
            }
            buf.clear();
        }
        if queue.is_behind() && queue.drained() {
            shared.fire(|core| core.node_drained(&node, conn, now_ms()));
        }
    }
    let _ = wr.shutdown().await;
}
