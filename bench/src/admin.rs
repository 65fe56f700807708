//! The admin HTTP API, as an application server uses it: credentials, group membership, pushes.

use std::time::Duration;

use anyhow::{Context, anyhow};
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::wire::Cred;

/// Topic every bench user follows (through the group of the same name); fan-out and burst push
/// to it.
pub const ALL_TOPIC: &str = "bench-all";

/// Groups of bench user `i`: three, so each connection is subscribed to three topics.
pub fn groups_of(i: usize) -> Vec<String> {
    vec![ALL_TOPIC.to_string(), format!("bench-g{}", i % 10), format!("bench-s{}", i % 100)]
}

pub fn user_name(i: usize) -> String {
    format!("bench-u{i}")
}

#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(addr: &str, key: &str) -> Admin {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .max_idle_connections_per_host(64)
            .build();
        Admin { base: format!("http://{addr}"), key: key.to_string(), agent }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.key));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => {
                let text = r.into_string().unwrap_or_default();
                Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(ureq::Error::Status(code, r)) => {
                Err(anyhow!("{method} {path}: HTTP {code}: {}", r.into_string().unwrap_or_default()))
            }
            Err(e) => Err(anyhow!("{method} {path}: {e}")),
        }
    }

    /// The control plane's Prometheus text (`GET /metrics`, admin key required).
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let r = self
            .agent
            .get(&format!("{}/metrics", self.base))
            .set("Authorization", &format!("Bearer {}", self.key))
            .timeout(Duration::from_secs(5))
            .call()?;
        Ok(r.into_string()?)
    }

    /// Control-plane counters that explain missing deliveries: TTL-0 recipients dropped because
    /// their node was behind, and times a node's link queue was full. `None` if unreadable.
    pub fn cp_counters(&self) -> Option<(f64, f64)> {
        let t = self.metrics_text().ok()?;
        Some((sum_metric(&t, M_CP_FNF_DROPPED), sum_metric(&t, M_CP_LINK_QUEUE_FULL)))
    }

    /// Whether `GET /healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.agent.get(&format!("{}/healthz", self.base)).timeout(Duration::from_millis(500)).call().is_ok()
    }

    pub fn credential(&self, user: &str, device: &str) -> anyhow::Result<String> {
        let v = self.call(
            "POST",
            "/v1/credentials",
            Some(json!({"user": user, "device": device, "ttl_secs": 86_400})),
        )?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("credential answer without a token")
    }

    pub fn set_groups(&self, user: &str, groups: &[String]) -> anyhow::Result<()> {
        self.call("PUT", &format!("/v1/users/{user}/groups"), Some(json!({ "groups": groups })))?;
        Ok(())
    }

    /// Sends a push; `to` is the API's target object. Returns the answer (`{push_id}`).
    pub fn push(&self, to: Value, payload: Value, ttl_secs: u32) -> anyhow::Result<Value> {
        self.call("POST", "/v1/pushes", Some(json!({"to": to, "payload": payload, "ttl_secs": ttl_secs})))
    }

    /// Issues credentials for users `0..n` and puts each in its three groups, on `threads`
    /// threads. Returns the identities in user order.
    pub fn provision(&self, n: usize, threads: usize, bar: &ProgressBar) -> anyhow::Result<Vec<Cred>> {
        let threads = threads.clamp(1, n.max(1));
        let chunk = n.div_ceil(threads);
        let results: Vec<anyhow::Result<Vec<Cred>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let range = t * chunk..((t + 1) * chunk).min(n);
                    s.spawn(move || {
                        range
                            .map(|i| {
                                let user = user_name(i);
                                let device = format!("bench-d{i}");
                                let token = self.credential(&user, &device)?;
                                self.set_groups(&user, &groups_of(i))?;
                                bar.inc(1);
                                Ok(Cred { user, device, token })
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("provisioning thread panicked"))))
                .collect()
        });
        let mut out = Vec::with_capacity(n);
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// GETs a URL without authentication and returns the body (the metrics endpoint).
pub fn get_text(url: &str) -> anyhow::Result<String> {
    Ok(ureq::get(url).timeout(Duration::from_secs(5)).call()?.into_string()?)
}

/// Gateway counters the bench reads (names from the gateway's `metrics.rs`).
pub const M_DROPS: &str = "herald_drops_total";
pub const M_CLOSES: &str = "herald_closes_total";
pub const M_DELIVERIES: &str = "herald_deliveries_total";
pub const M_PUSHES: &str = "herald_pushes_total";
pub const M_FANOUT_SUM: &str = "herald_fanout_latency_us_sum";
pub const M_FANOUT_COUNT: &str = "herald_fanout_latency_us_count";
/// Control-plane counters (admin `/metrics`).
pub const M_CP_FNF_DROPPED: &str = "herald_cp_fire_and_forget_dropped_total";
pub const M_CP_LINK_QUEUE_FULL: &str = "herald_cp_link_queue_full_total";

/// Sums every sample of the Prometheus text of the metric named exactly `name`, over all its
/// labels (`core`, `reason`, ...).
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let name_end = l.find(['{', ' '])?;
            if &l[..name_end] != name {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Every sample of the metric named `name` by its `reason` label (summed over other labels).
pub fn metric_by_reason(text: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(name_end) = l.find(['{', ' ']) else { continue };
        if &l[..name_end] != name {
            continue;
        }
        let reason =
            l.split_once("reason=\"").and_then(|(_, r)| r.split_once('"')).map_or("", |(r, _)| r).to_string();
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(reason).or_insert(0.0) += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_metrics_by_name() {
        let t = "# HELP herald_drops_total x\nherald_drops_total{reason=\"slow_consumer\"} 3\nherald_drops_total{reason=\"queue_full_new\"} 2\nherald_pushes_total{core=\"0\"} 9\nherald_pushes_total{core=\"1\"} 1\nherald_pushes_total_x 5\n";
        assert_eq!(sum_metric(t, M_DROPS), 5.0);
        assert_eq!(sum_metric(t, M_PUSHES), 10.0);
        assert_eq!(metric_by_reason(t, M_DROPS).get("slow_consumer"), Some(&3.0));
        assert_eq!(groups_of(123), vec!["bench-all", "bench-g3", "bench-s23"]);
    }
}
