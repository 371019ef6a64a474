//! foca 2 as a simulated member: the baseline, on the same simulated network.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Header, Member, NoCustomBroadcast, OwnedNotification,
};
use rand_chacha_010::ChaCha8Rng;
use rand_chacha_010::rand_core::SeedableRng;
use shoal_membership::sim::{Agent, Factory, Observation, Outputs, addr_of};

/// foca's wire format: bincode 2 (serde), like Shoal's, so byte counts compare.
pub struct BincodeCodec;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<65536>()
}

fn encode<T: serde::Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), CodecError> {
    let bytes =
        bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError(e.to_string()))?;
    if buf.remaining_mut() < bytes.len() {
        return Err(CodecError("no space".into()));
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(buf.chunk(), config())
        .map_err(|e| CodecError(e.to_string()))?;
    buf.advance(used);
    Ok(value)
}

impl Codec<SocketAddr> for BincodeCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<SocketAddr>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<SocketAddr>, CodecError> {
        decode(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<SocketAddr>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        encode(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<SocketAddr>, CodecError> {
        decode(buf)
    }
}

pub struct FocaAgent {
    foca: Foca<SocketAddr, BincodeCodec, ChaCha8Rng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<SocketAddr>,
    now: Duration,
}

/// foca's LAN preset for `n` members, with the datagram limit Shoal uses.
pub fn foca_config(n: usize) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(n as u32).unwrap());
    c.max_packet_size = NonZeroUsize::new(1200).unwrap();
    c
}

impl FocaAgent {
    pub fn factory(config: foca::Config, seeds: Vec<usize>) -> Factory<FocaAgent> {
        Box::new(move |i, addr, now, seed| {
            let foca = Foca::new(
                addr,
                config.clone(),
                ChaCha8Rng::seed_from_u64(seed),
                BincodeCodec,
            );
            let mut agent = FocaAgent {
                foca,
                runtime: AccumulatingRuntime::new(),
                now,
            };
            for &s in &seeds {
                if s != i {
                    let _ = agent.foca.announce(addr_of(s), &mut agent.runtime);
                }
            }
            agent
        })
    }
}

impl Agent for FocaAgent {
    type Timer = foca::Timer<SocketAddr>;

    fn handle_message(&mut self, _from: SocketAddr, bytes: &[u8], now: Duration) {
        self.now = now;
        let _ = self.foca.handle_data(bytes, &mut self.runtime);
    }

    fn handle_timer(&mut self, timer: Self::Timer, now: Duration) {
        self.now = now;
        let _ = self.foca.handle_timer(timer, &mut self.runtime);
    }

    fn drain(&mut self, out: &mut Outputs<Self::Timer>) {
        while let Some((to, data)) = self.runtime.to_send() {
            out.sends.push((to, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.timers.push((timer, self.now + after));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(a) => out.observations.push((a, Observation::Up)),
                OwnedNotification::MemberDown(a) => out.observations.push((a, Observation::Dead)),
                // foca marks the member suspect exactly when its probe fails.
                OwnedNotification::ProbeFailed(_, a) => {
                    out.observations.push((a, Observation::Suspect))
                }
                _ => {}
            }
        }
    }

    fn live_view(&self) -> BTreeSet<SocketAddr> {
        let mut view: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| *m.id()).collect();
        view.insert(*self.foca.identity());
        view
    }

    fn leave(&mut self, _now: Duration) {
        let _ = self.foca.leave_cluster(&mut self.runtime);
    }
}
