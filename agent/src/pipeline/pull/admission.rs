//! What is checked before a pull reads pages: the resource not stopped, its configuration
//! and columns as its stream started, and its rows with a NULL cursor quarantined.

use exchange_protocol::lang::Text;
use exchange_protocol::tr;

use crate::pipeline::fingerprint::Shape;
use crate::pipeline::queue::HaltKind;
use crate::policy::CursorOf;

use super::{NULL_ROWS_LISTED, PullError, PullReport, Puller};

impl Puller {
    /// Rows with a NULL in a cursor column (in snapshot mode the cursor is the key) have no
    /// place in the cursor order, so no page returns them: on every cycle they are counted and
    /// (up to [`NULL_ROWS_LISTED`] of them) quarantined, with their key when it can be read, so
    /// they stay visible until fixed.
    pub(super) async fn quarantine_null_cursors(
        &self,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        let null = self
            .connector
            .null_cursor_rows(&self.plan.selection, NULL_ROWS_LISTED)
            .await?;
        if null.total == 0 {
            return Ok(());
        }
        tracing::warn!(resource = %self.resource.code, rows = null.total, "Rows with a NULL cursor or key value cannot be delivered; they are quarantined.");
        let code = self.resource.code.clone();
        let plan = self.plan.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            for row in &null.rows {
                let reason = Text::render(|| match plan.cursor_of(row) {
                    CursorOf::Null(reason) => reason,
                    _ => tr!(
                        "a cursor column is NULL, so the row has no place in the cursor order; give the column a value (NOT NULL)",
                        "某个游标列为 NULL，该行在游标顺序中没有位置；请为该列赋值（NOT NULL）"
                    ),
                });
                let key = match plan.key_of(row) {
                    Ok((key, _)) => Some(key),
                    Err(q) => q.key,
                };
                txn.quarantine_row(&code, &mut st, key, reason, plan.locator_of(row))?;
            }
            txn.set_state(&code, &st)
        })
        .await?;
        report.null_cursor = null.total;
        Ok(())
    }

    /// Refuses to pull a stopped resource, and stops one whose configuration no longer
    /// matches the shape its stream started with (see [`crate::pipeline::fingerprint`]).
    pub(super) async fn admit(&self) -> Result<(), PullError> {
        let code = self.resource.code.clone();
        let state = self.queue.state(&code)?;
        let halted = |reason: Text| PullError::Halted {
            resource: code.clone(),
            reason,
        };
        if let Some(h) = state.halt {
            return Err(halted(h.reason));
        }
        let now = Shape::of(&self.resource, self.plan.keys());
        match state.shape {
            None => {
                // A new stream, or one that began before shapes were kept.
                self.queue.update_state(&code, |st| st.shape = Some(now))?;
                Ok(())
            }
            Some(old) if old != now => {
                let keeps = old.keeps_position(&now);
                let reason = Text::render(|| {
                    let changes = old.changes(&now).join("; ");
                    if keeps {
                        tr!(
                            "the configuration of `{code}` changed since its stream started ({changes}). Choose: `exchange-agent resync {code} --yes` reads the whole resource again on a new stream, so the hub's copy is rewritten (a field newly dropped disappears from it, a new field is filled in); or `exchange-agent accept-config {code} --yes` keeps the cursor, and only rows that change from now on carry the new configuration",
                            "`{code}` 的配置自其数据流开始以来已更改（{changes}）。请选择：`exchange-agent resync {code} --yes` 在新的数据流上重新读取整个资源，交换中心的副本随之重写（新丢弃的字段从中消失，新字段被填入）；或 `exchange-agent accept-config {code} --yes` 保留游标，只有今后变化的行才按新配置发送"
                        )
                    } else {
                        tr!(
                            "the configuration of `{code}` changed since its stream started ({changes}); the stored position means nothing under the new relation, key, mode or cursor. Run `exchange-agent resync {code} --yes` to read the whole resource again on a new stream",
                            "`{code}` 的配置自其数据流开始以来已更改（{changes}）；在新的关系、主键、模式或游标下，已保存的位置不再有意义。请运行 `exchange-agent resync {code} --yes`，在新的数据流上重新读取整个资源"
                        )
                    }
                });
                self.queue.halt(&code, HaltKind::ConfigChanged, &reason)?;
                tracing::error!(resource = %code, reason = reason.en(), "Resource stopped.");
                Err(halted(reason))
            }
            Some(_) => Ok(()),
        }
    }

    /// Describes the selected columns and checks them against the rules and against the
    /// types the stream started with: a column that disappeared is named by the source's
    /// error, one whose type no longer suits its rule or changed pauses the resource (this
    /// pull fails; the next one checks again) until it is back or an operator accepts it.
    pub(super) async fn check_columns(&self) -> Result<(), PullError> {
        let code = &self.resource.code;
        let columns = self.connector.describe(&self.plan.selection).await?;
        let paused = |reason: String| PullError::Columns {
            resource: code.clone(),
            reason,
        };
        crate::policy::check_types(&self.resource, &columns).map_err(paused)?;
        let now: std::collections::BTreeMap<String, String> = columns
            .into_iter()
            .map(|c| (c.name, c.source_type))
            .collect();
        match self.queue.state(code)?.columns {
            None => {
                self.queue.update_state(code, |st| st.columns = Some(now))?;
                Ok(())
            }
            Some(old) if old != now => {
                let changed: Vec<String> = now
                    .iter()
                    .filter_map(|(name, t)| match old.get(name) {
                        Some(o) if o != t => Some(format!("`{name}` from {o} to {t}")),
                        _ => None,
                    })
                    .collect();
                if changed.is_empty() {
                    // Only the set of columns differs (a column was added to the
                    // configuration and accepted): remember the new set.
                    self.queue.update_state(code, |st| st.columns = Some(now))?;
                    return Ok(());
                }
                let reason = exchange_protocol::tr!(
                    "column type changed at the source: {}. The resource pauses until the column is back as it was; if the change is intended, run `exchange-agent accept-config {code} --yes` (or `exchange-agent resync {code} --yes`)",
                    "数据源中的列类型已更改：{}。资源暂停，直到该列恢复原样；如果这是有意的更改，请运行 `exchange-agent accept-config {code} --yes`（或 `exchange-agent resync {code} --yes`）",
                    changed.join(", ")
                );
                tracing::error!(resource = %code, reason, "Resource paused.");
                Err(paused(reason))
            }
            Some(_) => Ok(()),
        }
    }
}
