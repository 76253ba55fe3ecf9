//! What critest leaves on the host that its own cleanup does not remove: SysV shm segments
//! of the HostIpc specs and the `CNI-*` nat chains of the portmap plugin.

use std::process::{Command, Stdio};

use sturdy_integration::cleanup;

/// SysV shm segment ids on the host, from /proc/sysvipc/shm.
pub(crate) fn shm_ids() -> Vec<i32> {
    shm_table().into_iter().map(|(id, _, _)| id).collect()
}

/// (shmid, creator pid, attach count) of every segment.
fn shm_table() -> Vec<(i32, i32, u64)> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(1)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
                f.get(6)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Removes segments created since `before` whose creator is gone and that nobody attaches:
/// what the HostIpc specs' containers left, never a live process's segment.
pub(crate) fn remove_new_shm(before: &[i32]) -> Vec<i32> {
    let mut removed = Vec::new();
    for (id, cpid, nattch) in shm_table() {
        if before.contains(&id) || nattch > 0 || cleanup::pid_alive(cpid) {
            continue;
        }
        // SAFETY: IPC_RMID takes no buffer.
        if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } == 0 {
            removed.push(id);
        } else {
            eprintln!(
                "sturdy-critest: removing shm segment {id}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    removed
}

/// `iptables -t nat -S`, or None if it cannot be read (then nothing is removed afterwards).
fn nat_rules() -> Option<Vec<String>> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect(),
    )
}

/// Names of the nat table's user chains.
pub(crate) fn nat_chains() -> Option<Vec<String>> {
    Some(
        nat_rules()?
            .iter()
            .filter_map(|l| l.strip_prefix("-N "))
            .map(String::from)
            .collect(),
    )
}

/// Removes the `CNI-*` nat chains that appeared during the run (portmap's CNI-HOSTPORT-*,
/// which it creates on first use and never deletes), with the rules jumping to them.
pub(crate) fn remove_new_cni_chains(before: &[String]) -> Vec<String> {
    let Some(rules) = nat_rules() else {
        return Vec::new();
    };
    let new: Vec<String> = rules
        .iter()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with("CNI-") && !before.iter().any(|b| b == c))
        .map(String::from)
        .collect();
    let iptables = |args: &[&str]| {
        let ok = Command::new("iptables")
            .args(["-w", "-t", "nat"])
            .args(args)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("sturdy-critest: iptables -t nat {} failed", args.join(" "));
        }
    };
    for rule in &rules {
        let Some(spec) = rule.strip_prefix("-A ") else {
            continue;
        };
        let words: Vec<&str> = spec.split_whitespace().collect();
        if words
            .windows(2)
            .any(|w| w[0] == "-j" && new.iter().any(|c| c == w[1]))
        {
            // Rules print quoted comments; -S output is valid shell, so split it the same way.
            let args = shell_words(spec);
            let mut del = vec!["-D"];
            del.extend(args.iter().map(String::as_str));
            iptables(&del);
        }
    }
    for chain in &new {
        iptables(&["-F", chain]);
    }
    for chain in &new {
        iptables(&["-X", chain]);
    }
    new
}

/// Splits an `iptables -S` rule into words, honouring its double quotes.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            shell_words(
                r#"POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ"#
            ),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "CNI portfwd requiring masquerade",
                "-j",
                "CNI-HOSTPORT-MASQ"
            ]
        );
    }
}
