//! `cursor show`, `cursor reset` and `cursor set`: where the next pull of a resource starts.

use exchange_connectors::Value;
use exchange_protocol::tr;

use super::command::{OperatorError, Printed, resource};
use crate::audit;
use crate::config::{Config, Mode, Resource};
use crate::pipeline::queue::Queue;

/// The source position as text (each cursor column, the key tiebreaker last). A sealed
/// value (the raw value of a key that leaves pseudonymized) is not shown.
fn position_text(
    resource: &Resource,
    keys: &crate::policy::Keys,
    position: &Option<Vec<Value>>,
) -> String {
    match position {
        None => tr!(
            "at the start (the next pull reads from the first row)",
            "处于起点（下一次抽取从第一行读起）"
        ),
        Some(values) => {
            let names = crate::policy::Plan::new(resource, keys).selection.cursor;
            names
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    if crate::policy::seal::is_sealed(v) {
                        let form = resource
                            .fields
                            .iter()
                            .find(|(f, _)| f.eq_ignore_ascii_case(&resource.key))
                            .map_or(
                                exchange_protocol::lang::pick("as read", "原样"),
                                |(_, rule)| rule.key_form(),
                            );
                        tr!(
                            "{n} = (sealed: the key leaves {form})",
                            "{n} = （已密封：主键以{form}形式离开）"
                        )
                    } else {
                        format!("{n} = {}", v.to_text().unwrap_or_else(|| "?".into()))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `cursor show`.
pub fn cursor_show(config: &Config, queue: &Queue, code: &str) -> Printed {
    let r = resource(config, queue, code)?;
    let st = queue.state(code)?;
    Ok(match &r.mode {
        Mode::Incremental { .. } => {
            let position = position_text(r, &config.keys, &st.cursor);
            tr!("{code}: {position}\n", "{code}：{position}\n")
        }
        Mode::Snapshot => {
            let generation = st.snapshot.generation;
            let at = if st.snapshot.sweeping {
                tr!("sweeping deletes", "正在清理已删除的行")
            } else {
                let position = position_text(r, &config.keys, &st.snapshot.position);
                tr!("scan {position}", "扫描位置 {position}")
            };
            tr!(
                "{code}: snapshot generation {generation}, {at}\n",
                "{code}：快照第 {generation} 代，{at}\n"
            )
        }
    })
}

/// A file drop resource has no cursor: its files, once read, are not read again unless they
/// are dropped again.
fn no_cursor_in_a_file_drop(r: &crate::config::Resource) -> Result<(), OperatorError> {
    let Some(file) = &r.files else {
        return Ok(());
    };
    let (code, dir) = (&r.code, file.dir());
    let dir = dir.display();
    Err(OperatorError::Usage(tr!(
        "`{code}` reads a file drop: it has no cursor. To send files again, move them from {dir}/done/ back into {dir}/ (a snapshot resource: its latest file)",
        "`{code}` 读取文件交换目录，没有游标。如需重新发送文件，请把它们从 {dir}/done/ 移回 {dir}/（快照资源：移回最新的一个文件）"
    )))
}

/// `cursor reset`: the next pull reads the resource from the start on the same stream (rows
/// are sent again; the hub overwrites them). Audited.
pub fn cursor_reset(config: &Config, queue: &Queue, code: &str) -> Printed {
    let r = resource(config, queue, code)?;
    no_cursor_in_a_file_drop(r)?;
    let incremental = matches!(r.mode, Mode::Incremental { .. });
    queue.update_state(code, |st| {
        st.cursor = None;
        if st.snapshot.position.is_some() || st.snapshot.sweeping {
            // A scan cut short: the next scan is a new generation, so rows this one already
            // stamped are not taken for duplicates.
            st.snapshot.generation += 1;
        }
        st.snapshot.position = None;
        st.snapshot.sweeping = false;
        st.snapshot.invalid_keys = 0;
        if incremental {
            // Every row is read again: the invalid keys are counted afresh.
            st.invalid_keys = 0;
            st.invalid_keys_since = None;
        }
    })?;
    audit::append(
        &config.node.data_dir,
        "cursor.reset",
        code,
        serde_json::json!({}),
    )?;
    Ok(tr!(
        "The cursor of `{code}` is reset: the next pull reads every row again and the hub overwrites what it holds (rows deleted at the source stay at the hub; `exchange-agent resync {code} --yes` removes those too).\n",
        "`{code}` 的游标已重置：下一次抽取重新读取全部行，交换平台覆盖其已有数据（源端已删除的行仍留在交换平台；`exchange-agent resync {code} --yes` 会一并删除）。\n"
    ))
}

/// `cursor set`: the next pull reads rows after `values` (one per cursor column, the key
/// last, each parsed like the current position's value). Audited (without the values).
pub fn cursor_set(config: &Config, queue: &Queue, code: &str, values: &[String]) -> Printed {
    let r = resource(config, queue, code)?;
    no_cursor_in_a_file_drop(r)?;
    if !matches!(r.mode, Mode::Incremental { .. }) {
        return Err(OperatorError::Usage(tr!(
            "`{code}` is a snapshot resource: it has no cursor to set (use `cursor reset` to restart its scan)",
            "`{code}` 是快照资源，没有可设置的游标（如需重新扫描，请用 `cursor reset`）"
        )));
    }
    let plan = crate::policy::Plan::new(r, &config.keys);
    let names = plan.selection.cursor.clone();
    if values.len() != names.len() {
        let (n, columns) = (names.len(), names.join(", "));
        return Err(OperatorError::Usage(tr!(
            "`{code}` has {n} cursor columns ({columns}, the key last as tiebreaker); give one value for each",
            "`{code}` 有 {n} 个游标列（{columns}，最后一列为作决胜用的主键）；请为每列给出一个值"
        )));
    }
    let st = queue.state(code)?;
    let Some(current) = st.cursor else {
        return Err(OperatorError::Usage(tr!(
            "`{code}` has no cursor yet (it reads from the start); run a pull first, so the column types are known",
            "`{code}` 还没有游标（从起点读取）；请先完成一次抽取，以便确定列类型"
        )));
    };
    let current = plan
        .position_from_store(&current)
        .map_err(OperatorError::Usage)?;
    let parsed = current
        .iter()
        .zip(values)
        .zip(&names)
        .map(|((like, text), name)| {
            parse_like(like, text).map_err(|why| {
                OperatorError::Usage(tr!(
                    "cursor column `{name}`: {why}",
                    "游标列 `{name}`：{why}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = plan.position_to_store(parsed).ok_or_else(|| {
        OperatorError::Usage(tr!(
            "`{code}`: the key leaves pseudonymized or encrypted but `[policy] seal_key_file` is not configured, so the position cannot be sealed",
            "`{code}`：主键以假名化或加密形式离开，但未配置 `[policy] seal_key_file`，无法密封该位置"
        ))
    })?;
    queue.update_state(code, |st| st.cursor = Some(parsed))?;
    audit::append(
        &config.node.data_dir,
        "cursor.set",
        code,
        serde_json::json!({ "columns": names }),
    )?;
    Ok(tr!(
        "The cursor of `{code}` is set: the next pull reads the rows after it.\n",
        "`{code}` 的游标已设置：下一次抽取读取该位置之后的行。\n"
    ))
}

/// Parses `text` as a value of the same kind as `like`.
fn parse_like(like: &Value, text: &str) -> Result<Value, String> {
    let bad = |en: &str, zh: &str| {
        let what = exchange_protocol::lang::pick(en, zh);
        tr!("expected {what}", "应为{what}")
    };
    Ok(match like {
        Value::Null => {
            return Err(tr!("the current position is NULL", "当前位置为 NULL"));
        }
        Value::Bool(_) => Value::Bool(
            text.parse()
                .map_err(|_| bad("true or false", " true 或 false"))?,
        ),
        Value::Int(_) => Value::Int(text.parse().map_err(|_| bad("an integer", "整数"))?),
        Value::UInt(_) => Value::UInt(
            text.parse()
                .map_err(|_| bad("a non-negative integer", "非负整数"))?,
        ),
        Value::Float(_) => Value::Float(
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad("a number", "数字"))?,
        ),
        Value::Decimal(_) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let ok = !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && digits.matches('.').count() <= 1;
            if !ok {
                return Err(bad("a decimal number such as 12.50", "小数，例如 12.50"));
            }
            Value::Decimal(text.to_owned())
        }
        Value::Text(_) => Value::Text(text.to_owned()),
        Value::Date(_) => Value::Date(
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| bad("a date YYYY-MM-DD", "日期 YYYY-MM-DD"))?,
        ),
        Value::Timestamp(_) => Value::Timestamp(
            chrono::NaiveDateTime::parse_from_str(&text.replace(' ', "T"), "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| {
                    bad(
                        "a timestamp YYYY-MM-DDTHH:MM:SS[.ffffff]",
                        "时间戳 YYYY-MM-DDTHH:MM:SS[.ffffff]",
                    )
                })?,
        ),
        Value::TimestampTz(_) => Value::TimestampTz(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| {
                    bad(
                        "an RFC 3339 instant such as 2024-05-01T08:00:00+08:00",
                        " RFC 3339 时刻，例如 2024-05-01T08:00:00+08:00",
                    )
                })?
                .with_timezone(&chrono::Utc),
        ),
        Value::Bytes(_) => {
            Value::Bytes(hex::decode(text).map_err(|_| bad("hexadecimal bytes", "十六进制字节"))?)
        }
        Value::Json(_) => return Err(tr!("a JSON cursor cannot be set", "无法设置 JSON 游标")),
    })
}
