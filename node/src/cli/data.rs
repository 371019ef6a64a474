//! The data commands, through the SDK ([`shoal_client`]): `shoal counter incr|get`,
//! `shoal set add|remove|get`, `shoal register put|get`, `shoal delete`, `shoal get`.
//!
//! Reaching the cluster, first match wins:
//!
//! 1. `--seeds A,B` with `--tls-dir DIR` (and `--client NAME`, default: the only
//!    `client-*.pem` in DIR);
//! 2. `--cluster DIR`, or the environment variable `SHOAL_CLUSTER`: a `shoal dev-cluster`
//!    directory, whose `cluster.toml` names the seeds, the certificate directory and the
//!    client certificate (layout in the `dev_cluster` module).
//!
//! Options on every command: `--r N`, `--w N`, `--timeout T` (`500ms`, `2s`, or seconds),
//! `--keyspace NAME` (default `default`), `--json`. A VALUE or MEMBER of `-` is read from
//! standard input: a register value is all of it, byte for byte; members are one per line.
//!
//! Exit codes: 0 done (a write: acknowledged by W replicas); 1 failed with no effect; 2 usage
//! or input error (including a key of another type); 3 unknown outcome.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};
use shoal_client::identity::ClientName;
use shoal_client::protocol::ErrorCode;
use shoal_client::tls::TlsMaterial;
use shoal_client::{Client, ClientConfig, Error, Handle, Kind, RequestOptions, View};

use super::CliError;

/// Name of the environment variable naming a dev-cluster directory.
pub const CLUSTER_ENV: &str = "SHOAL_CLUSTER";
/// The cluster file in a dev-cluster directory.
const CLUSTER_FILE: &str = "cluster.toml";

/// How to reach the cluster and per-request options, on every data command.
#[derive(Debug, Clone, Args)]
pub struct DataOptions {
    /// Dev-cluster directory (its cluster.toml names seeds and certificates); default
    /// $SHOAL_CLUSTER.
    #[arg(long, global = true, value_name = "DIR")]
    pub cluster: Option<PathBuf>,
    /// Node addresses to start from, comma-separated (needs --tls-dir).
    #[arg(long, global = true, value_delimiter = ',', value_name = "A,B")]
    pub seeds: Vec<SocketAddr>,
    /// Certificate directory with ca.pem and the client certificate.
    #[arg(long = "tls-dir", global = true, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Client certificate name in the certificate directory.
    #[arg(long, global = true, value_name = "NAME")]
    pub client: Option<String>,
    /// Read quorum (default 2).
    #[arg(long, global = true)]
    pub r: Option<u32>,
    /// Write quorum (default 2).
    #[arg(long, global = true)]
    pub w: Option<u32>,
    /// Deadline of the request, retries included: `500ms`, `2s`, or seconds (default 5s).
    #[arg(long, global = true, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Keyspace.
    #[arg(long, global = true, default_value = shoal_client::DEFAULT_KEYSPACE)]
    pub keyspace: String,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `shoal counter …`.
#[derive(Debug, Args)]
pub struct CounterArgs {
    #[command(subcommand)]
    command: CounterCommand,
    #[command(flatten)]
    options: DataOptions,
}

#[derive(Debug, Subcommand)]
enum CounterCommand {
    /// Add DELTA (default 1, may be negative) to the counter KEY.
    Incr {
        /// The key.
        key: String,
        /// The amount.
        #[arg(allow_negative_numbers = true)]
        delta: Option<i64>,
    },
    /// Print the counter KEY (0 if absent).
    Get {
        /// The key.
        key: String,
    },
}

/// `shoal set …`.
#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(subcommand)]
    command: SetCommand,
    #[command(flatten)]
    options: DataOptions,
}

#[derive(Debug, Subcommand)]
enum SetCommand {
    /// Add members to the set KEY (`-`: members from stdin, one per line).
    Add {
        /// The key.
        key: String,
        /// Members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members from the set KEY (`-`: members from stdin, one per line).
    Remove {
        /// The key.
        key: String,
        /// Members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Print the members of the set KEY, one per line.
    Get {
        /// The key.
        key: String,
    },
}

/// `shoal register …`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(subcommand)]
    command: RegisterCommand,
    #[command(flatten)]
    options: DataOptions,
}

#[derive(Debug, Subcommand)]
enum RegisterCommand {
    /// Write VALUE to the register KEY (`-`: all of stdin), superseding its values.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Print the register KEY's values (several if concurrent writes are unresolved).
    Get {
        /// The key.
        key: String,
    },
}

/// `shoal delete KEY` and `shoal get KEY`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    options: DataOptions,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 2s or 2"))?;
    let secs = value * scale;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{text:?} must be above 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where the cluster is and who we are.
#[derive(Debug)]
struct Target {
    seeds: Vec<SocketAddr>,
    tls_dir: PathBuf,
    client: String,
}

fn input(message: impl Into<String>) -> CliError {
    CliError::Input(message.into())
}

fn resolve(options: &DataOptions) -> Result<Target, CliError> {
    if !options.seeds.is_empty() {
        let tls_dir = options
            .tls_dir
            .clone()
            .ok_or_else(|| input("--seeds needs --tls-dir DIR"))?;
        let client = match &options.client {
            Some(name) => name.clone(),
            None => only_client(&tls_dir)?,
        };
        return Ok(Target {
            seeds: options.seeds.clone(),
            tls_dir,
            client,
        });
    }
    let dir = options
        .cluster
        .clone()
        .or_else(|| std::env::var_os(CLUSTER_ENV).map(PathBuf::from))
        .ok_or_else(|| {
            input(format!(
                "no cluster given: pass --cluster DIR, or --seeds A,B with --tls-dir DIR, or set {CLUSTER_ENV}"
            ))
        })?;
    read_cluster_file(&dir, options)
}

/// Reads `DIR/cluster.toml` (written by `shoal dev-cluster`): `seeds`, `tls_dir`, `client`.
fn read_cluster_file(dir: &Path, options: &DataOptions) -> Result<Target, CliError> {
    let path = dir.join(CLUSTER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        input(format!(
            "{}: {e} (is {} a dev-cluster directory?)",
            path.display(),
            dir.display()
        ))
    })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| input(format!("{}: {}", path.display(), e.message())))?;
    let bad = |key: &str, what: &str| input(format!("{}: `{key}` {what}", path.display()));
    let seeds = table
        .get("seeds")
        .and_then(toml::Value::as_array)
        .ok_or_else(|| bad("seeds", "is missing or not a list"))?
        .iter()
        .map(|s| s.as_str().and_then(|s| s.parse::<SocketAddr>().ok()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("seeds", "must be addresses such as \"127.0.0.1:7100\""))?;
    let tls_dir = table
        .get("tls_dir")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| bad("tls_dir", "is missing or not a string"))?;
    let tls_dir = options.tls_dir.clone().unwrap_or_else(|| dir.join(tls_dir));
    let client = match (&options.client, table.get("client")) {
        (Some(name), _) => name.clone(),
        (None, Some(name)) => name
            .as_str()
            .ok_or_else(|| bad("client", "is not a string"))?
            .to_owned(),
        (None, None) => only_client(&tls_dir)?,
    };
    Ok(Target {
        seeds,
        tls_dir,
        client,
    })
}

/// The name of the only client certificate in `dir`.
fn only_client(dir: &Path) -> Result<String, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| input(format!("{}: {e}", dir.display())))?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("client-")?
                    .strip_suffix(".pem")?
                    .to_owned(),
            )
        })
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(input(format!(
            "no client certificate in {}: run `shoal cert client --dir {} --name NAME`",
            dir.display(),
            dir.display()
        ))),
        _ => Err(input(format!(
            "several client certificates in {}: choose one with --client NAME",
            dir.display()
        ))),
    }
}

async fn connect(options: &DataOptions) -> Result<Client, CliError> {
    let target = resolve(options)?;
    let name = ClientName::new(target.client).map_err(|e| input(e.to_string()))?;
    let tls = TlsMaterial::load_client(&target.tls_dir, &name).map_err(|e| input(e.to_string()))?;
    let mut config = ClientConfig::default();
    if let Some(timeout) = options.timeout {
        config.timeout = timeout;
    }
    Client::builder()
        .seeds(target.seeds)
        .tls(tls)
        .config(config)
        .build()
        .await
        .map_err(classify)
}

/// The exit-code class of an SDK error.
pub(crate) fn classify(e: Error) -> CliError {
    match e {
        Error::Unknown { .. } => CliError::Unknown(e.to_string()),
        // A write the store refused (the key holds another type, a value over its limit) is
        // the input's fault too.
        Error::Invalid(_)
        | Error::WrongType { .. }
        | Error::Tls(_)
        | Error::Failed {
            code: Some(ErrorCode::Storage | ErrorCode::Invalid),
            ..
        } => CliError::Input(e.to_string()),
        _ => CliError::Failed(e.to_string()),
    }
}

fn request_options(options: &DataOptions) -> RequestOptions {
    RequestOptions {
        r: options.r,
        w: options.w,
        timeout: options.timeout,
    }
}

/// Connects as `options` say and runs `body` on a runtime of its own.
pub(crate) fn with_client(
    options: DataOptions,
    body: impl AsyncFnOnce(&Client, &DataOptions) -> Result<(), CliError>,
) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?
        .block_on(async move {
            let client = connect(&options).await?;
            body(&client, &options).await
        })
}

/// `handle` in the keyspace and with the quorums and timeout of `options`.
fn scoped<'a, K>(handle: Handle<'a, K>, options: &DataOptions) -> Handle<'a, K> {
    handle
        .keyspace(&options.keyspace)
        .options(request_options(options))
}

/// Reads stdin for a `-` argument.
fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| input(format!("cannot read standard input: {e}")))?;
    Ok(buf)
}

/// Members from the command line; a `-` stands for stdin's lines (at most one `-`).
fn members(args: Vec<String>) -> Result<Vec<Vec<u8>>, CliError> {
    if args.iter().filter(|m| *m == "-").count() > 1 {
        return Err(input("`-` (standard input) may be given once"));
    }
    let mut out = Vec::new();
    for member in args {
        if member == "-" {
            let text = read_stdin()?;
            out.extend(
                text.split(|b| *b == b'\n')
                    .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                    .filter(|line| !line.is_empty())
                    .map(<[u8]>::to_vec),
            );
        } else {
            out.push(member.into_bytes());
        }
    }
    Ok(out)
}

/// Bytes for people: UTF-8 as is, anything else lossily.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes in JSON: a string if UTF-8, else `{"hex": "…"}`.
fn json_bytes(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(s) => Json::String(s.to_owned()),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

pub(crate) fn print_json(value: Json) {
    println!("{value}");
}

fn report_write(options: &DataOptions, key: &str, acks: u32) {
    if options.json {
        print_json(json!({ "key": key, "outcome": "acknowledged", "acks": acks }));
    } else {
        println!("ok: acknowledged by {acks} replicas");
    }
}

/// Runs `shoal counter …`.
pub fn run_counter(args: CounterArgs) -> Result<(), CliError> {
    let CounterArgs { command, options } = args;
    with_client(options, async |client, options| {
        let handle = |key: &str| scoped(client.counter(key.as_bytes()), options);
        match command {
            CounterCommand::Incr { key, delta } => {
                let acks = handle(&key)
                    .incr(delta.unwrap_or(1))
                    .await
                    .map_err(classify)?;
                report_write(options, &key, acks);
            }
            CounterCommand::Get { key } => {
                let value = handle(&key).get().await.map_err(classify)?;
                if options.json {
                    print_json(json!({ "key": key, "type": "counter", "value": value }));
                } else {
                    println!("{value}");
                }
            }
        }
        Ok(())
    })
}

/// Runs `shoal set …`.
pub fn run_set(args: SetArgs) -> Result<(), CliError> {
    let SetArgs { command, options } = args;
    with_client(options, async |client, options| {
        let handle = |key: &str| scoped(client.set(key.as_bytes()), options);
        match command {
            SetCommand::Add { key, members: m } => {
                let acks = handle(&key).add(members(m)?).await.map_err(classify)?;
                report_write(options, &key, acks);
            }
            SetCommand::Remove { key, members: m } => {
                let acks = handle(&key).remove(members(m)?).await.map_err(classify)?;
                report_write(options, &key, acks);
            }
            SetCommand::Get { key } => {
                let members = handle(&key).get().await.map_err(classify)?;
                if options.json {
                    let members: Vec<Json> = members.iter().map(|m| json_bytes(m)).collect();
                    print_json(json!({ "key": key, "type": "set", "members": members }));
                } else {
                    for member in members {
                        println!("{}", text(&member));
                    }
                }
            }
        }
        Ok(())
    })
}

/// Runs `shoal register …`.
pub fn run_register(args: RegisterArgs) -> Result<(), CliError> {
    let RegisterArgs { command, options } = args;
    with_client(options, async |client, options| {
        let handle = |key: &str| scoped(client.register(key.as_bytes()), options);
        match command {
            RegisterCommand::Put { key, value } => {
                let value = if value == "-" {
                    read_stdin()?
                } else {
                    value.into_bytes()
                };
                let acks = handle(&key).put(value).await.map_err(classify)?;
                report_write(options, &key, acks);
            }
            RegisterCommand::Get { key } => {
                let siblings = handle(&key).get().await.map_err(classify)?;
                if options.json {
                    let values: Vec<Json> = siblings.values.iter().map(|v| json_bytes(v)).collect();
                    print_json(json!({ "key": key, "type": "register", "values": values }));
                } else {
                    for value in &siblings.values {
                        println!("{}", text(value));
                    }
                }
            }
        }
        Ok(())
    })
}

/// Runs `shoal delete KEY`.
pub fn run_delete(args: KeyArgs) -> Result<(), CliError> {
    let KeyArgs { key, options } = args;
    with_client(options, async |client, options| {
        let acks = scoped(client.key(key.as_bytes()), options)
            .delete()
            .await
            .map_err(classify)?;
        report_write(options, &key, acks);
        Ok(())
    })
}

/// Runs `shoal get KEY`: the key's type and value, whatever the type.
pub fn run_get(args: KeyArgs) -> Result<(), CliError> {
    let KeyArgs { key, options } = args;
    with_client(options, async |client, options| {
        let got = scoped(client.key(key.as_bytes()), options)
            .get()
            .await
            .map_err(classify)?;
        if options.json {
            let (kind, value) = match &got {
                Some((kind, view)) => (Json::from(kind.name()), view_json(view)),
                None => (Json::Null, Json::Null),
            };
            print_json(json!({ "key": key, "type": kind, "value": value }));
        } else {
            match &got {
                None => println!("(absent)"),
                Some((kind, view)) => print_view(*kind, view),
            }
        }
        Ok(())
    })
}

pub(crate) fn view_json(view: &View) -> Json {
    match view {
        View::Counter(n) => json!(n),
        View::Set(members) => Json::Array(members.iter().map(|m| json_bytes(m)).collect()),
        View::Register(r) => Json::Array(r.values.iter().map(|v| json_bytes(v)).collect()),
        View::Map(fields) => Json::Object(
            fields
                .iter()
                .map(|(name, field)| {
                    let mut entry = serde_json::Map::new();
                    if let Some(n) = field.counter {
                        entry.insert("counter".into(), json!(n));
                    }
                    if let Some(set) = &field.set {
                        entry.insert(
                            "set".into(),
                            Json::Array(set.iter().map(|m| json_bytes(m)).collect()),
                        );
                    }
                    if let Some(values) = &field.register {
                        entry.insert(
                            "register".into(),
                            Json::Array(values.iter().map(|v| json_bytes(v)).collect()),
                        );
                    }
                    (text(name), Json::Object(entry))
                })
                .collect(),
        ),
    }
}

fn print_view(kind: Kind, view: &View) {
    println!("type: {}", kind.name());
    match view {
        View::Counter(n) => println!("{n}"),
        View::Set(members) => members.iter().for_each(|m| println!("{}", text(m))),
        View::Register(r) => r.values.iter().for_each(|v| println!("{}", text(v))),
        View::Map(_) => println!("{}", view_json(view)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_with_units() {
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "x", "0", "-1s", "2h", "NaN"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_file_gives_seeds_certificates_and_client() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CLUSTER_FILE),
            "seeds = [\"127.0.0.1:7100\", \"127.0.0.1:7101\"]\ntls_dir = \"tls\"\nclient = \"dev\"\nnodes = [\"n1\", \"n2\"]\n",
        )
        .unwrap();
        let options = DataOptions {
            cluster: Some(dir.path().to_owned()),
            seeds: vec![],
            tls_dir: None,
            client: None,
            r: None,
            w: None,
            timeout: None,
            keyspace: "default".into(),
            json: false,
        };
        let target = resolve(&options).unwrap();
        assert_eq!(target.seeds.len(), 2);
        assert_eq!(target.tls_dir, dir.path().join("tls"));
        assert_eq!(target.client, "dev");

        std::fs::write(dir.path().join(CLUSTER_FILE), "seeds = [\"nope\"]\n").unwrap();
        assert!(matches!(resolve(&options), Err(CliError::Input(_))));
        let missing = DataOptions {
            cluster: Some(dir.path().join("absent")),
            ..options
        };
        assert!(matches!(resolve(&missing), Err(CliError::Input(_))));
    }

    #[test]
    fn seeds_need_a_certificate_directory() {
        let options = DataOptions {
            cluster: None,
            seeds: vec!["127.0.0.1:1".parse().unwrap()],
            tls_dir: None,
            client: None,
            r: None,
            w: None,
            timeout: None,
            keyspace: "default".into(),
            json: false,
        };
        assert!(matches!(resolve(&options), Err(CliError::Input(_))));
    }
}
