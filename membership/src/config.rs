//! SWIM + Lifeguard settings as documented data, with presets.

use std::time::Duration;

use crate::codec::MAX_DATAGRAM;

/// Settings of a [`Swim`](crate::Swim) state machine.
///
/// Every duration is virtual or wall time as the driver chooses; the state machine only
/// compares it with the `now` it is given. Start from a preset ([`lan`](Self::lan),
/// [`wan`](Self::wan), [`for_test`](Self::for_test)) and change fields.
///
/// With Lifeguard on, probe interval and probe timeout are multiplied by the local health
/// multiplier (1 to [`max_health`](Self::max_health) + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct SwimConfig {
    /// Time between two probes sent by this member (the SWIM "protocol period").
    /// Default 1 s (LAN). Shorter detects failures sooner and costs proportionally more
    /// messages; must be longer than [`probe_timeout`](Self::probe_timeout) plus a round trip
    /// so indirect probes have time to answer.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking
    /// [`indirect_probes`](Self::indirect_probes) members to probe on our behalf.
    /// Default 500 ms (LAN). Set to a high quantile (p99) of the round-trip time; shorter
    /// sends more ping-reqs on a slow network.
    pub probe_timeout: Duration,
    /// How many members (k) are asked to ping-req a target that did not answer. Default 5
    /// (memberlist and foca use 3). More tolerates more loss on the path to the target and
    /// costs 4k messages per unanswered direct ping, which is rare on a healthy network: at
    /// 10 % loss, 5 instead of 3 cut false suspicions about 8× in the benchmark (N = 100) at
    /// no measurable cost in bytes.
    pub indirect_probes: usize,
    /// λ: each membership update is piggybacked about `λ · ceil(log10(n + 1))` times.
    /// Default 4. Higher spreads updates more reliably under loss, at the cost of bytes.
    pub retransmit_mult: u32,
    /// α: the minimum suspicion timeout is `α · max(1, log10(n)) · probe_interval`. Default 4.
    /// Lower declares crashed members dead sooner and raises the risk of false deaths.
    pub suspicion_mult: u32,
    /// β: with Lifeguard, the suspicion timeout starts at `β ·` minimum and shrinks to the
    /// minimum as independent confirmations arrive. Default 6. Ignored with Lifeguard off.
    pub suspicion_max_mult: u32,
    /// Lifeguard on (local health multiplier, dynamic suspicion timeout, buddy system, nacks)
    /// or off (SWIM as in the 2002 paper, with a fixed suspicion timeout of the minimum).
    /// Default on.
    pub lifeguard: bool,
    /// Highest local health score; the multiplier is score + 1. Default 8. Higher tolerates
    /// a slower local node before it wrongly suspects others, and slows detection while the
    /// local node is unhealthy.
    pub max_health: u32,
    /// Time between two gossip rounds that push pending updates to
    /// [`gossip_fanout`](Self::gossip_fanout) random members (only when updates are pending).
    /// Default 200 ms. Shorter spreads updates in less time and sends more messages.
    pub gossip_interval: Duration,
    /// Members contacted per gossip round. Default 3. Higher cuts the number of rounds
    /// (`log_(fanout+1) n`) to reach everyone.
    pub gossip_fanout: usize,
    /// Time between two state exchanges (push-pull) with one random alive member.
    /// Default 30 s, scaled up for large clusters. Shorter repairs missed updates sooner. The
    /// exchange is digest first: about `n / 2` bytes each way when the two tables agree (one
    /// datagram), plus the differing buckets' entries (about 35 bytes per member) when not.
    pub push_pull_interval: Duration,
    /// Time between two contacts of a seed address or a member believed dead, so that the two
    /// halves of a healed partition find each other, and a node that could not join retries.
    /// Default 30 s. Shorter heals partitions sooner. A member that knows no one else alive
    /// (joining, or cut off long enough to declare everyone dead) retries every
    /// [`probe_interval`](Self::probe_interval) instead, contacting every seed and one member
    /// it believes dead, at random.
    pub seed_retry_interval: Duration,
    /// How long a dead or departed member is remembered before it is forgotten. Default 1 h.
    /// Longer keeps partition healing possible for longer and remembers more members.
    pub dead_retention: Duration,
    /// Largest datagram this member sends or accepts, in bytes. Default and maximum
    /// [`MAX_DATAGRAM`] (1200, fits in one QUIC datagram on any path). Smaller carries fewer
    /// piggybacked updates per message.
    pub max_datagram: usize,
}

impl SwimConfig {
    /// Settings for a LAN cluster of about `n` members (memberlist's LAN profile).
    pub fn lan(n: usize) -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_probes: 5,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            lifeguard: true,
            max_health: 8,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            push_pull_interval: scale_for_size(Duration::from_secs(30), n),
            seed_retry_interval: Duration::from_secs(30),
            dead_retention: Duration::from_secs(3600),
            max_datagram: MAX_DATAGRAM,
        }
    }

    /// Settings for members spread over a WAN (slower probes, more patience).
    pub fn wan(n: usize) -> Self {
        Self {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            retransmit_mult: 4,
            suspicion_mult: 6,
            suspicion_max_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            push_pull_interval: scale_for_size(Duration::from_secs(60), n),
            seed_retry_interval: Duration::from_secs(60),
            ..Self::lan(n)
        }
    }

    /// LAN settings with short full-state and seed intervals, so tests in virtual time settle
    /// quickly.
    pub fn for_test() -> Self {
        Self {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            push_pull_interval: Duration::from_secs(5),
            seed_retry_interval: Duration::from_secs(5),
            dead_retention: Duration::from_secs(600),
            ..Self::lan(16)
        }
    }
}

impl Default for SwimConfig {
    fn default() -> Self {
        Self::lan(16)
    }
}

/// Full-state exchanges cost `O(n)` bytes each, so large clusters do them less often (the
/// memberlist rule: above 32 members, the interval grows with `log2(n / 32)`).
fn scale_for_size(base: Duration, n: usize) -> Duration {
    if n <= 32 {
        return base;
    }
    let factor = ((n as f64).log2() - 32f64.log2()).ceil() + 1.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for c in [
            SwimConfig::lan(5),
            SwimConfig::lan(1000),
            SwimConfig::wan(50),
            SwimConfig::for_test(),
        ] {
            assert!(c.probe_timeout < c.probe_interval);
            assert!(c.max_datagram <= MAX_DATAGRAM);
        }
        assert_eq!(
            SwimConfig::lan(1000).push_pull_interval,
            Duration::from_secs(30 * 6)
        );
    }
}
