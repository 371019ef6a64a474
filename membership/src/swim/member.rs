//! What one member knows about another.

use crate::id::{MemberMeta, NodeId};

/// SWIM state of a member, as this member believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answers probes (or was last heard of answering).
    Alive,
    /// Failed a probe; declared dead when the suspicion timeout passes unless it refutes.
    Suspect,
    /// Declared dead. It comes back only with a higher incarnation.
    Dead,
    /// Left gracefully. It comes back only with a higher incarnation.
    Left,
}

impl MemberState {
    /// Alive or suspect: still probed, still counted in the cluster size.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// A member as this member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name.
    pub id: NodeId,
    /// Its metadata at `incarnation`.
    pub meta: MemberMeta,
    /// Only the member itself raises it: to refute a suspicion, to rejoin after being declared
    /// dead, or to publish new metadata. A claim about a member with a higher incarnation
    /// always wins.
    pub incarnation: u64,
    /// What this member believes.
    pub state: MemberState,
}
