//! The node's configuration file (`shoal node start --config FILE`), TOML.
//!
//! ```toml
//! node_id  = "n1"                   # required
//! listen   = "127.0.0.1:7100"       # QUIC, UDP
//! data_dir = "/var/lib/shoal/n1"    # required
//! seeds    = ["127.0.0.1:7101", "127.0.0.1:7102"]
//! tls_dir  = "/etc/shoal/tls"       # required
//! admin    = "127.0.0.1:7200"
//! anti_entropy_keys_per_sec  = 200000   # anti-entropy's budget on this node
//! anti_entropy_bytes_per_sec = 67108864
//! ```
//!
//! Every key is documented on [`FileConfig`]. Unknown keys are refused (a typo must not
//! silently fall back to a default), and a bad value is an error that names its key. Command
//! line flags override the file key by key ([`Overrides`]); without a file, the flags alone
//! must give the required keys. Relative paths in a file are relative to the file's
//! directory; relative paths given as flags are relative to the working directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// Default QUIC listen address: loopback, port 7100.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7100);
/// Default admin address: loopback, port 7200.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7200);

/// The keys of a node's TOML file, each optional here; [`NodeSettings`] is the checked
/// result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`; its certificate must name
    /// it. Required. Never change it for an existing `data_dir`.
    pub node_id: Option<String>,
    /// UDP address of the node's QUIC endpoint (peers and clients), also the address it tells
    /// others. Default `127.0.0.1:7100`.
    pub listen: Option<SocketAddr>,
    /// Directory of the node's data: the RocksDB database (`db/`) and the ring members it has
    /// learned (the cluster state, in the store). Created if missing. Required.
    pub data_dir: Option<PathBuf>,
    /// Addresses of other nodes to join through. Default none (a cluster of one). Every seed
    /// joins the ring at startup, so in a dev cluster every node lists all the others.
    pub seeds: Option<Vec<SocketAddr>>,
    /// Certificate directory: `ca.pem` and this node's `node-<id>.pem`/`node-<id>.key`
    /// (`shoal cert …`). Required.
    pub tls_dir: Option<PathBuf>,
    /// Address of the admin and metrics endpoint (TCP; served from a later version). Default
    /// `127.0.0.1:7200`: loopback, so it is not reachable from other machines unless
    /// configured.
    pub admin: Option<SocketAddr>,
    /// Log format on stderr: `"text"` (default, human-readable) or `"json"` (one object per
    /// line). Levels come from `RUST_LOG` (default `info`).
    pub log_format: Option<LogFormat>,
    /// File this node writes its process id to while it runs, removed at a graceful stop.
    /// Default none. `shoal dev-cluster` sets it to `DIR/<node-id>/pid`.
    pub pid_file: Option<PathBuf>,
    /// Keys per second anti-entropy compares or repairs at most on this node, while it serves
    /// no clients (an eighth of a percent of it while it does). At least 1. Default 400 000.
    pub anti_entropy_keys_per_sec: Option<u64>,
    /// Payload bytes per second anti-entropy moves at most on this node, while it serves no
    /// clients (an eighth of a percent of it while it does). At least 1. Default 128 MiB.
    pub anti_entropy_bytes_per_sec: Option<u64>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Values given on the command line; each replaces the file's key of the same name.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--seeds A,B`.
    pub seeds: Option<Vec<SocketAddr>>,
    /// `--tls-dir`.
    pub tls_dir: Option<PathBuf>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// A node's checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// See [`FileConfig::node_id`].
    pub node_id: NodeId,
    /// See [`FileConfig::listen`].
    pub listen: SocketAddr,
    /// See [`FileConfig::data_dir`].
    pub data_dir: PathBuf,
    /// See [`FileConfig::seeds`].
    pub seeds: Vec<SocketAddr>,
    /// See [`FileConfig::tls_dir`].
    pub tls_dir: PathBuf,
    /// See [`FileConfig::admin`].
    pub admin: SocketAddr,
    /// See [`FileConfig::log_format`].
    pub log_format: LogFormat,
    /// See [`FileConfig::pid_file`].
    pub pid_file: Option<PathBuf>,
    /// See [`FileConfig::anti_entropy_keys_per_sec`].
    pub anti_entropy_keys_per_sec: Option<u64>,
    /// See [`FileConfig::anti_entropy_bytes_per_sec`].
    pub anti_entropy_bytes_per_sec: Option<u64>,
}

/// The configuration is unusable; nothing was started. The message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl FileConfig {
    /// Parses TOML text; `origin` names it in errors. A bad value's error names its key.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(describe(&e, text, origin)))
    }

    /// Reads and parses `path`, making relative paths in it relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {origin}: {e}")))?;
        let mut config = Self::parse(&text, &origin)?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut config.data_dir,
            &mut config.tls_dir,
            &mut config.pid_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// This file with `overrides` applied.
    pub fn with(mut self, overrides: Overrides) -> Self {
        let Overrides {
            node_id,
            listen,
            data_dir,
            seeds,
            tls_dir,
            admin,
            log_format,
        } = overrides;
        self.log_format = log_format.or(self.log_format);
        self.node_id = node_id.or(self.node_id);
        self.listen = listen.or(self.listen);
        self.data_dir = data_dir.or(self.data_dir);
        self.seeds = seeds.or(self.seeds);
        self.tls_dir = tls_dir.or(self.tls_dir);
        self.admin = admin.or(self.admin);
        self
    }

    /// Checks required keys and values.
    pub fn settings(self) -> Result<NodeSettings, ConfigError> {
        let missing = |key: &str, flag: &str| {
            ConfigError(format!(
                "`{key}` is required: set it in the config file or pass {flag}"
            ))
        };
        let node_id = self
            .node_id
            .ok_or_else(|| missing("node_id", "--node-id"))?;
        let node_id = NodeId::new(node_id).map_err(|e| ConfigError(format!("`node_id`: {e}")))?;
        let data_dir = self.data_dir.ok_or_else(|| missing("data_dir", "--data"))?;
        let tls_dir = self
            .tls_dir
            .ok_or_else(|| missing("tls_dir", "--tls-dir"))?;
        for (key, value) in [
            ("anti_entropy_keys_per_sec", self.anti_entropy_keys_per_sec),
            (
                "anti_entropy_bytes_per_sec",
                self.anti_entropy_bytes_per_sec,
            ),
        ] {
            if value == Some(0) {
                return Err(ConfigError(format!("`{key}` must be at least 1")));
            }
        }
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        let mut seeds = self.seeds.unwrap_or_default();
        seeds.retain(|s| *s != listen);
        seeds.sort();
        seeds.dedup();
        Ok(NodeSettings {
            node_id,
            listen,
            data_dir,
            seeds,
            tls_dir,
            admin: self.admin.unwrap_or(DEFAULT_ADMIN),
            log_format: self.log_format.unwrap_or_default(),
            pid_file: self.pid_file,
            anti_entropy_keys_per_sec: self.anti_entropy_keys_per_sec,
            anti_entropy_bytes_per_sec: self.anti_entropy_bytes_per_sec,
        })
    }

    /// The file as TOML text, keys in documented order.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serializes")
    }
}

/// One line: the origin, the line number, the key (for a bad value) and what is wrong.
fn describe(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    let Some(span) = e.span() else {
        return format!("config {origin}: {message}");
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    // An unknown key names itself in the message; a bad value is named by its line's key.
    match line.split_once('=') {
        Some((key, _)) if !message.contains("unknown field") => format!(
            "config {origin}, line {line_no}: key `{}`: {message}",
            key.trim().trim_matches('"')
        ),
        _ => format!("config {origin}, line {line_no}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        FileConfig::parse(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn full_file_parses_and_defaults_fill_in() {
        let text = r#"
            node_id = "n1"
            data_dir = "/d"
            tls_dir = "/t"
            seeds = ["127.0.0.1:7101", "127.0.0.1:7100"]
        "#;
        let settings = FileConfig::parse(text, "t").unwrap().settings().unwrap();
        assert_eq!(settings.node_id.as_str(), "n1");
        assert_eq!(settings.listen, DEFAULT_LISTEN);
        assert_eq!(settings.admin, DEFAULT_ADMIN);
        // Its own address is not a seed.
        assert_eq!(settings.seeds, vec!["127.0.0.1:7101".parse().unwrap()]);
        assert_eq!(settings.log_format, LogFormat::Text);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse_err("node_id = \"n1\"\nbogus_key = 3\n");
        assert!(e.contains("bogus_key"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_value_names_its_key() {
        let e = parse_err("node_id = \"n1\"\nlisten = \"nowhere\"\n");
        assert!(e.contains("`listen`"), "{e}");
        let e = parse_err("seeds = \"127.0.0.1:1\"\n");
        assert!(e.contains("`seeds`"), "{e}");
        let e = parse_err("log_format = \"xml\"\n");
        assert!(e.contains("`log_format`"), "{e}");
    }

    #[test]
    fn invalid_node_id_and_missing_keys_are_named() {
        let e = FileConfig::parse(
            "node_id = \"a b\"\ndata_dir = \"/d\"\ntls_dir = \"/t\"",
            "t",
        )
        .unwrap()
        .settings()
        .unwrap_err()
        .to_string();
        assert!(e.contains("`node_id`"), "{e}");
        let e = FileConfig::default().settings().unwrap_err().to_string();
        assert!(e.contains("`node_id`") && e.contains("--node-id"), "{e}");
    }

    #[test]
    fn an_anti_entropy_budget_is_read_and_zero_is_refused() {
        let base = "node_id = \"n1\"\ndata_dir = \"/d\"\ntls_dir = \"/t\"\n";
        let settings = FileConfig::parse(
            &format!(
                "{base}anti_entropy_keys_per_sec = 5000\nanti_entropy_bytes_per_sec = 1048576"
            ),
            "t",
        )
        .unwrap()
        .settings()
        .unwrap();
        assert_eq!(
            (
                settings.anti_entropy_keys_per_sec,
                settings.anti_entropy_bytes_per_sec
            ),
            (Some(5000), Some(1 << 20))
        );
        let e = FileConfig::parse(&format!("{base}anti_entropy_keys_per_sec = 0"), "t")
            .unwrap()
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("`anti_entropy_keys_per_sec`"), "{e}");
        let e = parse_err(&format!("{base}anti_entropy_bytes_per_sec = -1"));
        assert!(e.contains("`anti_entropy_bytes_per_sec`"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            "node_id = \"n1\"\ndata_dir = \"/d\"\ntls_dir = \"/t\"\nlisten = \"127.0.0.1:1\"",
            "t",
        )
        .unwrap();
        let settings = file
            .with(Overrides {
                listen: Some("127.0.0.1:2".parse().unwrap()),
                node_id: Some("n9".into()),
                ..Overrides::default()
            })
            .settings()
            .unwrap();
        assert_eq!(settings.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(settings.node_id.as_str(), "n9");
        assert_eq!(settings.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn written_file_reads_back() {
        let file = FileConfig {
            node_id: Some("n2".into()),
            listen: Some("127.0.0.1:7101".parse().unwrap()),
            data_dir: Some("/x/n2/data".into()),
            seeds: Some(vec!["127.0.0.1:7100".parse().unwrap()]),
            tls_dir: Some("/x/tls".into()),
            admin: Some("127.0.0.1:7201".parse().unwrap()),
            log_format: None,
            pid_file: Some("/x/n2/pid".into()),
            anti_entropy_keys_per_sec: Some(1000),
            anti_entropy_bytes_per_sec: None,
        };
        assert_eq!(FileConfig::parse(&file.to_toml(), "t").unwrap(), file);
    }
}
