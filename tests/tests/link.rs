//! The link between real `herald control-plane` and `herald gateway` processes: a table
//! snapshot over the 16 MiB frame limit still reaches the gateway (logins work), and a stopped
//! control plane (SIGSTOP) is detected within the link deadline, then the link comes back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_tests::{Admin, Proc, Terminal};
use serde_json::json;

/// `herald_link_connected` from the gateway's metrics endpoint.
fn link_connected(metrics: SocketAddr) -> anyhow::Result<u64> {
    let text = ureq::get(&format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(2))
        .call()?
        .into_string()?;
    text.lines()
        .find_map(|l| l.strip_prefix("herald_link_connected "))
        .and_then(|v| v.trim().parse().ok())
        .context("no herald_link_connected in the metrics")
}

/// Polls until `herald_link_connected` is `want`; returns how long it took.
fn wait_link(metrics: SocketAddr, want: u64, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if link_connected(metrics)? == want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < within, "herald_link_connected never became {want} in {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_snapshot_over_the_frame_limit_reaches_a_gateway_and_a_stopped_control_plane_is_detected()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_arg = data.path().to_str().unwrap_or_default().to_owned();
    let mut cp = Proc::spawn(&[
        "control-plane",
        "--data",
        &data_arg,
        "--admin",
        "127.0.0.1:0",
        "--link",
        "127.0.0.1:0",
    ])?;
    let admin = Admin::new(cp.wait_addr("herald: admin API on ")?);
    let link = cp.wait_addr("herald: link for gateways on ")?.to_string();
    // 100 groups × 10,000 topics (within the API's limits): a ~25 MB snapshot.
    for g in 0..100 {
        let topics: Vec<String> = (0..10_000).map(|t| format!("group-{g}-topic-{t:05}")).collect();
        let (status, v) =
            admin.call("PUT", &format!("/v1/groups/group-{g}"), Some(&json!({ "topics": topics })));
        anyhow::ensure!(status == 200, "PUT group-{g} → {status} {v}");
    }
    let config = data.path().join("gateway.toml");
    std::fs::write(&config, "[gateway]\nlink_heartbeat_secs = 1\nlink_dead_after_secs = 2\n")?;
    let config_arg = config.to_str().unwrap_or_default().to_owned();
    let gw_args = [
        "--config",
        &config_arg,
        "gateway",
        "--control-plane",
        &link,
        "--tcp",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--node-id",
        "gw-link-e2e",
    ];
    let mut gw = Proc::spawn(&gw_args)?;
    let tcp = gw.wait_addr("herald: gateway on ")?;
    let metrics = gw.wait_addr("herald: metrics on ")?;
    // The whole snapshot arrived: a login is accepted (not OVERLOADED for want of tables).
    let token = admin.token("u", "d");
    let _t = Terminal::login(tcp, &token)?;
    wait_link(metrics, 1, Duration::from_secs(10))?;

    // The control plane stops (SIGSTOP): the link is declared dead within its 2 s deadline.
    cp.signal(libc::SIGSTOP);
    let detected = wait_link(metrics, 0, Duration::from_secs(10));
    cp.signal(libc::SIGCONT);
    let detected = detected?;
    assert!(detected < Duration::from_secs(5), "a stopped control plane detected after {detected:?}");
    // Resumed, it takes the node back (the old link is gone, so the id is free).
    wait_link(metrics, 1, Duration::from_secs(15))?;
    let _t2 = Terminal::login(tcp, &admin.token("u", "d2"))?;
    Ok(())
}
