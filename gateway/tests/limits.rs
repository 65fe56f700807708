//! What a hostile or unlucky client cannot do to the gateway's side endpoints: the metrics
//! endpoint keeps answering scrapes while other clients trickle bytes or sit idle, and closes
//! them at its deadline. Real sockets, bounded waits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::gateway;
use herald_gateway::Driver;

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
