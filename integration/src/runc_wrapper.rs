//! A runc that misbehaves on purpose: a script standing in for runc that, while a switch
//! file exists, does something of its own for chosen subcommands, and otherwise runs the
//! real runc. The ways runc fails in production (hanging, flooding its stdio) are
//! reproduced this way through containerd and a real shim.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// The runc subcommands a wrapper tells apart: the first argument that is one of them is
/// the subcommand (flags and their values come before it).
const SUBCOMMANDS: [&str; 13] = [
    "create", "start", "delete", "kill", "state", "ps", "pause", "resume", "update", "events",
    "features", "run", "exec",
];

/// Writes the wrapper at `path` (mode 0755). While `switch` exists, a subcommand named in
/// `actions` first runs its shell text, which ends in `break` to go on to the real runc or
/// leaves with `exit`; every other invocation is the real runc's: the runtime a fixture
/// started with the default builder runs ([`crate::OciRuntime::from_env`]).
pub fn write(path: &Path, switch: &Path, actions: &[(&str, String)]) -> Result<()> {
    let runc = crate::OciRuntime::from_env()?.binary()?;
    let arms: String = actions
        .iter()
        .map(|(sub, action)| format!("{sub}) {action} ;;\n"))
        .collect();
    let others: Vec<&str> = SUBCOMMANDS
        .into_iter()
        .filter(|s| !actions.iter().any(|(sub, _)| sub == s))
        .collect();
    let script = format!(
        "#!/bin/sh\n\
         if [ -e '{switch}' ]; then\n\
         for a in \"$@\"; do\n\
         case \"$a\" in\n\
         {arms}\
         {others}) break ;;\n\
         esac\n\
         done\n\
         fi\n\
         exec '{runc}' \"$@\"\n",
        switch = switch.display(),
        others = others.join("|"),
        runc = runc.display(),
    );
    let context = || format!("writing {}", path.display());
    std::fs::write(path, script).ctx(context)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).ctx(context)
}
