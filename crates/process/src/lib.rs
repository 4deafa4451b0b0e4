//! Child processes that die with their parent: a SIGKILL of `tern-dp` or
//! of `ternctl quickstart` must not leave Envoy or a control plane running.

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
