//! A core's pending receipts (terminal ACK ranges, MQTT PUBACKs), coalesced per (user, device,
//! stream) and handed to the link thread once per batch of socket events and per tick.
//!
//! Why: forwarding every ACK range as its own upstream event let one terminal sending ACK
//! frames fill the node's memory (issue #12 item 2). Coalesced, a core holds per device and
//! stream one cumulative position and a few selective ranges, so what it sends up per tick is
//! bounded by the devices that acked, not by the bytes they sent.
//!
//! Bounds and what happens past them (each counted, never silent):
//! - per (device, stream), at most [`MAX_RANGES_PER_STREAM`] selective ranges, per core at most
//!   [`MAX_PENDING_RANGES`]: a range past either is dropped (`herald_receipts_dropped_total`);
//!   the message it acknowledged is redelivered later (delivery is at least once). A terminal
//!   acks a few dozen ranges per ACK, so only a flood reaches these.
//! - the upstream channel is bounded: when it is full the core keeps what it could not send
//!   and retries on its next flush (`herald_receipts_deferred_total`), never blocking.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Sender, TrySendError};

use crate::link::Upstream;
use crate::metrics::Registry;

/// Selective (non-cumulative) ranges kept per (device, stream) between two flushes.
pub(crate) const MAX_RANGES_PER_STREAM: usize = 1_024;
/// Selective ranges kept per core between two flushes.
pub(crate) const MAX_PENDING_RANGES: usize = 65_536;

#[derive(Debug, Default)]
struct Ranges {
    /// Everything up to this is acknowledged (0: no cumulative ack pending).
    cumulative: u32,
    /// Disjoint, non-adjacent `first..=last` ranges above `cumulative`, sorted.
    selective: Vec<(u32, u32)>,
}

impl Ranges {
    /// Adds a range; the change in the number of selective ranges, or None when it would pass
    /// the per-stream cap (the range is not added).
    fn add(&mut self, first: u32, last: u32) -> Option<isize> {
        let before = self.selective.len() as isize;
        if first == 0 {
            self.cumulative = self.cumulative.max(last);
            let c = self.cumulative;
            self.selective.retain(|&(_, l)| l > c);
            return Some(self.selective.len() as isize - before);
        }
        if last <= self.cumulative {
            return Some(0);
        }
        // Merge with every range it overlaps or touches.
        let (mut f, mut l) = (first, last);
        let start = self.selective.partition_point(|&(_, rl)| rl.saturating_add(1) < f);
        let mut end = start;
        while end < self.selective.len() && self.selective[end].0 <= l.saturating_add(1) {
            f = f.min(self.selective[end].0);
            l = l.max(self.selective[end].1);
            end += 1;
        }
        if start == end && self.selective.len() >= MAX_RANGES_PER_STREAM {
            return None;
        }
        self.selective.splice(start..end, [(f, l)]);
        Some(self.selective.len() as isize - before)
    }
}

/// One core's coalesced receipts.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    pending: HashMap<(Arc<str>, Arc<str>, u32), Ranges>,
    /// Selective ranges held, over all streams.
    selective: usize,
}

impl Receipts {
    /// Records that `user`/`device` acknowledged `first..=last` of `stream` (first = 0:
    /// cumulative).
    pub(crate) fn add(
        &mut self,
        m: &Registry,
        user: &Arc<str>,
        device: &Arc<str>,
        stream: u32,
        first: u32,
        last: u32,
    ) {
        if first != 0 && self.selective >= MAX_PENDING_RANGES {
            m.receipts_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = (user.clone(), device.clone(), stream);
        match self.pending.entry(key).or_default().add(first, last) {
            Some(d) => self.selective = self.selective.saturating_add_signed(d),
            None => {
                m.receipts_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends what it holds up, one event per range, as far as the channel has room; the rest
    /// waits for the next flush.
    pub(crate) fn flush(&mut self, up: &Sender<Upstream>, m: &Registry) {
        if self.pending.is_empty() {
            return;
        }
        let mut full = false;
        let mut sent_selective = 0;
        self.pending.retain(|(user, device, stream), r| {
            if full {
                return true;
            }
            let mut send = |first, last| {
                let ev = Upstream::Receipt {
                    user: user.clone(),
                    device: device.clone(),
                    stream: *stream,
                    first,
                    last,
                };
                match up.try_send(ev) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        full = true;
                        false
                    }
                    // The link thread is gone (the node stopped): nothing to send to.
                    Err(TrySendError::Disconnected(_)) => true,
                }
            };
            if r.cumulative > 0 {
                if !send(0, r.cumulative) {
                    return true;
                }
                r.cumulative = 0;
            }
            while let Some(&(f, l)) = r.selective.last() {
                if !send(f, l) {
                    return true;
                }
                r.selective.pop();
                sent_selective += 1;
            }
            false
        });
        self.selective -= sent_selective;
        if full {
            m.receipts_deferred.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(r: &mut Receipts, cap: usize) -> Vec<(u32, u32, u32)> {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let m = Registry::new(1);
        r.flush(&tx, &m);
        let mut out: Vec<_> = rx
            .try_iter()
            .map(|e| match e {
                Upstream::Receipt { stream, first, last, .. } => (stream, first, last),
                other => panic!("not a receipt: {other:?}"),
            })
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn ranges_coalesce_per_stream_and_a_full_channel_keeps_the_rest() {
        let m = Registry::new(1);
        let (u, d): (Arc<str>, Arc<str>) = ("u".into(), "d".into());
        let mut r = Receipts::default();
        // 100,000 acks of one stream, cumulative and selective, overlapping and adjacent.
        for i in 1..=50_000u32 {
            r.add(&m, &u, &d, 1, 0, i);
            r.add(&m, &u, &d, 2, i, i);
        }
        r.add(&m, &u, &d, 1, 60_000, 60_001);
        r.add(&m, &u, &d, 1, 10, 20); // covered by the cumulative ack
        assert_eq!(drained(&mut r, 100), vec![(1, 0, 50_000), (1, 60_000, 60_001), (2, 1, 50_000)]);
        assert_eq!(drained(&mut r, 100), vec![]);
        // A full channel: what did not fit stays for the next flush.
        for s in 0..10 {
            r.add(&m, &u, &d, s, 0, 5);
        }
        let first = drained(&mut r, 4);
        assert_eq!(first.len(), 4);
        let rest = drained(&mut r, 100);
        assert_eq!(first.len() + rest.len(), 10);
    }

    #[test]
    fn disjoint_ranges_past_the_caps_are_dropped_and_counted() {
        let m = Registry::new(1);
        let (u, d): (Arc<str>, Arc<str>) = ("u".into(), "d".into());
        let mut r = Receipts::default();
        for i in 0..(MAX_RANGES_PER_STREAM as u32 + 10) {
            r.add(&m, &u, &d, 1, 2 * i + 1, 2 * i + 1);
        }
        assert_eq!(m.receipts_dropped.load(Ordering::Relaxed), 10);
        assert_eq!(r.selective, MAX_RANGES_PER_STREAM);
        // A cumulative ack always fits and absorbs what it covers.
        r.add(&m, &u, &d, 1, 0, 1_000);
        assert_eq!(r.selective, MAX_RANGES_PER_STREAM - 500);
        assert_eq!(drained(&mut r, 100_000).len(), MAX_RANGES_PER_STREAM - 500 + 1);
        assert_eq!(r.selective, 0);
    }
}
