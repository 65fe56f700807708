//! The bench's whole machinery (workers, provisioning, every scenario, the floor, the report)
//! against a stand-in speaking Herald's public surfaces. No timing is asserted.

mod support;

use std::process::Command;

#[test]
fn suite_runs_against_a_stand_in() {
    let fake = support::fake_herald::start();
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "suite",
            "--tcp",
            &fake.tcp,
            "--admin",
            &fake.admin,
            "--conns",
            "60",
            "--workers",
            "2",
            "--hold-secs",
            "1",
        ])
        .args([
            "--heartbeat-ms",
            "200",
            "--repeats",
            "2",
            "--pushes",
            "5",
            "--rate",
            "20",
            "--latency-secs",
            "1",
        ])
        .args(["--stall-secs", "2", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    support::check_results(out.path(), 60, &["hold", "storm", "fanout", "burst", "latency"]);
}
