//! Encode and decode cost per frame: heartbeat, pushes of 64 B and 1 KiB, and an ack.
//!
//! `cargo bench -p herald-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_protocol::frame::{self, Ack, AckRange, Decoder, Frame, PushFlags, PushHeader};

const HEADER: PushHeader =
    PushHeader { flags: PushFlags::ACK_REQUIRED, ttl_secs: 3600, stream: 42, seq: 1_000_001 };

fn ack() -> Ack {
    Ack::new(&[
        AckRange { stream: 42, first: 0, last: 1_000_001 },
        AckRange { stream: 42, first: 1_000_003, last: 1_000_010 },
    ])
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("ping", |b| {
        b.iter(|| {
            buf.clear();
            frame::encode_ping(black_box(7), &mut buf);
            black_box(buf.len())
        })
    });
    for size in [64usize, 1024] {
        let payload = vec![0xa5u8; size];
        g.bench_function(format!("push_{size}B"), |b| {
            b.iter(|| {
                buf.clear();
                frame::encode_push_into(black_box(HEADER), black_box(&payload), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
    }
    let ack = ack();
    g.bench_function("ack", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&ack).encode(&mut buf).unwrap();
            black_box(buf.len())
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let decoder = Decoder::default();
    let mut ping = BytesMut::new();
    frame::encode_ping(7, &mut ping);
    let mut push64 = BytesMut::new();
    frame::encode_push_into(HEADER, &[0xa5; 64], &mut push64).unwrap();
    let mut push1k = BytesMut::new();
    frame::encode_push_into(HEADER, &[0xa5; 1024], &mut push1k).unwrap();
    let mut ack_bytes = BytesMut::new();
    ack().encode(&mut ack_bytes).unwrap();
    for (name, wire) in [("ping", ping), ("push_64B", push64), ("push_1024B", push1k), ("ack", ack_bytes)] {
        // Refill a reused receive buffer by copying, as a read into it would.
        let mut buf = BytesMut::with_capacity(4096);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(&wire);
                let frame = decoder.decode(&mut buf).unwrap().unwrap();
                if let Frame::Ack(a) = &frame {
                    black_box(a.ranges().count());
                }
                black_box(frame)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
