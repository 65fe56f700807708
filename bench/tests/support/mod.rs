#![allow(dead_code)] // each test binary uses part of the support code

pub(crate) mod fake_herald;

use std::path::Path;
use std::process::Command;

/// Runs `herald-bench ARGS --spawn --herald HERALD --out OUT` (short stall window) and fails the
/// test if it fails.
pub(crate) fn spawn_bench(args: &[&str], out: &Path, herald: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .args(["--spawn", "--stall-secs", "3", "--herald"])
        .arg(herald)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "herald-bench {args:?} failed; logs under {}", out.display());
}

/// Fields every scenario object carries (null where a figure does not apply).
pub(crate) const FIELDS: &[&str] = &[
    "scenario",
    "conns",
    "rss_bytes_per_conn",
    "kernel_bytes_per_conn",
    "logins_per_s",
    "cpu_us_per_heartbeat",
    "first_delivery_ms",
    "last_delivery_ms",
    "p50_ms",
    "p99_ms",
    "deliveries_per_s",
    "rss_growth_bytes",
    "floor_ratio",
];

/// Checks results.json and the charts: every scenario present with every field, all terminals
/// connected, every push delivered, the floor measured.
pub(crate) fn check_results(dir: &Path, conns: u64, scenarios: &[&str]) {
    let list = check_scenarios(dir, conns, scenarios, &["command", "date", "machine", "versions"]);
    let get = |n: &str| list.iter().find(|s| s["scenario"] == n).unwrap();
    if scenarios.contains(&"hold") {
        assert!(get("hold")["logins_per_s"].is_number());
        assert!(get("hold")["connect_failures"].as_u64() == Some(0));
    }
    if scenarios.contains(&"storm") {
        assert!(get("storm")["recovery_ms"].is_number());
    }
    if scenarios.contains(&"fanout") {
        assert!(get("fanout")["last_delivery_ms"].is_number());
        assert!(get("fanout")["floor"]["last_delivery_ms"].is_number());
    }
    if scenarios.contains(&"burst") {
        assert!(get("burst")["floor"]["deliveries_per_s"].is_number());
        assert!(get("burst")["ceiling"]["deliveries_per_s"].is_number());
    }
    for svg in ["latency_cdf.svg", "burst_deliveries.svg", "memory_per_conn.svg"] {
        let s = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(s.starts_with("<svg"), "{svg}");
    }
}

/// As [`check_results`], for runs without the raw floor (`--proto mqtt`, `--transport quic`,
/// `compare`): every scenario present with every field, all terminals connected, every push
/// delivered.
pub(crate) fn check_results_without_floor(dir: &Path, conns: u64, scenarios: &[&str]) {
    let list =
        check_scenarios(dir, conns, scenarios, &["command", "date", "machine", "versions", "protocol"]);
    if scenarios.contains(&"hold") {
        let s = list.iter().find(|s| s["scenario"] == "hold").unwrap();
        assert!(s["logins_per_s"].is_number(), "{s}");
        assert_eq!(s["connect_failures"].as_u64(), Some(0), "{s}");
        assert!(s["heartbeats"].as_u64().unwrap_or(0) > 0, "no heartbeat answered: {s}");
    }
}

/// What both checks share: results.json has the header keys `keys`, and each of `scenarios` is
/// there with every field, `conns` terminals and every expected delivery. Returns the scenarios.
fn check_scenarios(dir: &Path, conns: u64, scenarios: &[&str], keys: &[&str]) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    for k in keys {
        assert!(!v[k].is_null(), "results.json lacks {k}");
    }
    let list = v["scenarios"].as_array().unwrap().clone();
    for name in scenarios {
        let s = list.iter().find(|s| s["scenario"] == *name).unwrap_or_else(|| panic!("no {name} in {v}"));
        for f in FIELDS {
            assert!(s.get(f).is_some(), "{name} lacks {f}");
        }
        assert_eq!(s["conns"].as_u64(), Some(conns), "{name}: {s}");
        if let Some(e) = s["expected_deliveries"].as_u64() {
            assert!(e > 0, "{name}: {s}");
            assert_eq!(s["deliveries"].as_u64(), Some(e), "{name}: {s}");
            assert!(s["p50_ms"].is_number(), "{name}: {s}");
        }
    }
    list
}
