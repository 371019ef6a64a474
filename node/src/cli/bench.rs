//! `shoal bench`: a YCSB-style load generator that drives a cluster through the SDK
//! ([`shoal_client`]) and reports throughput, latency percentiles and errors by kind.
//!
//! It reaches the cluster like the data commands (`--cluster DIR`, `--seeds A,B` with
//! `--tls-dir DIR`, or `SHOAL_CLUSTER`; see [`super::data`]) and takes their options: `--r N`
//! and `--w N` (quorums of every read and write), `--timeout T` (deadline of each request),
//! `--keyspace NAME`, `--json`.
//!
//! # Flags
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--workload a\|b\|c\|counter` | `a` | `a`: 50 % register reads, 50 % register puts; `b`: 95 % / 5 %; `c`: reads only; `counter`: counter increments only |
//! | `--distribution zipfian\|uniform` | `zipfian` | how each operation picks its key |
//! | `--zipf-theta X` | `0.99` | zipfian exponent, above 0 and at most 10; key `i` (from 0) has weight `1/(i+1)^X` |
//! | `--keys N` | `1000` | key count, at least 1 |
//! | `--value-size BYTES` | `100` | bytes per register put, at most the SDK's 64 KiB per register value |
//! | `--concurrency N` | `16` | requests in flight, 1 to 4096 |
//! | `--duration T` | `10s` (without `--ops`) | length of the measured run: `500ms`, `10s`, `2m` |
//! | `--ops N` | none | operations in the measured run; with `--duration` too, whichever ends first |
//! | `--load` | off | first write every key once (a put, or an increment by 1 for `counter`), reported as phase `load` |
//! | `--warmup T` | none | run the workload this long before the measured run, reported as phase `warmup` |
//! | `--seed N` | `1` | seed of the key and operation choices |
//! | `--rate OPS` | none | target throughput of warm-up and run: requests start on a fixed schedule, latency counts from the scheduled start |
//!
//! Keys are `bench:r:<i>` (registers) and `bench:c:<i>` (counters) for `i` in `0..keys`, so a
//! counter run never hits a register key. The cluster's ring hashes key names, so the hot keys
//! of a zipfian run land on unrelated partitions. Every run is bounded: by `--ops`, by
//! `--duration` (10 s by default), and each request by its timeout; the load phase writes
//! `--keys` keys once each.
//!
//! The requests run on one thread (the data commands' runtime): `--concurrency` tasks, each
//! with one request in flight. A progress bar on stderr shows each phase unless `--json` is
//! given or stderr is not a terminal.
//!
//! # Results
//!
//! Latencies are of acknowledged operations, from the call into the SDK to its answer (retries
//! included), in an HDR histogram with 3 significant digits. Throughput is acknowledged
//! operations per second of the phase's wall time (from its start until its last request
//! answered). An operation that failed is counted by kind: `unknown` (it may have taken
//! effect), `failed:<code>` with the node's [`ErrorCode`] (`invalid`, `storage`,
//! `unavailable`, `quorum`, `busy`), `failed:unreachable` (no node answered), or
//! `failed:<kind>` for the SDK's own refusals (`invalid_request`, `wrong_type`, `tls`,
//! `no_cluster`, `other`). A refusal that repeating cannot cure (an invalid request, a key of
//! another type) stops the benchmark with exit code 2.
//!
//! `--json` prints one object:
//!
//! ```json
//! {
//!   "workload": "a", "read_percent": 50,
//!   "distribution": "zipfian", "zipf_theta": 0.99,
//!   "keys": 1000, "value_size": 100, "concurrency": 16,
//!   "r": 2, "w": 2, "timeout_ms": 5000, "keyspace": "default", "seed": 1,
//!   "load": null,
//!   "warmup": null,
//!   "run": {
//!     "seconds": 10.01, "ops": 52000, "ok": 51998, "throughput": 5194.8,
//!     "latency_us": { "p50": 2800, "p90": 4700, "p99": 9100, "p999": 15000, "max": 31000, "mean": 3050.2 },
//!     "by_op": {
//!       "read":   { "ops": 26010, "ok": 26010, "latency_us": { "p50": 2500, "...": 0 } },
//!       "update": { "ops": 25990, "ok": 25988, "latency_us": { "p50": 3100, "...": 0 } }
//!     },
//!     "errors": { "total": 2, "failed": 1, "unknown": 1,
//!                 "by_kind": { "failed:quorum": 1, "unknown": 1 } }
//!   }
//! }
//! ```
//!
//! `load` and `warmup` have the shape of `run`, or are `null` when not asked for; `zipf_theta`
//! is `null` for uniform keys; a `latency_us` is `null` when no operation of its kind
//! succeeded; `by_op` lists the operations the phase ran (`read`, `update`, `incr`).
//!
//! Exit codes: 0 when the measured run has acknowledged operations (errors are reported, not
//! fatal); 1 when every operation of it failed; 2 for bad flags or a request the cluster
//! refuses as invalid; the data commands' codes when the cluster cannot be reached.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{Value as Json, json};
use shoal_client::protocol::ErrorCode;
use shoal_client::{Client, Error, RequestOptions};
use shoal_storage::MAX_ELEMENT_LEN;
use tokio::task::JoinSet;

use super::CliError;
use super::data::{DataOptions, classify, print_json, with_client};

/// Most requests in flight.
const MAX_CONCURRENCY: usize = 4096;
/// Largest zipfian exponent (at 10 nearly every request goes to one key).
const MAX_ZIPF_THETA: f64 = 10.0;
/// Length of the measured run when neither `--duration` nor `--ops` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Longest `--duration` or `--warmup`.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Highest latency the histograms resolve, in microseconds (1 hour); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often the progress bar and the deadline are checked.
const TICK: Duration = Duration::from_millis(100);

/// `shoal bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// a: 50% reads, 50% updates; b: 95% reads; c: reads only; counter: increments only.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// How each operation picks its key.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Zipfian)]
    distribution: KeyDistribution,
    /// Zipfian exponent: above 0, at most 10.
    #[arg(long, default_value_t = 0.99, value_name = "X")]
    zipf_theta: f64,
    /// Number of keys.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    keys: u64,
    /// Bytes per register value written (at most 65536).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    value_size: usize,
    /// Requests in flight (1 to 4096).
    #[arg(long, default_value_t = 16, value_name = "N")]
    concurrency: usize,
    /// Length of the measured run: 500ms, 10s, 2m (default 10s unless --ops is given).
    #[arg(long, value_parser = parse_duration, value_name = "T")]
    duration: Option<Duration>,
    /// Operations in the measured run (with --duration: whichever ends first).
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Write every key once first; reported as phase `load`.
    #[arg(long)]
    load: bool,
    /// Run the workload this long before the measured run; reported as phase `warmup`.
    #[arg(long, value_parser = parse_duration, value_name = "T")]
    warmup: Option<Duration>,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Target throughput of the warm-up and measured run, in operations per second (default:
    /// as fast as `--concurrency` allows). Requests start on a fixed schedule and latency is
    /// measured from the scheduled start, so a stall counts against every request it delays.
    #[arg(long, value_name = "OPS")]
    rate: Option<f64>,
    #[command(flatten)]
    options: DataOptions,
}

/// The operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// YCSB A: 50 % reads, 50 % updates.
    A,
    /// YCSB B: 95 % reads, 5 % updates.
    B,
    /// YCSB C: reads only.
    C,
    /// Counter increments only.
    Counter,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::Counter => "counter",
        }
    }

    /// Share of reads, in percent.
    fn read_percent(self) -> u32 {
        match self {
            Workload::A => 50,
            Workload::B => 95,
            Workload::C => 100,
            Workload::Counter => 0,
        }
    }

    /// The write of this workload: what the load phase does to every key.
    fn write_op(self) -> Op {
        match self {
            Workload::Counter => Op::Incr,
            _ => Op::Update,
        }
    }

    /// Draws the next operation.
    fn next_op(self, rng: &mut impl Rng) -> Op {
        if rng.random_range(0..100) < self.read_percent() {
            Op::Read
        } else {
            self.write_op()
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Workload::A => "50% reads, 50% updates",
            Workload::B => "95% reads, 5% updates",
            Workload::C => "reads only",
            Workload::Counter => "counter increments",
        }
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyDistribution {
    /// Key `i` with weight `1/(i+1)^theta`.
    Zipfian,
    /// Every key equally often.
    Uniform,
}

/// One benchmark operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A register get.
    Read,
    /// A register put of `--value-size` bytes.
    Update,
    /// A counter increment by 1.
    Incr,
}

impl Op {
    const ALL: [Op; 3] = [Op::Read, Op::Update, Op::Incr];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Update => "update",
            Op::Incr => "incr",
        }
    }
}

/// Picks key indices in `0..keys`.
#[derive(Debug, Clone)]
enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian { keys: u64, zipf: Zipf<f64> },
}

impl KeyChooser {
    /// `theta` is used only for [`KeyDistribution::Zipfian`]; callers check its range.
    fn new(distribution: KeyDistribution, keys: u64, theta: f64) -> Result<Self, CliError> {
        Ok(match distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform { keys },
            KeyDistribution::Zipfian => KeyChooser::Zipfian {
                keys,
                zipf: Zipf::new(keys as f64, theta)
                    .map_err(|e| input(format!("zipfian keys: {e}")))?,
            },
        })
    }

    fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.random_range(0..*keys),
            // The sample is a rank in 1..=keys, as a float.
            KeyChooser::Zipfian { keys, zipf } => (zipf.sample(rng) as u64).clamp(1, *keys) - 1,
        }
    }
}

/// A validated `shoal bench` invocation.
#[derive(Debug)]
struct Plan {
    workload: Workload,
    distribution: KeyDistribution,
    zipf_theta: f64,
    keys: u64,
    chooser: KeyChooser,
    value: Vec<u8>,
    concurrency: usize,
    duration: Option<Duration>,
    ops: Option<u64>,
    load: bool,
    warmup: Option<Duration>,
    seed: u64,
    rate: Option<f64>,
    keyspace: String,
    request: RequestOptions,
    json: bool,
}

fn input(message: impl Into<String>) -> CliError {
    CliError::Input(message.into())
}

/// Checks the flags; every error is a [`CliError::Input`] (exit code 2).
fn plan(args: &BenchArgs) -> Result<Plan, CliError> {
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(input(format!(
            "--concurrency must be 1 to {MAX_CONCURRENCY}, not {}",
            args.concurrency
        )));
    }
    if args.keys == 0 {
        return Err(input("--keys must be at least 1"));
    }
    if args.value_size > MAX_ELEMENT_LEN {
        return Err(input(format!(
            "--value-size {} is over the SDK's limit of {MAX_ELEMENT_LEN} bytes per register value",
            args.value_size
        )));
    }
    let theta = args.zipf_theta;
    if args.distribution == KeyDistribution::Zipfian && !(theta > 0.0 && theta <= MAX_ZIPF_THETA) {
        return Err(input(format!(
            "--zipf-theta must be above 0 and at most {MAX_ZIPF_THETA}, not {theta} (for equal weights use --distribution uniform)"
        )));
    }
    if args.ops == Some(0) {
        return Err(input("--ops must be at least 1"));
    }
    for (flag, quorum) in [("--r", args.options.r), ("--w", args.options.w)] {
        if quorum == Some(0) {
            return Err(input(format!("{flag} must be at least 1")));
        }
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(input(format!("--rate must be above 0, got {rate}")));
    }
    let duration = match (args.duration, args.ops) {
        (None, None) => Some(DEFAULT_DURATION),
        (duration, _) => duration,
    };
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let value = (0..args.value_size)
        .map(|_| rng.random_range(b'a'..=b'z'))
        .collect();
    Ok(Plan {
        workload: args.workload,
        distribution: args.distribution,
        zipf_theta: theta,
        keys: args.keys,
        chooser: KeyChooser::new(args.distribution, args.keys, theta)?,
        value,
        concurrency: args.concurrency,
        duration,
        ops: args.ops,
        load: args.load,
        warmup: args.warmup,
        seed: args.seed,
        rate: args.rate,
        keyspace: args.options.keyspace.clone(),
        request: RequestOptions {
            r: args.options.r,
            w: args.options.w,
            timeout: args.options.timeout,
        },
        json: args.options.json,
    })
}

/// `500ms`, `10s`, `2m`, or seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let secs = value * scale;
    if !(secs > 0.0 && secs <= MAX_DURATION.as_secs_f64()) {
        return Err(format!("{text:?} must be above 0 and at most 24 hours"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Plan {
    fn key(&self, index: u64) -> Vec<u8> {
        match self.workload {
            Workload::Counter => format!("bench:c:{index}"),
            _ => format!("bench:r:{index}"),
        }
        .into_bytes()
    }
}

/// The phases of a benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Warmup,
    Run,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Warmup => "warmup",
            Phase::Run => "run",
        }
    }
}

/// A fresh latency histogram, in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Latency percentiles of acknowledged operations, in microseconds.
#[derive(Debug, Clone, PartialEq)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        })
    }

    fn json(this: Option<&Self>) -> Json {
        match this {
            None => Json::Null,
            Some(p) => json!({
                "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max,
                "mean": (p.mean * 10.0).round() / 10.0,
            }),
        }
    }
}

/// How a failed operation is counted: `unknown`, or `failed:<why>`.
fn error_kind(error: &Error) -> String {
    let why = match error {
        Error::Unknown { .. } => return "unknown".to_owned(),
        Error::Failed { code: None, .. } => "unreachable",
        Error::Failed {
            code: Some(code), ..
        } => match code {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Storage => "storage",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Quorum => "quorum",
            ErrorCode::Busy => "busy",
        },
        Error::Invalid(_) => "invalid_request",
        Error::WrongType { .. } => "wrong_type",
        Error::NoCluster(_) => "no_cluster",
        Error::Tls(_) => "tls",
        _ => "other",
    };
    format!("failed:{why}")
}

/// What one phase recorded; shared by its tasks (they run on one thread, so the lock is
/// uncontended).
#[derive(Debug)]
struct Recorder {
    all: Histogram<u64>,
    by_op: [Histogram<u64>; 3],
    attempts: [u64; 3],
    failed: u64,
    unknown: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// A refusal that repeating cannot cure; it stops the phase.
    fatal: Option<String>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            all: histogram(),
            by_op: [histogram(), histogram(), histogram()],
            attempts: [0; 3],
            failed: 0,
            unknown: 0,
            errors_by_kind: BTreeMap::new(),
            fatal: None,
        }
    }

    fn record_ok(&mut self, op: Op, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.attempts[op.index()] += 1;
        self.all.saturating_record(us);
        self.by_op[op.index()].saturating_record(us);
    }

    fn record_error(&mut self, op: Op, error: &Error) {
        self.attempts[op.index()] += 1;
        if error_kind(error) == "unknown" {
            self.unknown += 1;
        } else {
            self.failed += 1;
        }
        *self.errors_by_kind.entry(error_kind(error)).or_default() += 1;
    }

    fn ops(&self) -> u64 {
        self.attempts.iter().sum()
    }

    fn errors(&self) -> u64 {
        self.failed + self.unknown
    }
}

/// The result of one phase.
#[derive(Debug)]
struct PhaseReport {
    phase: Phase,
    elapsed: Duration,
    recorder: Recorder,
}

impl PhaseReport {
    fn ok(&self) -> u64 {
        self.recorder.all.len()
    }

    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Json {
        let r = &self.recorder;
        let by_op: serde_json::Map<String, Json> = Op::ALL
            .iter()
            .filter(|op| r.attempts[op.index()] > 0)
            .map(|op| {
                let h = &r.by_op[op.index()];
                (
                    op.name().to_owned(),
                    json!({
                        "ops": r.attempts[op.index()],
                        "ok": h.len(),
                        "latency_us": Percentiles::json(Percentiles::of(h).as_ref()),
                    }),
                )
            })
            .collect();
        json!({
            "seconds": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "ops": r.ops(),
            "ok": self.ok(),
            "throughput": (self.throughput() * 10.0).round() / 10.0,
            "latency_us": Percentiles::json(Percentiles::of(&r.all).as_ref()),
            "by_op": by_op,
            "errors": {
                "total": r.errors(),
                "failed": r.failed,
                "unknown": r.unknown,
                "by_kind": r.errors_by_kind,
            },
        })
    }
}

/// State shared by the tasks of one phase.
#[derive(Debug)]
struct Shared {
    recorder: Mutex<Recorder>,
    /// Operations handed out so far (the load phase's next key).
    issued: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // A panicking task cannot leave the counts half-updated in a way that matters here.
        self.recorder.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one operation.
async fn execute(client: &Client, plan: &Plan, op: Op, key: Vec<u8>) -> Result<(), Error> {
    match op {
        Op::Read => client
            .register(key)
            .keyspace(&plan.keyspace)
            .options(plan.request.clone())
            .get()
            .await
            .map(drop),
        Op::Update => client
            .register(key)
            .keyspace(&plan.keyspace)
            .options(plan.request.clone())
            .put(plan.value.clone())
            .await
            .map(drop),
        Op::Incr => client
            .counter(key)
            .keyspace(&plan.keyspace)
            .options(plan.request.clone())
            .incr(1)
            .await
            .map(drop),
    }
}

/// One request in flight at a time until the phase stops or its operations are handed out.
async fn worker(
    client: Client,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    phase: Phase,
    (task, seed): (u64, u64),
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // With --rate, this worker's share of the schedule: one request every `interval`, the
    // workers' schedules interleaved.
    let schedule = plan.rate.filter(|_| phase != Phase::Load).map(|rate| {
        let interval = Duration::from_secs_f64(plan.concurrency as f64 / rate);
        let offset = interval.mul_f64(task as f64 / plan.concurrency as f64);
        (interval, Instant::now() + offset)
    });
    let mut due = schedule.map(|(_, first)| first);
    let limit = match phase {
        Phase::Load => Some(plan.keys),
        Phase::Warmup => None,
        Phase::Run => plan.ops,
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let n = shared.issued.fetch_add(1, Ordering::Relaxed);
        if limit.is_some_and(|limit| n >= limit) {
            break;
        }
        let (op, index) = match phase {
            Phase::Load => (plan.workload.write_op(), n),
            Phase::Warmup | Phase::Run => {
                (plan.workload.next_op(&mut rng), plan.chooser.next(&mut rng))
            }
        };
        let started = match (&mut due, schedule) {
            (Some(at), Some((interval, _))) => {
                let scheduled = *at;
                *at += interval;
                tokio::time::sleep_until(scheduled.into()).await;
                scheduled
            }
            _ => Instant::now(),
        };
        let result = execute(&client, &plan, op, plan.key(index)).await;
        let latency = started.elapsed();
        let mut recorder = shared.recorder();
        match result {
            Ok(()) => recorder.record_ok(op, latency),
            Err(error) => {
                recorder.record_error(op, &error);
                if let CliError::Input(why) = classify(error) {
                    recorder.fatal.get_or_insert(why);
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A progress bar on stderr, or a hidden one.
fn progress_bar(plan: &Plan, phase: Phase, length: u64) -> ProgressBar {
    if plan.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>6} [{elapsed_precise}] {wide_bar} {msg}")
        .expect("constant progress template is valid");
    bar.set_style(style);
    bar.set_prefix(phase.name());
    bar
}

/// Runs one phase to its end: the deadline, the operation count, or a fatal refusal.
async fn run_phase(
    client: &Client,
    plan: &Arc<Plan>,
    phase: Phase,
) -> Result<PhaseReport, CliError> {
    let (limit, deadline) = match phase {
        Phase::Load => (Some(plan.keys), None),
        Phase::Warmup => (None, plan.warmup),
        Phase::Run => (plan.ops, plan.duration),
    };
    // A phase with a deadline shows time; one bounded by operations only shows operations.
    let bar = match deadline {
        Some(deadline) => progress_bar(plan, phase, deadline.as_millis() as u64),
        None => progress_bar(plan, phase, limit.unwrap_or(0)),
    };
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::new()),
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for task in 0..plan.concurrency as u64 {
        let seed = plan
            .seed
            .wrapping_add((phase as u64) << 32)
            .wrapping_add(task);
        workers.spawn(worker(
            client.clone(),
            plan.clone(),
            shared.clone(),
            phase,
            (task, seed),
        ));
    }
    let stop_at = tokio::time::Instant::now() + deadline.unwrap_or(MAX_DURATION);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(CliError::Failed(format!("a benchmark task failed: {e}")));
                }
            },
            _ = tokio::time::sleep_until(stop_at), if !shared.stop.load(Ordering::Relaxed) => {
                shared.stop.store(true, Ordering::Relaxed);
            }
            _ = tick.tick() => {
                let elapsed = started.elapsed();
                let recorder = shared.recorder();
                bar.set_position(match deadline {
                    Some(_) => elapsed.as_millis() as u64,
                    None => recorder.ops(),
                });
                bar.set_message(format!(
                    "{} ops, {:.0}/s, {} errors",
                    recorder.ops(),
                    recorder.all.len() as f64 / elapsed.as_secs_f64().max(1e-3),
                    recorder.errors(),
                ));
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let recorder = Arc::into_inner(shared)
        .expect("every task has ended")
        .recorder
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(why) = &recorder.fatal {
        return Err(input(format!("{} phase stopped: {why}", phase.name())));
    }
    Ok(PhaseReport {
        phase,
        elapsed,
        recorder,
    })
}

/// Runs `shoal bench`.
pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let plan = Arc::new(plan(&args)?);
    with_client(args.options, async |client, _| {
        let load = match plan.load {
            true => Some(run_phase(client, &plan, Phase::Load).await?),
            false => None,
        };
        let warmup = match plan.warmup {
            Some(_) => Some(run_phase(client, &plan, Phase::Warmup).await?),
            None => None,
        };
        let run = run_phase(client, &plan, Phase::Run).await?;
        let config = client.config();
        let quorums = (
            plan.request.r.unwrap_or(config.r),
            plan.request.w.unwrap_or(config.w),
        );
        let timeout = plan.request.timeout.unwrap_or(config.timeout);
        if plan.json {
            print_json(report_json(&plan, quorums, timeout, [&load, &warmup], &run));
        } else {
            print!("{}", report_text(&plan, quorums, [&load, &warmup], &run));
        }
        if run.ok() == 0 && run.recorder.errors() > 0 {
            return Err(CliError::Failed(format!(
                "every operation of the run failed ({} errors)",
                run.recorder.errors()
            )));
        }
        Ok(())
    })
}

fn report_json(
    plan: &Plan,
    (r, w): (u32, u32),
    timeout: Duration,
    [load, warmup]: [&Option<PhaseReport>; 2],
    run: &PhaseReport,
) -> Json {
    let zipf_theta = match plan.distribution {
        KeyDistribution::Zipfian => json!(plan.zipf_theta),
        KeyDistribution::Uniform => Json::Null,
    };
    json!({
        "workload": plan.workload.name(),
        "read_percent": plan.workload.read_percent(),
        "distribution": match plan.distribution {
            KeyDistribution::Zipfian => "zipfian",
            KeyDistribution::Uniform => "uniform",
        },
        "zipf_theta": zipf_theta,
        "keys": plan.keys,
        "value_size": plan.value.len(),
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "r": r,
        "w": w,
        "timeout_ms": timeout.as_millis() as u64,
        "keyspace": plan.keyspace,
        "seed": plan.seed,
        "load": load.as_ref().map_or(Json::Null, PhaseReport::json),
        "warmup": warmup.as_ref().map_or(Json::Null, PhaseReport::json),
        "run": run.json(),
    })
}

/// A latency in microseconds as milliseconds.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn report_text(
    plan: &Plan,
    (r, w): (u32, u32),
    [load, warmup]: [&Option<PhaseReport>; 2],
    run: &PhaseReport,
) -> String {
    let keys = match plan.distribution {
        KeyDistribution::Zipfian => format!("zipfian (theta {})", plan.zipf_theta),
        KeyDistribution::Uniform => "uniform".to_owned(),
    };
    let values = match plan.workload {
        Workload::Counter => String::new(),
        _ => format!(", {}-byte values", plan.value.len()),
    };
    let mut out = format!(
        "workload {} ({}), {keys} over {} keys{values}, concurrency {}, R={r} W={w}, keyspace {}\n\n",
        plan.workload.name(),
        plan.workload.describe(),
        plan.keys,
        plan.concurrency,
        plan.keyspace,
    );
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase",
        "ops",
        "ok/s",
        "errors",
        "seconds",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    let phases = [load.as_ref(), warmup.as_ref(), Some(run)];
    for report in phases.into_iter().flatten() {
        let rec = &report.recorder;
        let rate_and_time = Some((report.throughput(), report.elapsed));
        let name = report.phase.name();
        text_row(
            &mut out,
            name,
            rec.ops(),
            rec.errors(),
            rate_and_time,
            &rec.all,
        );
        // Operation rows only when the phase mixed operations.
        let ran: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|op| rec.attempts[op.index()] > 0)
            .collect();
        for op in ran.iter().filter(|_| ran.len() > 1) {
            let (attempts, h) = (rec.attempts[op.index()], &rec.by_op[op.index()]);
            let name = format!("  {}", op.name());
            text_row(&mut out, &name, attempts, attempts - h.len(), None, h);
        }
    }
    for report in phases.into_iter().flatten() {
        let kinds = &report.recorder.errors_by_kind;
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                out,
                "errors in {}: {}",
                report.phase.name(),
                list.join(", ")
            );
        }
    }
    out
}

/// One line of the text table; `rate_and_time` is `None` for an operation's line.
fn text_row(
    out: &mut String,
    name: &str,
    ops: u64,
    errors: u64,
    rate_and_time: Option<(f64, Duration)>,
    histogram: &Histogram<u64>,
) {
    let (rate, secs) = rate_and_time.map_or((String::new(), String::new()), |(rate, time)| {
        (format!("{rate:.1}"), format!("{:.2}", time.as_secs_f64()))
    });
    let p = Percentiles::of(histogram);
    let cell = |f: fn(&Percentiles) -> u64| p.as_ref().map_or("-".to_owned(), |p| ms(f(p)));
    let _ = writeln!(
        out,
        "{name:<8} {ops:>9} {rate:>9} {errors:>7} {secs:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        cell(|p| p.p50),
        cell(|p| p.p90),
        cell(|p| p.p99),
        cell(|p| p.p999),
        cell(|p| p.max),
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        let argv = std::iter::once("bench").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").args
    }

    fn plan_of(flags: &[&str]) -> Result<Plan, CliError> {
        plan(&args(flags))
    }

    #[test]
    fn workload_mixes_have_their_read_share() {
        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 100_000;
        for (workload, reads) in [
            (Workload::A, 0.50),
            (Workload::B, 0.95),
            (Workload::C, 1.0),
            (Workload::Counter, 0.0),
        ] {
            let ops: Vec<Op> = (0..draws).map(|_| workload.next_op(&mut rng)).collect();
            let share = ops.iter().filter(|op| **op == Op::Read).count() as f64 / draws as f64;
            assert!((share - reads).abs() < 0.01, "{workload:?}: {share}");
            let writes: Vec<&Op> = ops.iter().filter(|op| **op != Op::Read).collect();
            assert!(writes.iter().all(|op| **op == workload.write_op()));
        }
        assert_eq!(Workload::Counter.write_op(), Op::Incr);
        assert_eq!(Workload::A.write_op(), Op::Update);
    }

    /// Draws `samples` keys and returns how often each key came up.
    fn counts(chooser: &KeyChooser, keys: u64, samples: usize) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..samples {
            counts[chooser.next(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_keys_are_skewed_towards_the_first() {
        let keys = 1000;
        let samples = 200_000;
        let chooser = KeyChooser::new(KeyDistribution::Zipfian, keys, 0.99).unwrap();
        let counts = counts(&chooser, keys, samples);
        // Key 0 has weight 1/H where H = sum of 1/k^0.99 over 1..=1000.
        let h: f64 = (1..=keys).map(|k| (k as f64).powf(-0.99)).sum();
        let expected = samples as f64 / h;
        let first = counts[0] as f64;
        assert!(
            (first - expected).abs() < 0.05 * expected,
            "{first} vs {expected}"
        );
        assert_eq!(counts.iter().max(), Some(&counts[0]));
        // Rank 2 about half as often as rank 1.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "rank 1 / rank 2 = {ratio}");
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2].max(1);
        assert!(counts[0] > 100 * median, "{} vs median {median}", counts[0]);
    }

    #[test]
    fn uniform_keys_are_roughly_flat() {
        let keys = 1000;
        let chooser = KeyChooser::new(KeyDistribution::Uniform, keys, 0.99).unwrap();
        let counts = counts(&chooser, keys, 200_000);
        // 200 expected per key, standard deviation about 14.
        assert!(
            counts.iter().all(|&c| (130..=270).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn choosers_stay_in_range() {
        let mut rng = SmallRng::seed_from_u64(3);
        for distribution in [KeyDistribution::Zipfian, KeyDistribution::Uniform] {
            let one = KeyChooser::new(distribution, 1, 0.99).unwrap();
            assert!((0..100).all(|_| one.next(&mut rng) == 0));
            let steep = KeyChooser::new(distribution, 5, MAX_ZIPF_THETA).unwrap();
            assert!((0..1000).all(|_| steep.next(&mut rng) < 5));
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        assert_eq!(Percentiles::of(&h), None);
        assert_eq!(Percentiles::json(None), Json::Null);
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 500 + 1;
        assert!(near(p.p50, 5_000), "{p:?}");
        assert!(near(p.p90, 9_000), "{p:?}");
        assert!(near(p.p99, 9_900), "{p:?}");
        assert!(near(p.p999, 9_990), "{p:?}");
        assert!(near(p.max, 10_000), "{p:?}");
        assert!((p.mean - 5_000.5).abs() < 10.0, "{p:?}");

        let mut rec = Recorder::new();
        rec.record_ok(Op::Read, Duration::from_millis(2));
        rec.record_ok(Op::Update, Duration::from_millis(4));
        rec.record_error(
            Op::Update,
            &Error::Failed {
                code: Some(ErrorCode::Quorum),
                message: "x".into(),
                attempts: 1,
            },
        );
        rec.record_error(
            Op::Update,
            &Error::Unknown {
                message: "x".into(),
                attempts: 1,
            },
        );
        let report = PhaseReport {
            phase: Phase::Run,
            elapsed: Duration::from_secs(2),
            recorder: rec,
        };
        let j = report.json();
        assert_eq!(j["ops"], 4);
        assert_eq!(j["ok"], 2);
        assert_eq!(j["throughput"], 1.0);
        assert_eq!(j["by_op"]["read"]["ops"], 1);
        assert_eq!(j["by_op"]["update"]["ops"], 3);
        assert_eq!(j["by_op"]["update"]["ok"], 1);
        assert!(j["by_op"].get("incr").is_none());
        assert!(near(
            j["by_op"]["update"]["latency_us"]["p50"].as_u64().unwrap(),
            4_000
        ));
        assert!(near(j["latency_us"]["max"].as_u64().unwrap(), 4_000));
        assert_eq!(j["errors"]["total"], 2);
        assert_eq!(j["errors"]["failed"], 1);
        assert_eq!(j["errors"]["unknown"], 1);
        assert_eq!(j["errors"]["by_kind"]["failed:quorum"], 1);
        assert_eq!(j["errors"]["by_kind"]["unknown"], 1);
    }

    #[test]
    fn text_report_lists_phases_operations_and_errors() {
        let plan = plan_of(&["--workload", "b", "--keys", "10"]).unwrap();
        let phase = |phase, ops: &[Op]| {
            let mut recorder = Recorder::new();
            for &op in ops {
                recorder.record_ok(op, Duration::from_micros(1500));
            }
            PhaseReport {
                phase,
                elapsed: Duration::from_secs(1),
                recorder,
            }
        };
        let load = Some(phase(Phase::Load, &[Op::Update; 10]));
        let mut run = phase(Phase::Run, &[Op::Read, Op::Read, Op::Update]);
        let busy = Error::Failed {
            code: Some(ErrorCode::Busy),
            message: String::new(),
            attempts: 4,
        };
        run.recorder.record_error(Op::Read, &busy);
        let text = report_text(&plan, (2, 2), [&load, &None], &run);
        assert!(
            text.starts_with(
                "workload b (95% reads, 5% updates), zipfian (theta 0.99) over 10 keys"
            )
        );
        let lines: Vec<&str> = text.lines().collect();
        let row = |name: &str| lines.iter().find(|l| l.starts_with(name)).copied();
        let load_row: Vec<&str> = row("load ").unwrap().split_whitespace().collect();
        assert_eq!(&load_row[..5], ["load", "10", "10.0", "0", "1.00"]);
        assert_eq!(load_row[5], "1.500");
        let run_row: Vec<&str> = row("run ").unwrap().split_whitespace().collect();
        assert_eq!(&run_row[..4], ["run", "4", "3.0", "1"]);
        assert!(row("  read").is_some() && row("  update").is_some());
        assert!(row("warmup").is_none());
        assert!(text.contains("errors in run: failed:busy 1"), "{text}");
    }

    #[test]
    fn error_kinds_name_outcome_and_code() {
        let failed = |code| Error::Failed {
            code,
            message: String::new(),
            attempts: 1,
        };
        assert_eq!(error_kind(&failed(None)), "failed:unreachable");
        assert_eq!(error_kind(&failed(Some(ErrorCode::Busy))), "failed:busy");
        assert_eq!(
            error_kind(&Error::Invalid("q".into())),
            "failed:invalid_request"
        );
    }

    #[test]
    fn defaults_run_for_ten_seconds() {
        let plan = plan_of(&[]).unwrap();
        assert_eq!(plan.workload, Workload::A);
        assert_eq!(plan.distribution, KeyDistribution::Zipfian);
        assert_eq!(plan.duration, Some(DEFAULT_DURATION));
        assert_eq!(plan.ops, None);
        assert_eq!(plan.value.len(), 100);
        assert_eq!(plan.concurrency, 16);
        assert_eq!(plan.request, RequestOptions::default());

        let plan = plan_of(&["--ops", "500"]).unwrap();
        assert_eq!((plan.duration, plan.ops), (None, Some(500)));
        let plan = plan_of(&[
            "--ops",
            "500",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--r",
            "1",
            "--w",
            "3",
            "--workload",
            "counter",
            "--distribution",
            "uniform",
            "--load",
        ])
        .unwrap();
        assert_eq!(plan.duration, Some(Duration::from_secs(2)));
        assert_eq!(plan.warmup, Some(Duration::from_millis(500)));
        assert_eq!((plan.request.r, plan.request.w), (Some(1), Some(3)));
        assert_eq!(plan.workload, Workload::Counter);
        assert!(plan.load);
        assert_eq!(plan.key(7), b"bench:c:7");
    }

    #[test]
    fn bad_flags_are_input_errors() {
        let too_big = (MAX_ELEMENT_LEN + 1).to_string();
        for flags in [
            &["--concurrency", "0"][..],
            &["--concurrency", "5000"],
            &["--keys", "0"],
            &["--zipf-theta", "0"],
            &["--zipf-theta=-1"],
            &["--zipf-theta", "11"],
            &["--zipf-theta", "NaN"],
            &["--value-size", &too_big],
            &["--ops", "0"],
            &["--r", "0"],
            &["--w", "0"],
            &["--rate", "0"],
            &["--rate=-5"],
            &["--rate", "inf"],
        ] {
            let err = plan_of(flags).expect_err(&format!("{flags:?}"));
            assert!(matches!(err, CliError::Input(_)), "{flags:?}");
            assert_eq!(err.exit_code(), 2);
        }
        // Theta does not matter for uniform keys; the largest value fits.
        plan_of(&["--distribution", "uniform", "--zipf-theta", "0"]).unwrap();
        plan_of(&["--value-size", &MAX_ELEMENT_LEN.to_string()]).unwrap();
        assert_eq!(plan_of(&["--rate", "250.5"]).unwrap().rate, Some(250.5));
        // Values clap rejects (main() exits 2 for these).
        for flags in [
            &["--duration", "0s"][..],
            &["--duration", "soon"],
            &["--warmup", "-1s"],
            &["--workload", "d"],
            &["--concurrency", "-1"],
        ] {
            let argv = std::iter::once("bench").chain(flags.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{flags:?}");
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "0", "x", "25h", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
