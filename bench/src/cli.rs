//! Arguments and dispatch.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::scenario::{Knobs, ScenarioResult, Session};
use crate::target::TargetArgs;
use crate::worker::{self, WorkerConfig};

#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about = "Load generator and benchmark suite for Herald")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    knobs: Knobs,
    /// Write results.json, SVG charts and Herald's logs here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N connections, log in, heartbeat for a while: login rate, memory and CPU per connection.
    Hold(Common),
    /// All terminals drop and reconnect at once: time until all are back.
    Storm(Common),
    /// One push to a topic with N subscribers, repeated: first/last delivery, latency.
    Fanout(Common),
    /// M pushes of S bytes to N subscribers: deliveries/s, latency, RSS growth, drops.
    Burst(Common),
    /// Admin API → terminal latency of single-user pushes at a given rate.
    Latency(Common),
    /// Every scenario in one run, with the raw floor.
    Suite(Common),
    /// A client process holding a share of the connections (started by the bench itself).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        gateway: SocketAddrV4,
        #[arg(long)]
        source: Ipv4Addr,
        #[arg(long, default_value_t = 256)]
        inflight: usize,
        #[arg(long, default_value_t = 3)]
        attempts: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Hold,
    Storm,
    Fanout,
    Burst,
    Latency,
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Worker { gateway, source, inflight, attempts } => {
            worker::run(WorkerConfig { gateway, source, inflight, attempts })
        }
        Command::Hold(c) => run(c, &[Which::Hold]),
        Command::Storm(c) => run(c, &[Which::Storm]),
        Command::Fanout(c) => run(c, &[Which::Fanout]),
        Command::Burst(c) => run(c, &[Which::Burst]),
        Command::Latency(c) => run(c, &[Which::Latency]),
        Command::Suite(mut c) => {
            c.knobs.baseline = crate::scenario::Baseline::Raw;
            run(c, &[Which::Hold, Which::Storm, Which::Fanout, Which::Burst, Which::Latency])
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            1
        }
    }
}

fn run(c: Common, which: &[Which]) -> anyhow::Result<()> {
    let started = crate::clock::now_ns();
    let logs = c.out.as_ref().map(|d| d.join("logs"));
    let mut s = Session::open(&c.target, &c.knobs, logs.as_deref())?;
    let mut results: Vec<ScenarioResult> = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        for w in which {
            let r = match w {
                Which::Hold => s.hold()?,
                Which::Storm => {
                    // The first connect is reported on its own, as the hold scenario would.
                    if let Some(h) = s.ensure_connected()? {
                        results.push(h);
                    }
                    s.storm()?
                }
                Which::Fanout => s.fanout()?,
                Which::Burst => s.burst()?,
                Which::Latency => s.latency()?,
            };
            results.push(r);
        }
        Ok(())
    })();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: crate::clock::rfc3339(started),
        herald_version: s.target.version.clone(),
        target_mode: s.target.mode.clone(),
        workers: s.pool.len(),
        scenarios: results,
    };
    print!("{}", report.table());
    if let Some(dir) = &c.out {
        report.write(dir, &s.charts)?;
        println!("results: {}", dir.join("results.json").display());
    }
    s.close();
    outcome
}
