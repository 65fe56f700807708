//! Harness for Herald's end-to-end tests: starts the real `herald` binary (all-in-one or as
//! separate control-plane and gateway processes) on port 0, talks to the admin API over HTTP and
//! to gateways as terminals driven by the protocol crate's client [`Session`] over real sockets.
//!
//! Nothing here sleeps for readiness: processes announce their addresses on stdout and every wait
//! is an event or a poll with a deadline.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use herald_protocol::CloseCode;
use herald_protocol::frame::PushFlags;
use herald_protocol::payload::PushPayload;
use herald_protocol::session::{Event, Session, SessionConfig};
use serde_json::{Value, json};

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The admin key every test process is started with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnop";

/// Path of the `herald` binary of this workspace's target dir, (re)built once per test process
/// so a test never runs a stale binary (`cargo build` is a no-op when it is current).
pub fn herald_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> → target/<profile>/herald
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "herald-gateway", "--bin", "herald"]).env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        // Cargo hands this test its package's variables; build scripts (ring's) rerun when those
        // change, so passing them on would rebuild half the tree here and in the next cargo run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let per_package = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_CFG_"].iter().any(|p| k.starts_with(p))
                || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_MANIFEST_LINKS", "CARGO_CRATE_NAME"]
                    .contains(&k.as_ref())
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&k.as_ref());
            if per_package {
                cmd.env_remove(k.as_ref());
            }
        }
        assert!(cmd.status().expect("cargo build --bin herald").success(), "building herald failed");
        let bin = profile_dir.join("herald");
        assert!(bin.is_file(), "no herald binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A running `herald` process whose stdout lines are collected.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> anyhow::Result<Proc> {
        Proc::spawn_with(args, |_| {})
    }

    /// [`Proc::spawn`] with the command adjusted first (stderr to a file, resource limits...).
    pub fn spawn_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(herald_bin());
        cmd.args(args)
            .env("HERALD_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let mut child = cmd.spawn().context("spawning herald")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines: rx, seen: Vec::new() })
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    pub fn wait_line(&mut self, prefix: &str) -> anyhow::Result<String> {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Ok(l[prefix.len()..].to_owned());
        }
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                anyhow!("herald did not print {prefix:?} in time; it printed {:?}", self.seen)
            })?;
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    }

    pub fn wait_addr(&mut self, prefix: &str) -> anyhow::Result<SocketAddr> {
        let rest = self.wait_line(prefix)?;
        let addr = rest.split_whitespace().next().unwrap_or("").trim_start_matches("http://");
        let addr = addr.trim_start_matches("tcp://").trim_end_matches("/metrics");
        addr.parse().with_context(|| format!("address in {rest:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, with the deadline.
    pub fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > end {
                bail!("herald did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `herald serve` on a temporary data dir, every port chosen by the kernel.
#[derive(Debug)]
pub struct Serve {
    pub proc: Proc,
    pub admin: Admin,
    pub tcp: SocketAddr,
    pub data: tempfile::TempDir,
}

impl Serve {
    pub fn start() -> anyhow::Result<Serve> {
        Serve::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> anyhow::Result<Serve> {
        Serve::start_configured(extra, |_| {})
    }

    /// [`Serve::start_with`], the command adjusted first as [`Proc::spawn_with`] does.
    pub fn start_configured(extra: &[&str], configure: impl FnOnce(&mut Command)) -> anyhow::Result<Serve> {
        let data = tempfile::tempdir()?;
        let data_arg = data.path().to_str().context("utf-8 temp path")?.to_owned();
        let mut args = vec![
            "serve",
            "--data",
            &data_arg,
            "--tcp",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ];
        // `serve` listens on MQTT's port 1883 by default: tests never take a fixed port.
        if !extra.contains(&"--mqtt") {
            args.extend_from_slice(&["--mqtt", "off"]);
        }
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn_with(&args, configure)?;
        let admin = proc.wait_addr("herald: admin API on ")?;
        let tcp = proc.wait_addr("herald: gateway on ")?;
        Ok(Serve { proc, admin: Admin::new(admin), tcp, data })
    }
}

/// A client of the admin HTTP API.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub key: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        let agent = ureq::AgentBuilder::new().timeout(DEADLINE).build();
        Admin { addr, key: ADMIN_KEY.into(), agent }
    }

    /// Any request; returns status and JSON body (`Null` when empty or not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let req = self.agent.request(method, &url).set("Authorization", &format!("Bearer {}", self.key));
        let res = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!((200..300).contains(&status), "{method} {path} → {status} {v}");
        v
    }

    pub fn token(&self, user: &str, device: &str) -> String {
        let v = self.ok("POST", "/v1/credentials", Some(&json!({"user": user, "device": device})));
        v["token"].as_str().expect("token").to_owned()
    }

    pub fn set_groups(&self, user: &str, groups: &[&str]) {
        self.ok("PUT", &format!("/v1/users/{user}/groups"), Some(&json!({ "groups": groups })));
    }

    pub fn set_topics(&self, user: &str, topics: &[&str]) {
        self.ok("PUT", &format!("/v1/users/{user}/topics"), Some(&json!({ "topics": topics })));
    }

    /// Pushes and returns the push id.
    pub fn push(&self, body: Value) -> u64 {
        let (status, v) = self.call("POST", "/v1/pushes", Some(&body));
        assert_eq!(status, 202, "push {body} → {status} {v}");
        v["push_id"].as_u64().unwrap_or_else(|| panic!("push_id in {v}"))
    }

    pub fn status(&self, push_id: u64) -> Value {
        self.ok("GET", &format!("/v1/pushes/{push_id}"), None)
    }

    /// Polls a push's status until `pred` holds, with the deadline.
    pub fn wait_status(&self, push_id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let s = self.status(push_id);
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < end, "push {push_id} never became {what}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A push as a terminal received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub stream: u32,
    pub seq: u32,
    pub flags: PushFlags,
    pub payload: PushPayload,
}

impl Received {
    pub fn title(&self) -> &str {
        self.payload.title.as_deref().unwrap_or("")
    }
}

/// A terminal: the protocol crate's client session over a blocking TCP socket.
#[derive(Debug)]
pub struct Terminal {
    pub session: Session,
    addr: SocketAddr,
    sock: Option<TcpStream>,
    rx: BytesMut,
    inbox: std::collections::VecDeque<Received>,
    pub closed: Option<CloseCode>,
    pub goaway: Option<CloseCode>,
}

impl Terminal {
    /// Connects and waits for LOGIN_OK.
    pub fn login(addr: SocketAddr, token: &str) -> anyhow::Result<Terminal> {
        let mut t = Terminal::connect(addr, token)?;
        let end = Instant::now() + DEADLINE;
        while !t.session.is_logged_in() {
            if let Some(code) = t.closed {
                bail!("login refused: {code}");
            }
            t.step(end)?;
        }
        Ok(t)
    }

    /// Connects and sends the LOGIN without waiting for the answer.
    pub fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<Terminal> {
        let device =
            herald_protocol::credential::peek(token).map(|c| c.device).unwrap_or_else(|_| "dev".into());
        let mut cfg = SessionConfig::new(Bytes::from(token.to_owned()), Bytes::from(device));
        cfg.ack_batch = 1;
        let mut t = Terminal {
            session: Session::new(cfg, 7),
            addr,
            sock: None,
            rx: BytesMut::new(),
            inbox: Default::default(),
            closed: None,
            goaway: None,
        };
        t.reconnect()?;
        Ok(t)
    }

    /// Opens a new connection with the same session (resume positions included).
    pub fn reconnect(&mut self) -> anyhow::Result<()> {
        let s = TcpStream::connect(self.addr)?;
        s.set_nodelay(true)?;
        self.sock = Some(s);
        self.rx.clear();
        self.closed = None;
        self.session.handle_connected(Instant::now());
        self.flush()
    }

    /// Drops the connection without a goodbye.
    pub fn drop_connection(&mut self) {
        self.sock = None;
        self.session.handle_disconnected(Instant::now());
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let mut tx = BytesMut::new();
        self.session.poll_transmit(&mut tx);
        if let (Some(s), false) = (self.sock.as_mut(), tx.is_empty()) {
            s.write_all(&tx)?;
        }
        Ok(())
    }

    /// One round of I/O: reads what arrives before `until` (at most ~50 ms), handles events.
    fn step(&mut self, until: Instant) -> anyhow::Result<()> {
        let now = Instant::now();
        if now >= until {
            bail!("deadline passed");
        }
        let Some(sock) = self.sock.as_mut() else { bail!("not connected (closed: {:?})", self.closed) };
        let wait =
            until.saturating_duration_since(now).min(Duration::from_millis(50)).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 16 * 1024];
        match sock.read(&mut chunk) {
            Ok(0) => {
                self.sock = None;
                self.session.handle_disconnected(Instant::now());
            }
            Ok(n) => {
                self.rx.extend_from_slice(&chunk[..n]);
                self.session.handle_input(&mut self.rx, Instant::now());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                self.sock = None;
                self.session.handle_disconnected(Instant::now());
            }
        }
        self.session.handle_timeout(Instant::now());
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Push { header, payload } => {
                    let payload = PushPayload::from_bytes(&payload).map_err(|e| anyhow!("{e}"))?;
                    self.inbox.push_back(Received {
                        stream: header.stream,
                        seq: header.seq,
                        flags: header.flags,
                        payload,
                    });
                }
                Event::Closed { code, .. } => {
                    self.closed = Some(code);
                    self.sock = None;
                }
                Event::GoAway { reason, .. } => self.goaway = Some(reason),
                _ => {}
            }
        }
        self.flush().ok();
        Ok(())
    }

    /// The next new push, waiting up to the deadline.
    pub fn recv(&mut self) -> anyhow::Result<Received> {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(r) = self.inbox.pop_front() {
                return Ok(r);
            }
            if self.sock.is_none() {
                bail!("connection closed ({:?}) while waiting for a push", self.closed);
            }
            self.step(end).context("waiting for a push")?;
        }
    }

    /// Receives pushes until one titled `sentinel` arrives; returns the titles before it. With a
    /// sentinel pushed last, this proves what did and did not arrive without waiting on a clock.
    pub fn titles_until(&mut self, sentinel: &str) -> anyhow::Result<Vec<String>> {
        let mut titles = Vec::new();
        loop {
            let r = self.recv()?;
            if r.title() == sentinel {
                return Ok(titles);
            }
            titles.push(r.title().to_owned());
        }
    }

    /// Waits until the server closes the connection; returns its close code (None: closed
    /// without a CLOSE frame).
    pub fn wait_closed(&mut self) -> anyhow::Result<Option<CloseCode>> {
        let end = Instant::now() + DEADLINE;
        while self.sock.is_some() {
            self.step(end).context("waiting for the server to close")?;
        }
        Ok(self.closed)
    }
}

/// A push body for the admin API with a title (what tests look at).
pub fn push_body(to: Value, title: &str) -> Value {
    json!({ "to": to, "payload": { "title": title }, "ttl_secs": 300 })
}
