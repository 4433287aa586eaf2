//! The connection pool: at most [`POOL_SIZE`](super::POOL_SIZE) connections in use, idle ones
//! kept for the next use, a lost one dropped and replaced by a new one when next needed.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use super::{PgStore, describe};
use crate::store::StoreError;

/// A connection taken from the pool; returned to it on drop unless it was lost.
pub(super) struct Pooled {
    /// The connection (always `Some` until drop).
    client: Option<Client>,
    /// The pool to return it to.
    store: Arc<PgStore>,
    /// Held while the connection is in use.
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    /// The connection.
    pub(super) fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.store
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
    }
}

impl PgStore {
    /// Opens a new connection, reading the password file each time (so it can be rotated).
    pub(super) async fn connect(&self) -> Result<Client, StoreError> {
        let mut config = self.config.config.clone();
        if let Some(path) = &self.config.password_file {
            exchange_protocol::tls::check_secret_permissions(path).map_err(|e| {
                StoreError::Failed {
                    target: self.target.clone(),
                    reason: e.to_string(),
                }
            })?;
            let password = std::fs::read_to_string(path).map_err(|e| StoreError::Failed {
                target: self.target.clone(),
                reason: exchange_protocol::tr!(
                    "cannot read password file {}: {}",
                    "无法读取密码文件 {}：{}",
                    path.display(),
                    exchange_protocol::translate::io(&e)
                ),
            })?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        // Whatever stops a connection (server down, not accepting connections, a password
        // being rotated) is the operator's to fix; the agent keeps the batch and retries.
        let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable {
            target: self.target.clone(),
            reason: describe(&e),
        };
        let target = self.target.clone();
        if self.config.tls {
            let tls = exchange_protocol::tls::source_client_config(self.config.ca.as_deref())
                .map_err(|e| StoreError::Failed {
                    target: self.target.clone(),
                    reason: exchange_protocol::tr!(
                        "cannot set up TLS to the store ([store] ca): {e}",
                        "无法建立到存储的 TLS（[store] ca）：{e}"
                    ),
                })?;
            let (client, connection) = config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(unavailable)?;
            tokio::spawn(drive(connection, target));
            Ok(client)
        } else {
            let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
            tokio::spawn(drive(connection, target));
            Ok(client)
        }
    }

    /// Takes an open connection from the pool or opens one.
    pub(super) async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client: Some(client),
            store: self.clone(),
            _permit: permit,
        })
    }
}

/// Runs a connection until it ends: server notices go to the debug log (their text names
/// tables, never row values), a failure is logged once as a warning.
async fn drive<S, T>(mut connection: Connection<S, T>, target: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notice(notice)) => tracing::debug!(
                store = %target,
                code = notice.code().code(),
                notice = notice.message(),
                "Store notice."
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(store = %target, error = %describe(&e), "Connection to the store lost; it will be reopened.");
                return;
            }
        }
    }
}
