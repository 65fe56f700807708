//! herald-bench: Herald's load generator and benchmark suite.
//!
//! It measures Herald only through what a user has: terminal sockets (the `herald-protocol`
//! frames), the admin HTTP API, the Prometheus endpoint and `/proc` of the gateway processes.
//! Clients run in worker processes (the binary re-executes itself as `herald-bench worker`) so
//! that more connections can be held than one process may open; the parent provisions users,
//! drives the scenarios, reads the gateway's figures and writes the report.
//!
//! Layout: `cli` (arguments and dispatch), `target` (spawning or addressing Herald, or starting
//! Mosquitto for `compare`), `admin` (the HTTP client), `worker` (the epoll client loop of a
//! worker process, Herald frames or MQTT over TCP), `mqtt` (the minimal MQTT 3.1.1 client codec
//! and the publisher `compare` uses for a broker), `quic_worker` (the worker for
//! `--transport quic`: quinn client endpoints on tokio), `pool` (the parent's
//! side of the workers), `scenario` (hold, storm, fanout, burst, latency), `abuse` (hostile
//! floods against a running Herald and a legitimate terminal's latency meanwhile), `floor` (the bare
//! `send(2)` baseline), `procfs` (gateway and kernel figures), `report` (JSON, table) and `svg`
//! (charts).

pub mod abuse;
pub mod admin;
pub mod cli;
pub mod clock;
pub mod floor;
pub mod hist;
pub mod mqtt;
pub mod pool;
pub mod procfs;
pub mod quic_worker;
pub mod report;
pub mod scenario;
pub mod svg;
pub mod target;
pub mod wire;
pub mod worker;
