//! The pod network's /28 slices, one per live fixture, held by flock.

use std::fs::File;
use std::net::Ipv4Addr;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// The whole pod network; each fixture gets one /28 of it.
pub const POD_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Number of /28 slices in the /24, i.e. how many fixtures may run pods at once.
pub const SUBNET_SLOTS: usize = 16;

/// One /28 of the pod network, held via an flock for as long as the fixture lives.
///
/// flock rather than a counter file: the kernel drops the lock when a test process dies, so
/// a crashed run can never leak a slot.
#[derive(Debug)]
pub struct SubnetSlot {
    index: usize,
    _lock: Flock<File>,
}

impl SubnetSlot {
    pub(crate) fn acquire() -> Result<SubnetSlot> {
        let dir = std::env::temp_dir().join("sturdy-subnet-locks");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        // Start at a pseudo-random slot so parallel fixtures rarely contend on the same file.
        let start = std::process::id() as usize;
        for i in 0..SUBNET_SLOTS {
            let index = (start + i) % SUBNET_SLOTS;
            let path = dir.join(format!("slot-{index}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ctx(|| format!("opening {}", path.display()))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(SubnetSlot { index, _lock: lock });
            }
        }
        Err(Error::NoSubnetSlot(SUBNET_SLOTS))
    }

    /// First address of the slice.
    pub fn network(&self) -> Ipv4Addr {
        let base = u32::from(POD_NETWORK) + (self.index as u32) * 16;
        Ipv4Addr::from(base)
    }

    /// The bridge's (gateway) address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    /// CIDR notation of the slice.
    pub fn cidr(&self) -> String {
        format!("{}/28", self.network())
    }

    /// True if `ip` lies inside this slice.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !0xf == u32::from(self.network())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn subnet_slots_are_disjoint_slices_of_the_pod_network() {
        let a = SubnetSlot::acquire().unwrap();
        let b = SubnetSlot::acquire().unwrap();
        assert_ne!(a.index, b.index, "a held slot was handed out twice");
        for s in [&a, &b] {
            assert_eq!(s.network().octets()[..3], [198, 18, 0]);
            assert_eq!(s.network().octets()[3] % 16, 0);
            assert!(s.contains(s.gateway()));
            assert!(!s.contains(Ipv4Addr::from(u32::from(s.network()) + 16)));
        }
        assert!(!a.contains(b.gateway()));
        let index = a.index;
        drop(a);
        // Released on drop: the same slot can be taken again.
        let mut held = Vec::new();
        while let Ok(s) = SubnetSlot::acquire() {
            let found = s.index == index;
            held.push(s);
            if found {
                return;
            }
        }
        panic!("slot {index} was not released: {held:?}");
    }

    /// A slot on a private lock file, for tests that must not take one of the shared slots.
    pub(crate) fn private_slot(index: usize) -> SubnetSlot {
        SubnetSlot {
            index,
            _lock: Flock::lock(tempfile::tempfile().unwrap(), FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .unwrap(),
        }
    }
}
