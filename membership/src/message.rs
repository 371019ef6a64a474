//! Wire types of the SWIM protocol. Encoded and decoded only by [`crate::codec`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{MemberMeta, NodeId};

/// One datagram: who sent it, what it asks, and the membership updates it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Packet {
    pub sender: NodeId,
    pub body: Body,
    /// Piggybacked updates (or the full state, for [`Body::PushPull`]).
    pub updates: Vec<Update>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Are you alive? `target` is the member the sender means, so a different node now
    /// listening at the address does not answer for it.
    Ping { seq: u64, target: NodeId },
    /// Please ping `target` for me and relay its ack; send a nack if it does not answer in
    /// time and `nack` is set (Lifeguard).
    PingReq {
        seq: u64,
        target: NodeId,
        target_addr: SocketAddr,
        nack: bool,
    },
    /// Answer to a ping (direct, or relayed by a ping-req helper).
    Ack { seq: u64 },
    /// A ping-req helper got no answer from the target in time.
    Nack { seq: u64 },
    /// Nothing asked: the packet only carries updates.
    Gossip,
    /// Part of the sender's full member table in `updates`; `reply` asks for ours back.
    PushPull { reply: bool },
}

/// A claim about one member, as in SWIM: the higher incarnation wins; at equal incarnation
/// left > dead > suspect > alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Update {
    Alive {
        id: NodeId,
        incarnation: u64,
        meta: MemberMeta,
    },
    Suspect {
        id: NodeId,
        incarnation: u64,
        accuser: NodeId,
    },
    Dead {
        id: NodeId,
        incarnation: u64,
        accuser: NodeId,
    },
    Left {
        id: NodeId,
        incarnation: u64,
    },
}

impl Update {
    pub fn id(&self) -> &NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => id,
        }
    }
}
