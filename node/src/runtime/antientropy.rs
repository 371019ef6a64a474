//! The anti-entropy task: drives [`Exchange`]s with the other primaries of every partition
//! this node replicates, within a budget, at an adaptive interval.
//!
//! - **Rounds.** A round compares every partition this node is a primary of with each other
//!   live primary of it, every peer at once: one request per peer compares the roots of all
//!   the partitions the two share, and only partitions whose roots differ get an exchange,
//!   up to [`PARALLEL_EXCHANGES`] of them at once per peer. The first round starts as soon
//!   as the node has learned its peers at start (so a restarted or wiped node is repaired at
//!   once), or [`NodeConfig::ae_min_interval`] after start if it learns none, and a round
//!   starts right away when SWIM sees a member come up or recover (a restart, a healed
//!   partition).
//! - **Both sides at once.** The roots requests of a node in its first second ([`STARTUP`])
//!   say so (`starting`), and a peer whose roots differ starts its own round at once
//!   ([`Wake::PeerStarted`]): a wiped replica fetches from its peers while they push to it,
//!   instead of alone until their next rounds (up to `ae_max_interval` away; a quick restart
//!   gives SWIM nothing to report).
//! - **Adaptive interval.** After a round that repaired something the next comes after half
//!   the previous interval (at least `ae_min_interval`); after a round that found nothing,
//!   after twice it (at most `ae_max_interval`).
//! - **Cheap when equal.** The roots request names the shared partitions as a bitmap and
//!   carries a summary hash of the asker's roots; when the peer's summary matches, the answer
//!   carries no roots. An idle round costs a few dozen bytes per peer. When they differ, the
//!   answer carries one summary per group of 16 partitions, and a second request asks for the
//!   roots of the groups that differ only (see [`peer_roots`]).
//! - **Every step is paced.** Besides its keys and bytes, each round trip of an exchange costs
//!   the budget a fixed number of keys, so hash descents also yield to foreground work.
//! - **Handoff first.** While hinted handoff runs between the two, or into either of them
//!   from anyone (a node that stored delivered hints within the last 3 s), their
//!   comparison waits: hinted handoff is already sending those keys, and anti-entropy would
//!   send them twice. A round woken by a member coming back starts after a short grace
//!   (half of `ae_min_interval`), so the hint holders' handoff is under way when the roots
//!   are compared; not on the member that came back, in its first second ([`STARTUP`]): its
//!   peers that hold hints for it decline to compare until they are delivered. The
//!   comparison also waits while either of the two has `Replicate`s to the other in flight,
//!   or holds hints for it (handoff is woken; this wait lasts at most 30 s,
//!   so a hint the peer keeps refusing cannot stop anti-entropy): see
//!   [`Shared::handoff_pending`]. A round that waited is followed
//!   by the next one after `ae_min_interval`.
//! - **One repair per partition at a time.** Each step of an exchange, and each batch of a
//!   transfer, claims its partition on both nodes ([`Shared::ae_claim`]); a node answers
//!   `Busy` for a partition another peer is repairing with it, and the asker tries it again
//!   every [`BUSY_RETRY`] for up to [`BUSY_PATIENCE`] (it is usually done by then, and
//!   compares equal), then leaves it to a later round. An exchange that moves records is
//!   never overtaken, not even by the same peer's exchange in the other direction. So a
//!   replica that lacks keys several peers have (a wiped disk) receives each of them once.
//! - **Pause.** [`Node::pause_anti_entropy`](super::Node::pause_anti_entropy) (the admin
//!   endpoint's `POST /anti-entropy/pause` and `/resume`) skips rounds until resumed, and holds
//!   an exchange in progress before its next step or batch.
//! - **Budget.** Leaf comparisons and repairs wait for a token bucket of
//!   [`NodeConfig::ae_bytes_per_sec`] and [`NodeConfig::ae_keys_per_sec`], 0.125 % of it
//!   while the node serves clients (it coordinates a request, or started one within the last
//!   second: [`Shared::serving_clients`]), and every RPC uses the peer's background
//!   budget, so foreground requests keep their share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_membership::{NodeId as MemberId, PartitionId};
use shoal_storage::{BATCH_BYTES, Store};
use tokio::sync::mpsc;

use super::shared::{Class, Shared, blocking};
use crate::antientropy::{
    AeEffect, Exchange, ExchangeReport, KEYS_PER_STEP, MAX_PUSH_RECORDS, ROOTS_GROUP,
    TRANSFER_RECORDS, group_summaries, partition_bitmap, roots_summary,
};
use crate::cluster::ClusterView;
use crate::request::message::{PeerRequest, PeerResponse, record_from_wire};
use crate::transport::Transport;

/// Paces work to a rate: each piece of work pushes the next start later by its cost.
struct Pacer {
    next: std::sync::Mutex<tokio::time::Instant>,
    bytes_per_sec: f64,
    keys_per_sec: f64,
}

/// While the node serves clients ([`Shared::serving_clients`]), anti-entropy runs at this fraction
/// of its budget (by default 500 keys/s): repairs run at full speed when there are no
/// clients, and take little from them when there are. Measured in the convergence benchmark
/// on a 2-core machine running three nodes, where a repaired key costs about 40 µs of CPU
/// over the sender and the receiver (session 5): repairing at 5400 keys/s over the cluster
/// cost reads 9 %; at about 1500 keys/s the loss is within the measurement's noise. The
/// share was 1 % of a 50 000 keys/s budget until the budget grew to 200 000 (session 9), and
/// 0.25 % of that until it grew to 400 000 (session 12): the same 500 keys/s each time.
const BUSY_SHARE: f64 = 0.00125;

/// Members learned this soon after the node started are learned by its start (the seeds, then
/// the members they gossip): the round they wake starts without the grace that lets the hint
/// holders' handoff start first, since this node is the member that came back.
const STARTUP: Duration = Duration::from_secs(1);

impl Pacer {
    /// Waits until `keys` keys and `bytes` bytes fit the budget.
    /// Every step and every batch of an exchange passes here, so this is also where a paused
    /// node holds its exchanges (`POST /anti-entropy/pause`) until it is resumed.
    async fn take<T: Transport, S: Store>(&self, shared: &Shared<T, S>, keys: usize, bytes: usize) {
        while shared.ae_paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(PAUSE_POLL).await;
        }
        let mut cost = (keys as f64 / self.keys_per_sec).max(bytes as f64 / self.bytes_per_sec);
        if shared.serving_clients() {
            cost /= BUSY_SHARE;
        }
        let until = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *next = (*next).max(tokio::time::Instant::now()) + Duration::from_secs_f64(cost);
            *next
        };
        tokio::time::sleep_until(until).await;
    }
}

/// Why a round starts before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// SWIM saw a member come up or recover: the round starts after a grace, so the hint
    /// holders' handoff to it goes first (not in this node's own first second, [`STARTUP`]).
    MemberUp,
    /// Hinted handoff to a member ended: anti-entropy with it, which waited, may compare now
    /// (after the same grace: the receiver declines for a few seconds after storing hints).
    HandoffDone,
    /// A peer that has just started asked for roots that differ from this node's: the round
    /// starts at once, so the peer is repaired from both sides (the peer's own round fetches,
    /// this one pushes; claims keep them on different partitions).
    PeerStarted,
}

pub(crate) async fn run<T: Transport, S: Store>(
    shared: Arc<Shared<T, S>>,
    mut wake: mpsc::Receiver<Wake>,
) {
    let config = &shared.config;
    let pacer = Arc::new(Pacer {
        next: std::sync::Mutex::new(tokio::time::Instant::now()),
        bytes_per_sec: config.ae_bytes_per_sec.max(1) as f64,
        keys_per_sec: config.ae_keys_per_sec.max(1) as f64,
    });
    let mut interval = config.ae_min_interval;
    let started = tokio::time::Instant::now();
    let mut due = started + config.ae_min_interval;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            woke = wake.recv() => {
                let Some(first) = woke else {
                    return;
                };
                // Several members may come up together: one round covers them all.
                let mut grace = first != Wake::PeerStarted;
                while let Ok(next) = wake.try_recv() {
                    grace &= next != Wake::PeerStarted;
                }
                // Let the hint holders' handoff to a member that came back start first. Not
                // when this node is the one that came back (the members it learns as it
                // starts): a peer holding hints for it declines to compare until they are
                // delivered, and a wiped or new replica is refilled at once. Nor when a peer
                // that just started asks for help: it waited for no one either.
                if grace && started.elapsed() >= STARTUP {
                    tokio::time::sleep(config.ae_min_interval / 2).await;
                }
            }
        }
        if shared.ae_paused.load(std::sync::atomic::Ordering::Relaxed) {
            due = tokio::time::Instant::now() + config.ae_min_interval;
            continue;
        }
        let (repaired, waited) = round(&shared, &pacer, started.elapsed() < STARTUP).await;
        interval = if waited {
            config.ae_min_interval
        } else if repaired > 0 {
            (interval / 2).max(config.ae_min_interval)
        } else {
            (interval * 2).min(config.ae_max_interval)
        };
        due = tokio::time::Instant::now() + interval;
    }
}

/// One pass over every partition this node is a primary of; returns the keys that moved, and
/// whether some comparison waited (for hinted handoff, or a partition busy with another
/// peer). `starting`: this node started within [`STARTUP`] (its peers are asked to repair it
/// from their side too).
///
/// Per peer, one `AeRoots` request compares the roots of every partition the two share; only
/// partitions whose roots differ get an [`Exchange`]. The peers are taken at once, each with
/// its own [`PARALLEL_EXCHANGES`]: a wiped replica fetches from all of them from the start,
/// and a partition one peer is repairing is tried again by the others soon after
/// ([`Shared::ae_claim`], [`BUSY_RETRY`]).
async fn round<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Arc<Pacer>,
    starting: bool,
) -> (u64, bool) {
    let view = shared.view();
    // Per peer, the shared partitions and both positions in their primaries.
    let mut shared_with: BTreeMap<MemberId, Vec<(u32, usize, usize)>> = BTreeMap::new();
    let mut incomplete: BTreeSet<u32> = BTreeSet::new();
    let mut mine_all: Vec<u32> = Vec::new();
    for p in 0..view.ring.partitioner().partitions() {
        let primaries = view.ring.primaries(PartitionId(p));
        let Some(mine) = primaries.iter().position(|id| *id == shared.local) else {
            continue;
        };
        mine_all.push(p);
        for (theirs, peer) in primaries.iter().enumerate() {
            if *peer == shared.local {
                continue;
            }
            if !shared.is_live(peer) || shared.peer(peer).is_none() {
                incomplete.insert(p);
                continue;
            }
            shared_with
                .entry(peer.clone())
                .or_default()
                .push((p, mine, theirs));
        }
    }
    let mut peers = tokio::task::JoinSet::new();
    for (peer, partitions) in shared_with {
        let (shared, pacer, view) = (shared.clone(), pacer.clone(), view.clone());
        peers.spawn(async move {
            with_peer(&shared, &pacer, &view, &peer, &partitions, starting).await
        });
    }
    let (mut moved, mut waited) = (0, false);
    while let Some(done) = peers.join_next().await {
        match done {
            Ok(PeerRound {
                moved: m,
                waited: w,
                incomplete: i,
            }) => {
                moved += m;
                waited |= w;
                incomplete.extend(i);
            }
            Err(e) => {
                // Which peer is unknown here: no partition counts as compared.
                tracing::warn!(error = %e, "anti-entropy round task failed");
                incomplete.extend(mine_all.iter().copied());
            }
        }
    }
    for p in mine_all {
        if !incomplete.contains(&p) {
            shared.ae_compared(p);
        }
    }
    if moved > 0 {
        tracing::info!(keys = moved, "anti-entropy repaired differing keys");
    }
    (moved, waited)
}

/// What a round did with one peer.
#[derive(Default)]
struct PeerRound {
    /// Keys that moved either way.
    moved: u64,
    /// Whether a comparison waited (hinted handoff, or a partition busy with another peer).
    waited: bool,
    /// Partitions not fully compared with this peer.
    incomplete: BTreeSet<u32>,
}

/// One round's work with `peer`: compares the roots of `partitions` (`(partition, this node's
/// position in its primaries, the peer's)`), then runs an exchange for each that differs, up
/// to [`PARALLEL_EXCHANGES`] at once.
async fn with_peer<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Arc<Pacer>,
    view: &Arc<ClusterView>,
    peer: &MemberId,
    partitions: &[(u32, usize, usize)],
    starting: bool,
) -> PeerRound {
    let mut out = PeerRound::default();
    let ids: Vec<u32> = partitions.iter().map(|(p, _, _)| *p).collect();
    // Hinted handoff or a coordinator's replication is about to repair one of us: let it
    // finish first, so the same keys are not sent twice.
    if shared.handoff_pending(peer.as_str()) {
        tracing::debug!(%peer, "anti-entropy waits for hinted handoff");
        out.incomplete.extend(ids);
        out.waited = true;
        return out;
    }
    let ours: Vec<u128> = blocking(|| ids.iter().map(|&p| shared.engine.merkle_root(p)).collect());
    let roots = match peer_roots(shared, peer, &ids, &ours, starting).await {
        Ok(Some(roots)) => roots,
        Ok(None) => {
            tracing::debug!(%peer, "anti-entropy waits for the peer's hinted handoff");
            out.incomplete.extend(ids);
            out.waited = true;
            return out;
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "anti-entropy roots not compared");
            out.incomplete.extend(ids);
            return out;
        }
    };
    let differing: Vec<(u32, usize, usize)> = partitions
        .iter()
        .zip(roots)
        .zip(&ours)
        .filter(|((_, theirs_root), our_root)| theirs_root != *our_root)
        .map(|((&partition, _), _)| partition)
        .collect();
    let mut queue: std::collections::VecDeque<(u32, usize, usize)> = differing.into();
    // Partitions busy with another peer (here or on the peer), each with when it was first
    // found busy and when to try it again.
    let mut busy: Vec<((u32, usize, usize), tokio::time::Instant)> = Vec::new();
    let mut busy_since: BTreeMap<u32, tokio::time::Instant> = BTreeMap::new();
    let mut defer = |item: (u32, usize, usize), busy: &mut Vec<_>, out: &mut PeerRound| {
        let now = tokio::time::Instant::now();
        let since = *busy_since.entry(item.0).or_insert(now);
        if now.duration_since(since) < BUSY_PATIENCE {
            busy.push((item, now + BUSY_RETRY));
        } else {
            // Still busy: a later round compares it.
            out.incomplete.insert(item.0);
            out.waited = true;
        }
    };
    let mut running = tokio::task::JoinSet::new();
    loop {
        let now = tokio::time::Instant::now();
        busy.retain(|&(item, at)| {
            if at <= now {
                queue.push_back(item);
            }
            at > now
        });
        while running.len() < PARALLEL_EXCHANGES
            && let Some((p, mine, theirs)) = queue.pop_front()
        {
            if !shared.ae_claim(p, peer.as_str(), false, false) {
                defer((p, mine, theirs), &mut busy, &mut out);
                continue;
            }
            let (shared, pacer, peer, view) =
                (shared.clone(), pacer.clone(), peer.clone(), view.clone());
            running.spawn(async move {
                // A key belongs on the first N primaries of its keyspace only.
                let belongs = |key: &[u8], at: usize| {
                    keyspace_of(key)
                        .is_some_and(|ks| at < super::n_for(&shared.config, &view.state, ks))
                };
                let wanted =
                    |key: &[u8], to_peer: bool| belongs(key, if to_peer { theirs } else { mine });
                let report = exchange(&shared, &pacer, p, &peer, &wanted).await;
                shared.ae_release(p, peer.as_str());
                ((p, mine, theirs), report)
            });
        }
        if running.is_empty() {
            // Only busy partitions are left (or none): the other peers' exchanges of them end
            // soon.
            let Some(next) = busy.iter().map(|&(_, at)| at).min() else {
                break;
            };
            tokio::time::sleep_until(next).await;
            continue;
        }
        let Some(done) = running.join_next().await else {
            continue;
        };
        let (item, report) = match done {
            Ok(done) => done,
            Err(e) => {
                // Which partition is unknown here: none of this peer's counts as compared.
                tracing::warn!(%peer, error = %e, "anti-entropy exchange task failed");
                out.incomplete.extend(partitions.iter().map(|(p, _, _)| *p));
                continue;
            }
        };
        let p = item.0;
        out.moved += report.keys_fetched + report.keys_pushed;
        if let Some(error) = &report.error {
            tracing::debug!(partition = p, %peer, %error, "anti-entropy exchange stopped");
        }
        if !report.complete {
            if report.error.as_deref() == Some(BUSY) {
                defer(item, &mut busy, &mut out);
            } else {
                out.incomplete.insert(p);
            }
        }
    }
    out
}

/// The peer's roots of partitions `ids` (`ours`: this node's, in the same order), or `None`
/// while hinted handoff runs to or from it. Partitions whose group summaries match are
/// returned as `ours`: the first request may be answered with group summaries, and then only
/// the groups that differ are asked again, for their roots.
async fn peer_roots<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    peer: &MemberId,
    ids: &[u32],
    ours: &[u128],
    starting: bool,
) -> Result<Option<Vec<u128>>, String> {
    // Only the first request says this node is starting: the peer's round then covers the
    // groups the second one asks about.
    let ask = |ids: &[u32], ours: &[u128], grouped: bool| PeerRequest::AeRoots {
        id: shared.next_request_id(),
        summary: roots_summary(ids.iter().copied().zip(ours.iter().copied())),
        partitions: partition_bitmap(ids),
        grouped,
        starting: starting && grouped,
    };
    let timeout = shared.config.background_timeout;
    let (roots, groups) = match shared
        .call(peer, &ask(ids, ours, true), timeout, Class::Background)
        .await
    {
        Ok(PeerResponse::Roots {
            handoff_running: true,
            ..
        }) => return Ok(None),
        Ok(PeerResponse::Roots { roots, groups, .. }) => (roots, groups),
        other => return Err(describe(other)),
    };
    let asked = 17 + ids.len() as u64 / 8;
    shared
        .metrics
        .ae_exchange(asked, 16 * (roots.len() + groups.len()) as u64);
    if roots.is_empty() && groups.is_empty() {
        return Ok(Some(ours.to_vec()));
    }
    if roots.len() == ids.len() {
        return Ok(Some(roots));
    }
    if groups.len() != ids.len().div_ceil(ROOTS_GROUP) {
        return Err(format!(
            "{} roots and {} group summaries for {} partitions",
            roots.len(),
            groups.len(),
            ids.len()
        ));
    }
    let pairs: Vec<(u32, u128)> = ids.iter().copied().zip(ours.iter().copied()).collect();
    let differ: Vec<usize> = group_summaries(&pairs)
        .iter()
        .zip(&groups)
        .enumerate()
        .filter(|(_, (mine, theirs))| mine != theirs)
        .flat_map(|(g, _)| g * ROOTS_GROUP..((g + 1) * ROOTS_GROUP).min(ids.len()))
        .collect();
    let mut theirs = ours.to_vec();
    if differ.is_empty() {
        // Equal groups but unequal summaries: the roots changed between the two reads.
        return Ok(Some(theirs));
    }
    let (sub_ids, sub_ours): (Vec<u32>, Vec<u128>) =
        differ.iter().map(|&i| (ids[i], ours[i])).unzip();
    match shared
        .call(
            peer,
            &ask(&sub_ids, &sub_ours, false),
            timeout,
            Class::Background,
        )
        .await
    {
        Ok(PeerResponse::Roots {
            handoff_running: true,
            ..
        }) => Ok(None),
        Ok(PeerResponse::Roots { roots, .. }) if roots.is_empty() => Ok(Some(theirs)),
        Ok(PeerResponse::Roots { roots, .. }) if roots.len() == differ.len() => {
            shared
                .metrics
                .ae_exchange(17 + sub_ids.len() as u64 / 8, 16 * roots.len() as u64);
            for (i, root) in differ.into_iter().zip(roots) {
                theirs[i] = root;
            }
            Ok(Some(theirs))
        }
        other => Err(describe(other)),
    }
}

/// Exchanges of different partitions a round runs at once with one peer. One at a time, a
/// refill waited on each batch's round trip and synced write in turn and used under half of
/// the two cores; the pacer's budget is shared by all of them.
const PARALLEL_EXCHANGES: usize = 4;

/// How long a round keeps trying a partition it finds busy with another peer before leaving
/// it to the next round (which comes [`NodeConfig::ae_min_interval`] later). A refill from
/// several peers at once finds many partitions busy: each is done by whichever peer claimed
/// it first, and is then compared once more with the others, at once; leaving them all to the
/// next round left a tail of seconds.
const BUSY_PATIENCE: Duration = Duration::from_secs(5);

/// How long a round waits before trying a busy partition again.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// What one step of an exchange costs the budget before its own keys and bytes, in keys: a
/// round trip (two RPC hand-offs, a tree or store read) costs about what handling this many
/// keys does, so a descent through hash levels is paced like the repairs it leads to.
const STEP_KEYS: usize = 32;

/// How often a paused exchange looks whether anti-entropy was resumed (at its next step or
/// batch).
const PAUSE_POLL: Duration = Duration::from_millis(50);

/// The error of an exchange the peer answered `Busy` to.
const BUSY: &str = "partition busy with another peer";

/// Runs one exchange of `partition` with `peer` to its end.
/// `wanted(key, to_peer)` says whether a key may be copied to the peer (`true`) or here.
async fn exchange<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Pacer,
    partition: u32,
    peer: &MemberId,
    wanted: &impl Fn(&[u8], bool) -> bool,
) -> ExchangeReport {
    let tree = blocking(|| shared.engine.merkle_tree(partition));
    let mut x = Exchange::new(tree);
    let timeout = shared.config.background_timeout;
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut fetched, mut pushed) = (0u64, 0u64);
    loop {
        let Some(effect) = x.poll_effect() else {
            // Every effect is answered before the next poll, so this does not happen.
            return ExchangeReport::default();
        };
        let step = !matches!(effect, AeEffect::Done(_));
        if step {
            // Every round trip has a cost of its own, whatever it carries (and a paused node
            // waits here).
            pacer.take(shared, STEP_KEYS, 0).await;
        }
        let id = shared.next_request_id();
        let moving = matches!(
            effect,
            AeEffect::PushLeaves { .. } | AeEffect::FetchLeaves { .. } | AeEffect::Repair { .. }
        );
        if step && !shared.ae_claim(partition, peer.as_str(), false, moving) {
            x.handle_error(BUSY.into());
            continue;
        }
        match effect {
            AeEffect::AskHashes { level, nodes } => {
                sent += 4 * nodes.len() as u64;
                let request = PeerRequest::AeHashes {
                    id,
                    partition,
                    level: level as u8,
                    nodes,
                };
                match shared
                    .call(peer, &request, timeout, Class::Background)
                    .await
                {
                    Ok(PeerResponse::Hashes(hashes)) => {
                        received += 16 * hashes.len() as u64;
                        x.handle_hashes(hashes);
                    }
                    other => x.handle_error(describe(other)),
                }
            }
            AeEffect::CompareLeaves { leaves } => {
                let local = blocking(|| {
                    let mut out = Vec::new();
                    for &leaf in &leaves {
                        out.extend(shared.engine.leaf_keys(partition, leaf)?);
                    }
                    Ok::<_, shoal_storage::StorageError>(out)
                });
                sent += 2 * leaves.len() as u64;
                let request = PeerRequest::AeLeafKeys {
                    id,
                    partition,
                    leaves,
                };
                match (
                    local,
                    shared
                        .call(peer, &request, timeout, Class::Background)
                        .await,
                ) {
                    (Ok(local), Ok(PeerResponse::LeafKeys(remote))) => {
                        let bytes: usize = remote.iter().map(|(k, _)| k.len() + 16).sum();
                        received += bytes as u64;
                        pacer.take(shared, remote.len(), bytes).await;
                        x.handle_leaf_keys(local, remote);
                    }
                    (Err(e), _) => x.handle_error(format!("local leaf keys: {e}")),
                    (_, other) => x.handle_error(describe(other)),
                }
            }
            AeEffect::PushLeaves { first, last } | AeEffect::FetchLeaves { first, last } => {
                let push = matches!(effect, AeEffect::PushLeaves { .. });
                let leaves = (first, last);
                let moved = if push {
                    push_leaves(shared, pacer, partition, peer, leaves, wanted).await
                } else {
                    fetch_leaves(shared, pacer, partition, peer, leaves, wanted).await
                };
                match moved {
                    Ok((keys, bytes)) => {
                        let (count, total) = if push {
                            (&mut pushed, &mut sent)
                        } else {
                            (&mut fetched, &mut received)
                        };
                        *count += keys;
                        *total += bytes;
                        x.handle_transferred(keys);
                    }
                    Err(e) => x.handle_error(e),
                }
            }
            AeEffect::Repair {
                mut fetch,
                mut push,
            } => {
                fetch.retain(|k| wanted(k, false));
                push.retain(|k| wanted(k, true));
                fetched += fetch.len() as u64;
                pushed += push.len() as u64;
                match repair(shared, pacer, partition, peer, fetch, push).await {
                    Ok((s, r)) => {
                        sent += s;
                        received += r;
                        x.handle_repaired();
                    }
                    Err(e) => x.handle_error(e),
                }
            }
            AeEffect::Done(report) => {
                shared.metrics.ae_exchange(sent, received);
                // What actually moved (keys outside a keyspace's N are compared, not copied).
                return ExchangeReport {
                    keys_fetched: fetched,
                    keys_pushed: pushed,
                    ..report
                };
            }
        }
    }
}

/// Fetches `fetch` from `peer` and merges them here, then pushes the local records of `push`.
/// Returns the payload bytes sent and received.
async fn repair<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Pacer,
    partition: u32,
    peer: &MemberId,
    fetch: Vec<Vec<u8>>,
    push: Vec<Vec<u8>>,
) -> Result<(u64, u64), String> {
    let timeout = shared.config.background_timeout;
    let (mut sent, mut received) = (0u64, 0u64);
    if !fetch.is_empty() {
        sent += fetch.iter().map(|k| k.len() as u64).sum::<u64>();
        let request = PeerRequest::AeFetch {
            id: shared.next_request_id(),
            partition,
            keys: fetch,
        };
        let records = match shared
            .call(peer, &request, timeout, Class::Background)
            .await
        {
            Ok(PeerResponse::Records(records)) => records,
            other => return Err(describe(other)),
        };
        let bytes: usize = records.iter().map(|(k, r)| k.len() + r.len()).sum();
        received += bytes as u64;
        pacer.take(shared, records.len(), bytes).await;
        merge_records(shared, partition, records, &|_, _| true)?;
    }
    if !push.is_empty() {
        let records = blocking(|| {
            push.into_iter()
                .filter_map(|key| match shared.engine.get_record(partition, &key) {
                    Ok(Some(record)) => Some((key, record.as_bytes().to_vec())),
                    // Absent (deleted meanwhile) or corrupt here: nothing to offer.
                    _ => None,
                })
                .collect::<Vec<_>>()
        });
        sent += push_records(shared, pacer, partition, peer, records).await?;
    }
    Ok((sent, received))
}

/// Records per batch of a whole-leaf transfer ([`AeEffect::PushLeaves`],
/// [`AeEffect::FetchLeaves`]: the receiver has none of them, as in a refill). While this node
/// serves no clients, [`NodeConfig::ae_transfer_batch`](super::NodeConfig::ae_transfer_batch)
/// (by default [`TRANSFER_RECORDS`], and bounded by [`BATCH_BYTES`] too): a refill then pays
/// one round trip and one synced write per few thousand keys, not per [`KEYS_PER_STEP`], and
/// ran 1.4 times as fast per key in the storage benchmark. While it serves clients,
/// [`KEYS_PER_STEP`]: at its small share of the budget a large batch would wait seconds for
/// its turn and then land on the receiver at once.
pub(crate) fn transfer_batch<T: Transport, S: Store>(shared: &Shared<T, S>) -> usize {
    if shared.serving_clients() {
        KEYS_PER_STEP
    } else {
        shared.config.ae_transfer_batch.clamp(1, TRANSFER_RECORDS)
    }
}

/// Pushes `records` of `partition` to the peer (none: nothing sent) within the budget, in
/// `AePush`es of about [`BATCH_BYTES`] at most; returns the payload bytes sent.
async fn push_records<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Pacer,
    partition: u32,
    peer: &MemberId,
    mut records: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<u64, String> {
    let mut sent = 0;
    while !records.is_empty() {
        let (mut take, mut bytes) = (0, 0);
        while take < records.len() && take < MAX_PUSH_RECORDS && (take == 0 || bytes < BATCH_BYTES)
        {
            bytes += records[take].0.len() + records[take].1.len();
            take += 1;
        }
        let rest = records.split_off(take);
        pacer.take(shared, records.len(), bytes).await;
        renew_claim(shared, partition, peer)?;
        let request = PeerRequest::AePush {
            id: shared.next_request_id(),
            partition,
            records,
        };
        match shared
            .call(
                peer,
                &request,
                shared.config.background_timeout,
                Class::Background,
            )
            .await
        {
            Ok(PeerResponse::Stored) => sent += bytes as u64,
            other => return Err(describe(other)),
        }
        records = rest;
    }
    Ok(sent)
}

/// Sends the peer every local record of `leaves` (it has none of them), in batches; returns
/// the records sent and their bytes.
async fn push_leaves<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Pacer,
    partition: u32,
    peer: &MemberId,
    (mut first, last): (u16, u16),
    wanted: &impl Fn(&[u8], bool) -> bool,
) -> Result<(u64, u64), String> {
    let (mut keys, mut sent) = (0u64, 0u64);
    loop {
        let (mut records, next) = blocking(|| {
            shared
                .engine
                .leaf_records(partition, first, last, transfer_batch(shared))
        })
        .map_err(|e| format!("local records: {e}"))?;
        records.retain(|(k, _)| wanted(k, true));
        keys += records.len() as u64;
        sent += push_records(shared, pacer, partition, peer, records).await?;
        match next {
            Some(leaf) => first = leaf,
            None => return Ok((keys, sent)),
        }
    }
}

/// Renews this node's claim of `partition` for its exchange with `peer` before a batch of a
/// transfer: one step of an exchange (a whole-leaf transfer) can be many batches and outlast
/// the claim, and another exchange of the partition with this node would then move the same
/// records a second time. An error (`Busy`) if another exchange took it meanwhile.
fn renew_claim<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    partition: u32,
    peer: &MemberId,
) -> Result<(), String> {
    if shared.ae_claim(partition, peer.as_str(), false, true) {
        Ok(())
    } else {
        Err(BUSY.to_owned())
    }
}

/// Fetches every record of `leaves` from the peer (this node has none of them) and merges
/// them, in batches; returns the records merged and the bytes received.
async fn fetch_leaves<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    pacer: &Pacer,
    partition: u32,
    peer: &MemberId,
    (mut first, last): (u16, u16),
    wanted: &impl Fn(&[u8], bool) -> bool,
) -> Result<(u64, u64), String> {
    let timeout = shared.config.background_timeout;
    let (mut keys, mut received) = (0u64, 0u64);
    loop {
        renew_claim(shared, partition, peer)?;
        let request = PeerRequest::AeFetchLeaves {
            id: shared.next_request_id(),
            partition,
            first,
            last,
        };
        let (records, next) = match shared
            .call(peer, &request, timeout, Class::Background)
            .await
        {
            Ok(PeerResponse::LeafRecords { records, next })
                if next.is_none_or(|n| n > first && n <= last) =>
            {
                (records, next)
            }
            other => return Err(describe(other)),
        };
        let bytes: usize = records.iter().map(|(k, r)| k.len() + r.len()).sum();
        received += bytes as u64;
        pacer.take(shared, records.len(), bytes).await;
        keys += merge_records(shared, partition, records, wanted)?;
        match next {
            Some(leaf) => first = leaf,
            None => return Ok((keys, received)),
        }
    }
}

/// Checks and merges records a peer sent for `partition` (those `wanted` here); returns how
/// many were merged.
fn merge_records<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    partition: u32,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    wanted: &impl Fn(&[u8], bool) -> bool,
) -> Result<u64, String> {
    let items = records
        .into_iter()
        .filter(|(key, _)| wanted(key, false))
        .map(|(key, bytes)| Ok((partition, key, record_from_wire(bytes)?)))
        .collect::<Result<Vec<_>, crate::codec::CodecError>>()
        .map_err(|e| format!("peer sent a bad record: {e}"))?;
    let results = blocking(|| shared.engine.merge_many(&items)).map_err(|e| e.to_string())?;
    let changed = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|w| w.changed))
        .count();
    shared.metrics.ae_merged(changed as u64);
    Ok(items.len() as u64)
}

/// The keyspace of a storage key (`len ‖ keyspace ‖ key`).
fn keyspace_of(storage_key: &[u8]) -> Option<&str> {
    let len = *storage_key.first()? as usize;
    std::str::from_utf8(storage_key.get(1..1 + len)?).ok()
}

fn describe(answer: Result<PeerResponse, super::shared::CallError>) -> String {
    match answer {
        Ok(PeerResponse::Busy) => BUSY.to_owned(),
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.message,
    }
}
