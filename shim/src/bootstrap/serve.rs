//! The daemon: serves the Task API on the socket `start` bound, until Shutdown.
//!
//! SIGTERM policy: the daemon ends on SIGTERM only when it has no container left.
//! While containers exist it logs the signal and keeps serving: exiting would leave
//! their processes unreaped, their mounts in place and containerd unable to learn their
//! exits, and a stray `kill` (or an init system stopping a process group) must never take
//! pods down. Containers end through the Task API (Kill, Delete, then Shutdown), or, for
//! a shim that must go, through SIGKILL followed by `containerd-shim-sturdy-v2 delete`,
//! which cleans up from the bundle record.

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::Flags;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::Server;
use runc_client::Reaper;
use tokio::sync::Notify;

use super::resume;
use super::{
    bind_or_reuse, set_cloexec, socket_path, Bind, LISTEN_FD, LISTEN_FD_ENV, TTRPC_ADDRESS_ENV,
};
use crate::control::upgrade::Identity;
use crate::control::Control;
use crate::events::Events;
use crate::handover::v2;
use crate::listener;
use crate::logging;
use crate::reexec;
use crate::service::TaskService;
use crate::tasks::Tasks;

/// ttrpc service name of the Task API in containerd 1.x.
pub const TASK_V2: &str = "containerd.task.v2.Task";
/// ttrpc service name of the Task API in containerd 2.x.
pub const TASK_V3: &str = "containerd.task.v3.Task";

/// Test-only (debug builds): how long, in milliseconds, a connection must have been idle
/// to give way at the connection cap, instead of [`listener::IDLE_LIMIT`].
#[cfg(debug_assertions)]
const IDLE_LIMIT_ENV: &str = "STURDY_TEST_IDLE_LIMIT_MS";

/// The listener's limits; debug builds let tests shorten the idle limit.
fn limits() -> listener::Limits {
    #[allow(unused_mut)]
    let mut limits = listener::Limits::default();
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(IDLE_LIMIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        limits.idle = std::time::Duration::from_millis(ms);
    }
    limits
}

/// Runs the daemon until Shutdown (or SIGTERM with no container left).
pub(super) fn serve(flags: &Flags) -> Result<(), String> {
    // containerd runs the shim with the bundle as its working directory.
    logging::init(
        &std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        flags.debug,
    );
    // Orphaned container processes must become our children so we can reap them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return Err(format!("PR_SET_CHILD_SUBREAPER: {e}"));
    }
    if let Some((document, old_binary, rollback)) = reexec::inherited() {
        return resume::serve_resumed(flags, document, old_binary, rollback);
    }
    // Started here so that a host out of pids fails the start with a message (every later
    // Reaper::global() finds it running) instead of aborting.
    let reaper = Reaper::start().map_err(|e| format!("start the reaper thread: {e}"))?;
    let listener = match std::env::var(LISTEN_FD_ENV) {
        Ok(v) if v == LISTEN_FD.to_string() => {
            // SAFETY: `start` handed this fd down for exactly this purpose.
            let l = unsafe { UnixListener::from_raw_fd(LISTEN_FD) };
            set_cloexec(l.as_raw_fd());
            l
        }
        _ => match bind_or_reuse(&flags.socket)? {
            Bind::Bound(l) => l,
            Bind::Live => return Err(format!("{} is served by another shim", flags.socket)),
        },
    };
    std::env::remove_var(LISTEN_FD_ENV);
    run(flags, reaper, listener, None)
}

/// The daemon's life from its runtime on, fresh or `resumed` from a handover.
pub(super) fn run(
    flags: &Flags,
    reaper: Reaper,
    listener: UnixListener,
    resumed: Option<resume::Resuming>,
) -> Result<(), String> {
    let ttrpc_address = std::env::var(TTRPC_ADDRESS_ENV).map_err(|_| "TTRPC_ADDRESS is not set")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let socket = flags.socket.clone();
    let namespace = flags.namespace.clone();
    let identity = Identity {
        shim: v2::Shim {
            namespace: flags.namespace.clone(),
            id: flags.id.clone(),
            socket: flags.socket.clone(),
            containerd_address: flags.address.clone(),
            ttrpc_address: ttrpc_address.clone(),
            publish_binary: flags.publish_binary.clone(),
            debug: flags.debug,
        },
        listener: listener.as_raw_fd(),
    };
    let result = rt.block_on(async move {
        let shutdown = Arc::new(Notify::new());
        let service = TaskService::new(
            &namespace,
            Events::connect(&ttrpc_address, &namespace),
            reaper,
            shutdown.clone(),
        );
        let tasks = service.tasks().clone();
        let (connections, outcome) = match resumed {
            None => (Vec::new(), None),
            Some(r) => r.restore(&tasks).await?,
        };
        let keep = listener::Keep::containerd(&ttrpc_address);
        // Closed by the upgrade service's Rehearse and Upgrade.
        let gate = listener::Gate::new();
        let control =
            Control::upgradable(gate.clone(), Some(tasks.clone()), Some(identity), outcome);
        let listener = listener::resume(listener, connections, limits(), keep, gate)
            .map_err(|e| format!("listener: {e}"))?;
        let mut server = Server::new()
            .add_listener(listener)
            .register_service(task_services(Arc::new(service)))
            .register_service(control.services());
        server
            .start()
            .await
            .map_err(|e| format!("start ttrpc server: {e}"))?;
        log::info!("serving on {socket}");
        until_shutdown(&tasks, &shutdown).await?;
        // Let the Shutdown reply reach containerd before the socket disappears.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = server.shutdown().await;
        Ok::<(), String>(())
    });
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    result
}

/// Waits for Shutdown, or for a SIGTERM that finds no container (see the module docs).
async fn until_shutdown(tasks: &Tasks, shutdown: &Notify) -> Result<(), String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("signal: {e}"))?;
    loop {
        tokio::select! {
            _ = shutdown.notified() => {
                log::info!("shutdown requested");
                return Ok(());
            }
            _ = term.recv() => {
                if tasks.is_empty() {
                    log::info!("SIGTERM with no container left: exiting");
                    return Ok(());
                }
                log::warn!(
                    "SIGTERM ignored: containers still run here (end them through containerd, \
                     or SIGKILL this shim and run its `delete`)"
                );
            }
        }
    }
}

/// Registers the Task service under both names containerd uses for it: 1.6 and 1.7
/// call `containerd.task.v2.Task`, 2.x `containerd.task.v3.Task`; the messages are the
/// same on the wire.
fn task_services(
    service: Arc<TaskService>,
) -> std::collections::HashMap<String, containerd_shim_protos::ttrpc::r#async::Service> {
    let mut services = create_task(service.clone());
    if let Some(v3) = create_task(service).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    services
}
