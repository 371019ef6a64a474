//! The SWIM task: drives [`Swim`] over transport datagrams and publishes the liveness view.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shoal_membership::{
    Effect, Event, MemberMeta, MemberState, NodeId as MemberId, Swim, Timer, Transmit,
};
use shoal_storage::Store;
use tokio::sync::mpsc;

use super::shared::Shared;
use crate::identity::NodeId;
use crate::transport::{Datagram, Peer, Transport};

/// Commands to the SWIM task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Leave gracefully.
    Leave,
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
    let mut swim = Swim::new(
        shared.local.clone(),
        MemberMeta::new(me.addr),
        shared.config.swim.clone(),
        rng,
        shared.now(),
    );
    let seeds: Vec<_> = shared
        .config
        .members
        .iter()
        .filter(|p| p.id != me.id)
        .map(|p| p.addr)
        .collect();
    swim.join(&seeds, shared.now());
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
                Effect::Event(event) => on_event(&shared, event),
            }
        }
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
                None => return,
            },
            datagram = datagrams.recv() => {
                let Some(datagram) = datagram else { return };
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

fn on_event<T: Transport, S: Store>(shared: &Shared<T, S>, event: Event) {
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
    shared.set_state(member.id.clone(), state);
    if matches!(event, Event::Up(_) | Event::Recovered(_)) {
        // A full queue is fine: the periodic handoff pass covers it.
        let _ = shared.handoff_wake.try_send(MemberId::clone(&member.id));
    }
}
