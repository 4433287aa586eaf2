//! The machine the benchmark ran on, for the report.

use super::Bench;

impl Bench {
    /// CPU, cores and memory; the kernel; the PostgreSQL and MariaDB versions.
    pub(super) async fn machine(&self) -> Vec<String> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let pg = match self.pg("postgres").await {
            Ok(c) => c
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| format!("PostgreSQL {}", r.get::<_, String>(0)))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let my = self
            .mariadb()
            .args(["-N", "-e", "SELECT VERSION()"])
            .output()
            .map(|o| format!("MariaDB {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        vec![
            format!("{cpu}, {cores} cores, {mem}"),
            format!("Linux {kernel}"),
            pg,
            my,
        ]
    }
}
