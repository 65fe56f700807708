//! Every scenario at tiny scale against the real `herald` binary, spawned by the bench itself:
//! `suite` on `herald serve`, and `fanout` on a control plane plus two gateway nodes. Asserts the
//! report's fields and that deliveries arrived; never a timing.

mod support;

#[test]
fn suite_on_spawned_herald_serve() {
    let herald = herald_tests::herald_bin();
    let out = tempfile::tempdir().unwrap();
    support::spawn_bench(
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
    let herald = herald_tests::herald_bin();
    let out = tempfile::tempdir().unwrap();
    support::spawn_bench(
        &["fanout", "--nodes", "2", "--conns", "30", "--repeats", "2", "--baseline", "raw"],
        out.path(),
        &herald,
    );
    support::check_results(out.path(), 30, &["fanout"]);
}
