//! How long a loaded QUIC connection stays silent after a path outage ends: quinn's default
//! congestion control (CUBIC) next to Shoal's [`OutageProbingFactory`], side by side.
//!
//! Two client-server pairs of real QUIC connections on 127.0.0.1 (the node's TLS), each
//! through an in-process UDP relay (`CutRelay`); both relays are cut and healed together.
//! Each client sends a 64-byte datagram and 1 KiB of stream data every 10 ms (SWIM and RPC
//! traffic, enough to fill the congestion window within a cut). For each cut length, the
//! figure is the time from the heal to the first datagram the server receives, and the bytes
//! the client sent into the cut. Medians over the rounds, and their ratio, are printed.
//!
//! ```sh
//! cargo bench -p shoal-node --bench outage -- --cuts 2,4,6,8 --rounds 3
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use shoal_node::tls::{ClusterCa, TlsMaterial, peer_client_config, server_config};
use shoal_node::transport::relay::CutRelay;
use shoal_node::transport::{MIN_MTU, OutageProbingFactory};
use shoal_node::{Identity, NodeId};

/// The longest wait for a datagram after a heal.
const PATIENCE: Duration = Duration::from_secs(30);
/// Time between two sends of the load.
const TICK: Duration = Duration::from_millis(10);
/// Normal operation between two cuts, for the connection to recover fully.
const SETTLE: Duration = Duration::from_secs(3);

fn transport(outage_probing: bool) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).unwrap(),
        ))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .datagram_receive_buffer_size(Some(1 << 20))
        .initial_mtu(MIN_MTU)
        .min_mtu(MIN_MTU);
    if outage_probing {
        config.congestion_controller_factory(Arc::new(OutageProbingFactory::default()));
    }
    Arc::new(config)
}

fn material(ca: &ClusterCa, id: &str) -> TlsMaterial {
    let issued = ca.issue(&Identity::Node(NodeId::new(id).unwrap())).unwrap();
    TlsMaterial::from_issued(ca, &issued).unwrap()
}

/// One client-server pair under load; `arrivals` holds when the server got each datagram.
struct Pair {
    client: quinn::Connection,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    relay: CutRelay,
}

async fn pair(ca: &ClusterCa, outage_probing: bool) -> Pair {
    let crypto =
        QuicServerConfig::try_from(server_config(&material(ca, "server")).unwrap()).unwrap();
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(transport(outage_probing));
    let server =
        quinn::Endpoint::server(server_config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let relay = CutRelay::bind(server.local_addr().unwrap()).await.unwrap();

    let crypto =
        QuicClientConfig::try_from(peer_client_config(&material(ca, "client"), None).unwrap())
            .unwrap();
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(transport(outage_probing));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    endpoint.set_default_client_config(client_config);
    let connecting = endpoint
        .connect(relay.addr(), shoal_node::identity::NODE_DNS_NAME)
        .unwrap();
    let accepted = async {
        let incoming = server.accept().await.unwrap();
        incoming.await.unwrap()
    };
    let (client, served) = tokio::join!(connecting, accepted);
    let client = client.unwrap();

    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    {
        let (served, arrivals) = (served.clone(), arrivals.clone());
        tokio::spawn(async move {
            while served.read_datagram().await.is_ok() {
                arrivals.lock().unwrap().push(Instant::now());
            }
        });
    }
    tokio::spawn(async move {
        let _server = server;
        while let Ok((_send, mut recv)) = served.accept_bi().await {
            let mut buf = vec![0u8; 65536];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        }
    });
    {
        let client = client.clone();
        tokio::spawn(async move {
            let _endpoint = endpoint;
            let (mut send, _recv) = client.open_bi().await.unwrap();
            let chunk = vec![7u8; 1024];
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                if client.send_datagram(vec![1u8; 64].into()).is_err() {
                    break;
                }
                // Stream data beyond what flow control admits just waits; the datagram
                // above keeps coming either way.
                let _ = tokio::time::timeout(TICK, send.write_all(&chunk)).await;
            }
        });
    }
    Pair {
        client,
        arrivals,
        relay,
    }
}

impl Pair {
    fn sent_bytes(&self) -> u64 {
        self.client.stats().udp_tx.bytes
    }

    /// Time from `heal` to the first datagram the server received after it.
    async fn silence_after(&self, heal: Instant) -> Option<Duration> {
        let deadline = heal + PATIENCE;
        loop {
            if let Some(t) = self.arrivals.lock().unwrap().iter().find(|t| **t >= heal) {
                return Some(*t - heal);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cuts: Vec<u64> = arg("--cuts")
        .unwrap_or_else(|| "2,4,6,8".into())
        .split(',')
        .map(|c| c.trim().parse().expect("--cuts: seconds, comma-separated"))
        .collect();
    let rounds: usize = arg("--rounds")
        .map(|r| r.parse().expect("--rounds: a count"))
        .unwrap_or(3);

    let ca = ClusterCa::generate().unwrap();
    let cubic = pair(&ca, false).await;
    let probing = pair(&ca, true).await;
    // Both paths are cut and healed together.
    let set_cut = |cut: bool| {
        cubic.relay.set_cut(cut);
        probing.relay.set_cut(cut);
    };
    tokio::time::sleep(SETTLE).await;

    println!("cut_s round cubic_silence_ms probing_silence_ms cubic_cut_kib_s probing_cut_kib_s");
    let mut summary = Vec::new();
    for &seconds in &cuts {
        let (mut c_silence, mut p_silence, mut c_rate, mut p_rate) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            let (c0, p0) = (cubic.sent_bytes(), probing.sent_bytes());
            set_cut(true);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let (c1, p1) = (cubic.sent_bytes(), probing.sent_bytes());
            let heal = Instant::now();
            set_cut(false);
            let (c, p) = tokio::join!(cubic.silence_after(heal), probing.silence_after(heal));
            let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
            let rate = |b: u64| b as f64 / 1024.0 / seconds as f64;
            println!(
                "{seconds} {round} {:.0} {:.0} {:.1} {:.1}",
                ms(c),
                ms(p),
                rate(c1 - c0),
                rate(p1 - p0)
            );
            c_silence.push(ms(c));
            p_silence.push(ms(p));
            c_rate.push(rate(c1 - c0));
            p_rate.push(rate(p1 - p0));
            tokio::time::sleep(SETTLE).await;
        }
        summary.push((
            seconds,
            median(c_silence),
            median(p_silence),
            median(c_rate),
            median(p_rate),
        ));
    }
    println!();
    println!(
        "medians: cut_s cubic_silence_ms probing_silence_ms ratio cubic_cut_kib_s probing_cut_kib_s"
    );
    for (seconds, c, p, cr, pr) in summary {
        println!(
            "{seconds} {c:.0} {p:.0} {:.2} {cr:.1} {pr:.1}",
            p / c.max(1.0)
        );
    }
}
