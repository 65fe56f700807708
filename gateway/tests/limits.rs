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
