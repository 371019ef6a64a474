//! `chaos`: runs the chaos scenarios long (what `scripts/chaos` calls).
//!
//! ```text
//! chaos [--scenario NAME|all] [--seed N] [--duration 30m]
//! ```
//!
//! Each scenario runs with faults for the duration, heals, converges and checks its history;
//! the line it prints per scenario (seed, operations, faults, time to converge, PASS or FAIL
//! with the violations) is what `docs/chaos.md` records. Exit code 1 if any scenario failed.

use std::process::ExitCode;
use std::time::Duration;

use shoal_tests::scenarios::{self, SCENARIOS};

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        _ => return Err(format!("bad duration {s:?}: use 90s, 30m or 1h")),
    })
}

fn main() -> ExitCode {
    let mut scenario = "all".to_owned();
    let mut seed: Option<u64> = None;
    let mut duration = Duration::from_secs(60);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        let parsed = match arg.as_str() {
            "--scenario" => value().map(|v| scenario = v),
            "--seed" => value().and_then(|v| {
                v.parse()
                    .map(|s| seed = Some(s))
                    .map_err(|_| format!("bad seed {v:?}"))
            }),
            "--duration" => value().and_then(|v| parse_duration(&v).map(|d| duration = d)),
            "-h" | "--help" => {
                println!(
                    "chaos [--scenario NAME|all] [--seed N] [--duration 30m]\nscenarios: {}",
                    SCENARIOS.join(", ")
                );
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    }
    let names: Vec<&str> = if scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        vec![scenario.as_str()]
    };
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut failed = false;
    for name in names {
        match scenarios::run(name, seed, duration) {
            Ok(report) => failed |= !report.problems.is_empty(),
            Err(e) => {
                eprintln!("chaos: {name}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
