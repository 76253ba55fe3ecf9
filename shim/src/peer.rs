//! Who may talk to the shim: only processes of the shim's own uid.
//!
//! The socket's 0600 mode already keeps other users out of the filesystem path; checking
//! SO_PEERCRED on every accepted connection also covers an fd passed on by a privileged
//! process, as containerd's Go shim does with its same-user handshaker.

use std::os::fd::{BorrowedFd, RawFd};

use containerd_shim_protos::ttrpc::security_extension::{
    AcceptHook, ConnectionData, HookError, HookOutput,
};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Rejects connections whose peer runs under another uid.
#[derive(Debug)]
pub struct SameUser {
    uid: u32,
}

impl SameUser {
    /// Accepts only the effective uid of this process.
    pub fn current() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// The decision for one peer uid.
    pub fn check(&self, peer_uid: u32) -> Result<(), HookError> {
        if peer_uid == self.uid {
            Ok(())
        } else {
            Err(HookError::Rejected(format!(
                "peer uid {peer_uid} is not the shim's uid {}",
                self.uid
            )))
        }
    }
}

impl AcceptHook for SameUser {
    fn on_accept(&self, fd: RawFd) -> Result<HookOutput, HookError> {
        // SAFETY: ttrpc hands us the accepted socket for the duration of this call.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let creds = getsockopt(&sock, PeerCredentials).map_err(|e| HookError::Io(e.into()))?;
        self.check(creds.uid())?;
        Ok(HookOutput {
            data: ConnectionData::default(),
            payload_transform: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn same_uid_accepted_other_rejected() {
        let hook = SameUser::current();
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(hook.on_accept(a.as_raw_fd()).is_ok());
        let other = SameUser { uid: 4242 };
        assert!(matches!(
            other.on_accept(a.as_raw_fd()),
            Err(HookError::Rejected(_))
        ));
    }
}
