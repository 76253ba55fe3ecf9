//! The watchdog's sandbox pass: every interval, compare each record with containerd's;
//! write the IPs back where containerd's record lost them, report any other disagreement,
//! and collect the records of sandboxes containerd no longer knows.
//!
//! What is written back comes from CNI's cached result for the sandbox, never from the
//! record alone: the record holds what the pod's namespace held, which a pod with
//! CAP_NET_ADMIN decides. Only IPs CNI gave the pod, and that no other sandbox holds, are
//! written; the rest is reported.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost_types::Any;
use sandbox_record::{ScanCache, Store};

use super::authority::{authorised, refused_text, Authorised};
use super::cni::{CniCache, CniResult};
use super::cri;
use super::inspect::{inspect, Row, State};
use crate::containerd::Api;
use crate::journal::{now_ms, Entry, Journal, Phase};

/// The sandbox checks' settings.
#[derive(Debug, Clone)]
pub struct SandboxWatch {
    /// The record store.
    pub store: Store,
    /// Whether a lost IP is written back (`--no-repair` turns it off).
    pub repair: bool,
    /// CNI's result cache, the authority on the IPs a pod was given.
    pub cni: CniCache,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Sandboxes whose IPs were written back.
    pub repaired: Vec<(String, String)>,
    /// Records removed because containerd no longer knows their sandbox.
    pub collected: Vec<(String, String)>,
    /// Records looked at.
    pub records: usize,
}

/// Runs a pass every `interval`, forever (the caller aborts the task).
pub async fn watch(
    api: Arc<Api>,
    journal: Arc<Journal>,
    cfg: SandboxWatch,
    runtimes: Vec<String>,
    interval: Duration,
) {
    log::info!(
        "checking sandbox records in {} every {interval:?} ({})",
        cfg.store.dir().display(),
        if cfg.repair {
            "repairing lost IPs"
        } else {
            "reporting only: --no-repair"
        }
    );
    let mut seen = HashMap::new();
    let mut cache = ScanCache::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u64.. {
        ticker.tick().await;
        let report = pass(&api, &journal, &cfg, &runtimes, &mut seen, &mut cache).await;
        log::debug!(
            "sandbox pass {n}: {} records, {} decoded since the start",
            report.records,
            cache.decoded()
        );
    }
}

/// One pass. `seen` holds each record's last verdict, so a standing disagreement is
/// reported when it appears or changes, not every interval; `cache` what was decoded of
/// each record file, so that only changed records are read.
pub async fn pass(
    api: &Api,
    journal: &Arc<Journal>,
    cfg: &SandboxWatch,
    runtimes: &[String],
    seen: &mut HashMap<(String, String), (State, String)>,
    cache: &mut ScanCache,
) -> PassReport {
    let mut report = PassReport::default();
    let (rows, held) = inspect(api, &cfg.store, cache).await;
    let held = held.unwrap_or_default();
    report.records = rows.len();
    // Read once per pass, and only when a sandbox lost its IPs.
    let mut cni: Option<Vec<CniResult>> = None;
    let mut now = HashMap::new();
    for row in rows {
        let key = (row.namespace.clone(), row.sandbox_id.clone());
        let verdict = (row.state.clone(), row.detail.clone());
        let fresh = seen.get(&key) != Some(&verdict);
        now.insert(key.clone(), verdict);
        let name = format!("{}/{}", row.namespace, row.sandbox_id);
        let watched = row.runtime.as_ref().is_some_and(|r| runtimes.contains(r));
        match row.state {
            State::Lost if watched && cfg.repair => {
                if cni.is_none() {
                    cni = Some(cni_results(&cfg.cni).await);
                }
                let results = cni.as_deref().unwrap_or_default();
                let allowed =
                    authorised((&row.namespace, &row.sandbox_id), &row.ips, results, &held);
                match repair(api, journal, &row, &allowed, fresh).await {
                    Ok(true) => report.repaired.push(key),
                    Ok(false) => {}
                    Err(e) => log::error!("sandbox {name}: repair of its lost IPs failed: {e}"),
                }
            }
            State::Lost if fresh => log::error!(
                "sandbox {name}: {}; {}",
                row.detail,
                if watched {
                    "NOT repaired (--no-repair)"
                } else {
                    "not repaired: its runtime is not watched"
                }
            ),
            State::Differ if fresh => log::warn!(
                "sandbox {name}: containerd's record and sturdy's differ: {}; nothing changed",
                row.detail
            ),
            // A live shim rewrites a corrupt record within a minute (its refresh): one left
            // alone far longer, of a sandbox containerd does not know, has no shim.
            State::Corrupt if row.known == Some(false) && stale(&row.path) => {
                match collect(api, &cfg.store, &row).await {
                    Ok(true) => report.collected.push(key),
                    Ok(false) => {}
                    Err(e) => log::warn!("sandbox {name}: corrupt record not collected: {e}"),
                }
            }
            State::Corrupt if fresh => log::error!(
                "sandbox {name}: {}; its shim replaces it at its next snapshot",
                row.detail
            ),
            State::Unreadable if fresh => log::warn!("sandbox {name}: {}", row.detail),
            State::Unknown => match collect(api, &cfg.store, &row).await {
                Ok(true) => report.collected.push(key),
                Ok(false) => {}
                Err(e) => log::warn!("sandbox {name}: record not collected: {e}"),
            },
            _ => {}
        }
    }
    *seen = now;
    let store = cfg.store.clone();
    // Only temp files of interrupted writes: every record is kept by this gc.
    match tokio::task::spawn_blocking(move || store.gc(|_, _| true)).await {
        Ok(Ok(r)) => {
            for p in r.temp_removed {
                log::info!(
                    "removed {}, left by an interrupted record write",
                    p.display()
                );
            }
            for e in r.errors {
                log::warn!("{e}");
            }
        }
        Ok(Err(e)) => log::warn!("{e}"),
        Err(e) => log::warn!("sandbox record gc task: {e}"),
    }
    report
}

/// Whether a file was last written longer than [`sandbox_record::store::TEMP_GRACE`] ago.
fn stale(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= sandbox_record::store::TEMP_GRACE)
}

/// Why a repair did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// A containerd call failed.
    #[error(transparent)]
    Api(#[from] crate::containerd::ApiError),
    /// containerd's extension could not be rewritten.
    #[error(transparent)]
    Cri(#[from] cri::CriError),
    /// containerd still shows no IP after the update.
    #[error("containerd still has {got:?} after the update (wrote {wrote:?})")]
    NotApplied {
        /// What was written.
        wrote: Vec<String>,
        /// What containerd shows.
        got: Vec<String>,
    },
}

/// The cached CNI results (none, logged, if the cache cannot be read).
async fn cni_results(cache: &CniCache) -> Vec<CniResult> {
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || cache.pod_results()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::error!("{e}; no lost IP can be written back");
            Vec::new()
        }
        Err(e) => {
            log::error!("CNI result cache task: {e}");
            Vec::new()
        }
    }
}

/// Writes the IPs `allowed` into containerd's extension of a running sandbox; `Ok(false)`
/// when there is nothing it may write (reported when `fresh`), when it is not running or
/// when its extension changed since it was inspected (left alone).
async fn repair(
    api: &Api,
    journal: &Arc<Journal>,
    row: &Row,
    allowed: &Authorised,
    fresh: bool,
) -> Result<bool, RepairError> {
    let (ns, id) = (row.namespace.as_str(), row.sandbox_id.as_str());
    if let Some(why) = &allowed.none_because {
        if fresh {
            log::error!(
                "sandbox {ns}/{id}: {}; NOT repaired: {why}{}",
                row.detail,
                if allowed.refused.is_empty() {
                    String::new()
                } else {
                    format!("; not written: {}", refused_text(allowed))
                }
            );
        }
        return Ok(false);
    }
    let started = Instant::now();
    match api.task_status(ns, id).await? {
        Some(s) if s == "RUNNING" => {}
        other => {
            log::debug!("sandbox {ns}/{id}: lost IPs but its task is {other:?}: not repaired");
            return Ok(false);
        }
    }
    let Some(inspected) = row.extension.as_ref() else {
        return Ok(false);
    };
    // Whatever CRI wrote since the inspection wins: only the state that was judged is fixed.
    let current = api.sandbox_container(ns, id).await?;
    let Some(current) = current.and_then(|c| c.extension) else {
        return Ok(false);
    };
    if &current != inspected {
        log::info!("sandbox {ns}/{id}: containerd's record changed while being checked; next pass");
        return Ok(false);
    }
    let value = cri::with_ips(&current.value, &allowed.write)?;
    let any = Any {
        type_url: current.type_url.clone(),
        value,
    };
    api.update_extension(ns, id, cri::EXTENSION, any).await?;
    let after = api
        .sandbox_container(ns, id)
        .await?
        .and_then(|c| c.extension)
        .map(|a| cri::parse(&a.value))
        .transpose()?
        .map(|n| n.ips())
        .unwrap_or_default();
    let ok = after == allowed.write;
    let ms = started.elapsed().as_millis() as u64;
    let pod = row
        .summary
        .as_ref()
        .map(|r| format!("{}/{}", r.pod.namespace, r.pod.name))
        .unwrap_or_default();
    let detail = format!(
        "containerd's {} of running sandbox {ns}/{id} (pod {pod}) had no IP; wrote back {} from CNI's result {} (record {}){}{}",
        cri::EXTENSION,
        allowed.write.join(", "),
        allowed.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        row.path.display(),
        if allowed.refused.is_empty() {
            String::new()
        } else {
            format!("; not written: {}", refused_text(allowed))
        },
        if ok { String::new() } else { format!("; containerd then showed {after:?}") }
    );
    let at = now_ms();
    let incident = format!("sandbox-ip {ns}/{id} {at}");
    let entries = [
        Entry {
            at_ms: at,
            incident: incident.clone(),
            phase: Phase::Step {
                step: format!("repair sandbox IP {id}"),
                ok,
                ms,
                detail: detail.clone(),
            },
        },
        Entry {
            at_ms: at,
            incident,
            phase: Phase::Finished {
                ok,
                total_ms: ms,
                summary: format!(
                    "sandbox {ns}/{id}: lost IPs {} written back",
                    allowed.write.join(", ")
                ),
            },
        },
    ];
    let journal = journal.clone();
    let written =
        tokio::task::spawn_blocking(move || entries.iter().try_for_each(|e| journal.append(e)))
            .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("{e}"),
        Err(e) => log::error!("journal task: {e}"),
    }
    // Logged once the journal holds it: whoever acts on the line finds the entry (a busy
    // machine showed the line before the entry).
    if ok {
        log::error!("REPAIRED: {detail}");
        Ok(true)
    } else {
        log::error!("REPAIR FAILED: {detail}");
        Err(RepairError::NotApplied {
            wrote: allowed.write.clone(),
            got: after,
        })
    }
}

/// Removes the record of a sandbox containerd does not know, after asking once more (it
/// may have been created after the listing the verdict came from).
async fn collect(api: &Api, store: &Store, row: &Row) -> Result<bool, RepairError> {
    if api
        .sandbox_container(&row.namespace, &row.sandbox_id)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let (store, ns, id) = (store.clone(), row.namespace.clone(), row.sandbox_id.clone());
    let removed = tokio::task::spawn_blocking(move || store.remove(&ns, &id)).await;
    match removed {
        Ok(Ok(true)) => {
            log::info!(
                "sandbox {}/{}: containerd no longer knows it; record {} removed",
                row.namespace,
                row.sandbox_id,
                row.path.display()
            );
            Ok(true)
        }
        Ok(Ok(false)) => Ok(false),
        Ok(Err(e)) => {
            log::warn!("{e}");
            Ok(false)
        }
        Err(e) => {
            log::warn!("record removal task: {e}");
            Ok(false)
        }
    }
}
