//! Terminal frames: the byte layouts of `protocol/PROTOCOL.md`, a streaming decoder and encoders
//! that write into a caller's buffer.
//!
//! Decoding never allocates: variable parts (credential, resume list, ack ranges, payloads) are
//! `Bytes` slices of the receive buffer, read through zero-copy iterators. The declared length of
//! a frame is checked against the decoder's limit before a single byte of it is buffered beyond
//! the 4-byte prefix.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::code::CloseCode;

/// Protocol version a terminal puts in its login.
pub const PROTOCOL_VERSION: u8 = 1;

/// Frames whose payload is read in place (push, link) start at a stream offset that is a
/// multiple of this, so that their payload, 16 bytes later, is aligned too.
pub const FRAME_ALIGN: usize = 16;

/// Largest frame body the wire format can express (24-bit length).
pub const MAX_BODY_BYTES: usize = (1 << 24) - 1;

/// Default limit on a whole frame (prefix included) accepted from a peer.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Size of the prefix of every length-prefixed frame: type byte plus 24-bit body length.
pub const PREFIX_BYTES: usize = 4;

/// Size of a push frame's header, everything before its payload.
pub const PUSH_HEADER_BYTES: usize = 16;

/// Size of a link frame's header, everything before its rkyv payload.
pub const LINK_HEADER_BYTES: usize = 16;

/// One byte of padding, skipped by every decoder.
pub const T_PAD: u8 = 0x00;
/// Terminal → server heartbeat, 2 bytes.
pub const T_PING: u8 = 0x01;
/// Server → terminal heartbeat answer, 2 bytes.
pub const T_PONG: u8 = 0x02;
/// Terminal → server login.
pub const T_LOGIN: u8 = 0x10;
/// Server → terminal login accepted.
pub const T_LOGIN_OK: u8 = 0x11;
/// Server → terminal push (aligned).
pub const T_PUSH: u8 = 0x12;
/// Terminal → server acknowledgements.
pub const T_ACK: u8 = 0x13;
/// Server → terminal: reconnect elsewhere or later.
pub const T_GOAWAY: u8 = 0x14;
/// Either direction: the sender closes the connection, with a code.
pub const T_CLOSE: u8 = 0x15;
/// Gateway ↔ control plane link message (aligned, rkyv payload).
pub const T_LINK: u8 = 0x20;

const LOGIN_FIXED: usize = 8;
const LOGIN_OK_BODY: usize = 24;
const GOAWAY_BODY: usize = 8;
const ACK_RANGE_BYTES: usize = 12;
/// Most ranges one ACK may carry. A client batches at most a few dozen streams per ACK; the cap
/// bounds the receipts a single frame can make a gateway produce (an ACK flood).
pub const MAX_ACK_RANGES: usize = 256;
const RESUME_ENTRY_BYTES: usize = 8;
/// Longest reason text in a close frame, in bytes.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

const PADDING: [u8; FRAME_ALIGN] = [T_PAD; FRAME_ALIGN];

/// A decoded frame. Variable-length parts borrow the receive buffer (`Bytes`), never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Terminal heartbeat; the nonce is echoed in the answer.
    Ping {
        nonce: u8,
    },
    /// Server's answer to a heartbeat.
    Pong {
        nonce: u8,
    },
    Login(Login),
    LoginOk(LoginOk),
    Push(Push),
    Ack(Ack),
    GoAway(GoAway),
    Close(Close),
    Link(Link),
}

/// Login: the first frame a terminal sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub version: u8,
    pub flags: u8,
    /// The credential token, as text (see `credential`).
    pub credential: Bytes,
    /// The device id the terminal claims; must match the credential's.
    pub device: Bytes,
    /// `count × (stream u32, seq u32)`: for each stream, the highest sequence the terminal
    /// already holds contiguously. Read with [`Login::resume`].
    resume_raw: Bytes,
}

/// What a terminal already has of one stream: every message with `seq <= seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamPos {
    pub stream: u32,
    pub seq: u32,
}

/// Server's answer to a valid login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginOk {
    pub session_id: u64,
    /// Server wall clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// How often the terminal must send a heartbeat (or any frame).
    pub heartbeat_interval_secs: u16,
    /// Largest frame the server accepts from this terminal.
    pub max_frame_bytes: u32,
}

/// Push flags (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PushFlags(pub u8);

impl PushFlags {
    /// The terminal must acknowledge this message (it has a TTL and is stored).
    pub const ACK_REQUIRED: PushFlags = PushFlags(0b0000_0001);
    /// This message may have been delivered before (a redelivery after reconnect).
    pub const REDELIVERY: PushFlags = PushFlags(0b0000_0010);
    /// High priority: wake the device.
    pub const HIGH_PRIORITY: PushFlags = PushFlags(0b0000_0100);

    pub const fn contains(self, other: PushFlags) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub const fn with(self, other: PushFlags) -> PushFlags {
        PushFlags(self.0 | other.0)
    }
}

/// A message for the terminal. `(stream, seq)` is its message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub flags: PushFlags,
    /// Seconds the message stays valid after it was sent; 0 = fire-and-forget.
    pub ttl_secs: u32,
    pub stream: u32,
    pub seq: u32,
    /// rkyv-archived [`crate::payload::PushPayload`].
    pub payload: Bytes,
}

/// Batched acknowledgements: inclusive ranges of sequences per stream. A range starting at 0 is
/// cumulative (everything up to `last`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    ranges_raw: Bytes,
}

/// One acknowledged range, `first..=last` of `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckRange {
    pub stream: u32,
    pub first: u32,
    pub last: u32,
}

/// The server asks the terminal to reconnect, to this or another node, after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    pub reason: CloseCode,
    pub reconnect_after_ms: u32,
}

/// The sender closes the connection after this frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    /// UTF-8, at most [`MAX_CLOSE_REASON_BYTES`].
    pub reason: Bytes,
}

/// A gateway ↔ control-plane message: link version and its rkyv payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub version: u16,
    pub payload: Bytes,
}

/// Why bytes from a peer are not a frame. Every variant is the peer's fault and maps to a close
/// code with [`DecodeError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type byte names no frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The declared length is over the receiver's limit; nothing was buffered for it.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The body's fields contradict its length or each other.
    #[error("malformed {frame} frame: {what}")]
    Malformed { frame: &'static str, what: &'static str },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes left)")]
    Truncated(usize),
}

impl DecodeError {
    /// The close code to send before dropping the connection.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::TooLarge { .. } => CloseCode::FRAME_TOO_LARGE,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// A decoder with a frame size limit. [`decode`] uses [`DEFAULT_MAX_FRAME_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_frame_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

/// Decodes one frame from the front of `buf` with the default limit.
///
/// `Ok(None)`: more bytes are needed (and `buf` holds only leading padding or a partial frame).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    Decoder::default().decode(buf)
}

impl Decoder {
    /// `max_frame_bytes` counts the whole frame, prefix included; it is capped at what the
    /// format can express.
    pub fn new(max_frame_bytes: usize) -> Self {
        Decoder { max_frame_bytes: max_frame_bytes.min(PREFIX_BYTES + MAX_BODY_BYTES) }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Decodes one frame from the front of `buf`, skipping padding. On `Ok(Some)` the frame's
    /// bytes are consumed; on `Ok(None)` nothing but padding is; on `Err` the connection is over.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let pads = buf.iter().take_while(|&&b| b == T_PAD).count();
        buf.advance(pads);
        let Some(&ty) = buf.first() else { return Ok(None) };
        match ty {
            T_PING | T_PONG => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                let nonce = buf[1];
                buf.advance(2);
                Ok(Some(if ty == T_PING { Frame::Ping { nonce } } else { Frame::Pong { nonce } }))
            }
            T_LOGIN | T_LOGIN_OK | T_PUSH | T_ACK | T_GOAWAY | T_CLOSE | T_LINK => {
                if buf.len() < PREFIX_BYTES {
                    return Ok(None);
                }
                let body_len = u32::from_le_bytes([buf[1], buf[2], buf[3], 0]) as usize;
                let len = PREFIX_BYTES + body_len;
                if len > self.max_frame_bytes {
                    return Err(DecodeError::TooLarge { len, max: self.max_frame_bytes });
                }
                if buf.len() < len {
                    buf.reserve(len - buf.len());
                    return Ok(None);
                }
                let mut frame = buf.split_to(len).freeze();
                frame.advance(PREFIX_BYTES);
                parse_body(ty, frame).map(Some)
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// Call when the peer closed its side: a partial frame left in `buf` is an error.
    pub fn decode_eof(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::Truncated(buf.len())),
        }
    }
}

fn malformed(frame: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Malformed { frame, what }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn parse_body(ty: u8, body: Bytes) -> Result<Frame, DecodeError> {
    match ty {
        T_LOGIN => {
            if body.len() < LOGIN_FIXED {
                return Err(malformed("login", "shorter than its fixed part"));
            }
            let cred_len = le16(&body, 2) as usize;
            let dev_len = le16(&body, 4) as usize;
            let resume_count = le16(&body, 6) as usize;
            let need = LOGIN_FIXED + cred_len + dev_len + resume_count * RESUME_ENTRY_BYTES;
            if need != body.len() {
                return Err(malformed("login", "field lengths disagree with the frame length"));
            }
            let version = body[0];
            let flags = body[1];
            let mut rest = body.slice(LOGIN_FIXED..);
            let credential = rest.split_to(cred_len);
            let device = rest.split_to(dev_len);
            Ok(Frame::Login(Login { version, flags, credential, device, resume_raw: rest }))
        }
        T_LOGIN_OK => {
            if body.len() < LOGIN_OK_BODY {
                return Err(malformed("login-ok", "shorter than 24 bytes"));
            }
            Ok(Frame::LoginOk(LoginOk {
                session_id: le64(&body, 0),
                server_time_ms: le64(&body, 8),
                heartbeat_interval_secs: le16(&body, 16),
                max_frame_bytes: le32(&body, 20),
            }))
        }
        T_PUSH => {
            if body.len() < PUSH_HEADER_BYTES - PREFIX_BYTES {
                return Err(malformed("push", "shorter than its header"));
            }
            let flags = PushFlags(body[0]);
            let ttl_secs = u32::from_le_bytes([body[1], body[2], body[3], 0]);
            let stream = le32(&body, 4);
            let seq = le32(&body, 8);
            if seq == 0 {
                return Err(malformed("push", "sequence 0 is reserved"));
            }
            let payload = body.slice(PUSH_HEADER_BYTES - PREFIX_BYTES..);
            Ok(Frame::Push(Push { flags, ttl_secs, stream, seq, payload }))
        }
        T_ACK => {
            if body.is_empty() || !body.len().is_multiple_of(ACK_RANGE_BYTES) {
                return Err(malformed("ack", "length is not a positive multiple of 12"));
            }
            if body.len() > MAX_ACK_RANGES * ACK_RANGE_BYTES {
                return Err(malformed("ack", "more than 256 ranges"));
            }
            let ack = Ack { ranges_raw: body };
            if ack.ranges().any(|r| r.first > r.last) {
                return Err(malformed("ack", "range with first > last"));
            }
            Ok(Frame::Ack(ack))
        }
        T_GOAWAY => {
            if body.len() < GOAWAY_BODY {
                return Err(malformed("goaway", "shorter than 8 bytes"));
            }
            Ok(Frame::GoAway(GoAway {
                reason: CloseCode(le16(&body, 0)),
                reconnect_after_ms: le32(&body, 4),
            }))
        }
        T_CLOSE => {
            if body.len() < 2 {
                return Err(malformed("close", "shorter than its code"));
            }
            let reason = body.slice(2..);
            if reason.len() > MAX_CLOSE_REASON_BYTES || std::str::from_utf8(&reason).is_err() {
                return Err(malformed("close", "reason is not UTF-8 of at most 123 bytes"));
            }
            Ok(Frame::Close(Close { code: CloseCode(le16(&body, 0)), reason }))
        }
        T_LINK => {
            if body.len() < LINK_HEADER_BYTES - PREFIX_BYTES {
                return Err(malformed("link", "shorter than its header"));
            }
            let version = le16(&body, 0);
            Ok(Frame::Link(Link { version, payload: body.slice(LINK_HEADER_BYTES - PREFIX_BYTES..) }))
        }
        _ => unreachable!("parse_body is only called for length-prefixed types"),
    }
}

impl Login {
    /// Builds a login (for encoding). `resume` is what the terminal already holds.
    pub fn new(credential: Bytes, device: Bytes, resume: &[StreamPos]) -> Login {
        let mut raw = BytesMut::with_capacity(resume.len() * RESUME_ENTRY_BYTES);
        for p in resume {
            raw.put_u32_le(p.stream);
            raw.put_u32_le(p.seq);
        }
        Login { version: PROTOCOL_VERSION, flags: 0, credential, device, resume_raw: raw.freeze() }
    }

    /// What the terminal already holds, per stream.
    pub fn resume(&self) -> impl ExactSizeIterator<Item = StreamPos> + '_ {
        self.resume_raw
            .chunks_exact(RESUME_ENTRY_BYTES)
            .map(|c| StreamPos { stream: le32(c, 0), seq: le32(c, 4) })
    }

    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let resume_count = self.resume_raw.len() / RESUME_ENTRY_BYTES;
        let (Ok(cred), Ok(dev), Ok(count)) = (
            u16::try_from(self.credential.len()),
            u16::try_from(self.device.len()),
            u16::try_from(resume_count),
        ) else {
            return Err(EncodeError::FieldTooLong);
        };
        let body = LOGIN_FIXED + self.credential.len() + self.device.len() + self.resume_raw.len();
        put_prefix(dst, T_LOGIN, body)?;
        dst.put_u8(self.version);
        dst.put_u8(self.flags);
        dst.put_u16_le(cred);
        dst.put_u16_le(dev);
        dst.put_u16_le(count);
        dst.put_slice(&self.credential);
        dst.put_slice(&self.device);
        dst.put_slice(&self.resume_raw);
        Ok(())
    }
}

impl Ack {
    /// Builds an ack from ranges (for encoding).
    pub fn new(ranges: &[AckRange]) -> Ack {
        let mut raw = BytesMut::with_capacity(ranges.len() * ACK_RANGE_BYTES);
        for r in ranges {
            raw.put_u32_le(r.stream);
            raw.put_u32_le(r.first);
            raw.put_u32_le(r.last);
        }
        Ack { ranges_raw: raw.freeze() }
    }

    pub fn ranges(&self) -> impl ExactSizeIterator<Item = AckRange> + '_ {
        self.ranges_raw.chunks_exact(ACK_RANGE_BYTES).map(|c| AckRange {
            stream: le32(c, 0),
            first: le32(c, 4),
            last: le32(c, 8),
        })
    }

    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self.ranges_raw.is_empty() {
            return Err(EncodeError::Empty);
        }
        put_prefix(dst, T_ACK, self.ranges_raw.len())?;
        dst.put_slice(&self.ranges_raw);
        Ok(())
    }
}

/// Why a frame could not be encoded: the caller's values do not fit the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("frame body longer than 16 MiB")]
    TooLarge,
    #[error("a field is longer than its length prefix allows")]
    FieldTooLong,
    #[error("TTL over 2^24-1 seconds")]
    TtlTooLong,
    #[error("sequence 0 is reserved")]
    ZeroSeq,
    #[error("an ack needs at least one range")]
    Empty,
}

fn put_prefix(dst: &mut BytesMut, ty: u8, body_len: usize) -> Result<(), EncodeError> {
    if body_len > MAX_BODY_BYTES {
        return Err(EncodeError::TooLarge);
    }
    dst.reserve(PREFIX_BYTES + body_len);
    dst.put_u8(ty);
    let b = (body_len as u32).to_le_bytes();
    dst.put_slice(&b[..3]);
    Ok(())
}

/// Writes a heartbeat: exactly 2 bytes.
pub fn encode_ping(nonce: u8, dst: &mut BytesMut) {
    dst.put_slice(&[T_PING, nonce]);
}

/// Writes a heartbeat answer: exactly 2 bytes.
pub fn encode_pong(nonce: u8, dst: &mut BytesMut) {
    dst.put_slice(&[T_PONG, nonce]);
}

impl LoginOk {
    pub fn encode(&self, dst: &mut BytesMut) {
        // Fixed 24-byte body: cannot exceed the limit.
        let _ = put_prefix(dst, T_LOGIN_OK, LOGIN_OK_BODY);
        dst.put_u64_le(self.session_id);
        dst.put_u64_le(self.server_time_ms);
        dst.put_u16_le(self.heartbeat_interval_secs);
        dst.put_u16_le(0);
        dst.put_u32_le(self.max_frame_bytes);
    }
}

impl GoAway {
    pub fn encode(&self, dst: &mut BytesMut) {
        let _ = put_prefix(dst, T_GOAWAY, GOAWAY_BODY);
        dst.put_u16_le(self.reason.0);
        dst.put_u16_le(0);
        dst.put_u32_le(self.reconnect_after_ms);
    }
}

impl Close {
    /// Writes a close frame; a reason longer than allowed is cut at a character boundary.
    pub fn encode_parts(code: CloseCode, reason: &str, dst: &mut BytesMut) {
        let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = put_prefix(dst, T_CLOSE, 2 + end);
        dst.put_u16_le(code.0);
        dst.put_slice(&reason.as_bytes()[..end]);
    }

    pub fn encode(&self, dst: &mut BytesMut) {
        Close::encode_parts(self.code, std::str::from_utf8(&self.reason).unwrap_or(""), dst);
    }

    /// The reason as text (decoding checked it is UTF-8).
    pub fn reason_str(&self) -> &str {
        std::str::from_utf8(&self.reason).unwrap_or("")
    }
}

/// The fixed part of a push, for encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushHeader {
    pub flags: PushFlags,
    pub ttl_secs: u32,
    pub stream: u32,
    pub seq: u32,
}

/// Encodes a whole push frame once into `Bytes`, ready to be written to any number of
/// connections. The frame must start at a 16-aligned stream offset: see [`padding_for`].
pub fn encode_push(header: PushHeader, payload: &[u8]) -> Result<Bytes, EncodeError> {
    let mut dst = BytesMut::with_capacity(PUSH_HEADER_BYTES + payload.len());
    encode_push_into(header, payload, &mut dst)?;
    Ok(dst.freeze())
}

/// Like [`encode_push`], appending to a caller's buffer.
pub fn encode_push_into(header: PushHeader, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
    if header.ttl_secs > 0x00ff_ffff {
        return Err(EncodeError::TtlTooLong);
    }
    if header.seq == 0 {
        return Err(EncodeError::ZeroSeq);
    }
    put_prefix(dst, T_PUSH, PUSH_HEADER_BYTES - PREFIX_BYTES + payload.len())?;
    dst.put_u8(header.flags.0);
    dst.put_slice(&header.ttl_secs.to_le_bytes()[..3]);
    dst.put_u32_le(header.stream);
    dst.put_u32_le(header.seq);
    dst.put_slice(payload);
    Ok(())
}

impl Push {
    pub fn header(&self) -> PushHeader {
        PushHeader { flags: self.flags, ttl_secs: self.ttl_secs, stream: self.stream, seq: self.seq }
    }
}

/// Encodes a link frame (16-byte header, then `payload`). Like a push, it must start at a
/// 16-aligned stream offset.
pub fn encode_link_into(version: u16, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
    put_prefix(dst, T_LINK, LINK_HEADER_BYTES - PREFIX_BYTES + payload.len())?;
    dst.put_u16_le(version);
    dst.put_bytes(0, LINK_HEADER_BYTES - PREFIX_BYTES - 2);
    dst.put_slice(payload);
    Ok(())
}

impl Frame {
    /// Encodes any frame (tests, tools, clients). Hot paths use the specific encoders.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Frame::Ping { nonce } => encode_ping(*nonce, dst),
            Frame::Pong { nonce } => encode_pong(*nonce, dst),
            Frame::Login(l) => l.encode(dst)?,
            Frame::LoginOk(l) => l.encode(dst),
            Frame::Push(p) => encode_push_into(p.header(), &p.payload, dst)?,
            Frame::Ack(a) => a.encode(dst)?,
            Frame::GoAway(g) => g.encode(dst),
            Frame::Close(c) => c.encode(dst),
            Frame::Link(l) => encode_link_into(l.version, &l.payload, dst)?,
        }
        Ok(())
    }

    /// Whether this frame must start at a 16-aligned stream offset.
    pub fn is_aligned(&self) -> bool {
        matches!(self, Frame::Push(_) | Frame::Link(_))
    }
}

/// Padding to write before an aligned frame when `stream_offset` bytes have been sent so far on
/// this connection: between 0 and 15 pad bytes, from a static buffer.
pub fn padding_for(stream_offset: u64) -> &'static [u8] {
    let rem = (stream_offset % FRAME_ALIGN as u64) as usize;
    &PADDING[..(FRAME_ALIGN - rem) % FRAME_ALIGN]
}

/// Same as [`padding_for`], as `Bytes` that can join a vectored write without a copy.
pub fn padding_bytes(stream_offset: u64) -> Bytes {
    Bytes::from_static(padding_for(stream_offset))
}
