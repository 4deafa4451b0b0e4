//! Process hygiene shared by the binaries: child processes that die with
//! their parent (a SIGKILL of `tern-dp` or of `ternctl quickstart` must not
//! leave Envoy or a control plane running), and files only their owner may
//! read (tokens, keys, Envoy's bootstrap, the embedded store).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and parents) as 0700 if missing; an existing one keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `content` to `path`, readable by the owner only (0600), whether
/// or not the file existed before.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    restrict(path)?;
    f.write_all(content)
}

/// Makes an existing file 0600.
pub fn restrict(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it
/// exits (Linux `PR_SET_PDEATHSIG`). Spawn from a long-lived thread: tokio's
/// worker threads live as long as the runtime.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and makes one
    // async-signal-safe system call (prctl); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_become_private() {
        let dir = std::env::temp_dir().join(format!("tern-process-{}", std::process::id()));
        create_private_dir(&dir).expect("dir");
        let path = dir.join("api-token");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"new").expect("write_private");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        let content = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(content, "new");
    }
}
