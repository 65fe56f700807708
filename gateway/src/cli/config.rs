//! The `--config FILE` (TOML) reader. Every error in a file is reported at once, each naming its
//! key, so an operator fixes a file in one pass; the binary exits with code 64 on any of them.
//! `herald.example.toml` at the repository root documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Everything a config file may set. `None` = not in the file.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct FileConfig {
    pub data: Option<PathBuf>,
    pub admin: Option<SocketAddr>,
    pub link: Option<SocketAddr>,
    pub admin_key: Option<String>,
    pub default_ttl_secs: Option<u32>,
    pub credential_ttl_secs: Option<u64>,
    pub admin_header_timeout_secs: Option<u64>,
    pub admin_body_timeout_secs: Option<u64>,
    pub admin_max_connections: Option<usize>,
    pub cp_link_heartbeat_secs: Option<u64>,
    pub cp_link_dead_after_secs: Option<u64>,
    pub max_inbox_bytes_per_user: Option<u64>,
    pub max_stored_bytes: Option<u64>,
    pub fire_and_forget_record_retention_secs: Option<u64>,
    pub max_push_record_bytes: Option<u64>,
    pub link_queue_bytes: Option<usize>,
    pub commit_queue_bytes: Option<u64>,

    pub tcp: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub mqtt: Option<super::Listen>,
    pub mqtt_allow_publish: Option<bool>,
    pub quic: Option<SocketAddr>,
    pub quic_cert: Option<PathBuf>,
    pub quic_key: Option<PathBuf>,
    pub control_plane: Option<SocketAddr>,
    pub node_id: Option<String>,
    pub cores: Option<usize>,
    pub driver: Option<String>,
    pub login_timeout_ms: Option<u64>,
    pub heartbeat_interval_secs: Option<u16>,
    pub heartbeat_grace_secs: Option<u32>,
    pub max_frame_bytes: Option<usize>,
    pub outbound_queue_frames: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub drain_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub link_heartbeat_secs: Option<u64>,
    pub link_dead_after_secs: Option<u64>,

    pub log_filter: Option<String>,
}

/// All the problems found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub(crate) struct ConfigErrors(pub Vec<String>);

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "control_plane",
        &[
            "data",
            "admin",
            "link",
            "admin_key",
            "default_ttl_secs",
            "credential_ttl_secs",
            "admin_header_timeout_secs",
            "admin_body_timeout_secs",
            "admin_max_connections",
            "link_heartbeat_secs",
            "link_dead_after_secs",
            "max_inbox_bytes_per_user",
            "max_stored_bytes",
            "fire_and_forget_record_retention_secs",
            "max_push_record_bytes",
            "link_queue_bytes",
            "commit_queue_bytes",
        ],
    ),
    (
        "gateway",
        &[
            "tcp",
            "metrics",
            "mqtt",
            "mqtt_allow_publish",
            "quic",
            "quic_cert",
            "quic_key",
            "control_plane",
            "node_id",
            "cores",
            "driver",
            "login_timeout_ms",
            "heartbeat_interval_secs",
            "heartbeat_grace_secs",
            "max_frame_bytes",
            "outbound_queue_frames",
            "outbound_queue_bytes",
            "drain_timeout_ms",
            "max_connections",
            "link_heartbeat_secs",
            "link_dead_after_secs",
        ],
    ),
    ("log", &["filter"]),
];

impl FileConfig {
    pub(crate) fn load(path: &Path) -> Result<FileConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        FileConfig::parse(&text).map_err(|ConfigErrors(errs)| {
            ConfigErrors(errs.into_iter().map(|e| format!("{}: {e}", path.display())).collect())
        })
    }

    pub(crate) fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![e.to_string().trim_end().replace('\n', "\n    ")])
        })?;
        let mut r = Reader { errors: Vec::new(), root: &root };
        for (name, value) in &root {
            match SECTIONS.iter().find(|(s, _)| s == name) {
                None => r.errors.push(format!("unknown section [{name}]")),
                Some((_, keys)) => match value.as_table() {
                    None => r.errors.push(format!("`{name}` must be a [section]")),
                    Some(t) => {
                        for k in t.keys().filter(|k| !keys.contains(&k.as_str())) {
                            r.errors.push(format!("unknown key `{name}.{k}`"));
                        }
                    }
                },
            }
        }
        let cfg = FileConfig {
            data: r.get("control_plane", "data"),
            admin: r.addr("control_plane", "admin"),
            link: r.addr("control_plane", "link"),
            admin_key: r.get("control_plane", "admin_key"),
            default_ttl_secs: r.get("control_plane", "default_ttl_secs"),
            credential_ttl_secs: r.get("control_plane", "credential_ttl_secs"),
            admin_header_timeout_secs: r.get("control_plane", "admin_header_timeout_secs"),
            admin_body_timeout_secs: r.get("control_plane", "admin_body_timeout_secs"),
            admin_max_connections: r.get("control_plane", "admin_max_connections"),
            cp_link_heartbeat_secs: r.get("control_plane", "link_heartbeat_secs"),
            cp_link_dead_after_secs: r.get("control_plane", "link_dead_after_secs"),
            max_inbox_bytes_per_user: r.get("control_plane", "max_inbox_bytes_per_user"),
            max_stored_bytes: r.get("control_plane", "max_stored_bytes"),
            fire_and_forget_record_retention_secs: r
                .get("control_plane", "fire_and_forget_record_retention_secs"),
            max_push_record_bytes: r.get("control_plane", "max_push_record_bytes"),
            link_queue_bytes: r.get("control_plane", "link_queue_bytes"),
            commit_queue_bytes: r.get("control_plane", "commit_queue_bytes"),
            tcp: r.addr("gateway", "tcp"),
            metrics: r.addr("gateway", "metrics"),
            mqtt: r.listen("gateway", "mqtt"),
            mqtt_allow_publish: r.get("gateway", "mqtt_allow_publish"),
            quic: r.addr("gateway", "quic"),
            quic_cert: r.get("gateway", "quic_cert"),
            quic_key: r.get("gateway", "quic_key"),
            control_plane: r.addr("gateway", "control_plane"),
            node_id: r.get("gateway", "node_id"),
            cores: r.get("gateway", "cores"),
            driver: r.get("gateway", "driver"),
            login_timeout_ms: r.get("gateway", "login_timeout_ms"),
            heartbeat_interval_secs: r.get("gateway", "heartbeat_interval_secs"),
            heartbeat_grace_secs: r.get("gateway", "heartbeat_grace_secs"),
            max_frame_bytes: r.get("gateway", "max_frame_bytes"),
            outbound_queue_frames: r.get("gateway", "outbound_queue_frames"),
            outbound_queue_bytes: r.get("gateway", "outbound_queue_bytes"),
            drain_timeout_ms: r.get("gateway", "drain_timeout_ms"),
            max_connections: r.get("gateway", "max_connections"),
            link_heartbeat_secs: r.get("gateway", "link_heartbeat_secs"),
            link_dead_after_secs: r.get("gateway", "link_dead_after_secs"),
            log_filter: r.get("log", "filter"),
        };
        if r.errors.is_empty() { Ok(cfg) } else { Err(ConfigErrors(r.errors)) }
    }
}

struct Reader<'a> {
    errors: Vec<String>,
    root: &'a toml::Table,
}

impl Reader<'_> {
    fn get<T: DeserializeOwned>(&mut self, section: &str, key: &str) -> Option<T> {
        let value = self.root.get(section)?.as_table()?.get(key)?;
        match value.clone().try_into::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let what = e.to_string();
                self.errors.push(format!("`{section}.{key}`: {}", what.trim_end()));
                None
            }
        }
    }

    fn listen(&mut self, section: &str, key: &str) -> Option<super::Listen> {
        let text: String = self.get(section, key)?;
        match text.parse() {
            Ok(l) => Some(l),
            Err(e) => {
                self.errors.push(format!("`{section}.{key}`: {e}"));
                None
            }
        }
    }

    fn addr(&mut self, section: &str, key: &str) -> Option<SocketAddr> {
        let text: String = self.get(section, key)?;
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.errors
                    .push(format!("`{section}.{key}`: {text:?} is not an address like \"127.0.0.1:7000\""));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_sets_every_key_but_the_commented_ones() {
        let cfg = FileConfig::parse(include_str!("../../../herald.example.toml")).unwrap();
        assert_eq!(cfg.admin, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(cfg.tcp, Some("0.0.0.0:7400".parse().unwrap()));
        assert_eq!(cfg.driver.as_deref(), Some("auto"));
        assert_eq!(cfg.heartbeat_interval_secs, Some(240));
        assert_eq!(cfg.log_filter.as_deref(), Some("info"));
        assert_eq!(cfg.mqtt, Some(super::super::Listen::At("0.0.0.0:1883".parse().unwrap())));
        assert_eq!(cfg.mqtt_allow_publish, Some(false));
        assert_eq!((cfg.admin_key, cfg.node_id, cfg.max_connections), (None, None, None));
        assert_eq!(cfg.admin_header_timeout_secs, Some(10));
        assert_eq!(cfg.admin_body_timeout_secs, Some(60));
        assert_eq!(cfg.admin_max_connections, Some(64));
        assert_eq!((cfg.link_heartbeat_secs, cfg.link_dead_after_secs), (Some(5), Some(15)));
        assert_eq!((cfg.cp_link_heartbeat_secs, cfg.cp_link_dead_after_secs), (Some(5), Some(15)));
        // The memory caps the example shows are the defaults.
        let d = herald_control_plane::ControlPlaneConfig::default();
        assert_eq!(cfg.max_inbox_bytes_per_user, Some(d.max_inbox_bytes_per_user));
        assert_eq!(cfg.max_stored_bytes, Some(d.max_stored_bytes));
        assert_eq!(cfg.fire_and_forget_record_retention_secs, Some(d.fire_and_forget_record_retention_secs));
        assert_eq!(cfg.max_push_record_bytes, Some(d.max_push_record_bytes));
        assert_eq!(cfg.link_queue_bytes, Some(d.link_queue_bytes));
        assert_eq!(cfg.commit_queue_bytes, Some(d.commit_queue_bytes));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = r#"
            [gateway]
            tcp = "nowhere"
            mqtt = "everywhere"
            mqtt_allow_publish = "yes"
            cores = "two"
            colour = "blue"
            [control_plane]
            default_ttl_secs = -1
            [extra]
        "#;
        let ConfigErrors(errs) = FileConfig::parse(text).unwrap_err();
        let all = errs.join("\n");
        assert_eq!(errs.len(), 7, "{all}");
        for needle in [
            "gateway.tcp",
            "gateway.mqtt`",
            "gateway.mqtt_allow_publish",
            "gateway.cores",
            "gateway.colour",
            "default_ttl_secs",
            "[extra]",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(FileConfig::parse("[gateway\n").is_err());
        assert!(FileConfig::parse("gateway = 3").is_err());
    }
}
