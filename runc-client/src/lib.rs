//! A typed, async client for runc and runc-compatible runtimes (crun, ...).
//!
//! Every call spawns the runtime in its own process group, drains its output with a
//! bounded buffer (so it can never block on a full pipe), returns promptly once it exits
//! even if a grandchild keeps a pipe open, and kills it with everything it started when
//! its deadline passes. Errors carry runc's own message, taken from its JSON log.
//! Dropping a call's future before runc exits counts as an early deadline: runc is killed.
//!
//! Child exits are collected by a process-wide [`Reaper`] (one thread in `waitpid(-1)`),
//! so nothing else in the process may wait for children itself: subscribe to the reaper
//! instead, before spawning.
//!
//! ```no_run
//! use std::path::Path;
//! use runc_client::{CreateOpts, Reaper, Runc, RuncConfig};
//!
//! # async fn demo() -> runc_client::Result<()> {
//! let runc = Runc::new(
//!     RuncConfig { root: Some("/run/sturdy/runc".into()), ..Default::default() },
//!     Reaper::global(),
//! );
//! let opts = CreateOpts { pid_file: "/run/c1/init.pid".into(), ..Default::default() };
//! runc.create("c1", Path::new("/run/c1/bundle"), &opts).await?;
//! runc.start("c1").await?;
//! let state = runc.state("c1").await?;
//! println!("{} is {} as pid {}", state.id, state.status, state.pid);
//! match runc.delete("c1", true).await {
//!     Err(e) if e.is_not_found() => {}
//!     other => other?,
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod blocking;
pub mod cgroup;
mod command;
pub mod config;
pub mod criu;
pub mod drain;
pub mod error;
pub mod events;
pub mod id;
pub mod io;
pub mod options;
pub mod pidfd;
mod private;
pub mod reaper;
mod runc;
pub mod types;
pub mod version;

pub use command::Output;
pub use config::{Deadlines, RuncConfig};
pub use drain::Retained;
pub use error::{Error, Result};
pub use events::EventStream;
pub use id::{validate_id, IdError};
pub use io::{open_fifo_nonblocking, ConsoleSocket, Pipe, ProcessIo};
pub use options::{CheckpointOpts, CreateOpts, ExecOpts, RestoreOpts};
pub use pidfd::Pidfd;
pub use reaper::{Exit, ExitSubscription, ReapHold, Reaper};
pub use runc::Runc;
pub use types::{Event, State, Stats};
pub use version::{affected, Affected, KnownIssue, SemVer, Version};
