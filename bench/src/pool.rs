//! The parent's side of the worker processes: starts them (re-executing this binary as
//! `herald-bench worker`), hands out connection shares and source addresses, and talks to them
//! in JSON lines over their stdin/stdout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;

use crate::hist;
use crate::wire::{Cmd, Cred, Msg, Stats};

/// Connections one worker holds at most by default: well under the 20,000 open files of a
/// process, leaving room for as many floor connections.
pub const CONNS_PER_WORKER: usize = 6_000;

/// Source address of worker `w`: 127.0.0.2, 127.0.0.3, … (each gives ~28k ephemeral ports).
pub fn source_of(w: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (2 + w / 250) as u8, (2 + w % 250) as u8)
}

#[derive(Debug)]
struct Handle {
    child: Child,
    stdin: ChildStdin,
}

#[derive(Debug)]
pub struct Pool {
    workers: Vec<Handle>,
    rx: mpsc::Receiver<(usize, Msg)>,
    /// Connections per worker.
    pub shares: Vec<usize>,
}

/// Outcome of a connect phase over all workers.
#[derive(Debug, Clone, Default)]
pub struct ConnectResult {
    pub ready: usize,
    pub failed: usize,
    pub retries: u64,
    pub first_start_ns: u64,
    pub last_ok_ns: u64,
    pub errors: Vec<String>,
}

/// Stats of all workers added up.
#[derive(Debug)]
pub struct Merged {
    pub ready: usize,
    pub deliveries: u64,
    pub untimed: u64,
    pub disconnects: u64,
    pub pings_sent: u64,
    pub pongs: u64,
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    pub hist: Histogram<u64>,
    pub timeline: BTreeMap<u64, u64>,
    pub close_codes: BTreeMap<u16, u64>,
    /// Deliveries per connection → connections (QUIC workers only).
    pub per_conn: BTreeMap<u64, u64>,
}

pub fn merge(all: &[Stats]) -> Merged {
    let mut m = Merged {
        ready: 0,
        deliveries: 0,
        untimed: 0,
        disconnects: 0,
        pings_sent: 0,
        pongs: 0,
        first_recv_ns: 0,
        last_recv_ns: 0,
        hist: hist::new_us(),
        timeline: BTreeMap::new(),
        close_codes: BTreeMap::new(),
        per_conn: BTreeMap::new(),
    };
    for s in all {
        m.ready += s.ready;
        m.deliveries += s.deliveries;
        m.untimed += s.untimed;
        m.disconnects += s.disconnects;
        m.pings_sent += s.pings_sent;
        m.pongs += s.pongs;
        if s.first_recv_ns != 0 && (m.first_recv_ns == 0 || s.first_recv_ns < m.first_recv_ns) {
            m.first_recv_ns = s.first_recv_ns;
        }
        m.last_recv_ns = m.last_recv_ns.max(s.last_recv_ns);
        hist::merge_pairs(&mut m.hist, &s.hist);
        for &(k, v) in &s.timeline {
            *m.timeline.entry(k).or_insert(0) += v;
        }
        for &(k, v) in &s.close_codes {
            *m.close_codes.entry(k).or_insert(0) += v;
        }
        for &(k, v) in &s.per_conn {
            *m.per_conn.entry(k).or_insert(0) += v;
        }
    }
    m
}

impl Pool {
    /// Starts enough workers for `conns` connections (at least `min_workers`).
    pub fn start(
        conns: usize,
        min_workers: usize,
        gateway: SocketAddrV4,
        inflight: usize,
        worker_args: &[String],
    ) -> anyhow::Result<Pool> {
        let n = conns.div_ceil(CONNS_PER_WORKER).max(min_workers).max(1);
        let exe = std::env::current_exe().context("locating herald-bench for its workers")?;
        let (tx, rx) = mpsc::channel();
        let mut workers = Vec::with_capacity(n);
        let mut shares = Vec::with_capacity(n);
        for w in 0..n {
            shares.push(conns / n + usize::from(w < conns % n));
            let mut child = Command::new(&exe)
                .args(["worker", "--gateway", &gateway.to_string(), "--source", &source_of(w).to_string()])
                .args(["--inflight", &inflight.div_ceil(n).to_string()])
                .args(worker_args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str::<Msg>(&line)
                        .unwrap_or_else(|e| Msg::Error { error: format!("bad worker line {line:?}: {e}") });
                    if tx.send((w, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((w, Msg::Error { error: format!("worker {w} exited") }));
            });
            workers.push(Handle { child, stdin });
        }
        Ok(Pool { workers, rx, shares })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn send(&mut self, w: usize, cmd: &Cmd) -> anyhow::Result<()> {
        let line = serde_json::to_string(cmd)?;
        writeln!(self.workers[w].stdin, "{line}").with_context(|| format!("writing to worker {w}"))?;
        self.workers[w].stdin.flush()?;
        Ok(())
    }

    pub fn broadcast(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        for w in 0..self.workers.len() {
            self.send(w, cmd)?;
        }
        Ok(())
    }

    /// Gives each worker its contiguous share of `creds`.
    pub fn give_creds(&mut self, creds: &[Cred]) -> anyhow::Result<()> {
        let mut at = 0;
        for w in 0..self.workers.len() {
            let share = creds[at..at + self.shares[w]].to_vec();
            at += self.shares[w];
            self.send(w, &Cmd::Creds { creds: share })?;
        }
        Ok(())
    }

    fn recv(&self, deadline: Instant) -> anyhow::Result<(usize, Msg)> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (w, msg) = self.rx.recv_timeout(left).map_err(|_| anyhow!("workers did not answer in time"))?;
        if let Msg::Error { error } = &msg {
            bail!("worker {w}: {error}");
        }
        Ok((w, msg))
    }

    /// Connects every worker's share; `progress(ready, failed)` is called as they report.
    pub fn connect(
        &mut self,
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> anyhow::Result<ConnectResult> {
        self.broadcast(&Cmd::Connect)?;
        let deadline = Instant::now() + timeout;
        let n = self.workers.len();
        let mut per: Vec<(usize, usize)> = vec![(0, 0); n];
        let mut done: Vec<Option<ConnectResult>> = vec![None; n];
        while done.iter().any(Option::is_none) {
            let (w, msg) = self.recv(deadline)?;
            match msg {
                Msg::Progress { ready, failed } => per[w] = (ready, failed),
                Msg::Connected { ready, failed, retries, first_start_ns, last_ok_ns, errors } => {
                    per[w] = (ready, failed);
                    done[w] =
                        Some(ConnectResult { ready, failed, retries, first_start_ns, last_ok_ns, errors });
                }
                _ => continue,
            }
            progress(per.iter().map(|p| p.0).sum(), per.iter().map(|p| p.1).sum());
        }
        let mut r = ConnectResult::default();
        for d in done.into_iter().flatten() {
            r.ready += d.ready;
            r.failed += d.failed;
            r.retries += d.retries;
            if d.first_start_ns != 0 && (r.first_start_ns == 0 || d.first_start_ns < r.first_start_ns) {
                r.first_start_ns = d.first_start_ns;
            }
            r.last_ok_ns = r.last_ok_ns.max(d.last_ok_ns);
            r.errors.extend(d.errors);
        }
        Ok(r)
    }

    /// Every worker's stats (in worker order).
    pub fn stats(&mut self, reset: bool) -> anyhow::Result<Vec<Stats>> {
        self.broadcast(&Cmd::Stats { reset })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out: Vec<Option<Stats>> = vec![None; self.workers.len()];
        while out.iter().any(Option::is_none) {
            if let (w, Msg::Stats(s)) = self.recv(deadline)? {
                out[w] = Some(s);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    pub fn merged(&mut self, reset: bool) -> anyhow::Result<Merged> {
        Ok(merge(&self.stats(reset)?))
    }

    /// Opens `counts[w]` plain connections from worker `w` to `addr`; waits until all are up.
    pub fn floor_connect(&mut self, addr: SocketAddrV4, counts: &[usize]) -> anyhow::Result<usize> {
        for (w, &count) in counts.iter().enumerate() {
            self.send(w, &Cmd::FloorConnect { addr: addr.to_string(), count })?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got = vec![None; self.workers.len()];
        while got.iter().any(Option::is_none) {
            if let (w, Msg::FloorReady { count }) = self.recv(deadline)? {
                got[w] = Some(count);
            }
        }
        Ok(got.into_iter().flatten().sum())
    }

    pub fn quit(mut self) {
        let _ = self.broadcast(&Cmd::Quit);
        for h in &mut self.workers {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = h.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = h.child.try_wait() {
                let _ = h.child.kill();
                let _ = h.child.wait();
            }
        }
    }
}
