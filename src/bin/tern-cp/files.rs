//! Files only the control plane's user may read (the API token, TLS keys,
//! the embedded store), through `tern_process`, with the path in the error.

use anyhow::{Context, Result};
use std::path::Path;

pub fn create_private_dir(dir: &Path) -> Result<()> {
    tern_process::create_private_dir(dir).with_context(|| format!("creating directory {}", dir.display()))
}

pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    tern_process::write_private(path, content).with_context(|| format!("writing {} (0600)", path.display()))
}

pub fn restrict(path: &Path) -> Result<()> {
    tern_process::restrict(path).with_context(|| format!("making {} private (0600)", path.display()))
}
