//! The run's output: a summary table on stdout, `results.json` and SVG charts in `--out`.

use std::path::Path;

use serde_json::{Value, json};

use crate::scenario::{Charts, ScenarioResult};
use crate::svg::{Chart, Series};

/// Everything a run reports.
#[derive(Debug)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub herald_version: String,
    pub target_mode: String,
    /// What the terminals spoke: `herald/tcp`, `mqtt/tcp`, `herald/quic`.
    pub protocol: String,
    pub workers: usize,
    pub scenarios: Vec<ScenarioResult>,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "command": self.command,
            "date": self.date,
            "machine": crate::procfs::machine(),
            "versions": {
                "herald_bench": env!("CARGO_PKG_VERSION"),
                "herald": self.herald_version,
            },
            "target": self.target_mode,
            "protocol": self.protocol,
            "workers": self.workers,
            "scenarios": self.scenarios,
        })
    }

    /// The summary table: one row per scenario, the figures that apply.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
        let mut rows = vec![
            [
                "scenario",
                "conns",
                "logins/s",
                "rss B/conn",
                "kernel B/conn",
                "cpu µs/hb",
                "first ms",
                "last ms",
                "p50 ms",
                "p99 ms",
                "deliv/s",
                "rss growth",
                "floor",
            ]
            .map(String::from),
        ];
        for s in &self.scenarios {
            rows.push([
                s.scenario.clone(),
                s.conns.to_string(),
                f(s.logins_per_s, 0),
                f(s.rss_bytes_per_conn, 0),
                f(s.kernel_bytes_per_conn, 0),
                f(s.cpu_us_per_heartbeat, 1),
                f(s.first_delivery_ms, 1),
                f(s.last_delivery_ms.or(s.recovery_ms), 1),
                f(s.p50_ms, 2),
                f(s.p99_ms, 2),
                f(s.deliveries_per_s, 0),
                s.rss_growth_bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                f(s.floor_ratio, 2),
            ]);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, r) in rows.iter().enumerate() {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
            out.push_str(&cells.join("  "));
            out.push('\n');
            if i == 0 {
                out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
                out.push('\n');
            }
        }
        for s in &self.scenarios {
            if let (Some(d), Some(e)) = (s.deliveries, s.expected_deliveries)
                && d < e
            {
                out.push_str(&format!("{}: {} of {} deliveries arrived", s.scenario, d, e));
                if let Some(x) = s.params["cp_fire_and_forget_dropped"].as_f64().filter(|x| *x > 0.0) {
                    out.push_str(&format!(" (control plane dropped {x} TTL-0 recipients: node behind)"));
                }
                if let Some(x) = s.params["gateway_drops_by_reason"].as_object() {
                    let n: f64 = x.values().filter_map(serde_json::Value::as_f64).sum();
                    if n > 0.0 {
                        out.push_str(&format!(" (gateways dropped {n} frames)"));
                    }
                }
                out.push('\n');
            }
        }
        out.push_str("storm: 'last ms' is the time until every terminal was back and logged in\n");
        out.push_str(
            "floor: Herald's figure as a fraction of a bare send(2)-per-frame loop's (1.00 = at the floor)\n",
        );
        for s in &self.scenarios {
            if let (Some(c), Some(r)) = (&s.ceiling, s.ceiling_ratio) {
                out.push_str(&format!(
                    "{}: ceiling (all frames of a connection in one send(2)) {:.0} deliveries/s; Herald at {r:.2} of it\n",
                    s.scenario,
                    c.deliveries_per_s.unwrap_or(0.0)
                ));
            }
        }
        out
    }

    /// Writes results.json and the charts into `dir`.
    pub fn write(&self, dir: &Path, charts: &Charts) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&self.json())? + "\n")?;
        let cdf = Chart {
            title: "Latency CDF per scenario".into(),
            x_label: "latency, ms (log)".into(),
            y_label: "fraction of deliveries".into(),
            log_x: true,
            series: charts.cdfs.iter().map(|(n, p)| Series { name: n.clone(), points: p.clone() }).collect(),
        };
        std::fs::write(dir.join("latency_cdf.svg"), cdf.render())?;
        let burst = Chart {
            title: "Deliveries over time during the burst".into(),
            x_label: "ms since the first push".into(),
            y_label: "deliveries per second".into(),
            log_x: false,
            series: charts.burst.iter().map(|(n, p)| Series { name: n.clone(), points: p.clone() }).collect(),
        };
        std::fs::write(dir.join("burst_deliveries.svg"), burst.render())?;
        let mem = Chart {
            title: "Gateway RSS per connection as connections grow".into(),
            x_label: "connections".into(),
            y_label: "RSS growth / connection, bytes".into(),
            log_x: false,
            series: vec![Series { name: "herald".into(), points: charts.mem_curve.clone() }],
        };
        std::fs::write(dir.join("memory_per_conn.svg"), mem.render())?;
        Ok(())
    }
}

/// `compare`: Herald's MQTT listener against a broker, scenario by scenario, with the ratios
/// the MQTT issue sets targets for.
#[derive(Debug)]
pub struct Comparison {
    pub rows: Vec<CompareRow>,
    pub herald_target: String,
    /// Each RSS row's label and the Herald processes its hold measured.
    pub hold_targets: Vec<(&'static str, String)>,
    pub broker_target: String,
    pub broker_version: String,
}

#[derive(Debug)]
pub struct CompareRow {
    pub figure: &'static str,
    pub herald: Option<f64>,
    pub broker: Option<f64>,
    /// herald / broker.
    pub ratio: Option<f64>,
    /// The ratio the issue asks for, as text (`≤ 0.7×`), and whether it is met.
    pub target: &'static str,
    pub met: Option<bool>,
}

/// Labels of the RSS rows of a comparison: which Herald processes a figure sums.
pub const RSS_GATEWAY: &str = "RSS per idle connection, gateway only, B";
pub const RSS_SERVE: &str = "RSS per idle connection, serve (+ control plane), B";
pub const RSS_EXTERNAL: &str = "RSS per idle connection (--gateway-pid), B";

/// A Herald `hold` whose RSS per connection is compared with the broker's.
#[derive(Debug, Clone, Copy)]
pub struct HoldRow<'a> {
    pub label: &'static str,
    pub report: &'a Report,
    /// The ≤ 0.7× target is judged on this figure.
    pub judged: bool,
}

impl Comparison {
    /// `herald` and `broker` ran the same scenarios; `holds` are Herald's RSS figures (the
    /// gateway alone, and `serve`), each set against the broker's.
    pub fn new(herald: &Report, holds: &[HoldRow<'_>], broker: &Report) -> Comparison {
        let get = |r: &Report, scenario: &str, f: fn(&ScenarioResult) -> Option<f64>| {
            r.scenarios.iter().find(|s| s.scenario == scenario).and_then(f)
        };
        type Pick = fn(&ScenarioResult) -> Option<f64>;
        /// (figure, scenario, field, target text, target ratio, lower is better)
        type Spec = (&'static str, &'static str, Pick, &'static str, Option<f64>, bool);
        let rss: Pick = |s| s.rss_bytes_per_conn;
        let rss_rows = holds.iter().map(|h| {
            let (target, goal) = if h.judged { ("≤ 0.7×", Some(0.7)) } else { ("", None) };
            (h.label, h.report, "hold", rss, target, goal, true)
        });
        let specs: [Spec; 6] = [
            ("CPU per keep-alive (PINGREQ), µs", "hold", |s| s.cpu_us_per_heartbeat, "", None, true),
            ("connects/s (CONNECT+SUBSCRIBE)", "hold", |s| s.logins_per_s, "", None, false),
            (
                "one push → all, last delivery, ms",
                "fanout",
                |s| s.last_delivery_ms,
                "≤ 0.5×",
                Some(0.5),
                true,
            ),
            ("one push → all, p50, ms", "fanout", |s| s.p50_ms, "", None, true),
            ("burst deliveries/s", "burst", |s| s.deliveries_per_s, "≥ 10×", Some(10.0), false),
            ("burst p99, ms", "burst", |s| s.p99_ms, "", None, true),
        ];
        let rows = rss_rows
            .chain(specs.iter().map(|&(figure, scenario, pick, target, goal, lower)| {
                (figure, herald, scenario, pick, target, goal, lower)
            }))
            .map(|(figure, report, scenario, pick, target, goal, lower)| {
                let (h, b) = (get(report, scenario, pick), get(broker, scenario, pick));
                let ratio = match (h, b) {
                    (Some(h), Some(b)) if b != 0.0 => Some(h / b),
                    _ => None,
                };
                let met = goal.and_then(|g| ratio.map(|r| if lower { r <= g } else { r >= g }));
                CompareRow { figure, herald: h, broker: b, ratio, target, met }
            })
            .collect();
        Comparison {
            rows,
            herald_target: herald.target_mode.clone(),
            hold_targets: holds.iter().map(|h| (h.label, h.report.target_mode.clone())).collect(),
            broker_target: broker.target_mode.clone(),
            broker_version: broker.herald_version.clone(),
        }
    }

    fn fmt(v: Option<f64>) -> String {
        match v {
            None => "-".into(),
            Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
            Some(x) => format!("{x:.2}"),
        }
    }

    fn met_text(m: Option<bool>) -> &'static str {
        match m {
            Some(true) => "met",
            Some(false) => "not met",
            None => "",
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!("== Herald MQTT vs {}\n", self.broker_version);
        out.push_str(&format!(
            "{:<52} {:>12} {:>12} {:>9} {:>7} {}\n",
            "figure", "herald", "broker", "ratio", "target", ""
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<52} {:>12} {:>12} {:>9} {:>7} {}\n",
                r.figure,
                Self::fmt(r.herald),
                Self::fmt(r.broker),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}×")),
                r.target,
                Self::met_text(r.met)
            ));
        }
        out
    }

    pub fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({"figure": r.figure, "herald": r.herald, "broker": r.broker, "ratio_herald_over_broker": r.ratio, "target": r.target, "met": r.met})
                })
                .collect(),
        )
    }

    /// A section for bench/RESULTS.md.
    pub fn markdown(&self, command: &str) -> String {
        let mut out = format!(
            "Command: `{command}`\n\nHerald: `{}`; broker: {} (`{}`).\n\n",
            self.herald_target, self.broker_version, self.broker_target
        );
        if self.hold_targets.len() > 1 {
            out.push_str("RSS per connection, each from its own `hold` (the ≤ 0.7× target is judged on the first):\n\n");
            for (label, mode) in &self.hold_targets {
                out.push_str(&format!("- {label}: `{mode}`\n"));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "| figure | Herald (MQTT) | {} | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- |\n",
            self.broker_version
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.figure,
                Self::fmt(r.herald),
                Self::fmt(r.broker),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}×")),
                if r.target.is_empty() { "–" } else { r.target },
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "–",
                }
            ));
        }
        out
    }
}
