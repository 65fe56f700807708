//! Primitive MQTT encodings (section 1.5 of both specs): big-endian integers, the variable byte
//! integer, length-prefixed UTF-8 strings and binary data. Reading is over a `Bytes` cursor so
//! strings and payloads come out as zero-copy slices of the receive buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{EncodeError, MqttError};
use super::string::Utf8;

/// Largest value a variable byte integer can hold (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Longest string or binary field: a 16-bit length prefix.
pub const MAX_FIELD_BYTES: usize = u16::MAX as usize;

/// What a variable byte integer at the front of a slice holds.
pub(crate) enum Varint {
    /// The value and how many bytes encoded it.
    Done(u32, usize),
    /// The slice ends before the integer does.
    Partial,
}

/// Reads a variable byte integer from the front of `b`. More than four bytes, or a value encoded
/// in more bytes than it needs (MQTT-1.5.5-1), is malformed.
pub(crate) fn read_varint(b: &[u8]) -> Result<Varint, ()> {
    let mut value: u32 = 0;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(());
            }
            return Ok(Varint::Done(value, i + 1));
        }
    }
    if b.len() >= 4 { Err(()) } else { Ok(Varint::Partial) }
}

/// Bytes a variable byte integer holding `v` takes.
pub const fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(dst: &mut BytesMut, mut v: u32) {
    debug_assert!(v <= MAX_VARINT);
    loop {
        let mut byte = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if v == 0 {
            return;
        }
    }
}

/// Writes a fixed header: the first byte and the remaining length.
pub(crate) fn put_fixed_header(dst: &mut BytesMut, first: u8, remaining: usize) -> Result<(), EncodeError> {
    let remaining =
        u32::try_from(remaining).ok().filter(|&r| r <= MAX_VARINT).ok_or(EncodeError::TooLarge)?;
    dst.reserve(1 + varint_len(remaining) + remaining as usize);
    dst.put_u8(first);
    put_varint(dst, remaining);
    Ok(())
}

/// Writes a length-prefixed string or binary field; the caller checked its length.
pub(crate) fn put_field(dst: &mut BytesMut, b: &[u8]) {
    debug_assert!(b.len() <= MAX_FIELD_BYTES);
    dst.put_u16(b.len() as u16);
    dst.put_slice(b);
}

pub(crate) fn check_field(b: &[u8]) -> Result<usize, EncodeError> {
    if b.len() > MAX_FIELD_BYTES { Err(EncodeError::FieldTooLong) } else { Ok(2 + b.len()) }
}

/// A cursor over one packet's bytes after the fixed header. Every read that would run past the
/// end is a malformed packet: the remaining length disagrees with the contents.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    packet: &'static str,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, packet: &'static str) -> Reader {
        Reader { buf, packet }
    }

    pub(crate) fn packet(&self) -> &'static str {
        self.packet
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn short(&self, what: &'static str) -> MqttError {
        MqttError::Malformed { packet: self.packet, what }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, MqttError> {
        if self.buf.is_empty() {
            return Err(self.short(what));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, MqttError> {
        if self.buf.len() < 2 {
            return Err(self.short(what));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, MqttError> {
        if self.buf.len() < 4 {
            return Err(self.short(what));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, MqttError> {
        match read_varint(&self.buf) {
            Ok(Varint::Done(v, n)) => {
                self.buf.advance(n);
                Ok(v)
            }
            Ok(Varint::Partial) | Err(()) => Err(self.short(what)),
        }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, MqttError> {
        if self.buf.len() < n {
            return Err(self.short(what));
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary data: a 16-bit length and that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, MqttError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }

    /// A UTF-8 encoded string (MQTT-1.5.4): well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<Utf8, MqttError> {
        let raw = self.binary(what)?;
        Utf8::try_from_bytes(raw).ok_or(MqttError::InvalidUtf8 { packet: self.packet, what })
    }

    /// Everything left, e.g. a PUBLISH payload.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The packet must end here.
    pub(crate) fn finish(&self) -> Result<(), MqttError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MqttError::Malformed { packet: self.packet, what: "bytes after the last field" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            match read_varint(&b) {
                Ok(Varint::Done(got, n)) => assert_eq!((got, n), (v, b.len())),
                _ => panic!("{v} did not read back"),
            }
            // Every strict prefix asks for more.
            for cut in 0..b.len() {
                assert!(matches!(read_varint(&b[..cut]), Ok(Varint::Partial)));
            }
        }
        assert_eq!(&put(128)[..], [0x80, 0x01]);
        assert_eq!(&put(MAX_VARINT)[..], [0xff, 0xff, 0xff, 0x7f]);
    }

    fn put(v: u32) -> BytesMut {
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        b
    }

    #[test]
    fn varint_over_four_bytes_or_not_minimal_is_refused() {
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(read_varint(&[0x80, 0x00]).is_err());
        assert!(read_varint(&[0xff, 0x80, 0x00]).is_err());
        assert!(matches!(read_varint(&[0x00]), Ok(Varint::Done(0, 1))));
    }

    #[test]
    fn reader_refuses_to_run_past_the_end() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']), "TEST");
        assert!(matches!(r.string("s"), Err(MqttError::Malformed { packet: "TEST", .. })));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, b'a', 0x01]), "TEST");
        assert_eq!(r.string("s").unwrap(), "a");
        assert!(r.finish().is_err());
        assert_eq!(r.u8("b").unwrap(), 1);
        assert!(r.finish().is_ok() && r.u16("x").is_err() && r.u32("x").is_err());
    }
}
