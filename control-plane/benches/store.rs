//! Accepted durable pushes per second, measured with timed loops (run: `cargo bench -p
//! herald-control-plane --bench store`). Prints one line per figure:
//! 1. redb, one push per write transaction (what a store without group commit costs);
//! 2. redb, 512 pushes per write transaction (the group-commit ceiling of the store alone);
//! 3. the admin router in process (`oneshot`), 256 concurrent callers, push to one user:
//!    validation + sequencing + group commit, no HTTP;
//! 4. `POST /v1/pushes` over loopback HTTP/1.1 keep-alive, 32 connections, push to one user;
//! 5. the admin router in process, 256 concurrent callers, push to a group of 20,000 offline
//!    members (one device each): accepting and dispatching a group push, which reads maintained
//!    counts (O(nodes)) rather than walking the members.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use herald_control_plane::store::{
    MessageRecord, Op, PushRecord, RedbStore, Store, StreamRecord, TargetSpec,
};
use herald_control_plane::{ControlPlane, ControlPlaneConfig};
use tower::ServiceExt;

fn push_ops(id: u64) -> Vec<Op> {
    vec![
        Op::Stream(StreamRecord { id: 1, name: "u:bench".into(), head: id as u32 }),
        Op::Message(
            1,
            id as u32,
            Some(MessageRecord {
                push_id: id,
                created_ms: 1,
                expires_ms: 2,
                flags: 1,
                ttl_secs: 60,
                collapse_key: None,
                payload: vec![7; 160],
            }),
        ),
        Op::Push(PushRecord {
            id,
            created_ms: 1,
            expires_ms: 2,
            ttl_secs: 60,
            target: TargetSpec::User("bench".into()),
            messages: vec![(1, id as u32)],
            targeted: 1,
            sent: 0,
            delivered: 0,
            dropped: 0,
            collapsed: false,
            collapse_key: None,
            idempotency_key: None,
        }),
    ]
}

fn store_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let n = 300u64;
    let t = Instant::now();
    for id in 1..=n {
        store.commit(&push_ops(id)).unwrap();
    }
    let e = t.elapsed();
    println!(
        "redb one push per txn:      {:>9.0} pushes/s  ({:.2} ms per durable commit)",
        n as f64 / e.as_secs_f64(),
        e.as_secs_f64() * 1000.0 / n as f64
    );
    let batches = 40u64;
    let per = 512u64;
    let t = Instant::now();
    for b in 0..batches {
        let ops: Vec<Op> = (0..per).flat_map(|i| push_ops(n + 1 + b * per + i)).collect();
        store.commit(&ops).unwrap();
    }
    let e = t.elapsed();
    println!(
        "redb 512 pushes per txn:    {:>9.0} pushes/s  ({:.1} us of store time per push)",
        (batches * per) as f64 / e.as_secs_f64(),
        e.as_secs_f64() * 1e6 / (batches * per) as f64
    );
}

fn start(dir: &std::path::Path) -> ControlPlane {
    herald_control_plane::start(ControlPlaneConfig {
        data_dir: dir.to_path_buf(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        link_addr: "127.0.0.1:0".parse().unwrap(),
        admin_key: Some("bench".into()),
        ..ControlPlaneConfig::default()
    })
    .unwrap()
}

const BODY: &str = r#"{"to":{"user":"bench"},"payload":{"title":"hello","body":"a push for the bench","data":{"k":"v"}},"ttl_secs":3600}"#;

fn in_process_figure() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let router = cp.router();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let dur = Duration::from_secs(3);
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..256 {
            let router = router.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                while t.elapsed() < dur {
                    let req = Request::post("/v1/pushes")
                        .header("authorization", "Bearer bench")
                        .body(Body::from(BODY))
                        .unwrap();
                    let resp = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(resp.status(), 202);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let e = t.elapsed();
    let m = cp.metrics();
    println!(
        "router in process (256):    {:>9.0} pushes/s  ({} commits, {:.0} pushes per commit, {:.2} ms per commit)",
        done.load(Ordering::Relaxed) as f64 / e.as_secs_f64(),
        m.store_commits.get(),
        m.pushes_accepted.get() as f64 / m.store_commits.get().max(1) as f64,
        m.store_commit_micros.get() as f64 / 1000.0 / m.store_commits.get().max(1) as f64,
    );
}

fn http_figure() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let addr = cp.admin_addr();
    let done = Arc::new(AtomicU64::new(0));
    let dur = Duration::from_secs(3);
    let t = Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let req = format!(
                    "POST /v1/pushes HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                let mut buf = vec![0u8; 4096];
                while t.elapsed() < dur {
                    s.write_all(req.as_bytes()).unwrap();
                    let mut got = 0;
                    loop {
                        got += s.read(&mut buf[got..]).unwrap();
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            assert!(head.starts_with("HTTP/1.1 202"), "{head}");
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let e = t.elapsed();
    let m = cp.metrics();
    println!(
        "HTTP loopback (32 conns):   {:>9.0} pushes/s  ({:.0} pushes per commit)",
        done.load(Ordering::Relaxed) as f64 / e.as_secs_f64(),
        m.pushes_accepted.get() as f64 / m.store_commits.get().max(1) as f64,
    );
}

/// Runs `n` requests built by `req` through the router, 256 at a time.
async fn drive(router: &axum::Router, n: usize, req: impl Fn(usize) -> Request<Body>) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        if set.len() >= 256 {
            let resp: axum::response::Response = set.join_next().await.unwrap().unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
        let r = router.clone();
        let rq = req(i);
        set.spawn(async move { r.oneshot(rq).await.unwrap() });
    }
    while let Some(resp) = set.join_next().await {
        assert!(resp.unwrap().status().is_success());
    }
}

fn group_figure() {
    const MEMBERS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path());
    let router = cp.router();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let post = |path: String, method: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer bench")
            .body(Body::from(body))
            .unwrap()
    };
    rt.block_on(async {
        drive(&router, MEMBERS, |i| {
            post("/v1/credentials".into(), "POST", format!(r#"{{"user":"m{i}","device":"d"}}"#))
        })
        .await;
        drive(&router, MEMBERS, |i| {
            post(format!("/v1/users/m{i}/groups"), "PUT", r#"{"groups":["big"]}"#.into())
        })
        .await;
    });
    let body = r#"{"to":{"group":"big"},"payload":{"title":"hello"},"ttl_secs":3600}"#;
    let dur = Duration::from_secs(3);
    let t = Instant::now();
    let mut n = 0usize;
    rt.block_on(async {
        while t.elapsed() < dur {
            drive(&router, 512, |_| post("/v1/pushes".into(), "POST", body.into())).await;
            n += 512;
        }
    });
    println!(
        "group push, {MEMBERS} members:{:>8.0} pushes/s  (router in process, 256 callers)",
        n as f64 / t.elapsed().as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run quickly then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    store_figures();
    in_process_figure();
    http_figure();
    group_figure();
}
