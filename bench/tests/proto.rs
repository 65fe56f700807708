//! The MQTT and QUIC variants of the scenarios at tiny scale against the real `herald` binary
//! (spawned by the bench): `--proto mqtt` hold, fanout and burst (through `compare`, beside
//! Mosquitto, when `mosquitto` is installed), and `--transport quic` hold and burst. Asserts
//! the reports' fields and that deliveries arrived; never a timing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `herald` binary of this target dir, brought up to date by cargo first (as in
/// `tests/spawn.rs`).
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("herald");
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "herald-gateway", "--bin", "herald"]).env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().unwrap().success(), "building herald failed");
    assert!(bin.is_file(), "no herald binary at {}", bin.display());
    bin
}

fn bench(args: &[&str], out: &Path, herald: &Path) {
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

const SMALL: &[&str] =
    &["--conns", "30", "--hold-secs", "1", "--heartbeat-ms", "200", "--repeats", "2", "--pushes", "5"];

fn mosquitto_installed() -> bool {
    Command::new("mosquitto").arg("-h").output().is_ok()
}

#[test]
fn mqtt_scenarios_and_compare() {
    let herald = herald_binary();
    let out = tempfile::tempdir().unwrap();
    // TTL > 0: QoS 1 both ways, so the terminals PUBACK every PUBLISH (and the bench's own
    // publisher waits for Mosquitto's PUBACKs).
    if mosquitto_installed() {
        bench(&[&["compare", "--ttl-secs", "60"], SMALL].concat(), out.path(), &herald);
        support::check_results_without_floor(&out.path().join("herald"), 30, &["hold", "fanout", "burst"]);
        support::check_results_without_floor(&out.path().join("mosquitto"), 30, &["hold", "fanout", "burst"]);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
        assert!(v["ratios"].as_array().is_some_and(|r| !r.is_empty()), "{v}");
        assert!(out.path().join("compare.md").is_file());
    } else {
        eprintln!(
            "mosquitto is not installed (apt-get install mosquitto): skipping `compare`, running the \
             MQTT scenarios against Herald only"
        );
        bench(&[&["hold", "--proto", "mqtt"], SMALL].concat(), &out.path().join("hold"), &herald);
        support::check_results_without_floor(&out.path().join("hold"), 30, &["hold"]);
        for s in ["fanout", "burst"] {
            bench(
                &[&[s, "--proto", "mqtt", "--ttl-secs", "60"], SMALL].concat(),
                &out.path().join(s),
                &herald,
            );
            support::check_results_without_floor(&out.path().join(s), 30, &[s]);
        }
    }
}

#[test]
fn quic_hold_and_burst() {
    let herald = herald_binary();
    let out = tempfile::tempdir().unwrap();
    bench(&[&["hold", "--transport", "quic"], SMALL].concat(), &out.path().join("hold"), &herald);
    support::check_results_without_floor(&out.path().join("hold"), 30, &["hold"]);
    bench(
        &[&["burst", "--transport", "quic", "--ttl-secs", "60", "--quic-endpoints", "2"], SMALL].concat(),
        &out.path().join("burst"),
        &herald,
    );
    support::check_results_without_floor(&out.path().join("burst"), 30, &["burst"]);
}
