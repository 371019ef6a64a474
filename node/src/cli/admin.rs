//! Operator commands, through the SDK: `shoal keyspace create`, `shoal cluster status`,
//! `shoal key-info`. They reach the cluster like the data commands (`--cluster DIR`,
//! `--seeds` with `--tls-dir`, or `SHOAL_CLUSTER`; see [`super::data`]) and print one JSON
//! object with `--json`.
//!
//! Ring versions are printed as 16 hex digits (in JSON too: a JSON number cannot hold every
//! `u64`), digests as 32.
//!
//! `shoal cluster status --json`:
//!
//! ```text
//! {"node_id": "n1", "ring_version": "…", "converged": true, "default_n": 3,
//!  "keyspaces": {"ks": 2}, "hint_backlog_keys": 0,
//!  "members": [{"node_id", "addr", "state": "alive"|"suspect"|"dead"|"left",
//!               "incarnation", "ring_version", "in_ring", "partitions", "reachable",
//!               "in_flight", "requests_per_sec", "requests", "request_errors", "rpc_errors",
//!               "hint_backlog": {"keys", "oldest_age_ms", "targets": [...]},
//!               "anti_entropy": {"exchanges", "keys_repaired", "bytes_sent",
//!                                "bytes_received", "partitions", "never_compared",
//!                                "oldest_compare_ms",
//!                                "compare_ages_ms": {"<partition>": ms or null}}}]}
//! ```
//!
//! The member list and SWIM states are the answering node's view; each live member is then
//! asked for its own figures (ring version, hint backlog, requests in flight). A member that
//! does not answer has `"reachable": false` and `null` figures. `converged` is true when every
//! ring member answered with the same ring version.
//!
//! `shoal key-info KEY --json`:
//!
//! ```text
//! {"keyspace", "key", "partition", "n", "preference_list": ["n2", "n1", ...],
//!  "replicas": [{"node_id", "addr", "reachable", "kind", "digest", "value", "error"}],
//!  "consistent": true}
//! ```
//!
//! `replicas` are the key's N primary replicas, each read from that node's own store (no
//! quorum); `digest` is `null` where the node has no record; `value` is what a client would
//! read from that replica alone (as `shoal get --json` prints values). `consistent` is true when every
//! replica answered with the same digest.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};
use shoal_client::Client;
use shoal_client::protocol::{self, MemberState, NodeStatus};

use super::CliError;
use super::data::{DataOptions, classify, print_json, view_json, with_client};

/// `shoal keyspace …`.
#[derive(Debug, Args)]
pub struct KeyspaceArgs {
    #[command(subcommand)]
    command: KeyspaceCommand,
    #[command(flatten)]
    options: DataOptions,
}

#[derive(Debug, Subcommand)]
enum KeyspaceCommand {
    /// Create keyspace NAME with replication factor N (or change its N).
    Create {
        /// The keyspace.
        name: String,
        /// Replicas of each key (1 to the ring's replicas, 3 by default).
        #[arg(long)]
        n: u32,
    },
}

/// `shoal cluster …`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    #[command(flatten)]
    options: DataOptions,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Every member with address, SWIM state, incarnation, ring version, partitions and hint
    /// backlog.
    Status,
}

/// `shoal key-info KEY`.
#[derive(Debug, Args)]
pub struct KeyInfoArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    options: DataOptions,
}

/// How long `cluster status` waits between its two looks at each node's request count.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

/// Runs `shoal keyspace …`.
pub fn run_keyspace(args: KeyspaceArgs) -> Result<(), CliError> {
    let KeyspaceArgs { command, options } = args;
    with_client(options, async |client, options| match command {
        KeyspaceCommand::Create { name, n } => {
            let version = client.create_keyspace(&name, n).await.map_err(classify)?;
            if options.json {
                print_json(json!({ "keyspace": name, "n": n, "ring_version": hex64(version) }));
            } else {
                println!(
                    "ok: keyspace {name} has N = {n} (ring version {}; it spreads to every node by gossip)",
                    hex64(version)
                );
            }
            Ok(())
        }
    })
}

/// Runs `shoal cluster …`.
pub fn run_cluster(args: ClusterArgs) -> Result<(), CliError> {
    let ClusterArgs { command, options } = args;
    with_client(options, async |client, options| match command {
        ClusterCommand::Status => {
            let report = cluster_status(client).await?;
            if options.json {
                print_json(report);
            } else {
                print_status_table(&report);
            }
            Ok(())
        }
    })
}

/// The answering node's view, with each live member's own figures.
async fn cluster_status(client: &Client) -> Result<Json, CliError> {
    let view = client.status().await.map_err(classify)?;
    let mut asks = Vec::new();
    for m in &view.members {
        let live = matches!(m.state, MemberState::Alive | MemberState::Suspect);
        let client = client.clone();
        let addr = m.addr;
        asks.push(async move {
            if live {
                client.node_status(addr).await.ok()
            } else {
                None
            }
        });
    }
    let own: Vec<Option<NodeStatus>> = join_all(asks).await?;
    // A second look a moment later gives each node's current request rate.
    let first = tokio::time::Instant::now();
    tokio::time::sleep(RATE_WINDOW).await;
    let again: Vec<_> = view
        .members
        .iter()
        .zip(&own)
        .map(|(m, status)| {
            let client = client.clone();
            let (addr, asked) = (m.addr, status.is_some());
            async move {
                if asked {
                    client.node_status(addr).await.ok()
                } else {
                    None
                }
            }
        })
        .collect();
    let again: Vec<Option<NodeStatus>> = join_all(again).await?;
    let elapsed = first.elapsed().as_secs_f64();
    let mut members = Vec::new();
    let mut versions = std::collections::BTreeSet::new();
    let mut all_answered = true;
    let mut total_hints = 0u64;
    for ((m, status), later) in view.members.iter().zip(own).zip(again) {
        let rate = match (&status, &later) {
            (Some(a), Some(b)) => Some(b.requests.saturating_sub(a.requests) as f64 / elapsed),
            _ => None,
        };
        if m.in_ring {
            match &status {
                Some(s) => {
                    versions.insert(s.ring_version);
                }
                None => all_answered = false,
            }
        }
        let backlog = status.as_ref().map(|s| {
            let keys: u64 = s.hints.iter().map(|h| h.keys).sum();
            total_hints += keys;
            json!({
                "keys": keys,
                "oldest_age_ms": s.hints.iter().filter_map(|h| h.oldest_age_ms).max(),
                "targets": s.hints.iter().map(|h| json!({
                    "target": h.target, "keys": h.keys, "oldest_age_ms": h.oldest_age_ms,
                })).collect::<Vec<_>>(),
            })
        });
        members.push(json!({
            "node_id": m.node_id,
            "addr": m.addr.to_string(),
            "state": m.state.name(),
            "incarnation": m.incarnation,
            "ring_version": status.as_ref().map_or(m.ring_version, |s| s.ring_version),
            "in_ring": m.in_ring,
            "partitions": m.partitions,
            "reachable": status.is_some(),
            "in_flight": status.as_ref().map(|s| s.in_flight),
            "requests_per_sec": rate.map(|r| (r * 10.0).round() / 10.0),
            "requests": status.as_ref().map(|s| s.requests),
            "request_errors": status.as_ref().map(|s| s.request_errors),
            "rpc_errors": status.as_ref().map(|s| s.rpc_errors),
            "anti_entropy": status.as_ref().map(|s| {
                let ae = &s.anti_entropy;
                json!({
                    "exchanges": ae.exchanges,
                    "keys_repaired": ae.keys_repaired,
                    "bytes_sent": ae.bytes_sent,
                    "bytes_received": ae.bytes_received,
                    "partitions": ae.partitions,
                    "never_compared": ae.never_compared,
                    "oldest_compare_ms": ae.oldest_compare_ms,
                    "compare_ages_ms": ae
                        .compare_ages_ms
                        .iter()
                        .map(|(p, age)| (p.to_string(), json!(age)))
                        .collect::<serde_json::Map<String, Json>>(),
                })
            }),
            "hint_backlog": backlog,
        }));
    }
    // Versions as hex strings.
    for m in &mut members {
        let v = m["ring_version"].as_u64().unwrap_or(0);
        m["ring_version"] = Json::String(hex64(v));
    }
    let keyspaces: BTreeMap<&str, u32> = view
        .keyspaces
        .iter()
        .map(|(name, n)| (name.as_str(), *n))
        .collect();
    Ok(json!({
        "node_id": view.node_id,
        "ring_version": hex64(view.ring_version),
        "converged": all_answered && versions.len() == 1,
        "default_n": view.default_n,
        "keyspaces": keyspaces,
        "hint_backlog_keys": total_hints,
        "members": members,
    }))
}

/// Runs `futures` concurrently (each has its own deadline, so the slowest bounds them all)
/// and returns their outputs in order.
async fn join_all<T: Send + 'static>(
    futures: Vec<impl Future<Output = T> + Send + 'static>,
) -> Result<Vec<T>, CliError> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(
            handle
                .await
                .map_err(|e| CliError::Failed(format!("request task: {e}")))?,
        );
    }
    Ok(out)
}

fn print_status_table(report: &Json) {
    let converged = if report["converged"].as_bool() == Some(true) {
        "converged"
    } else {
        "not converged"
    };
    println!(
        "ring {} ({converged}) as seen by {}; hint backlog {} keys",
        report["ring_version"].as_str().unwrap_or("?"),
        report["node_id"].as_str().unwrap_or("?"),
        report["hint_backlog_keys"]
    );
    let mut keyspaces: Vec<String> = report["keyspaces"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k} N={v}")).collect())
        .unwrap_or_default();
    keyspaces.push(format!("others N={}", report["default_n"]));
    println!("keyspaces: {}", keyspaces.join(", "));
    println!(
        "{:<12} {:<21} {:<7} {:>4} {:<8} {:>5} {:>8} {:>7} {:>10} {:>8} {:>7}",
        "NODE",
        "ADDR",
        "STATE",
        "INC",
        "RING",
        "PARTS",
        "REQ/S",
        "ERRORS",
        "HINTS",
        "AE-FIXED",
        "AE-AGE"
    );
    for m in report["members"].as_array().into_iter().flatten() {
        let hints = match &m["hint_backlog"] {
            Json::Null => "-".to_owned(),
            b => match b["oldest_age_ms"].as_u64() {
                Some(age) => format!("{} ({}s)", b["keys"], age / 1000),
                None => b["keys"].to_string(),
            },
        };
        let ae = &m["anti_entropy"];
        let (repaired, age) = match ae {
            Json::Null => ("-".to_owned(), "-".to_owned()),
            ae => (
                ae["keys_repaired"].to_string(),
                match (
                    ae["oldest_compare_ms"].as_u64(),
                    ae["never_compared"].as_u64(),
                ) {
                    (_, Some(n)) if n > 0 => "never".to_owned(),
                    (Some(ms), _) => format!("{}s", ms / 1000),
                    _ => "-".to_owned(),
                },
            ),
        };
        let errors = match (m["request_errors"].as_u64(), m["rpc_errors"].as_u64()) {
            (Some(r), Some(p)) => (r + p).to_string(),
            _ => "-".to_owned(),
        };
        let rate = m["requests_per_sec"]
            .as_f64()
            .map_or("-".to_owned(), |r| format!("{r:.1}"));
        println!(
            "{:<12} {:<21} {:<7} {:>4} {:<8} {:>5} {:>8} {:>7} {:>10} {:>8} {:>7}",
            m["node_id"].as_str().unwrap_or("?"),
            m["addr"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["incarnation"].to_string(),
            m["ring_version"]
                .as_str()
                .map_or("?", |v| &v[..v.len().min(8)]),
            if m["in_ring"].as_bool() == Some(true) {
                m["partitions"].to_string()
            } else {
                "-".to_owned()
            },
            rate,
            errors,
            hints,
            repaired,
            age,
        );
    }
}

/// Runs `shoal key-info KEY`.
pub fn run_key_info(args: KeyInfoArgs) -> Result<(), CliError> {
    let KeyInfoArgs { key, options } = args;
    with_client(options, async |client, options| {
        let report = key_info(client, &options.keyspace, &key).await?;
        if options.json {
            print_json(report);
        } else {
            println!(
                "{}/{key}: partition {}, N = {}, preference list {}",
                options.keyspace,
                report["partition"],
                report["n"],
                report["preference_list"]
                    .as_array()
                    .map(|l| l
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            );
            for r in report["replicas"].as_array().into_iter().flatten() {
                let state = match (&r["error"], &r["digest"]) {
                    (Json::String(e), _) => format!("unreachable: {e}"),
                    (_, Json::String(d)) => {
                        format!("{} digest {d}", r["kind"].as_str().unwrap_or("?"))
                    }
                    _ => "no record".to_owned(),
                };
                println!(
                    "  {:<16} {:<22} {state}",
                    r["node_id"].as_str().unwrap_or("?"),
                    r["addr"].as_str().unwrap_or("?")
                );
            }
            println!(
                "{}",
                if report["consistent"].as_bool() == Some(true) {
                    "replicas agree"
                } else {
                    "replicas differ (or some did not answer)"
                }
            );
        }
        Ok(())
    })
}

async fn key_info(client: &Client, keyspace: &str, key: &str) -> Result<Json, CliError> {
    let ring = client.refresh_ring().await.map_err(classify)?;
    let storage_key = protocol::storage_key(keyspace, key.as_bytes()).ok_or_else(|| {
        CliError::Input(format!(
            "keyspace name must be 1 to {} bytes",
            protocol::MAX_KEYSPACE_LEN
        ))
    })?;
    let partitioner = ring.validate().map_err(CliError::Failed)?;
    let partition = partitioner.partition_of(&storage_key);
    let list: Vec<_> = ring.preference_list(partition).cloned().collect();
    let n = ring.n_for(keyspace) as usize;
    let primaries = ring
        .primaries
        .get(partition.0 as usize)
        .map_or(0, |p| *p as usize)
        .min(n);
    let mut replicas = Vec::new();
    let mut digests = std::collections::BTreeSet::new();
    let mut all_answered = true;
    let asks: Vec<_> = list
        .iter()
        .take(primaries)
        .map(|node| {
            let client = client.clone();
            let addr: SocketAddr = node.addr;
            let (keyspace, key) = (keyspace.to_owned(), key.to_owned());
            async move { client.inspect(addr, &keyspace, key.as_bytes()).await }
        })
        .collect();
    for (node, answer) in list.iter().zip(join_all(asks).await?) {
        let mut entry = json!({
            "node_id": node.id,
            "addr": node.addr.to_string(),
            "reachable": answer.is_ok(),
            "kind": null,
            "digest": null,
            "value": null,
            "error": null,
        });
        match answer {
            Ok(state) => {
                digests.insert(state.digest);
                entry["kind"] = state.kind.map_or(Json::Null, |k| json!(k.name()));
                entry["digest"] = state
                    .digest
                    .map_or(Json::Null, |d| Json::String(format!("{d:032x}")));
                entry["value"] = state.view.as_ref().map_or(Json::Null, view_json);
            }
            Err(e) => {
                all_answered = false;
                entry["error"] = json!(e.to_string());
            }
        }
        replicas.push(entry);
    }
    Ok(json!({
        "keyspace": keyspace,
        "key": key,
        "partition": partition.0,
        "n": n,
        "preference_list": list.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        "replicas": replicas,
        "consistent": all_answered && digests.len() == 1,
    }))
}
