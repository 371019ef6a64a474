//! The convergence benchmark (`scripts/bench-convergence`): how long a 3-node cluster takes to
//! make every replica equal again after a fault, and how many bytes it moves doing so, next to
//! the minimum and the floor.
//!
//! Everything runs inside a network namespace of its own: the nodes (a dev cluster), the SDK
//! client (on a thread that entered the namespace), and an iptables rule in the OUTPUT chain
//! that counts every UDP byte one node sends another (QUIC, TLS and SWIM included). The idle
//! rate of that counter is measured first and subtracted.
//!
//! Runs:
//! - **partition** (for each `d`): n3 is cut off, `d` new keys are written (W=2), the cut is
//!   healed; until every node's data digest is equal and no hints are held.
//! - **kill**: n3 is killed for `kill_secs` while keys are written, then restarted; until
//!   hint backlogs are 0 and digests equal.
//! - **wipe**: n3 is killed, its data directory deleted, restarted; until digests are equal.
//!   `wipes` times in a row, and the median of their times next to the floor is reported too.
//!
//! The partition and kill rows also say how many writes were attempted and acknowledged while
//! n3 was cut off or dead, and how long they took ([`Writes`]; null for the wipe).
//!
//! Bytes are counted twice: on the wire (the iptables counter: UDP payloads, so QUIC and TLS
//! framing, acknowledgements and retransmissions included, less the idle rate), and as the
//! nodes' own message bytes by kind (`shoal_peer_bytes_received_total`, scraped from every node
//! before and after: SWIM, hints, anti-entropy steps, replication), which says where the bytes
//! went. Message bytes are counted by their receiver when they arrive whole, so a `Replicate`
//! sent into the cut and retransmitted by QUIC after the heal counts in the window it arrives
//! in (counted by the sender, it fell before the heal and the partition rows missed it).
//! Issue 6's byte target (at most 2× the minimum) is judged in message bytes, with the wire
//! bytes beside them: docs/benchmarks.md, "Current results and the targets", says why.
//!
//! For each: time to converge next to the floor (detection, measured as the time until every
//! node sees n3 alive, plus one anti-entropy interval, plus the minimum bytes at the measured
//! loopback bandwidth), bytes moved next to the minimum (the differing keys and values plus a
//! 16-byte digest each) and next to a full copy of n3's data, and the keys still to repair over
//! time (hints held for n3; for the wipe, keys less those anti-entropy restored on n3),
//! plotted as SVG. Finally, foreground read throughput with anti-entropy running and paused in
//! alternating windows while it repairs n3, wiped once more (the loss is compared quad by quad;
//! see [`Bench::foreground`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use shoal_client::identity::ClientName;
use shoal_client::protocol::NodeStatus;
use shoal_client::tls::TlsMaterial;
use shoal_client::{Client, ClientConfig};

use crate::chaos::Netns;
use crate::process::{alive, cpu_seconds, send_signal};
use crate::{DevCluster, http_get, metric_sample, wait_until};

/// Settings of a benchmark run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Keys loaded before the runs.
    pub keys: usize,
    /// Differing-key counts of the partition runs.
    pub d: Vec<usize>,
    /// Value size in bytes.
    pub value_size: usize,
    /// How long n3 stays dead in the kill run.
    pub kill_secs: u64,
    /// Wipe runs, one after another on the same cluster: one run's time spreads by about
    /// ±20 % on a shared 2-core machine, so the results give their median too.
    pub wipes: usize,
    /// Where results.json and the plots go.
    pub out: std::path::PathBuf,
}

/// The anti-entropy interval a fault's repair may wait for (the node's `ae_min_interval`).
const AE_INTERVAL: Duration = Duration::from_secs(2);
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);
/// Writes the benchmark keeps in flight (enough to share the nodes' WAL syncs).
const WRITERS: usize = 128;
/// One window of the foreground read measurement.
const FOREGROUND_WINDOW: Duration = Duration::from_secs(2);
/// Running-paused-paused-running quads of the foreground read measurement, at most. A quad's
/// loss spreads over about ±9 % (one standard deviation) on the 2-core machine, so 32 of them
/// put the mean within about ±3.5 % (95 %).
const FOREGROUND_QUADS: usize = 32;
/// How long the idle peer traffic (SWIM, anti-entropy rounds that find nothing) is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

fn progress(message: &str) {
    eprintln!("bench-convergence: {message}");
}

/// IPv4 and UDP header bytes of each packet, which iptables counts and the wire figures leave
/// out.
const IP_UDP_HEADERS: u64 = 28;

/// UDP payload bytes the nodes sent each other so far (the OUTPUT counting rule counts whole
/// IP packets; their headers are taken off).
fn peer_bytes(ns: &Netns) -> u64 {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "iptables",
            "-w",
            "-L",
            "OUTPUT",
            "-v",
            "-x",
            "-n",
        ])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("multiport"))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let packets = fields.next()?.parse::<u64>().ok()?;
            let bytes = fields.next()?.parse::<u64>().ok()?;
            Some(bytes.saturating_sub(packets * IP_UDP_HEADERS))
        })
        .sum()
}

/// Loopback TCP bandwidth in bytes/s (256 MiB through one connection).
fn loopback_bandwidth() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let total = 256usize << 20;
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    });
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).expect("connect");
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..(total >> 20) {
        conn.write_all(&chunk).expect("write");
    }
    drop(conn);
    reader.join().expect("reader");
    total as f64 / started.elapsed().as_secs_f64()
}

fn http_post(addr: SocketAddr, path: &str) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: shoal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.contains(" 200 "), "{path}: {response}");
}

/// One fault's measurement.
struct Measured {
    seconds: f64,
    detection: f64,
    bytes: f64,
    raw_bytes: f64,
    /// Message bytes the nodes received from each other, by kind
    /// (`shoal_peer_bytes_received_total`).
    by_kind: BTreeMap<String, f64>,
    /// UDP datagrams the namespace's kernel dropped for a full socket buffer.
    udp_drops: u64,
    /// (seconds since the fault ended, keys still to repair), one sample per poll.
    timeline: Vec<(f64, f64)>,
}

impl Measured {
    /// When the repair began to show: the first sample with fewer keys still to repair than
    /// the first one (null if none did before convergence). With `seconds`, it separates a
    /// late start (waiting for a round, for detection) from a slow transfer.
    fn first_progress(&self) -> Option<f64> {
        let (_, first) = *self.timeline.first()?;
        self.timeline
            .iter()
            .find(|(_, pending)| *pending < first)
            .map(|(t, _)| *t)
    }
}

/// The writes made while n3 was cut off or dead: how many were attempted, how many were
/// acknowledged, and how long they took. A request whose coordinator is n3 waits out the
/// client's deadline (5 s) and fails, and a write phase that long lets SWIM suspect n3, so
/// its writes go by hint rather than by the coordinators' own `Replicate`s.
struct Writes {
    attempted: usize,
    ok: usize,
    seconds: f64,
}

/// The counters a run is measured against.
struct Snapshot {
    wire_bytes: u64,
    by_kind: BTreeMap<String, f64>,
    udp_drops: u64,
}

/// UDP datagrams dropped so far in the namespace because a socket buffer was full (receive
/// and send; `/proc/net/snmp`), so retransmissions on the wire can be told apart from
/// messages sent twice.
fn udp_drops(ns: &Netns) -> u64 {
    let output = Command::new("ip")
        .args(["netns", "exec", ns.name(), "cat", "/proc/net/snmp"])
        .output()
        .expect("ip netns exec cat");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "RcvbufErrors" | "SndbufErrors"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Message bytes every node received whole from its peers so far, by kind, summed over the
/// nodes (a node that is down counts nothing: its counters start again at its restart).
fn traffic_by_kind(cluster: &DevCluster) -> BTreeMap<String, f64> {
    const SERIES: &str = "shoal_peer_bytes_received_total{kind=\"";
    let mut total = BTreeMap::new();
    for i in 0..cluster.nodes().len() {
        let Ok((200, page)) = http_get(cluster.admin(i), "/metrics") else {
            continue;
        };
        for line in page.lines().filter(|l| l.starts_with(SERIES)) {
            let rest = &line[SERIES.len()..];
            let (Some((kind, _)), Some(value)) = (rest.split_once('"'), line.rsplit(' ').next())
            else {
                continue;
            };
            *total.entry(kind.to_owned()).or_insert(0.0) += value.parse().unwrap_or(0.0);
        }
    }
    total
}

struct Bench<'a> {
    ns: &'a Netns,
    cluster: &'a DevCluster,
    client: Client,
    settings: &'a Settings,
    idle_rate: f64,
    bandwidth: f64,
    written: usize,
}

impl Bench<'_> {
    fn key(&self, tag: &str, i: usize) -> String {
        format!("conv-{tag}-{i:08}")
    }

    async fn put_many(&mut self, tag: &str, count: usize, w: u32) -> usize {
        let value = vec![b'v'; self.settings.value_size];
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut ok = 0;
        while next < count || !tasks.is_empty() {
            while next < count && tasks.len() < WRITERS {
                let (client, key, value) =
                    (self.client.clone(), self.key(tag, next), value.clone());
                tasks.spawn(async move { client.register(key).w(w).put(value).await.is_ok() });
                next += 1;
            }
            if let Some(done) = tasks.join_next().await {
                ok += usize::from(done.unwrap_or(false));
            }
        }
        self.written += ok;
        ok
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            wire_bytes: peer_bytes(self.ns),
            by_kind: traffic_by_kind(self.cluster),
            udp_drops: udp_drops(self.ns),
        }
    }

    async fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let mut out = Vec::new();
        for addr in self.cluster.seeds() {
            out.push(self.client.node_status(addr).await.ok());
        }
        out
    }

    /// Waits until every node answers with the same data digest, no hints, and sees every
    /// member alive; records the keys still to repair over time (`pending`).
    async fn converge(
        &self,
        started: Instant,
        before: Snapshot,
        pending: impl Fn(&[Option<NodeStatus>]) -> f64,
    ) -> Measured {
        let mut timeline = Vec::new();
        let mut detection = None;
        loop {
            let statuses = self.statuses().await;
            let t = started.elapsed().as_secs_f64();
            timeline.push((t, pending(&statuses)));
            let all: Vec<&NodeStatus> = statuses.iter().flatten().collect();
            let alive = all.len() == 3
                && all.iter().all(|s| {
                    s.members
                        .iter()
                        .all(|m| m.state == shoal_client::protocol::MemberState::Alive)
                });
            if alive && detection.is_none() {
                detection = Some(t);
            }
            let equal = alive
                && all.windows(2).all(|w| w[0].data_digest == w[1].data_digest)
                && all.iter().all(|s| s.hints.iter().all(|h| h.keys == 0));
            if equal {
                let seconds = started.elapsed().as_secs_f64();
                let raw = peer_bytes(self.ns).saturating_sub(before.wire_bytes) as f64;
                let mut by_kind = traffic_by_kind(self.cluster);
                for (kind, bytes) in by_kind.iter_mut() {
                    *bytes = (*bytes - before.by_kind.get(kind).copied().unwrap_or(0.0)).max(0.0);
                }
                return Measured {
                    by_kind,
                    seconds,
                    detection: detection.unwrap_or(seconds),
                    bytes: (raw - self.idle_rate * seconds).max(0.0),
                    raw_bytes: raw,
                    udp_drops: udp_drops(self.ns).saturating_sub(before.udp_drops),
                    timeline,
                };
            }
            assert!(
                started.elapsed() < CONVERGE_LIMIT,
                "not converged within {CONVERGE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `writes`: those made while n3 was away (none for the wipe, which differs in every key).
    /// `repeat`: which of several runs of the same kind this is (the wipes), if any.
    fn report(
        &self,
        name: &str,
        d: usize,
        m: &Measured,
        full_copy: f64,
        writes: Option<&Writes>,
        repeat: Option<usize>,
    ) -> Json {
        let per_key = (self.key("x", 0).len() + self.settings.value_size) as f64;
        // The keys that differ: those written while n3 was away (a write that failed reached no
        // node: its coordinator was n3), or for the wipe all of them.
        let differing = writes.map_or(d, |w| w.ok);
        let minimum = differing as f64 * (per_key + 16.0);
        let floor = m.detection + AE_INTERVAL.as_secs_f64() + minimum / self.bandwidth;
        let result = json!({
            "run": name,
            "d": d,
            "seconds": round(m.seconds),
            "floor_seconds": round(floor),
            "time_vs_floor": round(m.seconds / floor),
            "detection_seconds": round(m.detection),
            "first_progress_seconds": m.first_progress().map(round),
            "bytes": m.bytes.round(),
            "raw_bytes": m.raw_bytes.round(),
            "minimum_bytes": minimum.round(),
            "bytes_vs_minimum": round(m.bytes / minimum.max(1.0)),
            "full_copy_bytes": full_copy.round(),
            "bytes_vs_full_copy": round(m.bytes / full_copy.max(1.0)),
            "message_bytes": m.by_kind.values().sum::<f64>().round(),
            "message_bytes_vs_minimum": round(m.by_kind.values().sum::<f64>() / minimum.max(1.0)),
            "message_bytes_by_kind": m.by_kind,
            "udp_buffer_drops": m.udp_drops,
            "writes_attempted": writes.map(|w| w.attempted),
            "writes_ok": writes.map(|w| w.ok),
            "write_seconds": writes.map(|w| round(w.seconds)),
            "repeat": repeat,
        });
        progress(&result.to_string());
        let svg = plot(&format!("{name} (d = {d})"), &m.timeline);
        let file = match repeat {
            Some(k) => format!("{name}-{d}-{k}.svg"),
            None => format!("{name}-{d}.svg"),
        };
        let path = self.settings.out.join(file);
        if let Err(e) = std::fs::write(&path, svg) {
            progress(&format!("plot not written to {}: {e}", path.display()));
        }
        result
    }

    /// Foreground read throughput with anti-entropy running and paused in turn, while it
    /// repairs a wiped n3, so the running windows measure reads next to real repair work.
    /// Windows of [`FOREGROUND_WINDOW`] go in running-paused-paused-running quads (at most
    /// [`FOREGROUND_QUADS`], until n3 is repaired), which cancels a steady drift of the
    /// machine or of the cluster's state; the loss is the mean of the quads' losses, with a
    /// 95 % confidence interval ([`PairedLoss`]). The keys n3
    /// restored in each kind of window (its `shoal_ae_keys_repaired_total`) show that the
    /// running windows did repair work and the paused ones none.
    async fn foreground(&self) -> Json {
        let keys = self.settings.keys.min(1000);
        let admin = |path: &str| {
            for i in 0..3 {
                http_post(self.cluster.admin(i), path);
            }
        };
        let n3_admin = self.cluster.admin(2);
        let restored = || {
            http_get(n3_admin, "/metrics")
                .ok()
                .and_then(|(_, body)| metric_sample(&body, "shoal_ae_keys_repaired_total"))
                .unwrap_or(0.0)
        };
        // n3's admin endpoint takes the pause too: wait until it listens.
        wait_until("n3's admin endpoint", Duration::from_secs(60), || {
            http_get(n3_admin, "/health").is_ok()
        });
        // One window with anti-entropy paused, not counted: the client finds its way back to
        // the restarted n3 (a stale connection times out) before anything is measured.
        admin("/anti-entropy/pause");
        read_rate(&self.client, keys, FOREGROUND_WINDOW).await;
        let (mut running, mut paused) = (Vec::new(), Vec::new());
        let (mut restored_running, mut restored_paused) = (0.0, 0.0);
        // CPU seconds each node used in each kind of window, to tell a repair that takes CPU
        // from reads from one that delays them otherwise.
        let pids: Vec<i32> = ["n1", "n2", "n3"].iter().map(|n| self.pid(n)).collect();
        let cpu = || pids.iter().map(|&p| cpu_seconds(p)).collect::<Vec<f64>>();
        let (mut cpu_running, mut cpu_paused) = (vec![0.0; 3], vec![0.0; 3]);
        // Peer message bytes by kind received in each kind of window.
        let (mut msg_running, mut msg_paused) = (BTreeMap::new(), BTreeMap::new());
        for _ in 0..FOREGROUND_QUADS {
            for is_running in [true, false, false, true] {
                admin(if is_running {
                    "/anti-entropy/resume"
                } else {
                    "/anti-entropy/pause"
                });
                let (before, cpu_before) = (restored(), cpu());
                let msg_before = traffic_by_kind(self.cluster);
                let rate = read_rate(&self.client, keys, FOREGROUND_WINDOW).await;
                let moved = (restored() - before).max(0.0);
                let (restored_kind, cpu_kind, msg_kind, rates) = if is_running {
                    (
                        &mut restored_running,
                        &mut cpu_running,
                        &mut msg_running,
                        &mut running,
                    )
                } else {
                    (
                        &mut restored_paused,
                        &mut cpu_paused,
                        &mut msg_paused,
                        &mut paused,
                    )
                };
                for (kind, bytes) in traffic_by_kind(self.cluster) {
                    let delta = bytes - msg_before.get(&kind).copied().unwrap_or(0.0);
                    *msg_kind.entry(kind).or_insert(0.0) += delta.max(0.0);
                }
                rates.push(rate);
                *restored_kind += moved;
                for (total, (after, before)) in
                    cpu_kind.iter_mut().zip(cpu().iter().zip(&cpu_before))
                {
                    *total += after - before;
                }
            }
            let statuses = self.statuses().await;
            let digests: Vec<_> = statuses.iter().flatten().map(|s| s.data_digest).collect();
            if digests.len() == 3 && digests.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
        }
        admin("/anti-entropy/resume");
        let (running_median, paused_median) = (median(&running), median(&paused));
        let paired = PairedLoss::of(&running, &paused);
        let result = json!({
            "window_seconds": FOREGROUND_WINDOW.as_secs_f64(),
            "anti_entropy_running": running.iter().map(|r| round(*r)).collect::<Vec<_>>(),
            "anti_entropy_paused": paused.iter().map(|r| round(*r)).collect::<Vec<_>>(),
            "running_median": round(running_median),
            "paused_median": round(paused_median),
            "loss": fraction(paired.mean),
            "loss_ci95": [fraction(paired.mean - paired.half_width), fraction(paired.mean + paired.half_width)],
            "quad_losses": paired.quads.iter().map(|l| fraction(*l)).collect::<Vec<_>>(),
            "loss_of_medians": fraction(1.0 - running_median / paused_median.max(1e-9)),
            "keys_restored_running": restored_running,
            "keys_restored_paused": restored_paused,
            "node_cpu_seconds_running": cpu_running.iter().map(|c| round(*c)).collect::<Vec<_>>(),
            "node_cpu_seconds_paused": cpu_paused.iter().map(|c| round(*c)).collect::<Vec<_>>(),
            "message_bytes_running": msg_running,
            "message_bytes_paused": msg_paused,
        });
        progress(&result.to_string());
        result
    }

    fn pid(&self, node: &str) -> i32 {
        self.cluster.pid(node).expect("node runs")
    }

    fn kill_n3(&self) {
        let pid = self.pid("n3");
        send_signal(pid, libc::SIGKILL);
        wait_until("n3 to die", Duration::from_secs(20), || !alive(pid));
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A fraction to four decimals (a loss of 0.0123 is 1.23 %).
fn fraction(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn hints_for_n3(statuses: &[Option<NodeStatus>]) -> f64 {
    statuses
        .iter()
        .flatten()
        .flat_map(|s| s.hints.iter())
        .filter(|h| h.target == "n3")
        .map(|h| h.keys as f64)
        .sum()
}

/// An SVG line plot of (seconds, keys) points.
pub fn plot(title: &str, points: &[(f64, f64)]) -> String {
    let (w, h, pad) = (640.0, 320.0, 48.0);
    let max_t = points.iter().map(|p| p.0).fold(0.1, f64::max);
    let max_k = points.iter().map(|p| p.1).fold(1.0, f64::max);
    let coords: Vec<String> = points
        .iter()
        .map(|(t, k)| {
            format!(
                "{:.1},{:.1}",
                pad + t / max_t * (w - 2.0 * pad),
                h - pad - k / max_k * (h - 2.0 * pad)
            )
        })
        .collect();
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20">{title}: keys still to repair over time</text>
<line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{y0}" stroke="black"/>
<text x="{x1}" y="{yl}" text-anchor="end">{max_t:.1} s</text>
<text x="4" y="{ytop}">{max_k:.0}</text>
<text x="4" y="{y0}">0</text>
<polyline fill="none" stroke="steelblue" stroke-width="2" points="{pts}"/>
</svg>
"#,
        y0 = h - pad,
        x1 = w - pad,
        yl = h - pad + 16.0,
        ytop = pad + 4.0,
        pts = coords.join(" ")
    )
}

/// Runs the benchmark; returns the results (also written to `out/results.json`).
pub fn run(settings: Settings) -> Result<Json, String> {
    std::fs::create_dir_all(&settings.out)
        .map_err(|e| format!("{}: {e}", settings.out.display()))?;
    let ns = Netns::create()?;
    let cluster = DevCluster::start_in(3, Some(ns.name()));
    cluster.wait_formed(1, Duration::from_secs(120));
    let ports: Vec<String> = cluster.ports().iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    ns.exec(&[
        "iptables",
        "-w",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "-m",
        "multiport",
        "--sports",
        &ports,
        "-m",
        "multiport",
        "--dports",
        &ports,
    ])?;
    let (ns, cluster) = (std::sync::Arc::new(ns), std::sync::Arc::new(cluster));
    let (ns2, cluster2) = (ns.clone(), cluster.clone());
    let thread = ns.spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(body(&ns2, &cluster2, &settings))
    });
    let results = thread.join().map_err(|_| "benchmark thread panicked")??;
    Ok(results)
}

async fn body(ns: &Netns, cluster: &DevCluster, settings: &Settings) -> Result<Json, String> {
    let tls =
        TlsMaterial::load_client(&cluster.dir().join("tls"), &ClientName::new("dev").unwrap())
            .map_err(|e| e.to_string())?;
    let client = Client::builder()
        .seeds(cluster.seeds())
        .tls(tls)
        .config(ClientConfig {
            timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        })
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let bandwidth = loopback_bandwidth();
    let mut bench = Bench {
        ns,
        cluster,
        client,
        settings,
        idle_rate: 0.0,
        bandwidth,
        written: 0,
    };
    progress(&format!("loading {} keys", settings.keys));
    let loaded = bench.put_many("base", settings.keys, 3).await;
    progress(&format!(
        "loaded {loaded}; measuring the idle peer traffic for {} s",
        IDLE_WINDOW.as_secs()
    ));
    let b0 = peer_bytes(ns);
    tokio::time::sleep(IDLE_WINDOW).await;
    bench.idle_rate = peer_bytes(ns).saturating_sub(b0) as f64 / IDLE_WINDOW.as_secs_f64();
    let per_key = (bench.key("x", 0).len() + settings.value_size) as f64;
    let mut runs = Vec::new();

    let n3_port = cluster.ports()[2].to_string();
    for &d in &settings.d {
        progress(&format!(
            "partition run: n3 cut off while {d} keys are written"
        ));
        ns.exec(&[
            "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", &n3_port, "-j", "DROP",
        ])?;
        ns.exec(&[
            "iptables", "-w", "-A", "INPUT", "-p", "udp", "--sport", &n3_port, "-j", "DROP",
        ])?;
        let t = Instant::now();
        let ok = bench.put_many(&format!("a{d}"), d, 2).await;
        let writes = Writes {
            attempted: d,
            ok,
            seconds: t.elapsed().as_secs_f64(),
        };
        let full = bench.written as f64 * per_key;
        let before = bench.snapshot();
        let started = Instant::now();
        ns.heal();
        let m = bench.converge(started, before, hints_for_n3).await;
        runs.push(bench.report("partition", d, &m, full, Some(&writes), None));
    }

    progress(&format!(
        "kill run: n3 dead for {} s under writes",
        settings.kill_secs
    ));
    bench.kill_n3();
    let writes = {
        let t = Instant::now();
        let until = t + Duration::from_secs(settings.kill_secs);
        let (mut attempted, mut ok) = (0, 0);
        while Instant::now() < until {
            ok += bench.put_many(&format!("b{attempted}"), 50, 2).await;
            attempted += 50;
        }
        Writes {
            attempted,
            ok,
            seconds: t.elapsed().as_secs_f64(),
        }
    };
    let written_during = writes.ok;
    let full = bench.written as f64 * per_key;
    let before = bench.snapshot();
    let started = Instant::now();
    let mut n3 = Some(cluster.start_node("n3"));
    let m = bench.converge(started, before, hints_for_n3).await;
    runs.push(bench.report("kill", written_during, &m, full, Some(&writes), None));

    let mut wipe_ratios = Vec::new();
    for repeat in 1..=settings.wipes {
        progress(&format!(
            "wipe run {repeat} of {}: n3's data directory deleted",
            settings.wipes
        ));
        bench.kill_n3();
        drop(n3.take());
        let _ = std::fs::remove_dir_all(cluster.dir().join("n3").join("data"));
        let total = bench.written;
        let full = total as f64 * per_key;
        let before = bench.snapshot();
        let started = Instant::now();
        n3 = Some(cluster.start_node("n3"));
        let m = bench
            .converge(started, before, |statuses| {
                // What n3 lacks: every key, less those anti-entropy restored on it since
                // restart.
                let restored = statuses
                    .get(2)
                    .and_then(|s| s.as_ref())
                    .map_or(0, |s| s.anti_entropy.keys_repaired);
                total.saturating_sub(restored as usize) as f64
            })
            .await;
        let row = bench.report("wipe", total, &m, full, None, Some(repeat));
        wipe_ratios.push(row["time_vs_floor"].as_f64().unwrap_or(f64::NAN));
        runs.push(row);
    }
    let wipe_median = median(&wipe_ratios);
    progress(&format!(
        "wipes: median time / floor {wipe_median:.2} over {}",
        settings.wipes
    ));

    progress("foreground reads while anti-entropy repairs a wiped n3, running and paused in turn");
    bench.kill_n3();
    drop(n3);
    let _ = std::fs::remove_dir_all(cluster.dir().join("n3").join("data"));
    let _n3_foreground = cluster.start_node("n3");
    let foreground = bench.foreground().await;
    let results = json!({
        "keys": settings.keys,
        "value_size": settings.value_size,
        "loopback_bytes_per_sec": bandwidth.round(),
        "idle_peer_bytes_per_sec": bench.idle_rate.round(),
        "runs": runs,
        "wipe_median_time_vs_floor": round(wipe_median),
        "foreground_reads_per_sec": foreground,
    });
    let path = settings.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(results)
}

/// Reads per second over `window`, 32 at a time, over the first `keys` loaded keys.
async fn read_rate(client: &Client, keys: usize, window: Duration) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut done = 0u64;
    let mut i = 0usize;
    while started.elapsed() < window {
        while tasks.len() < 32 {
            let client = client.clone();
            let key = format!("conv-base-{:08}", i % keys.max(1));
            i += 1;
            tasks.spawn(async move { client.register(key).r(2).get().await.is_ok() });
        }
        if let Some(ok) = tasks.join_next().await {
            done += u64::from(ok.unwrap_or(false));
        }
    }
    while let Some(ok) = tasks.join_next().await {
        done += u64::from(ok.unwrap_or(false));
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// The foreground loss, measured quad by quad: each running-paused-paused-running quad gives
/// `1 - (its two running windows' reads) / (its two paused windows' reads)`, so a drift of the
/// machine or of the cluster's state within a quad cancels, and the quads' losses are
/// independent samples of the loss. Their mean is the loss, with a 95 % confidence interval
/// from Student's t.
struct PairedLoss {
    quads: Vec<f64>,
    mean: f64,
    /// Half the width of the 95 % confidence interval (infinite below two quads; JSON null).
    half_width: f64,
}

impl PairedLoss {
    /// `running` and `paused` hold the windows in the order measured, two of each per quad.
    fn of(running: &[f64], paused: &[f64]) -> PairedLoss {
        let quads: Vec<f64> = running
            .chunks_exact(2)
            .zip(paused.chunks_exact(2))
            .map(|(r, p)| 1.0 - (r[0] + r[1]) / (p[0] + p[1]).max(1e-9))
            .collect();
        let n = quads.len() as f64;
        // No quad, no figure: NaN, which the JSON report writes as null.
        let mean = if quads.is_empty() {
            f64::NAN
        } else {
            quads.iter().sum::<f64>() / n
        };
        let half_width = if quads.len() < 2 {
            f64::INFINITY
        } else {
            let variance = quads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
            t95(quads.len() - 1) * (variance / n).sqrt()
        };
        PairedLoss {
            quads,
            mean,
            half_width,
        }
    }
}

/// Student's t quantile for a two-sided 95 % interval with `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        31..=60 => 2.0,
        _ => 1.96,
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(timeline: Vec<(f64, f64)>) -> Measured {
        Measured {
            seconds: timeline.last().map_or(0.0, |(t, _)| *t),
            detection: 0.0,
            bytes: 0.0,
            raw_bytes: 0.0,
            by_kind: BTreeMap::new(),
            udp_drops: 0,
            timeline,
        }
    }

    #[test]
    fn first_progress_is_the_first_sample_below_the_first() {
        let m = measured(vec![(0.1, 100.0), (0.2, 100.0), (0.3, 60.0), (0.4, 0.0)]);
        assert_eq!(m.first_progress(), Some(0.3));
        // Converged at the first poll, or never moved: no progress seen.
        assert_eq!(measured(vec![(0.1, 0.0)]).first_progress(), None);
        assert_eq!(measured(Vec::new()).first_progress(), None);
    }

    #[test]
    fn a_steady_drift_within_a_quad_cancels() {
        // Reads rise by 10 a window through running, paused, paused, running.
        let loss = PairedLoss::of(&[100.0, 130.0, 200.0, 260.0], &[110.0, 120.0, 220.0, 240.0]);
        assert_eq!(loss.quads.len(), 2);
        assert!(
            loss.quads.iter().all(|l| l.abs() < 1e-12),
            "{:?}",
            loss.quads
        );
        assert!(loss.mean.abs() < 1e-12 && loss.half_width.abs() < 1e-12);
    }

    #[test]
    fn the_interval_is_students_t_over_the_quads() {
        let loss = PairedLoss::of(&[90.0, 110.0, 80.0, 80.0], &[100.0; 4]);
        assert_eq!(loss.quads.len(), 2);
        assert!((loss.quads[0] - 0.0).abs() < 1e-12 && (loss.quads[1] - 0.2).abs() < 1e-12);
        assert!((loss.mean - 0.1).abs() < 1e-12);
        // Standard deviation 0.1414, standard error 0.1, t(1) = 12.706.
        assert!(
            (loss.half_width - 1.2706).abs() < 1e-9,
            "{}",
            loss.half_width
        );
        // A window left over from an unfinished quad is not counted; one quad has no interval.
        let one = PairedLoss::of(&[100.0, 100.0, 50.0], &[100.0, 100.0, 100.0]);
        assert_eq!(one.quads, vec![0.0]);
        assert!(one.half_width.is_infinite());
        let none = PairedLoss::of(&[100.0], &[]);
        assert!(none.quads.is_empty() && none.mean.is_nan());
    }
}
