//! The SWIM task: drives [`Swim`] over transport datagrams, publishes the liveness view, and
//! spreads the cluster state.
//!
//! **Cluster-state gossip.** Each member's SWIM metadata carries the version (digest) of the
//! cluster state it holds ([`ClusterState`](crate::cluster::ClusterState)). A node that learns
//! of a member whose version differs from its own pulls that member's state (one background
//! RPC) and merges it; if its own state changed, it announces its new version in its metadata
//! (which raises its incarnation, so the change outruns older gossip). Every
//! [`NodeConfig::cluster_sync`](super::NodeConfig::cluster_sync) it also pulls from one random
//! live member that announces another version, so a missed event costs one interval. The
//! states are CRDTs, so pulls in any order converge: once changes stop, every connected node
//! ends with the same state and the same ring.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use shoal_membership::{
    Effect, Event, MemberMeta, MemberState, NodeId as MemberId, Swim, Timer, Transmit,
};
use shoal_storage::Store;
use tokio::sync::mpsc;

use super::shared::{Class, MemberView, Shared};
use crate::cluster::ClusterState;
use crate::identity::NodeId;
use crate::request::message::{PeerRequest, PeerResponse};
use crate::transport::{Datagram, Peer, Transport};

/// Commands to the SWIM task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Leave gracefully.
    Leave,
    /// The cluster state changed: announce its new version.
    ClusterChanged,
}

pub(crate) async fn run<T: Transport, S: Store>(
    shared: Arc<Shared<T, S>>,
    mut datagrams: mpsc::Receiver<Datagram>,
    mut commands: mpsc::Receiver<Command>,
) {
    let me = shared.transport.local().clone();
    let rng = ChaCha8Rng::seed_from_u64(
        shared.config.seed ^ shoal_storage::Actor::node_hash(me.id.as_str()),
    );
    let meta = |version| MemberMeta {
        ring_version: version,
        ..MemberMeta::new(me.addr)
    };
    let mut announced = shared.view().version;
    let mut swim = Swim::new(
        shared.local.clone(),
        meta(announced),
        shared.config.swim.clone(),
        rng,
        shared.now(),
    );
    if shared.config.swim_wall_clock
        && let Ok(wall) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
    {
        swim.set_schedule_clock(wall, shared.now());
    }
    // Seeds: the configured members and every address the cluster state remembers.
    let mut seeds: Vec<_> = shared
        .config
        .members
        .iter()
        .filter(|p| p.id != me.id)
        .map(|p| p.addr)
        .collect();
    for (id, addr) in shared.view().state.addrs() {
        if *id != shared.local && !seeds.contains(&addr) {
            seeds.push(addr);
        }
    }
    swim.join(&seeds, shared.now());
    let pulling = Arc::new(Mutex::new(HashSet::new()));
    let mut sync_rng = ChaCha8Rng::seed_from_u64(shared.config.seed.rotate_left(17) ^ 0x5eed);
    let mut sync = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.config.cluster_sync,
        shared.config.cluster_sync,
    );
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Timers by due time; the sequence number keeps equal due times in arming order.
    let mut timers: BTreeMap<(std::time::Duration, u64), Timer> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        while let Some(effect) = swim.poll_effect() {
            match effect {
                Effect::Transmit(transmit) => send(&shared, transmit),
                Effect::SetTimer { timer, at } => {
                    timers.insert((at, seq), timer);
                    seq += 1;
                }
                Effect::Event(event) => on_event(&shared, &pulling, event),
            }
        }
        shared.incarnation.store(
            swim.local().incarnation,
            std::sync::atomic::Ordering::Relaxed,
        );
        let next = timers.first_key_value().map(|((at, _), _)| *at);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(shared.instant(at)).await,
                None => std::future::pending().await,
            }
        };
        // Biased, for replayable simulations: due timers first (a late timer would count
        // against local health), then commands, then datagrams.
        tokio::select! {
            biased;
            () = sleep => {
                let now = shared.now();
                while let Some(entry) = timers.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let timer = entry.remove();
                    swim.handle_timer(timer, now);
                }
            }
            command = commands.recv() => match command {
                Some(Command::Leave) => swim.leave(shared.now()),
                Some(Command::ClusterChanged) => {
                    announce(&shared, &mut swim, &mut announced, &meta);
                }
                None => return,
            },
            _ = sync.tick() => {
                announce(&shared, &mut swim, &mut announced, &meta);
                let behind: Vec<MemberId> = swim
                    .members()
                    .filter(|m| m.id != shared.local)
                    .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
                    .filter(|m| m.meta.ring_version != 0 && m.meta.ring_version != announced)
                    .map(|m| m.id.clone())
                    .collect();
                if let Some(id) = behind.choose(&mut sync_rng) {
                    pull(&shared, &pulling, id.clone());
                }
            }
            datagram = datagrams.recv() => {
                let Some(datagram) = datagram else { return };
                shared.metrics.peer_bytes_received("swim", datagram.payload.len());
                if let Err(e) = swim.handle_message(datagram.from.addr, &datagram.payload, shared.now()) {
                    tracing::debug!(from = %datagram.from.id, error = %e, "bad SWIM datagram");
                }
            }
        }
    }
}

fn send<T: Transport, S: Store>(shared: &Arc<Shared<T, S>>, transmit: Transmit) {
    let peer = match &transmit.to_id {
        Some(id) => shared.peer(id).filter(|p| p.addr == transmit.to),
        None => shared.peer_by_addr(transmit.to),
    };
    let payload = Bytes::from(transmit.payload);
    shared.metrics.peer_bytes_sent("swim", payload.len());
    match peer {
        Some(peer) => {
            if let Err(e) = shared.transport.send_datagram(&peer, payload) {
                tracing::debug!(to = %peer.id, error = %e, "SWIM datagram not sent");
            }
        }
        None => {
            // An address we cannot name yet (a seed): learn who listens there, then send.
            let shared2 = shared.clone();
            let addr = transmit.to;
            shared.spawn(async move {
                let timeout = shared2.config.swim.probe_timeout;
                if let Ok(id) = shared2.transport.discover(addr, timeout).await {
                    let peer = Peer { id, addr };
                    let _ = shared2.transport.send_datagram(&peer, payload);
                }
            });
        }
    }
}

/// Announces the cluster state's version in this node's metadata if it is not announced yet.
fn announce<T: Transport, S: Store, R: rand::Rng>(
    shared: &Shared<T, S>,
    swim: &mut Swim<R>,
    announced: &mut u64,
    meta: &impl Fn(u64) -> MemberMeta,
) {
    let version = shared.view().version;
    if version != *announced {
        *announced = version;
        swim.update_meta(meta(version), shared.now());
    }
}

/// Pulls `from`'s cluster state and merges it, in the background; at most one pull per member
/// at a time.
fn pull<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pulling: &Arc<Mutex<HashSet<MemberId>>>,
    from: MemberId,
) {
    if !pulling
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(from.clone())
    {
        return;
    }
    let shared2 = shared.clone();
    let pulling = pulling.clone();
    shared.spawn(async move {
        let request = PeerRequest::PullCluster {
            id: shared2.next_request_id(),
        };
        let timeout = shared2.config.background_timeout;
        let result = match shared2
            .call(&from, &request, timeout, Class::Background)
            .await
        {
            Ok(PeerResponse::Cluster(bytes)) => ClusterState::decode(&bytes)
                .map_err(|e| format!("bad cluster state: {e}"))
                .and_then(|theirs| shared2.change_cluster(|s| Ok::<_, String>(s.merge(&theirs)))),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.message),
        };
        if let Err(e) = result {
            tracing::debug!(from = %from, error = %e, "cluster state pull failed");
        }
        pulling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&from);
    });
}

fn on_event<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pulling: &Arc<Mutex<HashSet<MemberId>>>,
    event: Event,
) {
    let (member, state) = match &event {
        Event::Up(m) | Event::Recovered(m) | Event::MetadataChanged(m) => (m, m.state),
        Event::Suspect(m) => (m, MemberState::Suspect),
        Event::Dead(m) => (m, MemberState::Dead),
        Event::Left(m) => (m, MemberState::Left),
    };
    // Membership changes are rare and what an operator reads first: info level, one line.
    let change = match &event {
        Event::Up(_) => "up",
        Event::Recovered(_) => "recovered",
        Event::MetadataChanged(_) => "metadata changed",
        Event::Suspect(_) => "suspect",
        Event::Dead(_) => "dead",
        Event::Left(_) => "left",
    };
    tracing::info!(
        member = %member.id,
        addr = %member.meta.addr,
        incarnation = member.incarnation,
        "member {change}"
    );
    if let Ok(id) = NodeId::new(member.id.as_str()) {
        shared.learn_peer(
            member.id.clone(),
            Peer {
                id,
                addr: member.meta.addr,
            },
        );
    }
    let metric = match &event {
        Event::Up(_) => "up",
        Event::Recovered(_) => "recovered",
        Event::MetadataChanged(_) => "metadata",
        Event::Suspect(_) => "suspect",
        Event::Dead(_) => "dead",
        Event::Left(_) => "left",
    };
    let new_incarnation = shared
        .member_views()
        .iter()
        .find(|(id, _)| *id == member.id)
        .is_some_and(|(_, known)| known.incarnation != member.incarnation);
    shared.metrics.member_event(metric, new_incarnation);
    shared.set_member(
        member.id.clone(),
        MemberView {
            state,
            incarnation: member.incarnation,
            addr: member.meta.addr,
            ring_version: member.meta.ring_version,
        },
    );
    let version = member.meta.ring_version;
    if matches!(state, MemberState::Alive | MemberState::Suspect)
        && version != 0
        && version != shared.view().version
    {
        pull(shared, pulling, member.id.clone());
    }
    if matches!(event, Event::Up(_) | Event::Recovered(_)) {
        // A full queue is fine: the periodic handoff pass covers it.
        let _ = shared.handoff_wake.try_send(MemberId::clone(&member.id));
        let _ = shared.ae_wake.try_send(super::antientropy::Wake::MemberUp);
    }
}
