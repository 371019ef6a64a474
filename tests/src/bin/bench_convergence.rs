//! `bench-convergence`: the convergence benchmark (see `shoal_tests::convergence`); what
//! `scripts/bench-convergence` runs.
//!
//! ```text
//! bench-convergence [--keys 5000] [--d 1,10,100,1000] [--value-size 100] [--kill-secs 10]
//!                   [--wipes 1] [--out target/bench-convergence]
//! ```
//!
//! Prints progress and each run's figures on stderr, the results JSON on stdout, and writes
//! `results.json` and one SVG plot per run into `--out`.

use std::process::ExitCode;

use shoal_tests::convergence::{self, Settings};

fn main() -> ExitCode {
    let mut settings = Settings {
        keys: 5000,
        d: vec![1, 10, 100, 1000],
        value_size: 100,
        kill_secs: 10,
        wipes: 1,
        out: "target/bench-convergence".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("bench-convergence: {arg} needs a value");
            return ExitCode::from(2);
        };
        let bad = |what: &str| {
            eprintln!("bench-convergence: bad {what}: {value:?}");
            ExitCode::from(2)
        };
        match arg.as_str() {
            "--keys" => match value.parse() {
                Ok(n) if n > 0 => settings.keys = n,
                _ => return bad("--keys"),
            },
            "--d" => match value
                .split(',')
                .map(|d| d.parse::<usize>().ok().filter(|&d| d > 0))
                .collect::<Option<Vec<_>>>()
            {
                Some(d) => settings.d = d,
                None => return bad("--d"),
            },
            "--value-size" => match value.parse() {
                Ok(n) if n > 0 && n <= 65536 => settings.value_size = n,
                _ => return bad("--value-size"),
            },
            "--kill-secs" => match value.parse() {
                Ok(n) if n > 0 => settings.kill_secs = n,
                _ => return bad("--kill-secs"),
            },
            "--wipes" => match value.parse() {
                Ok(n) if (1..=100).contains(&n) => settings.wipes = n,
                _ => return bad("--wipes"),
            },
            "--out" => settings.out = value.into(),
            _ => {
                eprintln!("bench-convergence: unknown argument {arg:?}");
                return ExitCode::from(2);
            }
        }
    }
    match convergence::run(settings) {
        Ok(results) => {
            println!("{}", serde_json::to_string_pretty(&results).unwrap());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-convergence: {e}");
            ExitCode::from(1)
        }
    }
}
