//! Counters and the Prometheus text endpoint.
//!
//! Each core owns one [`CoreMetrics`]: it is the only writer of its cells, so an increment is a
//! relaxed load and store on a cache line no other core writes (no locked read-modify-write, no
//! contention). The metrics thread reads every core's cells and sums or labels them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_protocol::CloseCode;

/// A counter with a single writer (its core).
#[derive(Debug, Default)]
pub(crate) struct Cell(AtomicU64);

impl Cell {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the fan-out latency buckets, microseconds.
pub(crate) const FANOUT_BUCKETS_US: [u64; 12] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000];
const CODES: usize = 16;

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DropReason {
    /// A queued non-persistent frame was dropped to make room.
    QueueFullOldest = 0,
    /// The new non-persistent frame was dropped (the queue held only persistent frames).
    QueueFullNew = 1,
    /// The connection was closed as a slow consumer with frames still queued.
    SlowConsumer = 2,
}
const DROP_LABELS: [&str; 3] = ["queue_full_oldest", "queue_full_new", "slow_consumer"];

/// One core's counters.
#[derive(Debug, Default)]
pub(crate) struct CoreMetrics {
    pub(crate) connections: Cell,
    pub(crate) accepted: Cell,
    pub(crate) logins_ok: Cell,
    pub(crate) logins_failed: [Cell; CODES],
    pub(crate) closes: [Cell; CODES],
    pub(crate) heartbeats: Cell,
    pub(crate) frames_in: Cell,
    pub(crate) bytes_in: Cell,
    pub(crate) frames_out: Cell,
    pub(crate) bytes_out: Cell,
    pub(crate) pushes: Cell,
    pub(crate) deliveries: Cell,
    pub(crate) drops: [Cell; 3],
    pub(crate) queued_frames: Cell,
    pub(crate) fanout_buckets: [Cell; FANOUT_BUCKETS_US.len() + 1],
    pub(crate) fanout_sum_us: Cell,
    /// QUIC datagrams this core read for a connection of another core and passed on.
    pub(crate) quic_forwarded: Cell,
    /// Connections closed because replies they did not read overflowed their queue.
    pub(crate) reply_overflows: Cell,
    /// Times a connection's input was paused because its output was blocked.
    pub(crate) input_paused: Cell,
    pub(crate) mqtt: MqttMetrics,
    /// Open TCP terminal connections (Herald and MQTT): the descriptors `max_connections` caps.
    pub(crate) tcp_connections: Cell,
    /// Connections accepted over the core's share of `max_connections` and closed at once.
    pub(crate) refused: Cell,
    /// Failed accepts (out of file descriptors, most often).
    pub(crate) accept_errors: Cell,
}

/// What a core's MQTT connections did (their logins, closes, heartbeats and deliveries are in
/// the protocol-independent series too).
#[derive(Debug, Default)]
pub(crate) struct MqttMetrics {
    pub(crate) connections: Cell,
    /// PUBLISH sent to terminals.
    pub(crate) publishes_out: Cell,
    /// PUBACK received (each is a delivery receipt).
    pub(crate) pubacks_in: Cell,
    /// Pushes not sent because the connection's QoS 1 window was full or the packet was over its
    /// maximum packet size.
    pub(crate) window_drops: Cell,
    /// PUBLISH received from terminals, and those refused (publishing off, a topic the user does
    /// not follow, not UTF-8, refused by the control plane).
    pub(crate) publishes_in: Cell,
    pub(crate) publishes_refused: Cell,
    /// Wills sent to the control plane.
    pub(crate) wills: Cell,
    /// SUBSCRIBE filters granted and refused.
    pub(crate) filters_granted: Cell,
    pub(crate) filters_refused: Cell,
}

impl CoreMetrics {
    pub(crate) fn login_failed(&self, code: CloseCode) {
        self.logins_failed[usize::from(code.0).min(CODES - 1)].inc();
    }

    pub(crate) fn closed(&self, code: CloseCode) {
        self.closes[usize::from(code.0).min(CODES - 1)].inc();
    }

    pub(crate) fn dropped(&self, why: DropReason, n: u64) {
        self.drops[why as usize].add(n);
    }

    pub(crate) fn fanout(&self, us: u64) {
        let i = FANOUT_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(FANOUT_BUCKETS_US.len());
        self.fanout_buckets[i].inc();
        self.fanout_sum_us.add(us);
    }
}

/// A per-core series: name, type, help, and how to read it.
type PerCore = (&'static str, &'static str, &'static str, fn(&CoreMetrics) -> u64);

/// Every core's counters plus node-wide ones.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) cores: Vec<Arc<CoreMetrics>>,
    pub(crate) link_connected: AtomicU64,
    pub(crate) link_connects: AtomicU64,
    /// Terminals' messages dropped while the link was down (QoS 0 and wills beyond the bound).
    pub(crate) publishes_dropped: AtomicU64,
    /// Scrapes closed without an answer (deadline, eviction, oversized request); written by the
    /// metrics thread only.
    pub(crate) scrapes_failed: AtomicU64,
    /// Link connections dropped because the control plane was silent, or did not read, for
    /// `link_dead_after_secs`.
    pub(crate) link_timeouts: AtomicU64,
    /// Times the control plane refused this node (its node id is in use).
    pub(crate) link_refusals: AtomicU64,
    /// Link messages that could not be encoded (each dropped the link for a resync).
    pub(crate) link_encode_failures: AtomicU64,
    /// Receipts dropped because the link thread already held its bound of them.
    pub(crate) receipts_dropped: AtomicU64,
    /// Receipts a core could not hand to the full upstream channel and kept for its next tick.
    pub(crate) receipts_deferred: AtomicU64,
    /// Pushes not handed to a core whose mailbox stayed full for the link deadline.
    pub(crate) mailbox_push_drops: AtomicU64,
    /// Events in the upstream channel, sampled by the link thread each loop.
    pub(crate) upstream_len: AtomicU64,
}

impl Registry {
    pub(crate) fn new(cores: usize) -> Registry {
        Registry {
            cores: (0..cores).map(|_| Arc::new(CoreMetrics::default())).collect(),
            link_connected: AtomicU64::new(0),
            link_connects: AtomicU64::new(0),
            publishes_dropped: AtomicU64::new(0),
            scrapes_failed: AtomicU64::new(0),
            link_timeouts: AtomicU64::new(0),
            link_refusals: AtomicU64::new(0),
            link_encode_failures: AtomicU64::new(0),
            receipts_dropped: AtomicU64::new(0),
            receipts_deferred: AtomicU64::new(0),
            upstream_len: AtomicU64::new(0),
            mailbox_push_drops: AtomicU64::new(0),
        }
    }

    pub(crate) fn sum(&self, f: impl Fn(&CoreMetrics) -> u64) -> u64 {
        self.cores.iter().map(|c| f(c)).sum()
    }

    /// The Prometheus text exposition of every counter.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let per_core: [PerCore; 24] = [
            ("herald_connections", "gauge", "Open terminal connections.", |m| m.connections.get()),
            ("herald_accepted_total", "counter", "Accepted TCP connections.", |m| m.accepted.get()),
            ("herald_logins_ok_total", "counter", "Successful logins.", |m| m.logins_ok.get()),
            ("herald_heartbeats_total", "counter", "Heartbeats received.", |m| m.heartbeats.get()),
            ("herald_frames_in_total", "counter", "Frames received from terminals.", |m| m.frames_in.get()),
            ("herald_bytes_in_total", "counter", "Bytes received from terminals.", |m| m.bytes_in.get()),
            ("herald_frames_out_total", "counter", "Frames queued to terminals.", |m| m.frames_out.get()),
            ("herald_bytes_out_total", "counter", "Bytes written to terminals.", |m| m.bytes_out.get()),
            ("herald_pushes_total", "counter", "Push orders handled by a core.", |m| m.pushes.get()),
            ("herald_deliveries_total", "counter", "Push frames queued to recipients.", |m| {
                m.deliveries.get()
            }),
            ("herald_queued_frames", "gauge", "Frames waiting in outbound queues.", |m| {
                m.queued_frames.get()
            }),
            ("herald_fanout_latency_us_sum", "counter", "Sum of fan-out latencies.", |m| {
                m.fanout_sum_us.get()
            }),
            ("herald_quic_forwarded_total", "counter", "QUIC datagrams passed to the owning core.", |m| {
                m.quic_forwarded.get()
            }),
            (
                "herald_reply_overflows_total",
                "counter",
                "Connections closed (slow_consumer) because the replies they did not read overflowed their queue.",
                |m| m.reply_overflows.get(),
            ),
            (
                "herald_input_paused_total",
                "counter",
                "Times a connection was left unread because its output was blocked.",
                |m| m.input_paused.get(),
            ),
            ("herald_mqtt_connections", "gauge", "Open MQTT connections.", |m| m.mqtt.connections.get()),
            ("herald_mqtt_publishes_out_total", "counter", "PUBLISH packets sent to MQTT terminals.", |m| {
                m.mqtt.publishes_out.get()
            }),
            (
                "herald_mqtt_pubacks_in_total",
                "counter",
                "PUBACKs (delivery receipts) from MQTT terminals.",
                |m| m.mqtt.pubacks_in.get(),
            ),
            (
                "herald_mqtt_window_drops_total",
                "counter",
                "Pushes not sent to an MQTT connection: QoS 1 window full or over its maximum packet size.",
                |m| m.mqtt.window_drops.get(),
            ),
            (
                "herald_mqtt_publishes_in_total",
                "counter",
                "PUBLISH packets received from MQTT terminals.",
                |m| m.mqtt.publishes_in.get(),
            ),
            ("herald_mqtt_publishes_refused_total", "counter", "Terminal PUBLISH packets refused.", |m| {
                m.mqtt.publishes_refused.get()
            }),
            ("herald_mqtt_wills_total", "counter", "Wills sent to the control plane.", |m| {
                m.mqtt.wills.get()
            }),
            ("herald_mqtt_filters_granted_total", "counter", "SUBSCRIBE filters granted.", |m| {
                m.mqtt.filters_granted.get()
            }),
            ("herald_mqtt_filters_refused_total", "counter", "SUBSCRIBE filters refused.", |m| {
                m.mqtt.filters_refused.get()
            }),
        ];
        let limits: [PerCore; 3] = [
            ("herald_tcp_connections", "gauge", "Open TCP terminal connections (Herald and MQTT).", |m| {
                m.tcp_connections.get()
            }),
            (
                "herald_connections_refused_total",
                "counter",
                "Connections closed at accept: the core held its share of max_connections.",
                |m| m.refused.get(),
            ),
            (
                "herald_accept_errors_total",
                "counter",
                "Failed accepts (e.g. out of file descriptors).",
                |m| m.accept_errors.get(),
            ),
        ];
        for (name, kind, help, f) in per_core.into_iter().chain(limits) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, c) in self.cores.iter().enumerate() {
                let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", f(c));
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_logins_failed_total Refused logins by close code.\n# TYPE herald_logins_failed_total counter"
        );
        let _ = writeln!(
            out,
            "# HELP herald_closes_total Connections closed by the gateway, by code.\n# TYPE herald_closes_total counter"
        );
        for code in CloseCode::ALL {
            let i = usize::from(code.0).min(CODES - 1);
            let failed = self.sum(|m| m.logins_failed[i].get());
            if failed > 0 {
                let _ = writeln!(out, "herald_logins_failed_total{{reason=\"{}\"}} {failed}", code.label());
            }
            let closed = self.sum(|m| m.closes[i].get());
            if closed > 0 {
                let _ = writeln!(out, "herald_closes_total{{reason=\"{}\"}} {closed}", code.label());
            }
        }
        let _ = writeln!(
            out,
            "# HELP herald_drops_total Frames not delivered, by reason.\n# TYPE herald_drops_total counter"
        );
        for (i, label) in DROP_LABELS.iter().enumerate() {
            let _ =
                writeln!(out, "herald_drops_total{{reason=\"{label}\"}} {}", self.sum(|m| m.drops[i].get()));
        }
        let _ = writeln!(
            out,
            "# HELP herald_fanout_latency_us Time from a push reaching the node to a core having written it to every local recipient.\n# TYPE herald_fanout_latency_us histogram"
        );
        let mut cumulative = 0;
        for (i, b) in FANOUT_BUCKETS_US.iter().enumerate() {
            cumulative += self.sum(|m| m.fanout_buckets[i].get());
            let _ = writeln!(out, "herald_fanout_latency_us_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.sum(|m| m.fanout_buckets[FANOUT_BUCKETS_US.len()].get());
        let _ = writeln!(out, "herald_fanout_latency_us_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "herald_fanout_latency_us_count {cumulative}");
        let _ = writeln!(
            out,
            "# TYPE herald_link_connected gauge\nherald_link_connected {}\n# TYPE herald_link_connects_total counter\nherald_link_connects_total {}",
            self.link_connected.load(Ordering::Relaxed),
            self.link_connects.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_publishes_dropped_total Terminal messages dropped while the link was down.\n# TYPE herald_publishes_dropped_total counter\nherald_publishes_dropped_total {}",
            self.publishes_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_metrics_scrapes_failed_total Metrics requests closed unanswered: over the deadline, evicted, or too large.\n# TYPE herald_metrics_scrapes_failed_total counter\nherald_metrics_scrapes_failed_total {}",
            self.scrapes_failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_link_timeouts_total Link connections dropped because the control plane was silent or did not read for link_dead_after_secs.\n# TYPE herald_link_timeouts_total counter\nherald_link_timeouts_total {}\n# HELP herald_link_refusals_total Times the control plane refused this node (node id in use).\n# TYPE herald_link_refusals_total counter\nherald_link_refusals_total {}\n# HELP herald_link_encode_failures_total Link messages that could not be encoded (the link was dropped and resynced).\n# TYPE herald_link_encode_failures_total counter\nherald_link_encode_failures_total {}",
            self.link_timeouts.load(Ordering::Relaxed),
            self.link_refusals.load(Ordering::Relaxed),
            self.link_encode_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_receipts_dropped_total Terminal acknowledgements dropped because the link held its bound of them (the messages are redelivered).\n# TYPE herald_receipts_dropped_total counter\nherald_receipts_dropped_total {}\n# HELP herald_receipts_deferred_total Coalesced receipts a core kept for its next tick because the upstream channel was full.\n# TYPE herald_receipts_deferred_total counter\nherald_receipts_deferred_total {}\n# HELP herald_link_upstream_events Events queued from the cores to the link thread.\n# TYPE herald_link_upstream_events gauge\nherald_link_upstream_events {}\n# HELP herald_core_mailbox_push_drops_total Pushes dropped for a core whose mailbox stayed full for link_dead_after_secs.\n# TYPE herald_core_mailbox_push_drops_total counter\nherald_core_mailbox_push_drops_total {}",
            self.receipts_dropped.load(Ordering::Relaxed),
            self.receipts_deferred.load(Ordering::Relaxed),
            self.upstream_len.load(Ordering::Relaxed),
            self.mailbox_push_drops.load(Ordering::Relaxed)
        );
        out
    }
}
