//! What most tests start from: a temporary directory, a PKI for one node, and a running hub
//! with a SQLite store; plus the agent configuration that fits them.

use std::time::{Duration, Instant};

use crate::TestDir;
use crate::agent::{Agent, AgentConfig};
use crate::hub::Hub;
use crate::pki::Pki;
use crate::rows::{self, Rows};

/// The node id the tests use unless a test is about identities.
pub const NODE: &str = "rsj-node-01";

/// A directory, certificates and a hub.
pub struct Scene {
    /// The hub (declared first: dropped, i.e. stopped, before the directory goes).
    pub hub: Hub,
    /// Certificates in `<dir>/tls`.
    pub pki: Pki,
    /// The test's directory.
    pub dir: TestDir,
}

impl Scene {
    /// Certificates for [`NODE`] and a running hub.
    pub async fn start() -> Scene {
        let dir = TestDir::new();
        let pki = Pki::new(dir.path(), NODE);
        let hub = Hub::start(pki.hub_tls(), dir.path()).await;
        Scene { hub, pki, dir }
    }

    /// Certificates for [`NODE`] and a hub that is not running yet (its address reserved).
    pub async fn with_hub_down() -> Scene {
        let dir = TestDir::new();
        let pki = Pki::new(dir.path(), NODE);
        let hub = Hub::stopped(pki.hub_tls(), dir.path()).await;
        Scene { hub, pki, dir }
    }

    /// An agent configuration for [`NODE`] pushing to the hub, queue in `<dir>/agent-data`.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig::new(self.dir.path(), &self.pki, NODE, &self.hub.url())
    }

    /// Writes `config` as `<dir>/agent.toml`.
    pub fn write_agent(&self, config: &AgentConfig) -> Agent {
        config.write(&self.dir.path().join("agent.toml"))
    }

    /// Runs `sync` until the hub's records of `code` equal `expected` (fails after
    /// `deadline`). For MariaDB, whose open transactions are server-wide: another test's
    /// transaction may hold the horizon back for a while.
    pub async fn sync_until_equal(
        &self,
        agent: &Agent,
        code: &str,
        expected: &Rows,
        deadline: Duration,
    ) {
        let started = Instant::now();
        loop {
            let out = agent.sync("60s").await;
            let hub = self.hub.rows(code).await;
            match rows::diff(&hub, expected) {
                None => {
                    out.assert_code(0);
                    return;
                }
                Some(d) if started.elapsed() > deadline => {
                    panic!(
                        "the hub still differs from the source after {deadline:?}: {d}\nlast sync: {out}"
                    )
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }
}
