//! The hint backlog, kept in memory: per target, how many hints are held and when each was
//! created, so reading it costs nothing like a scan.
//!
//! The hints column is a queue (a hint is put per replica with a write and deleted once that
//! replica confirmed), so it holds many tombstones besides its hints, and a scan walks all of
//! them. Asking the backlog by a scan made every status request, metrics scrape, handoff tick and
//! anti-entropy round of a node that had taken many writes walk them: in a profile of a
//! replica refill, 40 % of a sending node's CPU went to `shoal cluster status` polls walking
//! tombstones.
//!
//! [`Engine`](crate::Engine) builds the backlog from one scan at open and changes it after every
//! durable write that adds or deletes a hint, under the key's stripe lock, so it matches the
//! store. (After a write the backend reported as failed but applied anyway, it is off until
//! the next open; its readers only decide when to deliver, and delivery reads the store.)

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::engine::Backlog;

/// The stored creation time of a hint whose bytes are too short to hold one.
const UNKNOWN: u64 = u64::MAX;

/// Per target that has hints: how many, and how many by creation time.
#[derive(Default)]
pub(crate) struct Backlogs {
    targets: Mutex<HashMap<String, Held>>,
}

/// The hints held for one target.
#[derive(Default)]
struct Held {
    keys: u64,
    /// Hints by creation time (Unix milliseconds).
    by_time: BTreeMap<u64, u64>,
}

/// A hint added to or removed from the backlog by one write.
#[derive(Debug)]
pub(crate) struct HintChange {
    /// The hint's target.
    pub target: String,
    /// When the hint that was there was created (`None`: there was none).
    pub removed: Option<u64>,
    /// When the hint that is there now was created (`None`: it was deleted).
    pub added: Option<u64>,
}

impl HintChange {
    /// The change of putting a hint created at `added` at the hint key `hk`, over the stored
    /// bytes `old` (if any).
    pub fn put(hk: &[u8], old: Option<&[u8]>, added: u64) -> HintChange {
        HintChange {
            target: target_of(hk),
            removed: old.map(created_of),
            added: Some(added),
        }
    }

    /// The change of deleting the hint stored as `old` at the hint key `hk`.
    pub fn delete(hk: &[u8], old: &[u8]) -> HintChange {
        HintChange {
            target: target_of(hk),
            removed: Some(created_of(old)),
            added: None,
        }
    }
}

/// The target named in a hint key (`len ‖ target ‖ partition ‖ key`).
fn target_of(hk: &[u8]) -> String {
    let len = hk[0] as usize;
    String::from_utf8_lossy(&hk[1..1 + len]).into_owned()
}

/// The creation time stored in a hint's first 8 bytes.
fn created_of(raw: &[u8]) -> u64 {
    raw.get(..8).map_or(UNKNOWN, |b| {
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    })
}

impl Backlogs {
    /// Counts a stored hint (at open).
    pub fn count(&self, hk: &[u8], raw: &[u8]) {
        self.apply(HintChange::put(hk, None, created_of(raw)));
    }

    /// Applies a change, once its write is durable.
    pub fn apply(&self, change: HintChange) {
        if change.removed == change.added {
            return;
        }
        let mut targets = self.targets.lock();
        let held = targets.entry(change.target.clone()).or_default();
        if let Some(created) = change.removed
            && let Some(n) = held.by_time.get_mut(&created)
        {
            *n -= 1;
            held.keys -= 1;
            if *n == 0 {
                held.by_time.remove(&created);
            }
        }
        if let Some(created) = change.added {
            *held.by_time.entry(created).or_default() += 1;
            held.keys += 1;
        }
        if held.keys == 0 {
            targets.remove(&change.target);
        }
    }

    /// Whether any hint is held for `target`.
    pub fn holds(&self, target: &str) -> bool {
        self.targets.lock().contains_key(target)
    }

    /// The backlog per target that has hints.
    pub fn snapshot(&self) -> BTreeMap<String, Backlog> {
        self.targets
            .lock()
            .iter()
            .map(|(target, held)| {
                (
                    target.clone(),
                    Backlog {
                        keys: held.keys,
                        oldest_ms: held
                            .by_time
                            .keys()
                            .next()
                            .copied()
                            .filter(|&ms| ms != UNKNOWN),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hk(target: &str, key: &[u8]) -> Vec<u8> {
        let mut hk = vec![target.len() as u8];
        hk.extend_from_slice(target.as_bytes());
        hk.extend_from_slice(&7u32.to_be_bytes());
        hk.extend_from_slice(key);
        hk
    }

    fn stored(created: u64) -> Vec<u8> {
        let mut raw = created.to_le_bytes().to_vec();
        raw.extend_from_slice(b"record");
        raw
    }

    #[test]
    fn counts_follow_puts_merges_and_deletes() {
        let b = Backlogs::default();
        b.apply(HintChange::put(&hk("n2", b"a"), None, 30));
        b.apply(HintChange::put(&hk("n2", b"b"), None, 10));
        b.apply(HintChange::put(&hk("n3", b"a"), None, 20));
        // A merge into a held hint keeps its creation time: nothing changes.
        b.apply(HintChange::put(&hk("n2", b"a"), Some(&stored(30)), 30));
        let s = b.snapshot();
        assert_eq!((s["n2"].keys, s["n2"].oldest_ms), (2, Some(10)));
        assert_eq!((s["n3"].keys, s["n3"].oldest_ms), (1, Some(20)));
        b.apply(HintChange::delete(&hk("n2", b"b"), &stored(10)));
        assert_eq!(b.snapshot()["n2"].oldest_ms, Some(30));
        b.apply(HintChange::delete(&hk("n3", b"a"), &stored(20)));
        assert!(!b.holds("n3"), "a target without hints is not listed");
        assert!(b.holds("n2"));
        assert_eq!(b.snapshot().len(), 1);
    }

    #[test]
    fn a_hint_too_short_for_a_time_counts_without_one() {
        let b = Backlogs::default();
        b.count(&hk("n2", b"a"), b"xyz");
        let s = b.snapshot();
        assert_eq!((s["n2"].keys, s["n2"].oldest_ms), (1, None));
        b.apply(HintChange::delete(&hk("n2", b"a"), b"xyz"));
        assert!(b.snapshot().is_empty());
    }
}
