//! What a hostile or unlucky client cannot do to the gateway's side endpoints: the metrics
//! endpoint keeps answering scrapes while other clients trickle bytes or sit idle, and closes
//! them at its deadline; terminal connections past `max_connections` are refused at once,
//! counted, and the node keeps serving the ones it holds. Real sockets, bounded waits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Term, gateway};
use herald_gateway::Driver;
use herald_protocol::CloseCode;
use herald_protocol::frame::Frame;

/// One scrape over a fresh connection; panics unless a 200 with the metrics arrives within `limit`.
fn scrape(addr: SocketAddr, limit: Duration) -> String {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let read = s.read_to_string(&mut body);
    assert!(read.is_ok() && start.elapsed() < limit, "scrape took {:?}: {read:?}", start.elapsed());
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("herald_connections{core=\"0\"}"), "{body}");
    body
}

#[test]
fn a_trickling_client_neither_blocks_scrapes_nor_outlives_the_scrape_deadline() {
    let (gw, _cp) = gateway(Driver::Epoll, |c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap()));
    let addr = gw.metrics_addr().unwrap();
    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let start = Instant::now();
        for b in b"GET /metrics HTTP/1.1\r\n".iter().chain(std::iter::repeat(&b'a')) {
            if start.elapsed() > Duration::from_secs(15) {
                return None;
            }
            if s.write_all(&[*b]).is_err() {
                break;
            }
            match s.read(&mut [0u8; 256]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        Some(start.elapsed())
    });
    // The trickler is connected and sending; scrapes meanwhile are answered at once.
    for _ in 0..10 {
        scrape(addr, Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = trickler.join().unwrap().expect("the trickling client was kept 15 s");
    assert!(
        held < Duration::from_secs(9),
        "the trickling client was closed after {held:?}; the deadline is 5 s"
    );
    let m = scrape(addr, Duration::from_secs(2));
    assert!(!m.contains("herald_metrics_scrapes_failed_total 0"), "the closed client is not counted:\n{m}");
}

#[test]
fn idle_connections_past_the_bound_do_not_lock_scrapes_out() {
    let (gw, _cp) = gateway(Driver::Epoll, |c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap()));
    let addr = gw.metrics_addr().unwrap();
    // More idle connections than the endpoint serves at once (32).
    let idle: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in 0..3 {
        scrape(addr, Duration::from_secs(2));
    }
    drop(idle);
}

/// Sum of a per-core series in the metrics text.
fn metric(text: &str, name: &str) -> u64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn connections_past_max_connections_get_overloaded_at_once(driver: Driver) {
    // Two cores, a cap of 4: each core holds at most 2.
    let (gw, _cp) = gateway(driver, |c| {
        c.max_connections = 4;
        c.login_timeout_ms = 3_000;
    });
    let mut terms: Vec<Term> = (0..12).map(|_| Term::connect(gw.tcp_addr())).collect();
    let mut overloaded = 0;
    let mut held = 0;
    for t in &mut terms {
        // Refused ones are told at once; held ones wait for a LOGIN until their login deadline.
        match t.next() {
            Some(Frame::Close(c)) if c.code == CloseCode::OVERLOADED => overloaded += 1,
            Some(Frame::Close(c)) if c.code == CloseCode::LOGIN_TIMEOUT => held += 1,
            other => panic!("expected CLOSE OVERLOADED or LOGIN_TIMEOUT, got {other:?}"),
        }
    }
    assert!((1..=4).contains(&held), "{held} connections held with max_connections 4");
    assert_eq!(overloaded + held, 12);
    let m = gw.metrics_text();
    assert_eq!(metric(&m, "herald_connections_refused_total"), overloaded as u64, "{m}");
    // Closed connections give their place back.
    common::eventually("connections closed", || metric(&gw.metrics_text(), "herald_tcp_connections") == 0);
    let (_t, _ok) = Term::login(gw.tcp_addr(), "alice", "phone");
}

both_drivers!(connections_past_max_connections_get_overloaded_at_once);

/// Set in the child process of `accept_failures_back_off_and_are_logged_at_most_once_a_second`.
const FD_CHILD: &str = "HERALD_TEST_FD_CHILD";

/// The child: a gateway with no connection cap in a process whose descriptors run out. It
/// prints its terminal address, waits until its cores have counted `failures` failed accepts,
/// and prints how long that took.
fn out_of_descriptors_child(failures: u64) {
    let _ = tracing_subscriber::fmt().with_ansi(false).with_writer(std::io::stderr).try_init();
    let (gw, _cp) = gateway(Driver::Epoll, |_| {});
    println!("tcp {}", gw.tcp_addr());
    let start = Instant::now();
    common::eventually("failed accepts", || {
        metric(&gw.metrics_text(), "herald_accept_errors_total") >= failures
    });
    println!("failures after {} ms", start.elapsed().as_millis());
}

#[test]
fn accept_failures_back_off_and_are_logged_at_most_once_a_second() {
    const FAILURES: u64 = 12;
    if std::env::var_os(FD_CHILD).is_some() {
        out_of_descriptors_child(FAILURES);
        return;
    }
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "accept_failures_back_off_and_are_logged_at_most_once_a_second", "--nocapture"])
        .env(FD_CHILD, "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("tcp ")?.parse().ok())
        .expect("the child's gateway address");
    // Far more connections than the child has descriptors: the rest wait in the backlog and
    // every accept fails with EMFILE while they do.
    let held: Vec<TcpStream> = (0..150).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let took_ms: u64 = lines
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("failures after ")?.strip_suffix(" ms")?.parse().ok())
        .expect("the child counted its failed accepts");
    let out = child.wait_with_output().unwrap();
    drop(held);
    let log = String::from_utf8_lossy(&out.stderr);
    let lines = log.lines().filter(|l| l.contains("accept failed")).count() as u64;
    // Two cores, at most one line per second each, plus each core's first.
    let allowed = 2 * (took_ms / 1000 + 1);
    assert!(lines >= 1 && lines <= allowed, "{lines} 'accept failed' lines in {took_ms} ms:\n{log}");
    // Backing off, 12 failures take a while (10 + 20 + 40 + ... ms per core), not 12 × 10 ms.
    assert!(took_ms >= 100, "{FAILURES} failed accepts in {took_ms} ms: no backoff");
}
