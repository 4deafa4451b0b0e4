//! `ternctl generate dataplane-token`, `generate signing-key`, `revoke
//! dataplane-token` and `delete signing-key`: data-plane identity over the API.

use crate::client::Client;
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tern_protocol::{DataplaneTokenRequest, TokenRevocation, ZoneTokenRequest};

/// Prints a token for one data plane (and nothing else, so it can be piped to a file).
pub async fn generate_dataplane_token(
    client: &Client,
    mesh: &str,
    name: &str,
    tags: &[String],
    valid_for: &str,
) -> Result<()> {
    let mut parsed = BTreeMap::new();
    for tag in tags {
        let (k, v) = tag.split_once('=').ok_or_else(|| anyhow!("--tag {tag:?} must be KEY=VALUE"))?;
        parsed.insert(k.to_string(), v.to_string());
    }
    let req =
        DataplaneTokenRequest { mesh: mesh.into(), name: name.into(), tags: parsed, valid_for: Some(valid_for.into()) };
    print_token(client.call(Method::POST, "/tokens/dataplane", Some(&serde_json::to_value(&req)?)).await?)
}

/// Prints the token an API answered with, alone on its line.
fn print_token(answer: Value) -> Result<()> {
    match answer {
        Value::String(token) => {
            println!("{}", token.trim());
            Ok(())
        }
        other => bail!("the API answered with something that is not a token: {other}"),
    }
}

/// Prints a token for one zone control plane (and nothing else).
pub async fn generate_zone_token(client: &Client, zone: &str, valid_for: &str) -> Result<()> {
    let req = ZoneTokenRequest { zone: zone.into(), valid_for: Some(valid_for.into()) };
    print_token(client.call(Method::POST, "/tokens/zone", Some(&serde_json::to_value(&req)?)).await?)
}

/// Adds a signing key; new tokens are signed with it.
pub async fn generate_signing_key(client: &Client) -> Result<()> {
    let answer = client.call(Method::POST, "/tokens/dataplane/signing-keys", None).await?;
    let serial = answer["serial"].as_u64().ok_or_else(|| anyhow!("the API did not say the new key's serial"))?;
    println!("signing key {serial} added: new data-plane tokens are signed with it; tokens signed by older keys stay valid until you `ternctl delete signing-key SERIAL`");
    Ok(())
}

/// Removes a signing key: tokens it signed stop working.
pub async fn delete_signing_key(client: &Client, serial: &str) -> Result<()> {
    client.call(Method::DELETE, &format!("/tokens/dataplane/signing-keys/{serial}"), None).await?;
    println!("signing key {serial}: deleted; tokens it signed are refused from now on");
    Ok(())
}

/// Revokes a token, named by its id or read from its file.
pub async fn revoke_dataplane_token(client: &Client, id: Option<&str>, token_file: Option<&Path>) -> Result<()> {
    let id = match (id, token_file) {
        (Some(id), _) => id.to_string(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            tern_tokens::token_id(&text)
                .ok_or_else(|| anyhow!("{} does not hold a data-plane token", path.display()))?
        }
        (None, None) => bail!("name the token: --id ID or --token-file FILE"),
    };
    let body = serde_json::to_value(TokenRevocation { id: id.clone() })?;
    client.call(Method::POST, "/tokens/dataplane/revocations", Some(&body)).await?;
    println!("data-plane token {id}: revoked");
    Ok(())
}
