//! Lifeguard's dynamic suspicion timeout.

use std::time::Duration;

use crate::config::SwimConfig;

/// Bounds of the suspicion timeout for a cluster of `n` live members.
///
/// `min = α · max(1, log10 n) · probe_interval`; with Lifeguard `max = β · min`, without it
/// `max = min` (fixed timeout as in SWIM).
pub(crate) fn bounds(config: &SwimConfig, n: usize) -> (Duration, Duration) {
    let scale = (n.max(1) as f64).log10().max(1.0);
    let min = config
        .probe_interval
        .mul_f64(config.suspicion_mult as f64 * scale);
    let max = if config.lifeguard {
        min * config.suspicion_max_mult.max(1)
    } else {
        min
    };
    (min, max)
}

/// Independent confirmations (beyond the first accuser) after which the timeout is the
/// minimum: `α − 2`, at most `n − 2` (the suspect and the first accuser cannot confirm).
pub(crate) fn expected_confirmations(config: &SwimConfig, n: usize) -> u32 {
    let k = config.suspicion_mult.saturating_sub(2);
    k.min(n.saturating_sub(2) as u32)
}

/// Timeout after `confirmations` independent confirmations: starts at `max` and shrinks
/// logarithmically to `min` once `k` confirmations arrived
/// (`max − (max − min) · ln(c + 1) / ln(k + 1)`).
pub(crate) fn timeout(min: Duration, max: Duration, k: u32, confirmations: u32) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let frac = ((confirmations as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
    let raw = max.as_secs_f64() - frac * (max - min).as_secs_f64();
    Duration::from_secs_f64(raw.max(min.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_from_max_to_min_with_confirmations() {
        let c = SwimConfig::lan(100);
        let (min, max) = bounds(&c, 100);
        assert_eq!(min, Duration::from_secs(8));
        assert_eq!(max, Duration::from_secs(48));
        let k = expected_confirmations(&c, 100);
        assert_eq!(k, 2);
        assert_eq!(timeout(min, max, k, 0), max);
        let one = timeout(min, max, k, 1);
        assert!(min < one && one < max);
        assert_eq!(timeout(min, max, k, 2), min);
        assert_eq!(timeout(min, max, k, 5), min);
    }

    #[test]
    fn fixed_without_lifeguard() {
        let c = SwimConfig {
            lifeguard: false,
            ..SwimConfig::lan(10)
        };
        let (min, max) = bounds(&c, 10);
        assert_eq!(min, max);
    }
}
