//! Test helpers: a control plane on a temp dir with port 0, a tiny admin client, and a fake
//! gateway node speaking link frames over a real socket.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use herald_control_plane::{ControlPlane, ControlPlaneConfig};
use herald_protocol::frame::{Decoder, Frame};
use herald_protocol::link::{
    Hello, LINK_VERSION, LinkMessage, MAX_LINK_FRAME_BYTES, Online, PresenceChange, Receipt, StreamSeq,
};
use rkyv::util::AlignedVec;
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(5);

pub fn start(dir: &Path) -> ControlPlane {
    herald_control_plane::start(config(dir)).expect("control plane starts")
}

/// The test configuration: `dir` for data, port 0 everywhere, a fixed admin key.
pub fn config(dir: &Path) -> ControlPlaneConfig {
    ControlPlaneConfig {
        data_dir: dir.to_path_buf(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        link_addr: "127.0.0.1:0".parse().unwrap(),
        admin_key: Some("test-key".into()),
        ..ControlPlaneConfig::default()
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocking admin client over the real admin socket.
pub struct Admin {
    addr: SocketAddr,
    key: String,
}

impl Admin {
    pub fn new(cp: &ControlPlane) -> Admin {
        Admin { addr: cp.admin_addr(), key: cp.admin_key().to_owned() }
    }

    /// One HTTP/1.1 request over a fresh connection (`Connection: close`).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A GET's body as text (`/metrics`).
    pub fn text(&self, path: &str) -> String {
        let (status, text) = self.raw("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {text}");
        text
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let mut conn = TcpStream::connect(self.addr).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.key,
            body.len()
        );
        conn.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").expect("http response");
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, rest.to_owned())
    }

    pub fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body));
        assert!((200..300).contains(&s), "{method} {path} -> {s} {v}");
        v
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        let v = self.ok("POST", "/v1/credentials", serde_json::json!({"user": user, "device": device}));
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn push(&self, body: Value) -> u64 {
        let v = self.ok("POST", "/v1/pushes", body);
        v["push_id"].as_u64().unwrap()
    }

    pub fn status(&self, id: u64) -> Value {
        let (s, v) = self.call("GET", &format!("/v1/pushes/{id}"), None);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls a push's status until `pred` holds or the deadline passes.
    pub fn wait_status(&self, id: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let v = self.status(id);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < end, "status of {id} never matched: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A fake gateway node: a link client over a real TCP socket.
pub struct FakeGateway {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    scratch: AlignedVec,
    offset: u64,
}

impl FakeGateway {
    /// Connects, says Hello and sends the initial presence batch.
    pub fn connect(addr: SocketAddr, node: &str, online: Vec<PresenceChange>) -> FakeGateway {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut gw = FakeGateway {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(MAX_LINK_FRAME_BYTES),
            scratch: AlignedVec::new(),
            offset: 0,
        };
        gw.send(LinkMessage::Hello(Hello {
            node_id: node.into(),
            link_version: LINK_VERSION,
            cores: 1,
            public_addr: format!("{node}.test:1"),
        }));
        gw.send(LinkMessage::Presence(online));
        gw
    }

    pub fn send(&mut self, msg: LinkMessage) {
        let mut out = BytesMut::new();
        let n = msg.encode(self.offset, &mut out).unwrap();
        self.offset += n as u64;
        self.stream.write_all(&out).unwrap();
    }

    /// The next message, or None when nothing arrives within `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<LinkMessage> {
        let end = Instant::now() + wait;
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf).unwrap() {
                let Frame::Link(l) = f else { panic!("not a link frame") };
                match LinkMessage::decode(&l, &mut self.scratch).unwrap() {
                    // The control plane's "still here": answered, so the link stays up.
                    LinkMessage::Heartbeat => {
                        self.send(LinkMessage::Heartbeat);
                        continue;
                    }
                    m => return Some(m),
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return None;
                }
                Err(e) => panic!("link read: {e}"),
            }
        }
    }

    /// Skips messages until one matches `pred`; panics at the deadline.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&LinkMessage) -> bool) -> LinkMessage {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv_within(left) {
                Some(m) if pred(&m) => return m,
                Some(m) => seen.push(m),
                None => panic!("never got {what}; saw {seen:#?}"),
            }
        }
    }

    /// Collects every message until the link is quiet for `quiet`.
    pub fn drain(&mut self, quiet: Duration) -> Vec<LinkMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.recv_within(quiet) {
            out.push(m);
        }
        out
    }

    pub fn ack(&mut self, user: &str, device: &str, stream: u32, first: u32, last: u32) {
        self.send(LinkMessage::Receipts(vec![Receipt {
            user: user.into(),
            device: device.into(),
            stream,
            first,
            last,
        }]));
    }
}

pub fn online(user: &str, device: &str, session: u64, resume: Vec<StreamSeq>) -> PresenceChange {
    PresenceChange::Online(Online { user: user.into(), device: device.into(), session_id: session, resume })
}

/// The pushes among `msgs`.
pub fn pushes(msgs: &[LinkMessage]) -> Vec<&herald_protocol::link::PushOrder> {
    msgs.iter()
        .filter_map(|m| match m {
            LinkMessage::Push(p) => Some(p),
            _ => None,
        })
        .collect()
}
