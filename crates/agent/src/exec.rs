//! `citadel jail exec`: a command run as a jail — its environment, working directory, and for
//! a netns jail its namespaces and cgroups. The CLI runs it itself on the jail's host (so an
//! interactive command gets the terminal); an agent runs it for an operator elsewhere
//! (`Request::Exec`) and streams its output back.

use std::path::PathBuf;

use crate::protocol::Identity;

/// The command `program args…` as the jail `id` describes.
pub fn command(
    id: &Identity,
    program: &str,
    args: &[String],
) -> std::io::Result<std::process::Command> {
    let mut cmd = match id.netns_pid {
        None => std::process::Command::new(program),
        // A netns jail: enter its namespaces (nsenter forks, so the command is in the jail's
        // PID namespace too).
        Some(pid) => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--target={pid}"))
                .args(["--net", "--mount", "--uts", "--ipc", "--pid"])
                .arg(format!("--wd={}", id.cwd.display()))
                .arg("--")
                .arg(program);
            join_cgroups(&mut c, &id.cgroup_procs)?;
            c
        }
    };
    cmd.args(args)
        .env_clear()
        .envs(&id.env)
        .current_dir(&id.cwd);
    Ok(cmd)
}

/// The exit code a shell would report: the code, or 128 + the signal that ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Makes the command (and so everything it starts) join a netns jail's cgroups before it runs,
/// so `exec` is held to the jail's limits. The paths are made C strings first: between fork
/// and exec nothing may allocate.
fn join_cgroups(cmd: &mut std::process::Command, procs: &[PathBuf]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let paths: Vec<std::ffi::CString> = procs
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| std::io::Error::other("a cgroup path has a NUL byte"))?;
    // SAFETY: open/write/close only, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &paths {
                let fd = nix::fcntl::open(
                    p.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::empty(),
                )?;
                // "0" is the writing process itself.
                nix::unistd::write(&fd, b"0")?;
            }
            Ok(())
        });
    }
    Ok(())
}
