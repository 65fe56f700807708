//! Every scenario at tiny scale against the real `herald` binary, spawned by the bench itself:
//! `suite` on `herald serve`, and `fanout` on a control plane plus two gateway nodes. Asserts the
//! report's fields and that deliveries arrived; never a timing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `herald` binary of this target dir (`target/<profile>/herald`, beside the `deps/` that
/// holds this test), as `cargo test --workspace` builds it. Cargo is asked to bring it up to
/// date first (a no-op when it is), so `cargo test -p herald-bench` never measures a stale or
/// missing binary.
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("herald");
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "herald-gateway", "--bin", "herald"]).env("CARGO_TARGET_DIR", target_dir);
    // Cargo gives this test its package's variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...).
    // Build scripts such as ring's rerun when those change, so passing them on would rebuild
    // ring and everything above it here, and again in the next plain `cargo` run.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let per_package = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_CFG_"].iter().any(|p| k.starts_with(p))
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref());
        if per_package {
            cmd.env_remove(k.as_ref());
        }
    }
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
    assert!(status.success(), "herald-bench {args:?} failed; logs in {}", out.join("logs").display());
}

#[test]
fn suite_on_spawned_herald_serve() {
    let herald = herald_binary();
    let out = tempfile::tempdir().unwrap();
    bench(
        &["suite", "--conns", "40", "--hold-secs", "1", "--heartbeat-ms", "200", "--repeats", "2"]
            .into_iter()
            .chain(["--pushes", "5", "--rate", "20", "--latency-secs", "1"])
            .collect::<Vec<_>>(),
        out.path(),
        &herald,
    );
    support::check_results(out.path(), 40, &["hold", "storm", "fanout", "burst", "latency"]);
}

#[test]
fn fanout_on_two_spawned_gateway_nodes() {
    let herald = herald_binary();
    let out = tempfile::tempdir().unwrap();
    bench(
        &["fanout", "--nodes", "2", "--conns", "30", "--repeats", "2", "--baseline", "raw"],
        out.path(),
        &herald,
    );
    support::check_results(out.path(), 30, &["fanout"]);
}
