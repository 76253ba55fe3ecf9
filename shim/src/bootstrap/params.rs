//! What containerd hands `start`: stdin, read with a size and a time bound, and the command
//! line, turned into one [`StartInput`] whichever protocol containerd spoke, and the reply
//! in the format that protocol expects (docs/bootstrap.md).
//!
//! containerd ≥ 2.3 writes `BootstrapParams` to stdin and reads a `BootstrapResult`; 1.6 to
//! 2.2 write the runtime options `Any` (or nothing) and read the bare address. Both are
//! protobuf and each decodes as the other, so the protocol is told by content.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::{Flags, StartOpts};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::socket_dir::{self, SocketDirError};
use crate::options::{RUNC_OPTIONS_TYPE, RUNTIME_OPTIONS_TYPE};

/// Upper bound on stdin (containerd's own shim reads at most this much).
pub const MAX_STDIN: u64 = 10 << 20;
/// How long stdin may take to arrive and close. containerd writes it in one go right after
/// the exec; a stdin that neither delivers nor closes would hold `start` (and the
/// container's creation) forever.
pub const STDIN_DEADLINE: Duration = Duration::from_secs(10);
/// Task API version announced in a `BootstrapResult`. sturdy serves `containerd.task.v3.Task`
/// too, but announcing 3 tells containerd 2.3+ that the shim implements the sandbox API and
/// cleans up its containers itself: containerd then attaches a pod's containers without
/// `start` and, when the shim dies, runs `delete` for the sandbox only, so the other
/// containers' processes, cgroups and runc state outlive it (measured on 2.3.4:
/// docs/bootstrap.md, "Why Task API 2"). With 2, containerd runs `start` and `delete` for
/// each container, as 1.6-2.2 do.
pub const TASK_API_VERSION: i32 = 2;
/// Transport announced in a `BootstrapResult`.
const PROTOCOL: &str = "ttrpc";

/// Test-only (debug builds): the stdin deadline in milliseconds, instead of [`STDIN_DEADLINE`].
#[cfg(debug_assertions)]
const STDIN_DEADLINE_ENV: &str = "STURDY_TEST_STDIN_DEADLINE_MS";

/// Why `start` (or `-info`) cannot use what it was given.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading stdin failed.
    #[error("read stdin: {0}")]
    Read(#[source] std::io::Error),
    /// More than [`MAX_STDIN`] bytes.
    #[error("stdin holds more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// stdin neither delivered everything nor closed in time.
    #[error("stdin was not complete and closed within {0:?}")]
    Deadline(Duration),
    /// Neither `BootstrapParams` nor runtime options.
    #[error(
        "stdin ({len} bytes) is neither containerd's BootstrapParams nor runtime options: {reason}"
    )]
    Malformed { len: usize, reason: String },
    /// `BootstrapParams` for another task than the command line names.
    #[error(
        "bootstrap params are for {namespace}/{id}, the command line for {flag_namespace}/{flag_id}"
    )]
    NotOurs {
        namespace: String,
        id: String,
        flag_namespace: String,
        flag_id: String,
    },
    /// A field the shim cannot do without.
    #[error("bootstrap params carry no {0}")]
    Missing(&'static str),
    /// An unusable `socket_dir`.
    #[error(transparent)]
    SocketDir(#[from] SocketDirError),
}

/// Which protocol containerd spoke, and so which reply it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 1.6 – 2.2: flags, environment, options `Any` on stdin; bare address back.
    Legacy,
    /// 2.3+: `BootstrapParams` on stdin, `BootstrapResult` back.
    Bootstrap,
}

/// Everything `start` needs from containerd, from either protocol.
#[derive(Debug)]
pub struct StartInput {
    /// The protocol containerd spoke.
    pub protocol: Protocol,
    /// Identity, containerd's addresses, log level, socket directory, extensions. The ttrpc
    /// address is empty in the legacy protocol: the daemon inherits `TTRPC_ADDRESS`.
    pub opts: StartOpts,
}

impl StartInput {
    /// Tells the protocol apart by content (docs/bootstrap.md): `BootstrapParams` that set
    /// more than `instance_id`/`namespace`, or set just those to the command line's, are
    /// the 2.3 protocol; an `Any` with a type URL, or nothing, the legacy one.
    pub fn parse(input: &[u8], flags: &Flags) -> Result<Self, InputError> {
        if input.is_empty() {
            return Ok(Self::legacy(flags, None));
        }
        if let Ok(params) = BootstrapParams::parse_from_bytes(input) {
            // An options `Any` decodes as exactly this: type URL → instance_id, value →
            // namespace (when it is UTF-8), nothing else.
            let identity_only = params
                == BootstrapParams {
                    instance_id: params.instance_id.clone(),
                    namespace: params.namespace.clone(),
                    ..Default::default()
                };
            let ours = params.instance_id == flags.id && params.namespace == flags.namespace;
            if !identity_only || ours {
                return Self::bootstrap(params, flags);
            }
        }
        match Any::parse_from_bytes(input) {
            Ok(any) if !any.type_url.is_empty() => Ok(Self::legacy(flags, Some(any))),
            Ok(_) => Err(InputError::Malformed {
                len: input.len(),
                reason: "no type URL".into(),
            }),
            Err(e) => Err(InputError::Malformed {
                len: input.len(),
                reason: e.to_string(),
            }),
        }
    }

    fn legacy(flags: &Flags, options: Option<Any>) -> Self {
        Self {
            protocol: Protocol::Legacy,
            opts: StartOpts {
                id: flags.id.clone(),
                namespace: flags.namespace.clone(),
                address: flags.address.clone(),
                publish_binary: flags.publish_binary.clone(),
                debug: flags.debug,
                extensions: options.into_iter().collect(),
                ..Default::default()
            },
        }
    }

    fn bootstrap(params: BootstrapParams, flags: &Flags) -> Result<Self, InputError> {
        // containerd 2.3 and 2.4 still pass -id/-namespace; a later one may not.
        let differs = |flag: &str, param: &str| !flag.is_empty() && flag != param;
        if differs(&flags.id, &params.instance_id) || differs(&flags.namespace, &params.namespace) {
            return Err(InputError::NotOurs {
                namespace: params.namespace,
                id: params.instance_id,
                flag_namespace: flags.namespace.clone(),
                flag_id: flags.id.clone(),
            });
        }
        for (value, name) in [
            (&params.instance_id, "instance_id"),
            (&params.namespace, "namespace"),
            (&params.containerd_ttrpc_address, "containerd_ttrpc_address"),
        ] {
            if value.is_empty() {
                return Err(InputError::Missing(name));
            }
        }
        let socket_dir = match params.socket_dir.as_deref() {
            None | Some("") => None,
            Some(dir) => Some(socket_dir::validate(dir)?.to_string()),
        };
        let mut opts = StartOpts::from(params);
        opts.socket_dir = socket_dir;
        // The flags still come along; they fill what the params leave empty.
        opts.debug |= flags.debug;
        if opts.address.is_empty() {
            opts.address = flags.address.clone();
        }
        if opts.publish_binary.is_empty() {
            opts.publish_binary = flags.publish_binary.clone();
        }
        Ok(Self {
            protocol: Protocol::Bootstrap,
            opts,
        })
    }

    /// The runtime options containerd passed: the legacy payload, or the extension of a
    /// type sturdy reads (else the first `…Options` one, so Create reports it by name).
    pub fn options(&self) -> Option<&Any> {
        let name = |a: &Any| {
            a.type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let exts = &self.opts.extensions;
        exts.iter()
            .find(|a| [RUNC_OPTIONS_TYPE, RUNTIME_OPTIONS_TYPE].contains(&name(a).as_str()))
            .or_else(|| exts.iter().find(|a| name(a).ends_with("Options")))
    }

    /// What to print for `address`: a `BootstrapResult` to 2.3+, the bare address (exactly
    /// as 1.6 – 2.2 read it) otherwise.
    pub fn reply(&self, address: &str) -> Vec<u8> {
        match self.protocol {
            Protocol::Legacy => address.as_bytes().to_vec(),
            Protocol::Bootstrap => BootstrapResult {
                version: TASK_API_VERSION,
                address: address.to_string(),
                protocol: PROTOCOL.to_string(),
                ..Default::default()
            }
            .write_to_bytes()
            // Only strings and an int: encoding cannot fail.
            .unwrap_or_default(),
        }
    }
}

/// stdin, bounded by [`MAX_STDIN`] and the stdin deadline. A terminal (a person running
/// `start` by hand) and a closed fd 0 count as no input.
pub fn read_stdin() -> Result<Vec<u8>, InputError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(Vec::new());
    }
    read_bounded(stdin.as_fd(), MAX_STDIN, stdin_deadline())
}

fn stdin_deadline() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(STDIN_DEADLINE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    STDIN_DEADLINE
}

/// Reads `fd` to its end: more than `limit` bytes, or not at the end within `deadline`,
/// is an error.
pub fn read_bounded(
    fd: BorrowedFd<'_>,
    limit: u64,
    deadline: Duration,
) -> Result<Vec<u8>, InputError> {
    let end = Instant::now() + deadline;
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return Err(InputError::Deadline(deadline)),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(InputError::Read(e.into())),
        }
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return Ok(input),
            Ok(n) => {
                if (input.len() + n) as u64 > limit {
                    return Err(InputError::TooLarge { limit });
                }
                input.extend_from_slice(&chunk[..n]);
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            // No fd 0 at all: nothing was passed.
            Err(Errno::EBADF) if input.is_empty() => return Ok(input),
            Err(e) => return Err(InputError::Read(e.into())),
        }
    }
}

#[cfg(test)]
mod tests;
