//! Loading the configuration again while the service runs: what triggers it (SIGHUP, or a
//! change seen by `notify` in the directory of the configuration file or of a TLS file it
//! names), how a new configuration is checked, and the audit entry every load leaves.
//!
//! A reload never drops queued data: the queue is owned by the service, not by the pipeline
//! a reload rebuilds ([`crate::pipeline::Pipeline::with_queue`]). What a reload cannot change
//! (`node.data_dir`, `node.id`, `[admin] listen`, `[verify] listen`) makes it fail with a
//! reason; a restart applies those.
//!
//! A reload is checked whole before anything takes effect ([`reload`] returns a [`Next`]
//! only when the pipeline *and* the verification service's new grants and TLS material —
//! `client_ca`, `cert`, `key`, `min_tls`, `crl` — all build). Then the caller applies both:
//! new handshakes use the new TLS material, connections already open finish their requests.
//! A refused reload changes nothing (old grants, old CA, old CRLs stay in force) and says so
//! in the log, the audit log (`config.reload_failed`), the metrics
//! (`exchange_config_reload_failed` 1 until a reload succeeds) and `status`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use exchange_protocol::lang::Text;
use exchange_protocol::tr;
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

/// The TLS files a configuration names: the hub's CA, certificate, key and CRLs, and those of
/// `[verify]`.
fn tls_files(config: &Config) -> Vec<&Path> {
    let mut files: Vec<&Path> = Vec::new();
    for m in std::iter::once(&config.hub.tls).chain(config.verify.as_ref().map(|v| &v.tls)) {
        files.extend([m.ca.as_path(), m.cert.as_path(), m.key.as_path()]);
        files.extend(m.crls.iter().map(PathBuf::as_path));
    }
    files
}

/// The directories whose changes may change the configuration: the file's own and those of
/// the TLS files it names.
fn directories(file: &Path, config: &Config) -> BTreeSet<PathBuf> {
    std::iter::once(file)
        .chain(tls_files(config))
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
    for p in tls_files(config) {
        all.extend(exchange_protocol::digest::sm3(
            &std::fs::read(p).unwrap_or_default(),
        ));
    }
    Some(hex::encode(exchange_protocol::digest::sm3(&all)))
}

/// A refused reload that is still the last word: the configuration running is not the one in
/// the file. Shown by `status` and the metric `exchange_config_reload_failed` until a
/// reload succeeds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// When (RFC 3339).
    pub at: String,
    /// Why the file was not taken, in both languages (an operator's `status` reads it).
    pub reason: exchange_protocol::lang::Text,
    /// SM3 of the file that was refused, if it could be read.
    pub config_sm3: Option<String>,
}

static LAST_FAILURE: std::sync::Mutex<Option<Failure>> = std::sync::Mutex::new(None);

/// The last refused reload of this process, unless a reload succeeded since.
pub fn last_failure() -> Option<Failure> {
    LAST_FAILURE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

fn set_last_failure(f: Option<Failure>) {
    *LAST_FAILURE.lock().unwrap_or_else(|p| p.into_inner()) = f;
}

/// A reload checked in full and ready to take effect: the new generation's pipeline and, with
/// a verification service, its new grants and TLS material.
pub struct Next {
    /// The pipeline of the new generation.
    pub pipeline: Arc<Pipeline>,
    /// What the verification service takes from the new configuration.
    pub verify: Option<crate::verify::Prepared>,
}

/// `file` read and validated, or `None` (what is wrong is said by [`reload`]).
pub fn parse(file: &Path) -> Option<Config> {
    let text = std::fs::read_to_string(file).ok()?;
    Config::parse(file, &text).ok()
}

/// Loads and validates `file`, builds a pipeline around the running one's queue and what
/// the running verification service (`verify`) would take from it (grants, TLS material:
/// client CA, certificate, key, minimum version, CRLs). Nothing takes effect here: on any
/// failure it says why (log, audit `config.reload_failed`, metric, `status`) and returns
/// `None`, and the old generation keeps running whole; else the caller applies [`Next`].
pub fn reload(
    file: &Path,
    current: &Pipeline,
    verify: Option<&crate::verify::Service>,
    trigger: &str,
) -> Option<Next> {
    let metrics = crate::metrics::global();
    let fail = |reason: Text, digest: Option<&str>| {
        metrics.reload_failed();
        let en = reason.en().to_owned();
        set_last_failure(Some(Failure {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason,
            config_sm3: digest.map(str::to_owned),
        }));
        tracing::error!(file = %file.display(), trigger, error = %en, "Configuration not reloaded; the previous configuration keeps running. 配置未重新加载，继续使用原配置。");
        append(
            &current.config,
            "config.reload_failed",
            serde_json::json!({ "file": file.display().to_string(), "trigger": trigger, "config_sm3": digest, "reason": en }),
        );
        None
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(unreadable(file, &e), None),
    };
    let digest = hex::encode(exchange_protocol::digest::sm3(text.as_bytes()));
    let config = match Config::parse(file, &text) {
        Ok(c) => c,
        Err(e) => return fail(Text::render(|| e.to_string()), Some(&digest)),
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
            return fail(restart_needed(key), Some(&digest));
        }
    }
    let prepared = match verify {
        Some(service) => match service.prepare(Arc::new(config.clone())) {
            Ok(p) => Some(p),
            Err(e) => {
                let reason = Text::render(|| {
                    tr!(
                        "the verification service cannot take it: {e}",
                        "核验服务无法采用此配置：{e}"
                    )
                });
                return fail(reason, Some(&digest));
            }
        },
        None => None,
    };
    let next = match Pipeline::with_queue(config, current.queue.clone(), current.board.clone()) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(Text::render(|| e.to_string()), Some(&digest)),
    };
    Some(Next {
        pipeline: next,
        verify: prepared,
    })
}

/// Why a configuration file that cannot be read is not reloaded.
fn unreadable(file: &Path, e: &std::io::Error) -> Text {
    let path = file.display();
    Text::render(|| {
        let e = exchange_protocol::translate::io(e);
        tr!("cannot read {path}: {e}", "无法读取 {path}：{e}")
    })
}

/// Why a change of `key`, which only a restart applies, is not reloaded.
fn restart_needed(key: &str) -> Text {
    Text::render(|| {
        tr!(
            "{key} changed; it takes effect only on a restart (systemctl restart exchange-agent)",
            "{key} 已更改；需重启才生效（systemctl restart exchange-agent）"
        )
    })
}

/// Says that `next` took effect (called once the caller applied it): audit `config.reload`,
/// metric, log; `status` no longer reports a failed reload.
pub fn reloaded(next: &Pipeline, trigger: &str) {
    crate::metrics::global().reloaded();
    set_last_failure(None);
    audit_load(&next.config, "config.reload", Some(trigger));
    tracing::info!(file = %next.config.file.display(), trigger, resources = next.pullers.len(), "Configuration reloaded (配置已重新加载).");
}

/// Appends the audit entry of a configuration load (`service.start`, `config.reload`): the
/// SM3 of the file as read, and the resources it delivers.
pub fn audit_load(config: &Config, action: &str, trigger: Option<&str>) {
    let digest = std::fs::read(&config.file)
        .map(|t| hex::encode(exchange_protocol::digest::sm3(&t)))
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
