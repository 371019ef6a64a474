//! Sloppy-quorum target selection: which nodes a request goes to.

use shoal_membership::NodeId as MemberId;

/// One node a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The node.
    pub node: MemberId,
    /// When `node` is a fallback, the primary it stands in for: it keeps what it receives as
    /// a hint for that primary. `None` for a primary.
    pub hint_for: Option<MemberId>,
}

impl Target {
    /// The node that must end up with the data: the primary itself, or the one a fallback
    /// replaces.
    pub fn owner(&self) -> &MemberId {
        self.hint_for.as_ref().unwrap_or(&self.node)
    }
}

/// Where a request goes: [`select_targets`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The targets, primaries first.
    pub targets: Vec<Target>,
    /// Down primaries that no live fallback could replace (too few live nodes). An update
    /// coordinator keeps a hint for each itself, so they still get the update.
    pub unreplaced: Vec<MemberId>,
}

/// The first `n` live nodes walking `preference_list`, whose first `primaries` entries are the
/// primaries (the rest fallbacks, in ring order).
///
/// Each primary that is not live is replaced by the next live fallback, which is told which
/// primary it replaces (in order: the first down primary gets the first live fallback). Only
/// the first `n` primaries count; primaries after them (a keyspace with a smaller N than the
/// ring's) act as fallbacks. Returns fewer than `n` targets when fewer nodes are live (the
/// caller decides whether that still allows a quorum), and then lists the primaries left
/// without a stand-in.
pub fn select_targets(
    preference_list: &[MemberId],
    primaries: usize,
    n: usize,
    is_live: impl Fn(&MemberId) -> bool,
) -> Selection {
    let primaries = primaries.min(n).min(preference_list.len());
    let (primary, fallback) = preference_list.split_at(primaries);
    let mut targets = Vec::with_capacity(n);
    let mut down = Vec::new();
    for node in primary {
        if is_live(node) {
            targets.push(Target {
                node: node.clone(),
                hint_for: None,
            });
        } else {
            down.push(node.clone());
        }
    }
    let mut down = down.into_iter();
    for node in fallback {
        if targets.len() >= n {
            break;
        }
        if !is_live(node) {
            continue;
        }
        targets.push(Target {
            node: node.clone(),
            // A fallback beyond the down primaries (a list shorter than N) holds no hint.
            hint_for: down.next(),
        });
    }
    Selection {
        targets,
        unreplaced: down.collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<MemberId> {
        names.iter().map(|n| MemberId::new(*n).unwrap()).collect()
    }

    #[test]
    fn all_primaries_live() {
        let list = ids(&["a", "b", "c", "d", "e"]);
        let targets = select_targets(&list, 3, 3, |_| true).targets;
        assert_eq!(targets.len(), 3);
        assert!(targets.iter().all(|t| t.hint_for.is_none()));
        assert_eq!(targets[2].node.as_str(), "c");
    }

    #[test]
    fn down_primaries_are_replaced_by_fallbacks_in_order() {
        let list = ids(&["a", "b", "c", "d", "e", "f"]);
        let live = |n: &MemberId| !matches!(n.as_str(), "a" | "c" | "d");
        let targets = select_targets(&list, 3, 3, live).targets;
        let got: Vec<_> = targets
            .iter()
            .map(|t| (t.node.as_str(), t.hint_for.as_ref().map(|h| h.as_str())))
            .collect();
        assert_eq!(got, [("b", None), ("e", Some("a")), ("f", Some("c"))]);
        assert_eq!(targets[1].owner().as_str(), "a");
    }

    #[test]
    fn smaller_n_uses_later_primaries_as_fallbacks_and_too_few_live_nodes_give_fewer() {
        let list = ids(&["a", "b", "c", "d"]);
        let targets = select_targets(&list, 3, 2, |n| n.as_str() != "b").targets;
        assert_eq!(targets[1].node.as_str(), "c");
        assert_eq!(targets[1].hint_for.as_ref().unwrap().as_str(), "b");
        let selection = select_targets(&list, 3, 3, |n| n.as_str() == "d");
        assert_eq!(selection.targets.len(), 1);
        assert_eq!(
            selection.targets[0].hint_for.as_ref().unwrap().as_str(),
            "a"
        );
        assert_eq!(selection.unreplaced, ids(&["b", "c"]));
    }
}
