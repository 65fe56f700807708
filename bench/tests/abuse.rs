//! `herald-bench abuse` at tiny scale against the real `herald` binary (spawned by the bench):
//! every flood runs, bounded, and reports its hostile bytes, the gateway's RSS per hostile byte,
//! how it ended and a legitimate terminal's latency meanwhile. Asserts fields, never a timing.

mod support;

#[test]
fn abuse_floods_report_memory_per_hostile_byte_and_legit_latency() {
    let herald = herald_tests::herald_bin();
    let out = tempfile::tempdir().unwrap();
    support::spawn_bench(
        &[
            "abuse",
            "--flood-bytes",
            "2000000",
            "--flood-secs",
            "2",
            "--ack-ranges",
            "100",
            "--probe-rate",
            "10",
        ],
        out.path(),
        &herald,
    );
    let floods = ["abuse_preauth_ping", "abuse_ping", "abuse_mqtt_pingreq", "abuse_ack"];
    support::check_results_without_floor(out.path(), 1, &floods);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    for name in floods {
        let s = v["scenarios"].as_array().unwrap().iter().find(|s| s["scenario"] == name).unwrap();
        let p = &s["params"];
        let bytes = p["hostile_bytes"].as_u64().unwrap_or_else(|| panic!("{name}: {s}"));
        assert!(bytes > 0 && bytes <= 2_000_000, "{name}: {s}");
        assert!(p["flood_secs"].as_f64().is_some_and(|t| t < 2.0 + 1.0), "{name}: {s}");
        assert!(p["rss_per_hostile_byte"].is_number(), "{name}: {s}");
        assert!(s["rss_growth_bytes"].is_number(), "{name}: {s}");
        assert!(p["outcome"].is_string(), "{name}: {s}");
        assert!(s["expected_deliveries"].as_u64().unwrap_or(0) > 0, "no probe push during {name}: {s}");
    }
    // A PING before LOGIN ends the connection (PROTOCOL.md §2): the flood cannot go on.
    let pre =
        v["scenarios"].as_array().unwrap().iter().find(|s| s["scenario"] == "abuse_preauth_ping").unwrap();
    assert_eq!(pre["params"]["outcome"], "closed by the gateway", "{pre}");
}
