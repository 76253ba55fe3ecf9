//! `sturdy-critest`: run critest v1.26.1 through one runtime handler of a private containerd of
//! one generation, with every image it pulls served by a local registry. `scripts/critest.sh`
//! builds and runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use sturdy_integration::critest::{Results, CRITEST_VERSION};
use sturdy_integration::registry::{split_reference, Registry};
use sturdy_integration::tools::{self, ToolsError, CRITEST_IMAGES, CRI_TOOLS};
use sturdy_integration::{cleanup, Containerd, Generation, Handler};

const USAGE: &str = "usage: sturdy-critest HANDLER [GENERATION] [--results FILE] [--focus REGEX]

Runs critest v1.26.1 serially through HANDLER (sturdy or runc) of a private containerd of
GENERATION (1.6, 1.7 or 2.1; default 1.6), pulling every image from a local registry on
127.0.0.1. Prints the failed specs with the first line of each failure and ends with
`N passed, M failed`. Everything it starts is stopped again, also on Ctrl-C.

  --results FILE  also write one `PASS|FAIL<TAB>spec` line per spec to FILE
  --focus REGEX   only the specs matching REGEX (critest -ginkgo.focus)

Exit status: 0 all specs passed, 1 some failed, 2 usage, 3 could not run,
77 ../shared/tools (or what it should hold) is absent, 130 interrupted.";

/// Exit status when the tools critest needs are not on this host.
const EXIT_NO_TOOLS: u8 = 77;
/// The sandbox image `push.list` provides (the default pause image is not among them).
const PAUSE: &str = "registry.k8s.io/harness/pause:1.0";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

struct Args {
    handler: Handler,
    generation: Generation,
    results: Option<PathBuf>,
    focus: Option<String>,
}

enum Failure {
    Usage(String),
    NoTools(String),
    Setup(String),
    Interrupted,
}

impl From<sturdy_integration::Error> for Failure {
    fn from(e: sturdy_integration::Error) -> Self {
        match e {
            sturdy_integration::Error::Tools(t) => t.into(),
            other => Failure::Setup(other.to_string()),
        }
    }
}

impl From<ToolsError> for Failure {
    fn from(e: ToolsError) -> Self {
        if e.is_missing() {
            Failure::NoTools(e.to_string())
        } else {
            Failure::Setup(e.to_string())
        }
    }
}

fn parse_args() -> Result<Args, Failure> {
    let mut positional = Vec::new();
    let mut results = None;
    let mut focus = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--results" => results = it.next().map(PathBuf::from),
            "--focus" => focus = it.next(),
            "-h" | "--help" => return Err(Failure::Usage(String::new())),
            s if s.starts_with('-') => return Err(Failure::Usage(format!("unknown option {s}"))),
            _ => positional.push(a),
        }
    }
    let handler = positional
        .first()
        .and_then(|h| Handler::from_name(h))
        .ok_or_else(|| Failure::Usage("HANDLER must be sturdy or runc".into()))?;
    let generation = match positional.get(1) {
        None => Generation::V1_6,
        Some(g) => Generation::parse(g)
            .ok_or_else(|| Failure::Usage(format!("unknown generation {g:?}")))?,
    };
    if positional.len() > 2 {
        return Err(Failure::Usage("too many arguments".into()));
    }
    Ok(Args {
        handler,
        generation,
        results,
        focus,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(Failure::Usage(msg)) => {
            if !msg.is_empty() {
                eprintln!("sturdy-critest: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(_) => unreachable!("parse_args only fails with usage errors"),
    };
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            eprintln!("sturdy-critest: installing a {sig} handler: {e}");
            return ExitCode::from(3);
        }
    }
    match run(&args) {
        Ok(results) => {
            println!("{results}");
            ExitCode::from(if results.failed().next().is_none() {
                0
            } else {
                1
            })
        }
        Err(Failure::NoTools(msg)) => {
            eprintln!("sturdy-critest: skipped, {msg}");
            ExitCode::from(EXIT_NO_TOOLS)
        }
        Err(Failure::Interrupted) => {
            eprintln!("sturdy-critest: interrupted; everything it started is stopped");
            ExitCode::from(130)
        }
        Err(Failure::Setup(msg) | Failure::Usage(msg)) => {
            eprintln!("sturdy-critest: {msg}");
            ExitCode::from(3)
        }
    }
}

/// Everything a run started, torn down in reverse order whatever happens.
#[derive(Default)]
struct Run {
    work: Option<PathBuf>,
    shm_before: Vec<i32>,
    nat_chains_before: Option<Vec<String>>,
    registry: Option<Registry>,
    fixture: Option<Containerd>,
    critest: Option<Child>,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(child) = self.critest.take() {
            stop_child(child, "critest");
        }
        if let Some(mut fx) = self.fixture.take() {
            for p in fx.stop() {
                eprintln!("sturdy-critest: containerd cleanup: {p}");
            }
        }
        if let Some(mut reg) = self.registry.take() {
            reg.stop();
        }
        for id in remove_new_shm(&self.shm_before) {
            println!("sturdy-critest: removed SysV shm segment {id} left by the HostIpc specs");
        }
        if let Some(before) = &self.nat_chains_before {
            for chain in remove_new_cni_chains(before) {
                println!(
                    "sturdy-critest: removed iptables nat chain {chain} the portmap plugin created"
                );
            }
        }
        if let Some(work) = self.work.take() {
            // critest's TMPDIR: a failed mount-propagation spec may leave mounts in it.
            let left = cleanup::unmount_all_under(&work);
            if !left.is_empty() {
                eprintln!(
                    "sturdy-critest: mounts left under {}: {left:?}",
                    work.display()
                );
            }
            if let Err(e) = std::fs::remove_dir_all(&work) {
                eprintln!("sturdy-critest: removing {}: {e}", work.display());
            }
        }
    }
}

fn check(step: &str) -> Result<(), Failure> {
    if interrupted() {
        eprintln!("sturdy-critest: interrupted during {step}");
        return Err(Failure::Interrupted);
    }
    Ok(())
}

fn run(args: &Args) -> Result<Results, Failure> {
    // Everything that can be missing is looked up before anything is started.
    let critest_bin = tools::tool(CRI_TOOLS, "critest")?;
    let images = tools::unpacked(CRITEST_IMAGES)?;
    args.generation.binaries()?;
    let started = Instant::now();
    println!(
        "==> critest v{CRITEST_VERSION} through {} on containerd {}",
        args.handler,
        args.generation.version()
    );

    let mut run = Run::default();
    run.shm_before = shm_ids();
    run.nat_chains_before = nat_chains();
    let work = tempfile::Builder::new()
        .prefix("sturdy-critest-")
        .tempdir()
        .map_err(|e| Failure::Setup(format!("creating a work dir: {e}")))?
        .keep();
    run.work = Some(work.clone());
    for sub in ["tmp", "certs.d"] {
        std::fs::create_dir_all(work.join(sub))
            .map_err(|e| Failure::Setup(format!("creating {sub}: {e}")))?;
    }

    let registry = run
        .registry
        .insert(Registry::start(&work.join("registry"))?);
    let hosts = push_images(registry, &images, &work.join("tmp"))?;
    for host in &hosts {
        registry.write_hosts_toml(&work.join("certs.d"), host)?;
    }
    println!(
        "    registry {} (pid {}) serves {} upstream registries ({:.0?})",
        registry.address(),
        registry.pid().unwrap_or_default(),
        hosts.len(),
        started.elapsed()
    );
    check("image push")?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Setup(format!("tokio runtime: {e}")))?;
    let fx = rt.block_on(
        Containerd::builder()
            .generation(args.generation)
            .without_images()
            .sandbox_image(PAUSE)
            .registry_config_path(work.join("certs.d"))
            .port_mapping()
            .start_timeout(Duration::from_secs(60))
            .start(),
    )?;
    let socket = format!("unix://{}", fx.socket().display());
    println!(
        "    containerd {} pid {} in {}",
        args.generation.version(),
        fx.pid(),
        fx.dir().display()
    );
    run.fixture = Some(fx);
    check("containerd start")?;

    let report = work.join("report.json");
    let log = work.join("critest.log");
    let mut cmd = Command::new(&critest_bin);
    cmd.arg(format!("-runtime-endpoint={socket}"))
        .arg(format!("-image-endpoint={socket}"))
        .arg(format!("-runtime-handler={}", args.handler))
        .arg(format!("-ginkgo.json-report={}", report.display()))
        .arg("-ginkgo.no-color")
        // A wedged spec must not hold CI for ginkgo's default hour.
        .arg("-ginkgo.timeout=30m");
    if let Some(f) = &args.focus {
        cmd.arg(format!("-ginkgo.focus={f}"));
    }
    let log_file = std::fs::File::create(&log)
        .map_err(|e| Failure::Setup(format!("creating {}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| Failure::Setup(format!("cloning a log fd: {e}")))?;
    cmd.env("TMPDIR", work.join("tmp"))
        .current_dir(work.join("tmp"))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    {
        use std::os::unix::process::CommandExt;
        // Own group (our Ctrl-C handling stops it in order), and it dies with us.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let critest_start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Failure::Setup(format!("spawning {}: {e}", critest_bin.display())))?;
    println!(
        "    critest pid {} running serially (log {})",
        child.id(),
        log.display()
    );
    let child = run.critest.insert(child);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if interrupted() => return Err(Failure::Interrupted),
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => return Err(Failure::Setup(format!("waiting for critest: {e}"))),
        }
    };
    run.critest = None;
    let critest_time = critest_start.elapsed();
    let raw = std::fs::read(&report).map_err(|e| {
        Failure::Setup(format!(
            "critest ({status}) wrote no report ({e}); its log ends:\n{}",
            sturdy_integration::containerd::log_tail(&log, 30)
        ))
    })?;
    let results = Results::from_report(&raw)?;
    if let Some(path) = &args.results {
        std::fs::write(path, results.to_lines())
            .map_err(|e| Failure::Setup(format!("writing {}: {e}", path.display())))?;
    }
    drop(run);
    println!(
        "    critest took {:.0?}, the whole run {:.0?}",
        critest_time,
        started.elapsed()
    );
    Ok(results)
}

/// Pushes every archive of `push.list` under each of its references; returns the upstream
/// registry hosts they name.
fn push_images(
    registry: &Registry,
    images: &Path,
    tmp: &Path,
) -> Result<std::collections::BTreeSet<String>, Failure> {
    let list = images.join("push.list");
    let text = std::fs::read_to_string(&list)
        .map_err(|e| Failure::Setup(format!("reading {}: {e}", list.display())))?;
    let mut hosts = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let archive = images.join(words.next().unwrap_or_default());
        for reference in words {
            check("image push")?;
            let (host, _) = split_reference(reference).ok_or_else(|| {
                Failure::Setup(format!("push.list: {reference:?} names no registry"))
            })?;
            hosts.insert(host.to_string());
            registry.push(&archive, reference, tmp)?;
        }
    }
    Ok(hosts)
}

/// SIGTERM (ginkgo then runs its cleanup nodes), SIGKILL after 10 s; by PID, then reaped.
fn stop_child(mut child: Child, what: &str) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!("sturdy-critest: {what} ignored SIGTERM, killing it");
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// SysV shm segment ids on the host, from /proc/sysvipc/shm.
fn shm_ids() -> Vec<i32> {
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
fn remove_new_shm(before: &[i32]) -> Vec<i32> {
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
fn nat_chains() -> Option<Vec<String>> {
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
fn remove_new_cni_chains(before: &[String]) -> Vec<String> {
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
