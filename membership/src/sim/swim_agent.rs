//! [`Swim`] as a simulated member.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Agent, Factory, Observation, Outputs, addr_of};
use crate::{Effect, Event, MemberMeta, NodeId, Swim, SwimConfig, Timer};

/// A [`Swim`] member in the simulator, named `n<index>`.
#[derive(Debug)]
pub struct SwimAgent {
    /// The state machine.
    pub swim: Swim<ChaCha8Rng>,
    /// Datagrams that failed to decode.
    pub decode_errors: u64,
}

impl SwimAgent {
    /// A factory for [`Sim::new`](super::Sim::new): member `i` is named `n<i>` and joins
    /// through the members listed in `seeds` (by index; a seed does not join itself).
    pub fn factory(config: SwimConfig, seeds: Vec<usize>) -> Factory<SwimAgent> {
        Box::new(move |i, addr, now, seed| {
            let id = NodeId::new(format!("n{i}")).expect("short id");
            let rng = ChaCha8Rng::seed_from_u64(seed);
            let mut swim = Swim::new(id, MemberMeta::new(addr), config.clone(), rng, now);
            let seed_addrs: Vec<SocketAddr> = seeds.iter().map(|&s| addr_of(s)).collect();
            swim.join(&seed_addrs, now);
            SwimAgent {
                swim,
                decode_errors: 0,
            }
        })
    }
}

impl Agent for SwimAgent {
    type Timer = Timer;

    fn handle_message(&mut self, from: SocketAddr, bytes: &[u8], now: Duration) {
        if self.swim.handle_message(from, bytes, now).is_err() {
            self.decode_errors += 1;
        }
    }

    fn handle_timer(&mut self, timer: Timer, now: Duration) {
        self.swim.handle_timer(timer, now);
    }

    fn drain(&mut self, out: &mut Outputs<Timer>) {
        while let Some(effect) = self.swim.poll_effect() {
            match effect {
                Effect::Transmit(t) => out.sends.push((t.to, t.payload)),
                Effect::SetTimer { timer, at } => out.timers.push((timer, at)),
                Effect::Event(e) => {
                    let (m, what) = match e {
                        Event::Up(m) | Event::Recovered(m) => (m, Observation::Up),
                        Event::Suspect(m) => (m, Observation::Suspect),
                        Event::Dead(m) => (m, Observation::Dead),
                        Event::Left(m) => (m, Observation::Left),
                        Event::MetadataChanged(_) => continue,
                    };
                    out.observations.push((m.meta.addr, what));
                }
            }
        }
    }

    fn live_view(&self) -> BTreeSet<SocketAddr> {
        let mut view: BTreeSet<SocketAddr> = self
            .swim
            .members()
            .filter(|m| m.state.is_live())
            .map(|m| m.meta.addr)
            .collect();
        if self.swim.local().state.is_live() {
            view.insert(self.swim.local().meta.addr);
        }
        view
    }

    fn leave(&mut self, now: Duration) {
        self.swim.leave(now);
    }
}
