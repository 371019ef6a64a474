//! Congestion control that lets a connection speak again as soon as a path outage ends.
//!
//! QUIC's loss recovery (RFC 9002) sends nothing new while the congestion window is full of
//! unacknowledged packets; only its probe timer (PTO) may, and that timer doubles each time it
//! fires without an acknowledgement. Through a partition of a few seconds a busy connection
//! fills its window with packets that will never be acknowledged, and its probe timer backs
//! off to seconds: after the heal it stays silent until the timer fires, up to about as long
//! as the partition lasted (measured: 2.7 s after a 6 s cut). Every peer message waits behind
//! it, SWIM's datagrams included, so a healed peer is suspected and declared dead again and
//! RPCs time out (docs/node.md, "Partitions and stalled connections").
//!
//! [`OutageProbing`] wraps quinn's default controller (CUBIC) and changes one thing: once
//! nothing has been acknowledged for [`OUTAGE`] (or four smoothed round trips, if longer),
//! the connection may put one more packet in flight whenever it has sent nothing for
//! [`PROBE_SPACING`] (or one round trip, if longer). It is a probe timer with its backoff
//! capped at [`PROBE_SPACING`], that fires only when there is something to send. During an
//! outage it costs at most a few packets a second per connection; within a round trip of the
//! heal, one of them is acknowledged, loss detection declares the rest lost, and CUBIC's own
//! window (collapsed by persistent congestion) governs again. While acknowledgements arrive
//! it is exactly CUBIC.
//!
//! Every Shoal connection uses it: node to node (`shoal_node::transport::QuicConfig`) and
//! client to node ([`crate::transport`]). The node crate's `outage` benchmark measures it next
//! to plain CUBIC through a relay that cuts the path (`cargo bench -p shoal-node --bench
//! outage`); figures in docs/node.md, "Partitions and stalled connections".

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// No acknowledgement for this long (or four smoothed round trips, if longer) is an outage.
pub const OUTAGE: Duration = Duration::from_secs(1);
/// Least time between two packets sent beyond the congestion window during an outage (or one
/// smoothed round trip, if longer).
pub const PROBE_SPACING: Duration = Duration::from_millis(250);

/// Builds an [`OutageProbing`] controller around CUBIC for each connection.
#[derive(Debug, Default)]
pub struct OutageProbingFactory {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for OutageProbingFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(OutageProbing::new(
            self.cubic.clone().build(now, current_mtu),
            current_mtu,
        ))
    }
}

/// CUBIC, plus one packet beyond its window per [`PROBE_SPACING`] while nothing is being
/// acknowledged (see the module docs).
pub struct OutageProbing {
    inner: Box<dyn Controller>,
    /// When something was last acknowledged; `None` until the first acknowledgement.
    last_ack: Option<Instant>,
    /// When the last packets were sent.
    last_sent: Option<Instant>,
    /// Bytes in flight: exact after each batch of acknowledgements, plus what was sent since.
    in_flight: u64,
    mtu: u16,
    smoothed_rtt: Duration,
}

impl OutageProbing {
    fn new(inner: Box<dyn Controller>, mtu: u16) -> Self {
        Self {
            inner,
            last_ack: None,
            last_sent: None,
            in_flight: 0,
            mtu,
            smoothed_rtt: Duration::ZERO,
        }
    }

    /// Something was acknowledged at `now`, with this smoothed round-trip time.
    fn acknowledged(&mut self, now: Instant, smoothed_rtt: Duration) {
        self.last_ack = Some(now);
        self.smoothed_rtt = smoothed_rtt;
    }

    /// The window at `now`: CUBIC's, or during an outage, room for one packet more than is in
    /// flight once [`PROBE_SPACING`] has passed since the last send.
    fn window_at(&self, now: Instant) -> u64 {
        let inner = self.inner.window();
        let Some(last_ack) = self.last_ack else {
            return inner;
        };
        let outage = now.saturating_duration_since(last_ack) >= OUTAGE.max(self.smoothed_rtt * 4);
        let spaced = self.last_sent.is_none_or(|sent| {
            now.saturating_duration_since(sent) >= PROBE_SPACING.max(self.smoothed_rtt)
        });
        if outage && spaced {
            // quinn sends while `in flight + one full segment < window`: room for one packet
            // (two small ones at most) before `on_sent` closes it again.
            inner.max(self.in_flight + 2 * u64::from(self.mtu) + 1)
        } else {
            inner
        }
    }
}

impl Controller for OutageProbing {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.last_sent = Some(now);
        self.in_flight = self.in_flight.saturating_add(bytes);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.acknowledged(now, rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.in_flight = in_flight;
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = new_mtu;
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.window_at(Instant::now())
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            last_ack: self.last_ack,
            last_sent: self.last_sent,
            in_flight: self.in_flight,
            mtu: self.mtu,
            smoothed_rtt: self.smoothed_rtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const MS: Duration = Duration::from_millis(1);

    fn controller(now: Instant) -> OutageProbing {
        match Arc::new(OutageProbingFactory::default())
            .build(now, MTU)
            .into_any()
            .downcast::<OutageProbing>()
        {
            Ok(c) => *c,
            Err(_) => unreachable!("the factory builds an OutageProbing"),
        }
    }

    /// Fills CUBIC's window with packets that are never acknowledged, starting at `t0` after
    /// one packet acknowledged with a round trip of `rtt`; returns the bytes in flight.
    fn fill_window(c: &mut OutageProbing, t0: Instant, rtt: Duration) -> u64 {
        c.on_sent(t0, 1200, 0);
        c.acknowledged(t0, rtt);
        c.on_end_acks(t0, 0, false, Some(0));
        let window = c.window_at(t0);
        let mut sent = 0;
        let mut pn = 1;
        while sent + u64::from(MTU) < window {
            c.on_sent(t0 + Duration::from_millis(2), u64::from(MTU), pn);
            sent += u64::from(MTU);
            pn += 1;
        }
        sent
    }

    #[test]
    fn it_is_cubic_while_acknowledgements_arrive() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        let cubic = Arc::new(CubicConfig::default()).build(t0, MTU);
        assert_eq!(c.window_at(t0), cubic.window());
        assert_eq!(c.initial_window(), cubic.initial_window());
        let in_flight = fill_window(&mut c, t0, MS);
        // Just under the outage threshold: CUBIC's window, which the packets in flight fill.
        let before = t0 + OUTAGE - Duration::from_millis(10);
        assert_eq!(c.window_at(before), c.inner.window());
        assert!(in_flight + u64::from(MTU) >= c.window_at(before));
    }

    #[test]
    fn an_outage_opens_room_for_one_packet_per_spacing() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        let in_flight = fill_window(&mut c, t0, MS);
        let cubic_window = c.inner.window();
        let t = t0 + OUTAGE + Duration::from_millis(5);
        let room = c.window_at(t);
        assert!(
            room > in_flight + u64::from(MTU),
            "room for one full packet"
        );
        assert!(
            room <= in_flight + 3 * u64::from(MTU),
            "but not for a burst"
        );
        // Once that packet is sent, the room closes until the spacing has passed.
        c.on_sent(t, u64::from(MTU), 100);
        assert_eq!(c.window_at(t + PROBE_SPACING / 2), cubic_window);
        let later = t + PROBE_SPACING;
        assert!(c.window_at(later) > in_flight + 2 * u64::from(MTU));
    }

    #[test]
    fn an_acknowledgement_ends_the_outage() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        fill_window(&mut c, t0, MS);
        let t = t0 + 3 * OUTAGE;
        assert!(c.window_at(t) > c.inner.window());
        c.acknowledged(t, MS);
        c.on_congestion_event(t, t0, true, 5 * u64::from(MTU));
        c.on_end_acks(t, 2 * u64::from(MTU), false, Some(200));
        assert_eq!(c.window_at(t + PROBE_SPACING), c.inner.window());
    }

    #[test]
    fn nothing_changes_before_the_first_acknowledgement() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        c.on_sent(t0, 14_000, 0);
        assert_eq!(c.window_at(t0 + 10 * OUTAGE), c.inner.window());
    }

    #[test]
    fn the_thresholds_follow_a_long_round_trip() {
        let t0 = Instant::now();
        let mut c = controller(t0);
        fill_window(&mut c, t0, Duration::from_millis(400));
        // Four round trips (1.6 s) are not over at OUTAGE (1 s).
        assert_eq!(c.window_at(t0 + OUTAGE), c.inner.window());
        assert!(c.window_at(t0 + Duration::from_millis(1700)) > c.inner.window());
        // And a send within one round trip (400 ms > PROBE_SPACING) keeps the room closed.
        c.on_sent(t0 + Duration::from_millis(1700), u64::from(MTU), 100);
        let t = t0 + Duration::from_millis(2000);
        assert_eq!(c.window_at(t), c.inner.window());
        assert!(c.window_at(t + Duration::from_millis(100)) > c.inner.window());
    }
}
