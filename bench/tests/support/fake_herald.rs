//! A stand-in for Herald speaking the same public surfaces (admin API subset, terminal frames,
//! metrics), so the bench's own machinery is tested even where the real binary is not built.
//! Thread per connection; not a model of Herald's performance.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use herald_protocol::Frame;
use herald_protocol::frame::{self, LoginOk, PushFlags, PushHeader};
use herald_protocol::payload::{DataEntry, PushPayload};

#[derive(Default)]
struct Conn {
    user: String,
    stream: Option<TcpStream>,
    sent: u64,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Vec<String>>,
    conns: Vec<Arc<Mutex<Conn>>>,
    seq: u32,
}

pub(crate) struct FakeHerald {
    pub(crate) tcp: String,
    pub(crate) admin: String,
}

pub(crate) fn start() -> FakeHerald {
    let state = Arc::new(Mutex::new(State::default()));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = FakeHerald {
        tcp: tcp.local_addr().unwrap().to_string(),
        admin: admin.local_addr().unwrap().to_string(),
    };
    let st = state.clone();
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            let st = st.clone();
            std::thread::spawn(move || terminal(s, st));
        }
    });
    std::thread::spawn(move || {
        for s in admin.incoming().flatten() {
            let st = state.clone();
            std::thread::spawn(move || http(s, st));
        }
    });
    out
}

fn write_frame(c: &mut Conn, bytes: &[u8], aligned: bool) {
    let Some(s) = c.stream.as_mut() else { return };
    let pad = if aligned { frame::padding_for(c.sent) } else { &[] };
    let mut v = pad.to_vec();
    v.extend_from_slice(bytes);
    if s.write_all(&v).is_err() {
        c.stream = None;
    }
    c.sent += v.len() as u64;
}

fn terminal(mut s: TcpStream, st: Arc<Mutex<State>>) {
    s.set_nodelay(true).ok();
    let conn = Arc::new(Mutex::new(Conn { stream: s.try_clone().ok(), ..Default::default() }));
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(f)) = frame::decode(&mut buf) {
            match f {
                Frame::Login(l) => {
                    let token = String::from_utf8_lossy(&l.credential).to_string();
                    let user = token.split(':').nth(1).unwrap_or("").to_string();
                    let mut b = BytesMut::new();
                    LoginOk {
                        session_id: 1,
                        server_time_ms: 0,
                        heartbeat_interval_secs: 30,
                        max_frame_bytes: 65536,
                    }
                    .encode(&mut b);
                    let mut c = conn.lock().unwrap();
                    c.user = user;
                    write_frame(&mut c, &b, false);
                    drop(c);
                    st.lock().unwrap().conns.push(conn.clone());
                }
                Frame::Ping { nonce } => {
                    write_frame(&mut conn.lock().unwrap(), &[frame::T_PONG, nonce], false)
                }
                _ => {}
            }
        }
    }
    conn.lock().unwrap().stream = None;
}

fn http(s: TcpStream, st: Arc<Mutex<State>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (code, answer) = route(&method, &path, &v, &st);
        let text = answer.to_string();
        let _ = write!(
            w,
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
    }
}

fn route(
    method: &str,
    path: &str,
    v: &serde_json::Value,
    st: &Arc<Mutex<State>>,
) -> (u16, serde_json::Value) {
    use serde_json::json;
    match (method, path) {
        ("GET", "/healthz") | ("GET", "/metrics") => (200, json!({})),
        ("POST", "/v1/credentials") => (
            200,
            json!({"token": format!("tok:{}:{}", v["user"].as_str().unwrap(), v["device"].as_str().unwrap()), "expires_at": 0}),
        ),
        ("PUT", p) if p.ends_with("/groups") => {
            let user = p.trim_start_matches("/v1/users/").trim_end_matches("/groups").to_string();
            let groups =
                v["groups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().to_string()).collect();
            st.lock().unwrap().groups.insert(user, groups);
            (200, json!({}))
        }
        ("POST", "/v1/pushes") => {
            let mut s = st.lock().unwrap();
            s.seq += 1;
            let seq = s.seq;
            let data = v["payload"]["data"].as_object().cloned().unwrap_or_default();
            let payload = PushPayload {
                push_id: u64::from(seq),
                created_ms: 0,
                title: None,
                body: v["payload"]["body"].as_str().map(str::to_string),
                data: data
                    .iter()
                    .map(|(k, x)| DataEntry { key: k.clone(), value: x.as_str().unwrap_or("").into() })
                    .collect(),
                collapse_key: None,
            }
            .to_bytes();
            let f = frame::encode_push(
                PushHeader { flags: PushFlags::default(), ttl_secs: 0, stream: 1, seq },
                &payload,
            )
            .unwrap();
            let to_user = v["to"]["user"].as_str().map(str::to_string);
            let topic = v["to"]["topic"].as_str().map(str::to_string);
            let conns = s.conns.clone();
            let groups = s.groups.clone();
            drop(s);
            for c in conns {
                let mut c = c.lock().unwrap();
                let hit = match (&to_user, &topic) {
                    (Some(u), _) => &c.user == u,
                    (_, Some(t)) => groups.get(&c.user).is_some_and(|g| g.contains(t)),
                    _ => false,
                };
                if hit {
                    write_frame(&mut c, &f, true);
                }
            }
            (202, json!({"push_id": seq}))
        }
        _ => (404, json!({"error": "not found"})),
    }
}
