//! `sturdy-critest`: run critest (v1.26.1 or v1.36.0) through one runtime handler of a
//! private containerd of one generation over one OCI runtime, with every image it pulls served
//! by a local registry. `scripts/critest.sh` builds and runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use sturdy_integration::critest::{CritestVersion, Results};
use sturdy_integration::registry::{split_reference, Registry};
use sturdy_integration::tools::{self, ToolsError};
use sturdy_integration::{cleanup, Containerd, Generation, Handler, OciRuntime};

mod leftovers;
use leftovers::{nat_chains, remove_new_cni_chains, remove_new_shm, shm_ids};

const USAGE: &str =
    "usage: sturdy-critest HANDLER [GENERATION] [--critest VERSION] [--runc RUNTIME]
                      [--results FILE] [--focus REGEX] [--sturdy-as-runc-type]

Runs critest serially through HANDLER (sturdy or runc, the generation's Go shim) of a
private containerd of GENERATION (1.6, 1.7, 2.1, 2.2, 2.3 or 2.4; default 1.6), pulling
every image from a local registry on 127.0.0.1. Prints the failed specs with the first line
of each failure and ends with `N passed, M failed`. Everything it starts is stopped again,
also on Ctrl-C.

  --critest VERSION  1.26.1 (default) or 1.36.0, each with its own image archive
  --runc RUNTIME     the OCI runtime both handlers run: 1.1 (Debian's), 1.3, 1.4 or crun
                     (default: $STURDY_RUNC, else 1.1)
  --results FILE     also write one `PASS|FAIL<TAB>spec` line per spec to FILE
  --focus REGEX      only the specs matching REGEX (critest -ginkgo.focus)
  --sturdy-as-runc-type
                     register the sturdy handler as io.containerd.runc.v2 with
                     runtime_path, as user-namespaced pods need (docs/operations.md)

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

#[derive(Debug)]
struct Args {
    handler: Handler,
    generation: Generation,
    critest: CritestVersion,
    runtime: OciRuntime,
    results: Option<PathBuf>,
    focus: Option<String>,
    sturdy_runc_type: bool,
}

#[derive(Debug)]
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

/// Parses the arguments after the program name.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, Failure> {
    let mut positional = Vec::new();
    let mut results = None;
    let mut focus = None;
    let mut critest = CritestVersion::default();
    let mut runtime = None;
    let mut sturdy_runc_type = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--results" => results = it.next().map(PathBuf::from),
            "--focus" => focus = it.next(),
            "--sturdy-as-runc-type" => sturdy_runc_type = true,
            "--critest" => {
                let v = it.next().unwrap_or_default();
                critest = CritestVersion::parse(&v)
                    .ok_or_else(|| Failure::Usage(format!("unknown critest version {v:?}")))?;
            }
            "--runc" => {
                let v = it.next().unwrap_or_default();
                runtime = Some(
                    OciRuntime::parse(&v)
                        .ok_or_else(|| Failure::Usage(format!("unknown OCI runtime {v:?}")))?,
                );
            }
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
    let runtime = match runtime {
        Some(r) => r,
        None => OciRuntime::from_env().map_err(|e| Failure::Usage(e.to_string()))?,
    };
    Ok(Args {
        handler,
        generation,
        critest,
        runtime,
        results,
        focus,
        sturdy_runc_type,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
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
    let critest_bin = tools::tool(args.critest.cri_tools(), "critest")?;
    let images = tools::unpacked(args.critest.images())?;
    args.generation.binaries()?;
    args.runtime.binary()?;
    let started = Instant::now();
    println!(
        "==> critest v{} through {} on containerd {} with {}",
        args.critest,
        args.handler,
        args.generation.version(),
        args.runtime
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
    let mut builder = Containerd::builder();
    if args.sturdy_runc_type {
        builder = builder.sturdy_handler_as_runc_type();
    }
    let fx = rt.block_on(
        builder
            .generation(args.generation)
            .oci_runtime(args.runtime)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, Failure> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    fn usage_error(args: &[&str]) -> String {
        match parse(args) {
            Err(Failure::Usage(msg)) => msg,
            Err(_) => panic!("{args:?}: not a usage error"),
            Ok(_) => panic!("{args:?}: accepted"),
        }
    }

    #[test]
    fn generation_critest_release_and_runtime_are_arguments() {
        let a = parse(&["sturdy", "2.3", "--critest", "1.36", "--runc", "1.4"]).unwrap();
        assert_eq!(a.handler, Handler::Sturdy);
        assert_eq!(a.generation, Generation::V2_3);
        assert_eq!(a.critest, CritestVersion::V1_36);
        assert_eq!(a.runtime, OciRuntime::Runc1_4);
        let a = parse(&["runc", "--runc", "crun", "2.4.0-beta.0", "--focus", "exec"]).unwrap();
        assert_eq!(
            (a.handler, a.generation, a.critest, a.runtime),
            (
                Handler::Runc,
                Generation::V2_4,
                CritestVersion::V1_26,
                OciRuntime::Crun
            )
        );
        assert_eq!(a.focus.as_deref(), Some("exec"));
        let a = parse(&["sturdy", "--runc", "1.1"]).unwrap();
        assert_eq!(a.generation, Generation::V1_6, "1.6 by default");

        assert!(usage_error(&["sturdy", "2.5", "--runc", "1.1"]).contains("generation"));
        assert!(usage_error(&["sturdy", "--critest", "1.30", "--runc", "1.1"]).contains("1.30"));
        assert!(usage_error(&["sturdy", "--runc", "1.2"]).contains("OCI runtime"));
        assert!(usage_error(&["sturdy", "--critest"]).contains("critest"));
        assert!(usage_error(&["youki"]).contains("HANDLER"));
    }
}
