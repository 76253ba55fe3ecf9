//! Who may talk to the shim: only processes of the shim's own uid.
//!
//! The socket's 0600 mode already keeps other users out of the filesystem path; checking
//! SO_PEERCRED on every accepted connection (see [`crate::listener`]) also covers an fd
//! passed on by a privileged process, as containerd's Go shim does with its same-user
//! handshaker.

/// A connection's peer runs under another uid than the shim.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer uid {peer} is not the shim's uid {shim}")]
pub struct ForeignPeer {
    /// The peer's uid.
    pub peer: u32,
    /// The shim's effective uid.
    pub shim: u32,
}

/// Rejects connections whose peer runs under another uid.
#[derive(Debug, Clone, Copy)]
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

    /// Accepts only `uid` (tests stand in for another user with it).
    #[cfg(test)]
    pub(crate) fn only(uid: u32) -> Self {
        Self { uid }
    }

    /// The decision for one peer uid.
    pub fn check(&self, peer_uid: u32) -> Result<(), ForeignPeer> {
        if peer_uid == self.uid {
            Ok(())
        } else {
            Err(ForeignPeer {
                peer: peer_uid,
                shim: self.uid,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_uid_accepted_other_rejected() {
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(SameUser::current().check(me), Ok(()));
        assert_eq!(
            SameUser::only(4242).check(me),
            Err(ForeignPeer {
                peer: me,
                shim: 4242
            })
        );
    }
}
