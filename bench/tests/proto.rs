//! The MQTT and QUIC variants of the scenarios at tiny scale against the real `herald` binary
//! (spawned by the bench): `--proto mqtt` hold, fanout and burst (through `compare`, beside
//! Mosquitto, when `mosquitto` is installed), and `--transport quic` hold and burst. Asserts
//! the reports' fields and that deliveries arrived; never a timing.

mod support;

use std::process::Command;

const SMALL: &[&str] =
    &["--conns", "30", "--hold-secs", "1", "--heartbeat-ms", "200", "--repeats", "2", "--pushes", "5"];

fn mosquitto_installed() -> bool {
    Command::new("mosquitto").arg("-h").output().is_ok()
}

#[test]
fn mqtt_scenarios_and_compare() {
    let herald = herald_tests::herald_bin();
    let out = tempfile::tempdir().unwrap();
    // TTL > 0: QoS 1 both ways, so the terminals PUBACK every PUBLISH (and the bench's own
    // publisher waits for Mosquitto's PUBACKs).
    if mosquitto_installed() {
        support::spawn_bench(&[&["compare", "--ttl-secs", "60"], SMALL].concat(), out.path(), &herald);
        support::check_results_without_floor(&out.path().join("herald"), 30, &["hold", "fanout", "burst"]);
        support::check_results_without_floor(&out.path().join("mosquitto"), 30, &["hold", "fanout", "burst"]);
        // `serve` ran the scenarios; one more hold measured the gateway alone.
        support::check_results_without_floor(&out.path().join("herald-gateway"), 30, &["hold"]);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
        let ratios = v["ratios"].as_array().unwrap_or_else(|| panic!("no ratios: {v}"));
        let row = |figure: &str| {
            ratios.iter().find(|r| r["figure"] == figure).unwrap_or_else(|| panic!("{figure}: {v}"))
        };
        let gateway = row("RSS per idle connection, gateway only, B");
        assert_eq!(gateway["target"], "≤ 0.7×", "{v}");
        assert!(gateway["herald"].is_number() && gateway["ratio_herald_over_broker"].is_number(), "{v}");
        assert!(row("RSS per idle connection, serve (+ control plane), B")["herald"].is_number(), "{v}");
        assert!(
            v["herald_gateway_hold"]["target"].as_str().is_some_and(|t| t.contains("herald gateway")),
            "{v}"
        );
        assert!(out.path().join("compare.md").is_file());
    } else {
        eprintln!(
            "mosquitto is not installed (apt-get install mosquitto): skipping `compare`, running the \
             MQTT scenarios against Herald only"
        );
        support::spawn_bench(
            &[&["hold", "--proto", "mqtt"], SMALL].concat(),
            &out.path().join("hold"),
            &herald,
        );
        support::check_results_without_floor(&out.path().join("hold"), 30, &["hold"]);
        for s in ["fanout", "burst"] {
            support::spawn_bench(
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
    let herald = herald_tests::herald_bin();
    let out = tempfile::tempdir().unwrap();
    support::spawn_bench(
        &[&["hold", "--transport", "quic"], SMALL].concat(),
        &out.path().join("hold"),
        &herald,
    );
    support::check_results_without_floor(&out.path().join("hold"), 30, &["hold"]);
    support::spawn_bench(
        &[&["burst", "--transport", "quic", "--ttl-secs", "60", "--quic-endpoints", "2"], SMALL].concat(),
        &out.path().join("burst"),
        &herald,
    );
    support::check_results_without_floor(&out.path().join("burst"), 30, &["burst"]);
    // Two `herald gateway --quic` processes sharing the port, with a certificate the bench made.
    support::spawn_bench(
        &[&["hold", "--transport", "quic", "--nodes", "2"], SMALL].concat(),
        &out.path().join("hold-nodes"),
        &herald,
    );
    support::check_results_without_floor(&out.path().join("hold-nodes"), 30, &["hold"]);
}
