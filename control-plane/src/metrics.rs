//! Counters and gauges, rendered in the Prometheus text format at `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the control plane counts.
#[derive(Debug, Default)]
pub struct Metrics {
    pub pushes_accepted: Counter,
    pub pushes_idempotent: Counter,
    pub api_errors: Counter,
    /// Admin API connections ended by a timeout or a protocol error, and failed accepts.
    pub api_connections_failed: Counter,
    pub push_orders_sent: Counter,
    pub backlog_pushes_sent: Counter,
    pub receipts: Counter,
    pub store_commits: Counter,
    pub store_ops: Counter,
    pub store_commit_micros: Counter,
    pub store_errors: Counter,
    /// Store reopened (and the state reloaded from it) after failed commits.
    pub store_recoveries: Counter,
    pub messages_expired: Counter,
    pub messages_delivered_removed: Counter,
    pub pushes_pruned: Counter,
    pub link_connects: Counter,
    pub link_queue_full: Counter,
    pub link_resyncs: Counter,
    pub fire_and_forget_dropped: Counter,
    pub terminal_publishes: Counter,
    pub terminal_publishes_refused: Counter,
    pub wills_published: Counter,
    pub wills_cancelled: Counter,
    pub pushes_refused_full: Counter,
    pub commit_queue_full: Counter,
    pub nodes: Gauge,
    pub online_devices: Gauge,
    pub stored_messages: Gauge,
    pub pending_wills: Gauge,
    /// 1 while store commits fail (from a failed commit until the store is reopened).
    pub store_failing: Gauge,
    /// Link liveness and integrity (issue #12): each ends a link, never silently.
    pub link_timeouts: Counter,
    pub link_refused: Counter,
    pub link_encode_failures: Counter,
    pub revocations_pruned: Counter,
    pub stored_bytes: Gauge,
    pub commit_queue_bytes: Gauge,
}

impl Metrics {
    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &Counter); 24] = [
            ("herald_cp_pushes_accepted_total", "Pushes accepted (durable).", &self.pushes_accepted),
            (
                "herald_cp_pushes_idempotent_total",
                "Retried pushes answered from an idempotency key.",
                &self.pushes_idempotent,
            ),
            ("herald_cp_api_errors_total", "Admin API calls answered with an error.", &self.api_errors),
            (
                "herald_cp_push_orders_sent_total",
                "Push orders sent to gateway nodes.",
                &self.push_orders_sent,
            ),
            (
                "herald_cp_backlog_pushes_sent_total",
                "Stored messages sent to devices at login.",
                &self.backlog_pushes_sent,
            ),
            ("herald_cp_receipts_total", "Terminal acknowledgement ranges received.", &self.receipts),
            ("herald_cp_store_commits_total", "Store write transactions.", &self.store_commits),
            ("herald_cp_store_ops_total", "Records written to the store.", &self.store_ops),
            (
                "herald_cp_store_commit_micros_total",
                "Time spent in store commits.",
                &self.store_commit_micros,
            ),
            ("herald_cp_store_errors_total", "Failed store commits.", &self.store_errors),
            (
                "herald_cp_store_recoveries_total",
                "Store reopened and state reloaded from it after failed commits.",
                &self.store_recoveries,
            ),
            (
                "herald_cp_messages_expired_total",
                "Stored messages removed at TTL expiry.",
                &self.messages_expired,
            ),
            (
                "herald_cp_messages_delivered_removed_total",
                "Stored messages removed once every device they were owed to acknowledged them.",
                &self.messages_delivered_removed,
            ),
            (
                "herald_cp_pushes_pruned_total",
                "Push records (and idempotency keys) deleted after their retention.",
                &self.pushes_pruned,
            ),
            ("herald_cp_link_connects_total", "Gateway node link connections accepted.", &self.link_connects),
            (
                "herald_cp_link_queue_full_total",
                "Times a node's link queue was full and the node fell behind.",
                &self.link_queue_full,
            ),
            (
                "herald_cp_link_resyncs_total",
                "Nodes resent their devices' backlogs after falling behind.",
                &self.link_resyncs,
            ),
            (
                "herald_cp_fire_and_forget_dropped_total",
                "Online recipients of TTL-0 pushes dropped because their node was behind.",
                &self.fire_and_forget_dropped,
            ),
            (
                "herald_cp_terminal_publishes_total",
                "Messages from terminals (MQTT PUBLISH, wills) accepted as pushes.",
                &self.terminal_publishes,
            ),
            (
                "herald_cp_terminal_publishes_refused_total",
                "Messages from terminals refused: a target the user does not follow.",
                &self.terminal_publishes_refused,
            ),
            ("herald_cp_wills_published_total", "Terminals' wills pushed.", &self.wills_published),
            (
                "herald_cp_wills_cancelled_total",
                "Delayed wills dropped because the device logged in again in time.",
                &self.wills_cancelled,
            ),
            (
                "herald_cp_pushes_refused_full_total",
                "Pushes refused 507: an inbox or the stored-bytes cap was full.",
                &self.pushes_refused_full,
            ),
            (
                "herald_cp_commit_queue_full_total",
                "Admin writes refused 429 because the store was behind (commit_queue_bytes).",
                &self.commit_queue_full,
            ),
        ];
        let link: [(&str, &str, &Counter); 4] = [
            (
                "herald_cp_link_timeouts_total",
                "Node links dropped because the node sent nothing, or did not read, for link_dead_after_secs.",
                &self.link_timeouts,
            ),
            (
                "herald_cp_link_refused_total",
                "Node links refused because another live link holds the node id.",
                &self.link_refused,
            ),
            (
                "herald_cp_link_encode_failures_total",
                "Link messages that could not be encoded (the link was dropped for a resync).",
                &self.link_encode_failures,
            ),
            (
                "herald_cp_revocations_pruned_total",
                "Revocation stamps removed because no credential they cover can still be valid.",
                &self.revocations_pruned,
            ),
        ];
        for (name, help, c) in counters.into_iter().chain(link) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.get());
        }
        let gauges: [(&str, &str, &Gauge); 7] = [
            ("herald_cp_nodes", "Connected gateway nodes.", &self.nodes),
            ("herald_cp_online_devices", "Devices online on some node.", &self.online_devices),
            ("herald_cp_stored_messages", "Messages held for delivery.", &self.stored_messages),
            ("herald_cp_pending_wills", "Terminals' wills waiting for their delay.", &self.pending_wills),
            (
                "herald_cp_store_failing",
                "1 while store commits fail, until it is reopened.",
                &self.store_failing,
            ),
            (
                "herald_cp_stored_bytes",
                "Bytes of messages held for delivery (as capped).",
                &self.stored_bytes,
            ),
            (
                "herald_cp_commit_queue_bytes",
                "Bytes of changes waiting for the store (estimated).",
                &self.commit_queue_bytes,
            ),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", g.get());
        }
        let _ = writeln!(
            out,
            "# HELP herald_cp_api_connections_failed_total Admin API connections ended by a timeout or a protocol error, and failed accepts.\n# TYPE herald_cp_api_connections_failed_total counter\nherald_cp_api_connections_failed_total {}",
            self.api_connections_failed.get()
        );
        out
    }
}
