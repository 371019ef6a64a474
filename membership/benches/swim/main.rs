//! Membership benchmark: Shoal's SWIM (Lifeguard on and off) against foca 2, on the same
//! deterministic simulated network, for N = 10, 100 and 1000; then ring lookup time.
//!
//! ```text
//! cargo bench -p shoal-membership --bench swim             # full run (simulated hours)
//! cargo bench -p shoal-membership --bench swim -- --quick  # 10 simulated minutes per loss run
//! cargo bench -p shoal-membership --bench swim -- --sizes 10,100
//! cargo bench -p shoal-membership --bench swim -- --indirect 3   # Shoal with k = 3 ping-reqs
//! cargo bench -p shoal-membership --bench swim -- --impls lifeguard,foca   # some rows only
//! cargo bench -p shoal-membership --bench swim -- --heal-wall 900  # longer heal wall budget
//! cargo bench -p shoal-membership --bench swim -- --isolate 3,5,8  # only the isolation table
//! ```
//!
//! Wall-time budgets keep a run bounded: 150 s per phase of a row, 120 s per convergence
//! wait, and `--heal-wall` seconds (default 120) for the wait after the partition heals,
//! which at N = 1000 needs more than 120 s of wall time to simulate.
//!
//! Definitions (all times virtual):
//! - *first suspicion*: from a crash (at a random point of a probe interval) until any member
//!   suspects the crashed member;
//!   *all dead*: until every live member has declared it dead. Median and p99 over trials.
//! - *floor*: probe interval + probe timeout + minimum suspicion timeout
//!   + ceil(log_(f+1) N) gossip intervals (f = gossip fan-out).
//! - *join rounds*: from a new member's start until every member saw it, in gossip intervals,
//!   next to ceil(log_(f+1) N).
//! - *false suspicions*: suspicion episodes (suspicions of one member less than 10 s apart count
//!   once) of healthy members, per member-hour, under 5 % loss, 10 % loss, and with one member
//!   paused 5 s every minute (suspicions of the paused member itself are not counted).
//!   *false deaths*: deaths of healthy members in those runs.
//! - *heal*: after a 50/50 partition of 60 s ends, time until every member sees every member.
//! - *bytes*: bytes sent per member per second in a fault-free steady state.
//! - *isolation* (`--isolate`, a table of its own): one member of a 3-member LAN cluster (the
//!   dev cluster's settings) cut off for a few seconds, then healed; time until every member
//!   sees every member alive (not suspect), over 40 trials at random points of the probe
//!   schedule. Shoal only: foca's view does not say suspect from alive.

mod foca_agent;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_membership::sim::{Agent, Factory, Fault, NetConfig, Observation, Sim, SwimAgent};
use shoal_membership::sim::{addr_of, index_of};
use shoal_membership::{NodeId, PartitionId, Ring, RingConfig, RingState, SwimConfig};

use foca_agent::{FocaAgent, foca_config};

#[derive(Clone)]
struct Opts {
    sizes: Vec<usize>,
    loss_run: Duration,
    quick: bool,
    /// Override of Shoal's `indirect_probes` (k).
    indirect: Option<usize>,
    /// Rows to run: `lifeguard`, `nolifeguard`, `foca`.
    impls: Vec<String>,
    /// Wall-time budget of the wait for convergence after the partition heals.
    heal_wall: Duration,
}

/// The protocol parameters a row's floor and bounds are computed from.
struct Params {
    probe_interval: Duration,
    probe_timeout: Duration,
    min_suspicion: Duration,
    gossip_interval: Duration,
    fanout: usize,
    push_pull: Duration,
}

impl Params {
    fn log_rounds(&self, n: usize) -> u32 {
        ((n as f64).ln() / ((self.fanout + 1) as f64).ln()).ceil() as u32
    }

    fn floor(&self, n: usize) -> Duration {
        self.probe_interval
            + self.probe_timeout
            + self.min_suspicion
            + self.gossip_interval * self.log_rounds(n)
    }
}

#[derive(Default)]
struct Row {
    name: String,
    n: usize,
    first: Vec<f64>,
    all_dead: Vec<f64>,
    floor: f64,
    join_rounds: Vec<f64>,
    log_bound: u32,
    fs: [f64; 3],
    member_hours: [f64; 3],
    false_deaths: usize,
    heal: Option<f64>,
    push_pull: f64,
    bytes: f64,
}

fn seeds_for(n: usize) -> Vec<usize> {
    (0..n.min(3)).collect()
}

/// Builds the factory for a cluster of `n` members.
type MakeFactory<A> = Box<dyn Fn(usize) -> Factory<A>>;

fn shoal(lifeguard: bool, n: usize, indirect: Option<usize>) -> (Params, MakeFactory<SwimAgent>) {
    {
        let lan = SwimConfig::lan(n);
        let config = SwimConfig {
            lifeguard,
            indirect_probes: indirect.unwrap_or(lan.indirect_probes),
            ..lan
        };
        let min = config
            .probe_interval
            .mul_f64(config.suspicion_mult as f64 * (n as f64).log10().max(1.0));
        let params = Params {
            probe_interval: config.probe_interval,
            probe_timeout: config.probe_timeout,
            min_suspicion: min,
            gossip_interval: config.gossip_interval,
            fanout: config.gossip_fanout,
            push_pull: config.push_pull_interval,
        };
        let make = move |n| SwimAgent::factory(config.clone(), seeds_for(n));
        (
            params,
            Box::new(make) as Box<dyn Fn(usize) -> Factory<SwimAgent>>,
        )
    }
}

fn foca(n: usize) -> (Params, MakeFactory<FocaAgent>) {
    let config = foca_config(n);
    let gossip = config.periodic_gossip.clone().expect("lan preset gossips");
    let params = Params {
        probe_interval: config.probe_period,
        probe_timeout: config.probe_rtt,
        min_suspicion: config.suspect_to_down_after,
        gossip_interval: gossip.frequency,
        fanout: gossip.num_members.get(),
        push_pull: config
            .periodic_announce
            .clone()
            .map(|p| p.frequency)
            .unwrap_or_default(),
    };
    let make = move |n| FocaAgent::factory(config.clone(), seeds_for(n));
    (params, Box::new(make))
}

fn converged<A: Agent>(sim: &Sim<A>) -> bool {
    let expected: BTreeSet<SocketAddr> = (0..sim.len())
        .filter(|&i| sim.is_up(i))
        .map(addr_of)
        .collect();
    (0..sim.len())
        .filter(|&i| sim.is_up(i))
        .all(|i| sim.agent(i).expect("up").live_view() == expected)
}

/// Runs until every member sees every member (checked each `step`), at most `limit` of
/// virtual time and two minutes of wall time (a cluster that never converges can be slow to
/// simulate).
fn run_to_convergence<A: Agent>(sim: &mut Sim<A>, step: Duration, limit: Duration) -> Option<f64> {
    run_to_convergence_within(sim, step, limit, Duration::from_secs(120))
}

fn run_to_convergence_within<A: Agent>(
    sim: &mut Sim<A>,
    step: Duration,
    limit: Duration,
    wall_limit: Duration,
) -> Option<f64> {
    let start = sim.now();
    let wall = Instant::now();
    while sim.now() - start < limit && wall.elapsed() < wall_limit {
        sim.run_for(step);
        if converged(sim) {
            return Some((sim.now() - start).as_secs_f64());
        }
    }
    None
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s[i]
}

fn trials(n: usize, quick: bool) -> usize {
    match (n, quick) {
        (n, _) if n >= 1000 => 8,
        (n, true) if n >= 100 => 10,
        (_, true) => 20,
        (n, false) if n >= 100 => 30,
        _ => 50,
    }
}

/// Wall-time budget of one phase of one row; a phase that runs out reports what it measured
/// so far (foca's member table is a list, so it slows down a lot at N = 1000).
const PHASE_BUDGET: Duration = Duration::from_secs(150);

fn bench_row<A: Agent>(
    name: &str,
    n: usize,
    seed: u64,
    opts: &Opts,
    params: &Params,
    make: &dyn Fn(usize) -> Factory<A>,
) -> Row {
    let wall = Instant::now();
    let mut row = Row {
        name: name.to_string(),
        n,
        floor: params.floor(n).as_secs_f64(),
        log_bound: params.log_rounds(n),
        push_pull: params.push_pull.as_secs_f64(),
        ..Row::default()
    };
    let net = NetConfig::default();
    let settle = Duration::from_secs(if n >= 1000 { 300 } else { 120 });

    // Joins, on a cluster that starts one member short.
    let mut sim = Sim::new(seed, n - 1, net.clone(), make(n));
    run_to_convergence(&mut sim, Duration::from_secs(2), settle);
    let t = Instant::now();
    let before = sim.stats().bytes;
    sim.run_for(Duration::from_secs(30));
    row.bytes = (sim.stats().bytes - before) as f64 / (sim.len() as f64 * 30.0);
    let _ = t;
    let k = trials(n, opts.quick);
    let phase = Instant::now();
    for _ in 0..k.min(10) {
        if phase.elapsed() > PHASE_BUDGET {
            break;
        }
        sim.record_observations(true);
        let _ = sim.take_observations();
        let start = sim.now();
        let new = sim.add_member();
        let others: BTreeSet<usize> = (0..sim.len())
            .filter(|&i| i != new && sim.is_up(i))
            .collect();
        let mut seen = BTreeSet::new();
        while sim.now() - start < Duration::from_secs(120) && seen.len() < others.len() {
            sim.run_for(params.gossip_interval / 4);
            for (_, obs, about, what) in sim.take_observations() {
                if about == addr_of(new) && what == Observation::Up {
                    seen.insert(obs);
                }
            }
        }
        let rounds = (sim.now() - start).as_secs_f64() / params.gossip_interval.as_secs_f64();
        row.join_rounds.push(rounds);
        sim.record_observations(false);
        run_to_convergence(&mut sim, Duration::from_secs(1), settle);
    }
    // Crashes on a cluster of exactly N members (the joins above added up to 10).
    drop(sim);
    let mut sim = Sim::new(seed, n, net.clone(), make(n));
    run_to_convergence(&mut sim, Duration::from_secs(2), settle);
    let mut rng_victim = seed;
    let phase = Instant::now();
    for _ in 0..k {
        if phase.elapsed() > PHASE_BUDGET {
            break;
        }
        rng_victim = rng_victim
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let live: Vec<usize> = (3..sim.len()).filter(|&i| sim.is_up(i)).collect();
        if live.len() < 3 {
            break;
        }
        let victim = live[(rng_victim >> 33) as usize % live.len()];
        // Crash at a random point of a probe interval: the waits above end on multiples of
        // 50 ms, in step with members that probe at round boundaries (Shoal), which would
        // make the wait for the first probe the same in every trial.
        rng_victim = rng_victim
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let phase = (rng_victim >> 11) as f64 / (1u64 << 53) as f64;
        sim.run_for(params.probe_interval.mul_f64(phase));
        sim.record_observations(true);
        let _ = sim.take_observations();
        sim.apply(Fault::Crash(victim));
        let start = sim.now();
        let live: BTreeSet<usize> = (0..sim.len()).filter(|&i| sim.is_up(i)).collect();
        let (mut first, mut dead) = (None, BTreeSet::new());
        while sim.now() - start < Duration::from_secs(600) && dead.len() < live.len() {
            sim.run_for(Duration::from_millis(50));
            for (at, obs, about, what) in sim.take_observations() {
                if about != addr_of(victim) {
                    continue;
                }
                if what == Observation::Suspect && first.is_none() {
                    first = Some((at - start).as_secs_f64());
                }
                if what == Observation::Dead {
                    dead.insert(obs);
                }
            }
        }
        if let Some(f) = first {
            row.first.push(f);
        }
        if dead.len() >= live.len() {
            row.all_dead.push((sim.now() - start).as_secs_f64());
        }
        sim.record_observations(false);
        // Bring it back (a restart with the same id and address) so the cluster keeps its size.
        sim.apply(Fault::Restart(victim));
        run_to_convergence(&mut sim, Duration::from_secs(1), Duration::from_secs(120));
    }
    drop(sim);
    eprintln!(
        "{name} N={n}: joins and crashes done at {:.1} s wall",
        wall.elapsed().as_secs_f64()
    );

    // False suspicions: 5 % loss, 10 % loss, one member paused 5 s a minute.
    for (col, scenario) in ["loss5", "loss10", "pause"].iter().enumerate() {
        let mut sim = Sim::new(seed + 1 + col as u64, n, net.clone(), make(n));
        run_to_convergence(&mut sim, Duration::from_secs(2), settle);
        sim.record_observations(true);
        let _ = sim.take_observations();
        let paused = 5usize.min(n - 1);
        match *scenario {
            "loss5" => sim.apply(Fault::Loss(0.05)),
            "loss10" => sim.apply(Fault::Loss(0.10)),
            _ => {}
        }
        let start = sim.now();
        let mut last: BTreeMap<SocketAddr, Duration> = BTreeMap::new();
        let mut episodes = 0usize;
        let phase = Instant::now();
        while sim.now() - start < opts.loss_run && phase.elapsed() < PHASE_BUDGET {
            if *scenario == "pause" {
                sim.apply(Fault::Pause {
                    node: paused,
                    duration: Duration::from_secs(5),
                });
            }
            sim.run_for(Duration::from_secs(60));
            for (at, _, about, what) in sim.take_observations() {
                if *scenario == "pause" && about == addr_of(paused) {
                    continue;
                }
                match what {
                    Observation::Suspect => {
                        if last
                            .get(&about)
                            .is_none_or(|t| at - *t > Duration::from_secs(10))
                        {
                            episodes += 1;
                        }
                        last.insert(about, at);
                    }
                    Observation::Dead => row.false_deaths += 1,
                    _ => {}
                }
            }
        }
        eprintln!(
            "{name} N={n}: {scenario} done at {:.1} s wall",
            wall.elapsed().as_secs_f64()
        );
        let hours = (sim.now() - start).as_secs_f64() / 3600.0;
        row.member_hours[col] = n as f64 * hours;
        row.fs[col] = episodes as f64 / (n as f64 * hours);
    }

    // A 50/50 partition for 60 s, then heal.
    let mut sim = Sim::new(seed + 7, n, net, make(n));
    run_to_convergence(&mut sim, Duration::from_secs(2), settle);
    sim.apply(Fault::Partition(vec![(0..n / 2).collect()]));
    sim.run_for(Duration::from_secs(60));
    sim.apply(Fault::Heal);
    row.heal = run_to_convergence_within(
        &mut sim,
        Duration::from_secs(1),
        Duration::from_secs(300),
        opts.heal_wall,
    );
    eprintln!("{name} N={n}: {:.1} s wall", wall.elapsed().as_secs_f64());
    row
}

/// `--isolate`: member 2 of 3 cut off for each of `cuts`, then healed; prints the time until
/// every member sees every member alive (median, p90, max over `TRIALS` trials).
fn isolation(cuts: &[u64]) {
    const TRIALS: u64 = 40;
    let all_alive = |sim: &Sim<SwimAgent>| {
        (0..sim.len()).all(|i| {
            let swim = &sim.agent(i).expect("up").swim;
            swim.members().count() == sim.len() - 1
                && swim
                    .members()
                    .all(|m| m.state == shoal_membership::MemberState::Alive)
        })
    };
    println!(
        "| impl | cut (s) | all alive after the heal: median / p90 / max (s) | never (of {TRIALS}) |"
    );
    println!("|---|---|---|---|");
    for lifeguard in [true, false] {
        let (_, make) = shoal(lifeguard, 3, None);
        for &cut in cuts {
            let mut times = Vec::new();
            let mut never = 0;
            for trial in 0..TRIALS {
                let mut sim = Sim::new(1000 + trial, 3, NetConfig::default(), make(3));
                run_to_convergence(&mut sim, Duration::from_secs(1), Duration::from_secs(60));
                // A random point of the probe schedule.
                sim.run_for(Duration::from_millis(5000 + trial * 997 % 1000));
                sim.apply(Fault::Partition(vec![vec![2]]));
                sim.run_for(Duration::from_secs(cut));
                sim.apply(Fault::Heal);
                let start = sim.now();
                loop {
                    if all_alive(&sim) {
                        times.push((sim.now() - start).as_secs_f64());
                        break;
                    }
                    if sim.now() - start > Duration::from_secs(120) {
                        never += 1;
                        break;
                    }
                    sim.run_for(Duration::from_millis(50));
                }
            }
            times.sort_by(f64::total_cmp);
            let name = if lifeguard {
                "shoal (lifeguard)"
            } else {
                "shoal (no lifeguard)"
            };
            println!(
                "| {name} | {cut} | {:.2} / {:.2} / {:.2} | {never} |",
                quantile(&times, 0.5),
                quantile(&times, 0.9),
                times.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| impl | N | first suspicion med / p99 (s) | all dead med / p99 (s) | floor (s) | join rounds med / max | log bound | false susp./member-h 5% / 10% / paused | member-hours simulated | false deaths | heal after 60 s split (s) | push-pull (s) | bytes/member/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let heal = r
            .heal
            .map(|h| format!("{h:.0}"))
            .unwrap_or_else(|| "no".into());
        println!(
            "| {} | {} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | {} | {:.2} / {:.2} / {:.2} | {:.0} / {:.0} / {:.0} | {} | {} | {:.0} | {:.0} |",
            r.name,
            r.n,
            quantile(&r.first, 0.5),
            quantile(&r.first, 0.99),
            quantile(&r.all_dead, 0.5),
            quantile(&r.all_dead, 0.99),
            r.floor,
            quantile(&r.join_rounds, 0.5),
            quantile(&r.join_rounds, 1.0),
            r.log_bound,
            r.fs[0],
            r.fs[1],
            r.fs[2],
            r.member_hours[0],
            r.member_hours[1],
            r.member_hours[2],
            r.false_deaths,
            heal,
            r.push_pull,
            r.bytes,
        );
    }
}

fn ring_lookup() {
    let mut state = RingState::new();
    for i in 0..100 {
        state.join(NodeId::new(format!("node-{i}")).unwrap());
    }
    let t = Instant::now();
    let ring = Ring::build(&state, &RingConfig::default()).unwrap();
    let build = t.elapsed();
    let keys: Vec<Vec<u8>> = (0..1_000_000u32)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    let t = Instant::now();
    let mut sum = 0usize;
    for k in &keys {
        sum += ring.preference_list_for_key(k).len();
    }
    let per = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    let counts = ring.replicas_per_node();
    let max = *counts.values().max().unwrap();
    let mean = 256.0 * 3.0 / 100.0;
    println!();
    println!(
        "ring (Q=256, N=3, 100 nodes): build {:.1} ms, lookup {per:.0} ns/key ({sum} list entries), max replicas {max} = {:.3} × mean {mean:.2}",
        build.as_secs_f64() * 1000.0,
        max as f64 / mean
    );
    let _ = PartitionId(0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "swim benchmark: Shoal's SWIM (Lifeguard on and off) against foca 2\n\n\
             --sizes 10,100,1000      cluster sizes (default 10,100,1000)\n\
             --quick                  10 simulated minutes per loss run (default 1 h; 10 min at N >= 1000)\n\
             --indirect K             Shoal's ping-req count k (default: the preset's, 5)\n\
             --impls a,b              rows: lifeguard, nolifeguard, foca (default all)\n\
             --heal-wall SECS         wall budget of the post-partition convergence wait (default 120)\n\
             --isolate S,...          only: one member of 3 cut off for S seconds, time to all alive"
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let indirect = args
        .iter()
        .position(|a| a == "--indirect")
        .and_then(|i| args.get(i + 1))
        .and_then(|k| k.parse().ok());
    let impls = args
        .iter()
        .position(|a| a == "--impls")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec!["lifeguard".into(), "nolifeguard".into(), "foca".into()]);
    let heal_wall = args
        .iter()
        .position(|a| a == "--heal-wall")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(120));
    if let Some(cuts) = args.iter().position(|a| a == "--isolate").map(|i| {
        args.get(i + 1)
            .map(|v| {
                v.split(',')
                    .map(|c| {
                        c.trim()
                            .parse()
                            .expect("--isolate: seconds, comma-separated")
                    })
                    .collect::<Vec<u64>>()
            })
            .expect("--isolate needs a list of seconds")
    }) {
        isolation(&cuts);
        return;
    }
    let opts = Opts {
        indirect,
        impls,
        heal_wall,
        sizes,
        loss_run: Duration::from_secs(if quick { 600 } else { 3600 }),
        quick,
    };
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        let loss_opts = Opts {
            loss_run: if n >= 1000 {
                opts.loss_run.min(Duration::from_secs(600))
            } else {
                opts.loss_run
            },
            ..opts.clone()
        };
        for lifeguard in [true, false] {
            let key = if lifeguard {
                "lifeguard"
            } else {
                "nolifeguard"
            };
            if !opts.impls.iter().any(|i| i == key) {
                continue;
            }
            let (params, make) = shoal(lifeguard, n, opts.indirect);
            let name = if lifeguard {
                "shoal (lifeguard)"
            } else {
                "shoal (no lifeguard)"
            };
            rows.push(bench_row(name, n, 42, &loss_opts, &params, &*make));
        }
        if opts.impls.iter().any(|i| i == "foca") {
            let (params, make) = foca(n);
            rows.push(bench_row("foca 2", n, 42, &loss_opts, &params, &*make));
        }
    }
    print_table(&rows);
    ring_lookup();
    let _ = index_of;
}
