//! Messages between the parent and its worker processes: one JSON object per line, commands on
//! the worker's stdin, replies on its stdout.

use serde::{Deserialize, Serialize};

/// What the terminals speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// Herald's own frames.
    #[default]
    Herald,
    /// MQTT 3.1.1 (Herald's MQTT listener, or a broker).
    Mqtt,
}

/// What carries the terminals' bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Tcp,
    /// QUIC (Herald frames on one bidirectional stream; Herald protocol only).
    Quic,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Herald => "herald",
            Proto::Mqtt => "mqtt",
        }
    }
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

/// One terminal identity a worker logs in with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cred {
    pub user: String,
    pub device: String,
    pub token: String,
}

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// The identities this worker holds connections for (sent once).
    Creds {
        creds: Vec<Cred>,
    },
    /// Open and log in every connection that is not up. Replies with `Progress` lines, then
    /// `Connected`.
    Connect,
    /// Close every connection at once (client side first).
    Drop,
    /// Send a heartbeat on every connection each `interval_ms`, spread evenly; 0 = half the
    /// interval the gateway announced at login.
    Heartbeat {
        interval_ms: u64,
    },
    /// Reply with `Stats`; `reset` clears the delivery counters and histograms afterwards.
    Stats {
        reset: bool,
    },
    /// Open `count` plain TCP connections to the floor sender at `addr` (no login). Replies
    /// `FloorReady`.
    FloorConnect {
        addr: String,
        count: usize,
    },
    /// Close the floor connections.
    FloorClose,
    Quit,
}

/// Worker → parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Logged-in connections right now.
    pub ready: usize,
    /// Pushes received since the last reset (Herald and floor connections alike).
    pub deliveries: u64,
    /// Pushes whose payload carried no readable `t_ns`.
    pub untimed: u64,
    /// Logged-in connections that ended without being asked to, since the start.
    pub disconnects: u64,
    pub pings_sent: u64,
    pub pongs: u64,
    /// First and last receipt, ns since the epoch (0 = none).
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    /// Latency histogram (µs) as `(value, count)` pairs.
    pub hist: Vec<(u64, u64)>,
    /// Deliveries per time bucket: `(bucket index = recv_ns / bucket_ns, count)`.
    pub timeline: Vec<(u64, u64)>,
    /// Close codes the gateway sent, `(code, count)`.
    pub close_codes: Vec<(u16, u64)>,
    /// QUIC workers: how many deliveries each logged-in connection got since the last reset,
    /// as `(deliveries, connections)` (empty from the TCP worker).
    #[serde(default)]
    pub per_conn: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Msg {
    Progress {
        ready: usize,
        failed: usize,
    },
    Connected {
        ready: usize,
        failed: usize,
        retries: u64,
        /// When the first connect started and the last login reply arrived (ns since epoch).
        first_start_ns: u64,
        last_ok_ns: u64,
        /// A sample of why connections failed.
        errors: Vec<String>,
    },
    Stats(Stats),
    FloorReady {
        count: usize,
    },
    Error {
        error: String,
    },
}

/// Width of a timeline bucket.
pub const TIMELINE_BUCKET_NS: u64 = 5_000_000;
