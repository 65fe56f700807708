//! Arguments and dispatch.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::scenario::{Knobs, ScenarioResult, Session};
use crate::target::TargetArgs;
use crate::wire::{Proto, Transport};
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
    /// Hostile floods (pre-login PINGs, PINGs and MQTT PINGREQs never read, ACKs with many
    /// ranges), each bounded in bytes and time: peak gateway RSS per hostile byte and a
    /// legitimate terminal's push latency meanwhile.
    Abuse(AbuseArgs),
    /// hold, fanout and burst over MQTT against Herald's MQTT listener and against Mosquitto
    /// (started by the bench on loopback), one after the other, with the ratios.
    Compare(CompareArgs),
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
        #[arg(long, value_enum, default_value_t = Proto::Herald)]
        proto: Proto,
        #[arg(long, value_enum, default_value_t = Transport::Tcp)]
        transport: Transport,
        #[arg(long, default_value_t = crate::mqtt::KEEP_ALIVE_SECS)]
        keep_alive: u16,
        /// QUIC: the certificate to trust.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// QUIC: client endpoints (UDP sockets) in this worker.
        #[arg(long, default_value_t = 8)]
        endpoints: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct AbuseArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    abuse: crate::abuse::AbuseKnobs,
}

#[derive(Debug, Clone, clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// A line added to the Mosquitto config the bench writes (repeatable), e.g.
    /// `--mosquitto-option "set_tcp_nodelay true"`: to see what moves its figures.
    #[arg(long = "mosquitto-option")]
    mosquitto_options: Vec<String>,
    /// Run only Mosquitto's half (no ratios): for investigating the broker's figures.
    #[arg(long)]
    only_broker: bool,
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
        Command::Worker {
            gateway,
            source,
            inflight,
            attempts,
            proto,
            transport,
            keep_alive,
            ca,
            endpoints,
        } => worker::run(WorkerConfig {
            gateway,
            source,
            inflight,
            attempts,
            proto,
            keep_alive,
            transport,
            ca,
            endpoints,
        }),
        Command::Compare(c) => compare(c),
        Command::Abuse(a) => abuse(a),
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
    let logs = c.out.as_ref().map(|d| d.join("logs"));
    let s = Session::open(&c.target, &c.knobs, logs.as_deref())?;
    let (_report, outcome) = run_session(s, which, c.out.as_deref())?;
    outcome
}

/// Runs `which` on an open session, prints the table, writes `out` and closes the session.
fn run_session(
    mut s: Session,
    which: &[Which],
    out: Option<&std::path::Path>,
) -> anyhow::Result<(Report, anyhow::Result<()>)> {
    let started = crate::clock::now_ns();
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
        protocol: format!("{}/{}", s.knobs.proto.name(), s.knobs.transport.name()),
        workers: s.pool.len(),
        scenarios: results,
    };
    print!("{}", report.table());
    if let Some(dir) = out {
        report.write(dir, &s.charts)?;
        println!("results: {}", dir.join("results.json").display());
    }
    s.close();
    Ok((report, outcome))
}

/// `abuse`: the floods of `crate::abuse` against Herald (spawned with its MQTT listener, or
/// running), one report with a result per flood.
fn abuse(a: AbuseArgs) -> anyhow::Result<()> {
    let c = a.common;
    let logs = c.out.as_ref().map(|d| d.join("logs"));
    let need = crate::target::Listeners { mqtt: true, quic: false };
    let target = crate::target::Target::open(&c.target, logs.as_deref(), need)?;
    let started = crate::clock::now_ns();
    let scenarios = crate::abuse::run(&target, &a.abuse)?;
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: crate::clock::rfc3339(started),
        herald_version: target.version.clone(),
        target_mode: target.mode.clone(),
        protocol: "herald/tcp, mqtt/tcp".into(),
        workers: 0,
        scenarios,
    };
    print!("{}", report.table());
    if let Some(dir) = &c.out {
        report.write(dir, &crate::scenario::Charts::default())?;
        println!("results: {}", dir.join("results.json").display());
    }
    Ok(())
}

/// `compare`: Herald's MQTT listener, then Mosquitto, each alone on the machine, the same
/// scenarios and terminals; then the ratios next to the targets of the MQTT issue.
///
/// Mosquitto is one process without a separate store; Herald's gateway holds the connections and
/// its control plane (users, credentials, device cursors) is a separate process in production.
/// So with `--spawn` Herald's RSS per connection is measured both ways, in the same run: the
/// scenarios run in the mode `--nodes` asks for (0: `herald serve`; K: a control plane plus K
/// gateways), then one more `hold` in the other mode (`--nodes 1` or `serve`). The ≤ 0.7×
/// target is judged on the gateway alone, as the TCP suite's figure is.
fn compare(c: CompareArgs) -> anyhow::Result<()> {
    let mut common = c.common;
    common.knobs.proto = Proto::Mqtt;
    common.knobs.transport = Transport::Tcp;
    let which = [Which::Hold, Which::Fanout, Which::Burst];
    let sub = |name: &str| common.out.as_ref().map(|d| d.join(name));
    let gateway_only = common.target.nodes > 0;
    let broker = |common: &Common| -> anyhow::Result<Report> {
        println!("== Mosquitto");
        let logs = sub("mosquitto").map(|d| d.join("logs"));
        let target = crate::target::Target::mosquitto(
            &c.mosquitto,
            &c.mosquitto_options,
            logs.as_deref(),
            common.target.ready_secs,
        )?;
        let s = Session::with_target(target, &common.knobs)?;
        let (mosquitto, outcome) = run_session(s, &which, sub("mosquitto").as_deref())?;
        outcome.map(|()| mosquitto)
    };
    if c.only_broker {
        return broker(&common).map(drop);
    }
    println!("== Herald (MQTT listener)");
    let logs = sub("herald").map(|d| d.join("logs"));
    let s = Session::open(&common.target, &common.knobs, logs.as_deref())?;
    let (herald, outcome) = run_session(s, &which, sub("herald").as_deref())?;
    outcome?;
    let other = if common.target.spawn {
        let mut target = common.target.clone();
        target.nodes = if gateway_only { 0 } else { 1 };
        let name = if gateway_only { "herald-serve" } else { "herald-gateway" };
        println!(
            "== Herald (MQTT listener), hold only, {}",
            if gateway_only { "serve" } else { "--nodes 1" }
        );
        let logs = sub(name).map(|d| d.join("logs"));
        let s = Session::open(&target, &common.knobs, logs.as_deref())?;
        let (report, outcome) = run_session(s, &[Which::Hold], sub(name).as_deref())?;
        outcome?;
        Some(report)
    } else {
        None
    };
    let mosquitto = broker(&common)?;
    let (gateway, serve) = match &other {
        Some(o) if gateway_only => (Some(&herald), Some(o)),
        Some(o) => (Some(o), Some(&herald)),
        None => (None, None),
    };
    let holds: Vec<crate::report::HoldRow> = match (gateway, serve) {
        (Some(g), Some(s)) => vec![
            crate::report::HoldRow { label: crate::report::RSS_GATEWAY, report: g, judged: true },
            crate::report::HoldRow { label: crate::report::RSS_SERVE, report: s, judged: false },
        ],
        _ => {
            vec![crate::report::HoldRow { label: crate::report::RSS_EXTERNAL, report: &herald, judged: true }]
        }
    };
    let cmp = crate::report::Comparison::new(&herald, &holds, &mosquitto);
    print!("{}", cmp.table());
    if let Some(dir) = &common.out {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": herald.date,
            "machine": crate::procfs::machine(),
            "versions": {"herald_bench": env!("CARGO_PKG_VERSION"), "herald": herald.herald_version, "mosquitto": mosquitto.herald_version},
            "rss_target_judged_on": if other.is_some() { "gateway only: the gateway processes of a --nodes run, without the control plane" } else { "the processes named by --gateway-pid" },
            "ratios": cmp.json(),
            "herald": herald.json(),
            "herald_serve_hold": serve.filter(|_| gateway_only).map(Report::json),
            "herald_gateway_hold": gateway.filter(|_| !gateway_only).map(Report::json),
            "mosquitto": mosquitto.json(),
        });
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&json)? + "\n")?;
        std::fs::write(dir.join("compare.md"), cmp.markdown(json["command"].as_str().unwrap_or_default()))?;
        println!(
            "results: {} (section for RESULTS.md: {})",
            dir.join("results.json").display(),
            dir.join("compare.md").display()
        );
    }
    Ok(())
}
