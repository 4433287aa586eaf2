//! Loading the configuration again while the service runs: what triggers it (SIGHUP, or a
//! change seen by `notify` in the directory of the configuration file or of a TLS file it
//! names), how a new configuration is checked, and the audit entry every load leaves.
//!
//! A reload never drops queued data: the queue is owned by the service, not by the pipeline
//! a reload rebuilds ([`crate::pipeline::Pipeline::with_queue`]). What a reload cannot change
//! (`node.data_dir`, `node.id`, `[admin] listen`, `[verify] listen`) makes it fail with a reason; a restart applies
//! those.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::pipeline::Pipeline;

/// A running file watcher and the directories it watches.
pub struct Watch {
    /// The watcher (dropping it stops watching).
    watcher: notify::RecommendedWatcher,
    /// Directories watched.
    dirs: BTreeSet<PathBuf>,
}

/// The directories whose changes may change the configuration: the file's own and those of
/// the hub CA, certificate and key.
fn directories(file: &Path, config: &Config) -> BTreeSet<PathBuf> {
    [
        file,
        &config.hub.tls.ca,
        &config.hub.tls.cert,
        &config.hub.tls.key,
    ]
    .into_iter()
    .filter_map(|p| std::path::absolute(p).ok()?.parent().map(Path::to_path_buf))
    .collect()
}

/// Starts watching; each event sends `"file change"` on `tx` (the daemon compares
/// [`fingerprint`]s, so events on other files cost one read). `None` (logged) when the
/// platform refuses: SIGHUP still works.
pub fn watch(file: &Path, config: &Config, tx: mpsc::Sender<&'static str>) -> Option<Watch> {
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            let _ = tx.try_send("file change");
        }
    });
    let mut w = match watcher {
        Ok(w) => Watch {
            watcher: w,
            dirs: BTreeSet::new(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch the configuration for changes; reload with SIGHUP (systemctl reload).");
            return None;
        }
    };
    rewatch(&mut w, file, config);
    Some(w)
}

/// Watches the directories a (new) configuration names, and no others.
pub fn rewatch(w: &mut Watch, file: &Path, config: &Config) {
    let wanted = directories(file, config);
    for gone in w.dirs.difference(&wanted) {
        let _ = w.watcher.unwatch(gone);
    }
    for dir in wanted.difference(&w.dirs.clone()) {
        match w.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => {
                w.dirs.insert(dir.clone());
            }
            Err(e) => {
                tracing::warn!(directory = %dir.display(), error = %e, "Cannot watch the directory; reload with SIGHUP after changing files in it.")
            }
        }
    }
    w.dirs.retain(|d| wanted.contains(d));
}

/// SM3 over the configuration file and the TLS files it names (hex): a change to any of them
/// is a reason to reload; `None` if the configuration file cannot be read.
pub fn fingerprint(file: &Path, config: &Config) -> Option<String> {
    let mut all = std::fs::read(file).ok()?;
    for p in [
        &config.hub.tls.ca,
        &config.hub.tls.cert,
        &config.hub.tls.key,
    ] {
        all.extend(crate::queue::sm3_bytes(
            &std::fs::read(p).unwrap_or_default(),
        ));
    }
    Some(hex::encode(crate::queue::sm3_bytes(&all)))
}

/// Loads and validates `file` and builds a pipeline around the running one's queue; on
/// failure says why (log, audit, metric) and returns `None`: the old one keeps running.
pub fn reload(file: &Path, current: &Pipeline, trigger: &str) -> Option<Arc<Pipeline>> {
    let metrics = crate::metrics::global();
    let fail = |reason: String, digest: Option<&str>| {
        metrics.reload_failed();
        tracing::error!(file = %file.display(), trigger, error = %reason, "Configuration not reloaded; the previous configuration keeps running.");
        append(
            &current.config,
            "config.reload_failed",
            serde_json::json!({ "file": file.display().to_string(), "trigger": trigger, "config_sm3": digest, "reason": reason }),
        );
        None
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display()), None),
    };
    let digest = hex::encode(crate::queue::sm3_bytes(text.as_bytes()));
    let config = match Config::parse(file, &text) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string(), Some(&digest)),
    };
    let old = &current.config;
    for (key, changed) in [
        ("node.data_dir", config.node.data_dir != old.node.data_dir),
        ("node.id", config.node.id != old.node.id),
        ("admin.listen", config.admin != old.admin),
        (
            "verify.listen",
            config.verify.as_ref().map(|v| v.listen) != old.verify.as_ref().map(|v| v.listen),
        ),
    ] {
        if changed {
            return fail(
                format!(
                    "{key} changed; it takes effect only on a restart (systemctl restart exchange-agent)"
                ),
                Some(&digest),
            );
        }
    }
    let next = match Pipeline::with_queue(config, current.queue.clone(), current.board.clone()) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(e.to_string(), Some(&digest)),
    };
    metrics.reloaded();
    audit_load(&next.config, "config.reload", Some(trigger));
    tracing::info!(file = %file.display(), trigger, config_sm3 = %digest, resources = next.pullers.len(), "Configuration reloaded.");
    Some(next)
}

/// Appends the audit entry of a configuration load (`service.start`, `config.reload`): the
/// SM3 of the file as read, and the resources it delivers.
pub fn audit_load(config: &Config, action: &str, trigger: Option<&str>) {
    let digest = std::fs::read(&config.file)
        .map(|t| hex::encode(crate::queue::sm3_bytes(&t)))
        .ok();
    let resources: Vec<&str> = config.resources.iter().map(|r| r.code.as_str()).collect();
    append(
        config,
        action,
        serde_json::json!({
            "file": config.file.display().to_string(),
            "config_sm3": digest,
            "trigger": trigger,
            "version": env!("CARGO_PKG_VERSION"),
            "resources": resources,
        }),
    );
}

fn append(config: &Config, action: &str, detail: serde_json::Value) {
    if let Err(e) = crate::audit::append(&config.node.data_dir, action, "", detail) {
        tracing::error!(error = %e, action, "Cannot write the audit log.");
    }
}
