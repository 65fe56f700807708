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
