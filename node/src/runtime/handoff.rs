//! The handoff worker: delivers hints to their primaries with one
//! [`HandoffSession`] per target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_membership::NodeId as MemberId;
use shoal_storage::Store;
use tokio::sync::mpsc;

use super::shared::{Class, Shared, blocking};
use crate::handoff::{HandoffEffect, HandoffSession};
use crate::request::message::{MAX_HINTS_PER_BATCH, PeerRequest};
use crate::transport::Transport;

/// A delivery's answer: target, batch, acknowledged.
type Delivery = (MemberId, u64, bool);

pub(crate) async fn run<T: Transport, S: Store>(
    shared: Arc<Shared<T, S>>,
    mut wake: mpsc::Receiver<MemberId>,
) {
    let mut sessions: HashMap<MemberId, HandoffSession> = HashMap::new();
    // Consecutive failed passes per target, for the retry backoff.
    let mut failures: HashMap<MemberId, u32> = HashMap::new();
    let (tx, mut delivered) = mpsc::unbounded_channel::<Delivery>();
    let mut tick = tokio::time::interval(shared.config.handoff_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut touched = Vec::new();
        tokio::select! {
            biased;
            target = wake.recv() => {
                let Some(target) = target else { return };
                if start(&shared, &mut sessions, target.clone()) {
                    touched.push(target);
                }
            }
            _ = tick.tick() => {
                let backlog = shared.engine.hint_backlog();
                for target in backlog.keys().filter_map(|t| MemberId::new(t.as_str()).ok()) {
                    if shared.is_live(&target) && start(&shared, &mut sessions, target.clone()) {
                        touched.push(target);
                    }
                }
            }
            Some((target, batch, ok)) = delivered.recv() => {
                if let Some(session) = sessions.get_mut(&target) {
                    if ok {
                        session.handle_delivered(batch);
                    } else {
                        session.handle_failed(batch);
                    }
                    touched.push(target);
                }
            }
        }
        for target in touched {
            pump(&shared, &mut sessions, &mut failures, &target, &tx);
        }
    }
}

fn start<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    sessions: &mut HashMap<MemberId, HandoffSession>,
    target: MemberId,
) -> bool {
    if target == shared.local || sessions.contains_key(&target) {
        return false;
    }
    let session = HandoffSession::new(
        target.clone(),
        shared.config.handoff_page.min(MAX_HINTS_PER_BATCH),
        shared.config.handoff_in_flight,
    );
    shared.set_handoff_active(&target, true);
    sessions.insert(target, session);
    true
}

/// Performs a session's effects until it waits for deliveries; drops it when finished.
fn pump<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    sessions: &mut HashMap<MemberId, HandoffSession>,
    failures: &mut HashMap<MemberId, u32>,
    target: &MemberId,
    tx: &mpsc::UnboundedSender<Delivery>,
) {
    let Some(session) = sessions.get_mut(target) else {
        return;
    };
    while let Some(effect) = session.poll_effect() {
        match effect {
            HandoffEffect::Fetch { after, limit } => {
                let after = after.as_ref().map(|(p, k)| (*p, k.as_slice()));
                let page = blocking(|| shared.engine.hints(target.as_str(), after, limit))
                    .unwrap_or_else(|e| {
                        tracing::warn!(%target, error = %e, "hints unreadable");
                        Vec::new()
                    });
                session.handle_page(page);
            }
            HandoffEffect::Deliver { batch, hints } => {
                let mut send = Vec::with_capacity(hints.len());
                for hint in hints {
                    // Its update is on its way by the coordinator's own `Replicate` (a
                    // partition just healed): its confirmation deletes the hint;
                    // sending it too would send it twice.
                    if shared.is_replicating(target, hint.partition, &hint.key) {
                        session.handle_skipped(batch, hint.partition, &hint.key);
                    } else {
                        send.push((hint.partition, hint.key, hint.record.as_bytes().to_vec()));
                    }
                }
                deliver(shared, target, batch, send, tx);
            }
            HandoffEffect::Remove { delivered } => {
                shared.metrics.hints_delivered(delivered.len() as u64);
                if let Err(e) = blocking(|| {
                    shared
                        .engine
                        .remove_delivered_hints(target.as_str(), &delivered)
                }) {
                    tracing::warn!(%target, error = %e, "delivered hints not removed");
                }
            }
        }
    }
    if session.is_finished() {
        tracing::debug!(%target, delivered = session.delivered(), skipped = session.skipped(), failed = session.failed(), "handoff pass done");
        let retry = if session.failed() {
            // A target that stays alive gets no other wake-up (SWIM saw no change), and
            // once requests stop nothing calls it: retry soon, backing off to the
            // periodic pass, rather than leave its hints for a whole interval.
            let n = failures.entry(target.clone()).or_insert(0);
            *n += 1;
            Some(retry_delay(*n, shared.config.handoff_interval))
        } else {
            failures.remove(target);
            // Look again once the skipped replications are answered: if one failed, its
            // hint is still here to deliver.
            (session.skipped() > 0).then_some(Duration::from_secs(1))
        };
        if let Some(delay) = retry {
            let (shared2, target2) = (shared.clone(), target.clone());
            shared.spawn(async move {
                tokio::time::sleep(delay).await;
                // A target SWIM holds dead is woken by its return instead.
                if shared2.is_live(&target2) {
                    let _ = shared2.handoff_wake.try_send(target2);
                }
            });
        }
        sessions.remove(target);
        shared.set_handoff_active(target, false);
        // Anti-entropy with the target waited for this session; it may compare now.
        let _ = shared
            .ae_wake
            .try_send(super::antientropy::Wake::HandoffDone);
    }
}

/// Sends one batch of hints as one RPC and reports the answer (an empty batch, all skipped, is
/// acknowledged at once).
fn deliver<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    target: &MemberId,
    batch: u64,
    hints: Vec<(u32, Vec<u8>, Vec<u8>)>,
    tx: &mpsc::UnboundedSender<Delivery>,
) {
    if hints.is_empty() {
        let _ = tx.send((target.clone(), batch, true));
        return;
    }
    let request = PeerRequest::DeliverHints {
        id: shared.next_request_id(),
        hints,
    };
    let (shared2, tx, target) = (shared.clone(), tx.clone(), target.clone());
    shared.spawn(async move {
        let timeout = shared2.config.background_timeout;
        let ok = shared2
            .call(&target, &request, timeout, Class::Background)
            .await
            .is_ok_and(|r| matches!(r, crate::request::PeerResponse::Stored));
        let _ = tx.send((target, batch, ok));
    });
}

/// How long after its `failures`-th failed pass in a row a target is tried again: 1 s,
/// doubling, at most the periodic `interval`.
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_target_is_retried_sooner_than_the_periodic_pass_then_backs_off_to_it() {
        let interval = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=6)
            .map(|n| retry_delay(n, interval).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(retry_delay(u32::MAX, interval), interval);
    }
}
