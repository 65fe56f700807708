//! A minimal MQTT 3.1.1 client codec: what a bench terminal and the bench's own publisher send
//! (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ) and what they read back (CONNACK, SUBACK,
//! PUBLISH, PUBACK, PINGRESP). Enough for Herald's MQTT listener and for Mosquitto; nothing more.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// Default keep-alive the bench announces in CONNECT, seconds (the server closes a connection
/// silent for 1.5× this; the bench pings at half of it when not told otherwise).
pub const KEEP_ALIVE_SECS: u16 = 60;

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT (3.1.1, clean session): `user`/`password` are left out when empty.
pub fn connect(client_id: &str, user: &str, password: &str, keep_alive: u16) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.push(4);
    let mut flags = 0x02u8;
    if !user.is_empty() {
        flags |= 0x80;
    }
    if !password.is_empty() {
        flags |= 0x40;
    }
    b.push(flags);
    b.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut b, client_id.as_bytes());
    if !user.is_empty() {
        put_str(&mut b, user.as_bytes());
    }
    if !password.is_empty() {
        put_str(&mut b, password.as_bytes());
    }
    packet(0x10, &b)
}

/// SUBSCRIBE to `topics` at QoS 1, packet id 1.
pub fn subscribe(topics: &[&str]) -> Vec<u8> {
    let mut b = vec![0, 1];
    for t in topics {
        put_str(&mut b, t.as_bytes());
        b.push(1);
    }
    packet(0x82, &b)
}

/// PUBLISH at `qos` (0 or 1; packet id `id` when 1).
pub fn publish(topic: &str, payload: &[u8], qos: u8, id: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut b, topic.as_bytes());
    if qos > 0 {
        b.extend_from_slice(&id.to_be_bytes());
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &b)
}

pub fn puback(id: u16) -> [u8; 4] {
    let [h, l] = id.to_be_bytes();
    [0x40, 0x02, h, l]
}

/// A packet from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck { return_code: u8 },
    SubAck { codes: &'a [u8] },
    Publish { qos: u8, id: u16, topic: &'a [u8], payload: &'a [u8] },
    PubAck,
    PingResp,
    Other(u8),
}

/// Decodes the packet at the start of `buf`: `Ok(None)` if incomplete, else the packet and its
/// length.
pub fn decode(buf: &[u8]) -> anyhow::Result<Option<(Packet<'_>, usize)>> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let (mut len, mut mult, mut at) = (0usize, 1usize, 1usize);
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        at += 1;
        len += usize::from(b & 0x7f) * mult;
        if b & 0x80 == 0 {
            break;
        }
        mult *= 128;
        if at > 4 {
            bail!("remaining length longer than 4 bytes");
        }
    }
    let end = at + len;
    if buf.len() < end {
        return Ok(None);
    }
    let body = &buf[at..end];
    let p = match first >> 4 {
        2 if body.len() >= 2 => Packet::ConnAck { return_code: body[1] },
        9 if body.len() >= 2 => Packet::SubAck { codes: &body[2..] },
        3 => {
            let qos = (first >> 1) & 3;
            if body.len() < 2 {
                bail!("PUBLISH without a topic");
            }
            let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let mut at = 2 + tl;
            if body.len() < at {
                bail!("PUBLISH topic past the packet");
            }
            let topic = &body[2..at];
            let mut id = 0;
            if qos > 0 {
                if body.len() < at + 2 {
                    bail!("PUBLISH without a packet id");
                }
                id = u16::from_be_bytes([body[at], body[at + 1]]);
                at += 2;
            }
            Packet::Publish { qos, id, topic, payload: &body[at..] }
        }
        4 => Packet::PubAck,
        13 => Packet::PingResp,
        2 | 9 => bail!("short packet of type {}", first >> 4),
        t => Packet::Other(t),
    };
    Ok(Some((p, end)))
}

/// The bench's publisher for a broker without an admin API: one MQTT connection, blocking.
#[derive(Debug)]
pub struct Publisher {
    stream: TcpStream,
    next_id: u16,
    buf: Vec<u8>,
}

impl Publisher {
    pub fn connect(addr: SocketAddrV4, client_id: &str) -> anyhow::Result<Publisher> {
        let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(&connect(client_id, "", "", 0))?;
        let mut p = Publisher { stream, next_id: 0, buf: Vec::new() };
        match p.read_packet()? {
            0 => Ok(p),
            rc => bail!("broker refused the publisher's CONNECT (return code {rc})"),
        }
    }

    /// Reads until one packet arrived; returns CONNACK's return code, or 0.
    fn read_packet(&mut self) -> anyhow::Result<u8> {
        loop {
            if let Some((p, n)) = decode(&self.buf)? {
                let rc = match p {
                    Packet::ConnAck { return_code } => return_code,
                    _ => 0,
                };
                self.buf.drain(..n);
                return Ok(rc);
            }
            let mut chunk = [0u8; 256];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("broker closed the publisher's connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes one message; at QoS 1 waits for its PUBACK (as an admin API call waits for its
    /// answer).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> anyhow::Result<()> {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.stream.write_all(&publish(topic, payload, qos, self.next_id))?;
        if qos > 0 {
            self.read_packet()?;
        }
        Ok(())
    }
}

/// The send time at the start of an MQTT payload: leading ASCII digits (ns since the epoch).
pub fn leading_ns(payload: &[u8]) -> Option<u64> {
    let end = payload.iter().position(|b| !b.is_ascii_digit()).unwrap_or(payload.len());
    std::str::from_utf8(&payload[..end]).ok()?.parse().ok()
}

/// A push body of `bytes` (at least the timestamp) that starts with the send time `t_ns`.
pub fn stamped_body(t_ns: u64, bytes: usize) -> String {
    let mut s = format!("{t_ns};");
    while s.len() < bytes {
        s.push('x');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_what_a_server_sends() {
        let p = publish("bench-all", b"123;xx", 1, 7);
        assert_eq!(
            decode(&p).unwrap(),
            Some((Packet::Publish { qos: 1, id: 7, topic: b"bench-all", payload: b"123;xx" }, p.len()))
        );
        assert_eq!(decode(&p[..p.len() - 1]).unwrap(), None);
        let big = publish("t", &[b'1'; 300], 0, 0);
        assert_eq!(big[1] & 0x80, 0x80);
        assert!(matches!(decode(&big).unwrap(), Some((Packet::Publish { qos: 0, .. }, n)) if n == big.len()));
        assert_eq!(decode(&[0x20, 2, 0, 0]).unwrap(), Some((Packet::ConnAck { return_code: 0 }, 4)));
        assert_eq!(decode(&[0x90, 3, 0, 1, 1]).unwrap(), Some((Packet::SubAck { codes: &[1] }, 5)));
        assert_eq!(decode(&[0xD0, 0]).unwrap(), Some((Packet::PingResp, 2)));
        assert_eq!(leading_ns(stamped_body(42, 10).as_bytes()), Some(42));
        assert_eq!(stamped_body(42, 10).len(), 10);
        let c = connect("d", "u", "p", 60);
        assert_eq!(c[0], 0x10);
        assert_eq!(&c[2..8], b"\0\x04MQTT");
    }
}
