//! `tern-dp`: the Tern data-plane agent. Today it checks a Dataplane file the
//! way the control plane will and shows what its OTLP exporters would do;
//! running Envoy and the OTLP pipe come next (see ARCHITECTURE.md).

mod otel;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tern_model::{parse_documents, resource_from_document, Kind};

#[derive(Parser)]
#[command(name = "tern-dp", version, about = "Tern data-plane agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a Dataplane file (Universal or Kubernetes form) with the same
    /// rules the control plane applies, and print it as it will be stored.
    Validate {
        #[arg(long)]
        dataplane_file: PathBuf,
    },
    /// OpenTelemetry exporter configuration from the OTEL_EXPORTER_OTLP_* environment.
    #[command(subcommand)]
    Otel(OtelCommand),
}

#[derive(Subcommand)]
enum OtelCommand {
    /// Print the inventory sent to the control plane: which variables are
    /// present and usable, never their values.
    Inventory,
    /// Print the final per-signal exporter config for a plan file and this
    /// environment, each field with its source; secrets redacted.
    Resolve {
        #[arg(long)]
        plan: PathBuf,
    },
}

fn validate(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let docs = parse_documents(&text).map_err(|e| format!("{} is not valid YAML: {e}", path.display()))?;
    let [doc] = docs.as_slice() else {
        return Err(format!("{} must hold exactly one Dataplane document, found {}", path.display(), docs.len()));
    };
    let parsed = resource_from_document(&doc.value).map_err(|e| {
        let lines: Vec<String> = e.violations.iter().map(|v| format!("  {v}")).collect();
        format!("{} is not a valid Dataplane:\n{}", path.display(), lines.join("\n"))
    })?;
    if parsed.resource.kind != Kind::Dataplane {
        return Err(format!("{} holds a {}, not a Dataplane", path.display(), parsed.resource.kind));
    }
    serde_yaml_ng::to_string(&parsed.resource.to_json()).map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { dataplane_file } => validate(&dataplane_file),
        Command::Otel(OtelCommand::Inventory) => otel::inventory().map(|s| s + "\n"),
        Command::Otel(OtelCommand::Resolve { plan }) => otel::resolve(&plan).map(|s| s + "\n"),
    };
    match result {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    }
}
