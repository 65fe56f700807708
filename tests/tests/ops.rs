//! The `herald` binary as an operator runs it: a low open-file limit shared by terminals and the
//! admin API, logs written to a file, a weak admin key. Real processes and sockets, bounded waits.

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::{ADMIN_KEY, DEADLINE, Serve, herald_bin};
use serde_json::json;

/// `herald serve` with `RLIMIT_NOFILE` set to (`soft`, `hard`) and stderr (at `info`) to `log`.
fn serve_with_nofile(soft: u64, hard: u64, log: &std::path::Path, extra: &[&str]) -> Serve {
    let log = std::fs::File::create(log).unwrap();
    Serve::start_configured(extra, move |cmd| {
        cmd.env("RUST_LOG", "info").stderr(Stdio::from(log));
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .unwrap()
}

/// A request on its own connection, timed: (status, elapsed).
fn timed(serve: &Serve, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, Duration) {
    let start = Instant::now();
    let (status, _) = serve.admin.call(method, path, body);
    (status, start.elapsed())
}

#[test]
fn terminals_past_the_fd_budget_are_refused_and_the_admin_api_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("herald.log");
    // Soft 200 is raised to the hard 256 at start; the idle terminals stay for the test (login
    // deadline 60 s), as the 1,100 unauthenticated connections did.
    let serve = serve_with_nofile(200, 256, &log, &["--login-timeout-ms", "60000", "--cores", "2"]);
    let mut terminals = Vec::new();
    let end = Instant::now() + DEADLINE;
    while terminals.len() < 400 && Instant::now() < end {
        match TcpStream::connect(serve.tcp) {
            Ok(s) => terminals.push(s),
            Err(e) => panic!("connect {}: {e}", terminals.len()),
        }
    }
    assert_eq!(terminals.len(), 400);
    for _ in 0..3 {
        let (status, took) = timed(&serve, "GET", "/healthz", None);
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(3), "/healthz took {took:?} with the terminal port flooded");
        let push = json!({ "to": { "user": "nobody" }, "payload": { "title": "t" } });
        let (status, took) = timed(&serve, "POST", "/v1/pushes", Some(&push));
        assert_eq!(status, 202);
        assert!(took < Duration::from_secs(3), "a push took {took:?} with the terminal port flooded");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("raised the open file limit") && text.contains("from=200 to=256"), "{text}");
    let cap_line = text.lines().find(|l| l.contains("terminal connection cap")).expect("the cap is logged");
    let cap: usize = cap_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("max_connections=")?.parse().ok())
        .unwrap_or_else(|| panic!("{cap_line}"));
    assert!((16..256).contains(&cap), "{cap_line}");
    assert!(text.contains("connection refused"), "refusals are logged:\n{text}");
    drop(terminals);
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("herald.log");
    let serve = serve_with_nofile(4096, 4096, &log, &[]);
    let (status, _) = serve.admin.call("GET", "/healthz", None);
    assert_eq!(status, 200);
    drop(serve);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("control plane started"), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in a log file:\n{text}");
}

#[test]
fn a_short_admin_key_is_refused_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "[control_plane]\nadmin_key = \"short-key\"\n").unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], Option<&str>, &str); 4] = [
        (&["check-config"], Some("0123456789abcdefghijklmnopqrstu"), "HERALD_ADMIN_KEY is 31 characters"),
        (&["--config", config.to_str().unwrap(), "check-config"], None, "control_plane.admin_key is 9"),
        (
            &["serve", "--data", data, "--tcp", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--mqtt", "off"],
            Some("hunter2"),
            "at least 32",
        ),
        (&["--config", config.to_str().unwrap(), "control-plane", "--data", data], None, "at least 32"),
    ];
    for (args, env, needle) in cases {
        let mut cmd = Command::new(herald_bin());
        cmd.args(args).env_remove("HERALD_ADMIN_KEY");
        if let Some(k) = env {
            cmd.env("HERALD_ADMIN_KEY", k);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The harness's key is long enough, and so is the one `serve` generates.
    assert!(ADMIN_KEY.len() >= 32);
}
