//! Child processes and what they cost: wall time, CPU seconds (user + system) and peak RSS, as
//! the kernel reports them to `wait4` for the child and every descendant it waited for.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What a finished process cost.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    /// From spawn to exit.
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size, bytes (the largest of the process and its waited-for children).
    pub peak_rss: u64,
}

/// A running child.
pub struct Child {
    /// For messages.
    pub name: String,
    /// Its pid.
    pub pid: i32,
    /// When it was spawned.
    pub started: Instant,
    /// Its standard output, when piped.
    pub stdout: Option<std::process::ChildStdout>,
}

/// Starts `cmd` (standard error goes to `log` when given, else to ours).
pub fn spawn(name: &str, mut cmd: Command, log: Option<&std::path::Path>) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null());
    if let Some(log) = log {
        let f = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stderr(f);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
    Ok(Child {
        name: name.to_owned(),
        pid: child.id() as i32,
        started,
        stdout: child.stdout.take(),
    })
}

impl Child {
    /// Waits for the child to exit; fails if it exited unsuccessfully.
    pub async fn wait(self) -> anyhow::Result<Usage> {
        let name = self.name.clone();
        let (status, usage) = tokio::task::spawn_blocking(move || self.reap())
            .await
            .expect("wait task")?;
        if status != 0 {
            bail!("{name} failed (wait status {status:#x})");
        }
        Ok(usage)
    }

    /// Waits at most `limit`; kills the child and fails after that.
    pub async fn wait_at_most(self, limit: Duration) -> anyhow::Result<Usage> {
        let pid = self.pid;
        let name = self.name.clone();
        match tokio::time::timeout(limit, self.wait()).await {
            Ok(r) => r,
            Err(_) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                bail!("{name} did not finish within {limit:?}; killed")
            }
        }
    }

    /// Sends SIGTERM, waits for the exit (SIGKILL after 30 s) and returns the usage.
    pub async fn stop(self) -> anyhow::Result<Usage> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let pid = self.pid;
        let waiter = tokio::task::spawn_blocking(move || self.reap());
        let killer = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::future::pending::<()>().await
        };
        tokio::select! {
            r = waiter => Ok(r.expect("wait task")?.1),
            _ = killer => unreachable!(),
        }
    }

    /// The resident set size now, bytes (0 when it cannot be read).
    pub fn rss(&self) -> u64 {
        rss_of(self.pid)
    }

    fn reap(self) -> anyhow::Result<(i32, Usage)> {
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
        if r != self.pid {
            bail!(
                "waiting for {} failed: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Ok((
            status,
            Usage {
                wall: self.started.elapsed(),
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
                peak_rss: ru.ru_maxrss as u64 * 1024,
            },
        ))
    }
}

/// VmRSS of a process, bytes (0 when it cannot be read).
pub fn rss_of(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs `sh -c script` to completion and returns its usage (its pipeline's processes included).
pub async fn shell(name: &str, script: &str, limit: Duration) -> anyhow::Result<Usage> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdout(Stdio::null());
    spawn(name, cmd, None)?.wait_at_most(limit).await
}
