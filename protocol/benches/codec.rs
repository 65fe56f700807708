//! Encode and decode cost per frame: heartbeat, pushes of 64 B and 1 KiB, and an ack.
//!
//! `cargo bench -p herald-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald_protocol::frame::{self, Ack, AckRange, Decoder, Frame, PushFlags, PushHeader};

const HEADER: PushHeader =
    PushHeader { flags: PushFlags::ACK_REQUIRED, ttl_secs: 3600, stream: 42, seq: 1_000_001 };

/// Frames per decode iteration.
const FRAMES: usize = 64;

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
    g.throughput(Throughput::Elements(FRAMES as u64));
    for (name, one) in [("ping", ping), ("push_64B", push64), ("push_1024B", push1k), ("ack", ack_bytes)] {
        // A receive buffer holding FRAMES frames (pushes padded, as sent), decoded in one go;
        // filling it is setup, not measured. Dropping the decoded frames is measured.
        let mut wire = BytesMut::new();
        for _ in 0..FRAMES {
            if one[0] == frame::T_PUSH {
                wire.extend_from_slice(frame::padding_for(wire.len() as u64));
            }
            wire.extend_from_slice(&one);
        }
        g.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let mut n = 0usize;
                    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                        if let Frame::Ack(a) = &frame {
                            n += a.ranges().count();
                        }
                        black_box(frame);
                        n += 1;
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
