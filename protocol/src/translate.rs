//! Chinese renderings of the messages the project does not write itself, for the Chinese form
//! of a configuration error ([`crate::lang`]): a TOML or serde deserializer's ("missing field
//! `id`", "unclosed table, expected `]`") and the operating system's ("No such file or
//! directory (os error 2)").
//!
//! Only the words are translated: the names between backticks and quotes, which the
//! administrator looks for in the file, are kept as written. A message that is not recognized
//! is returned unchanged, so nothing is lost.

/// A serde or TOML deserializer's message in Chinese; `nearest` is the valid key to suggest
/// for an unknown one (the agent computes it; `None`: no suggestion).
pub fn deserializer_zh(message: &str, nearest: Option<&str>) -> String {
    let m = message.trim_end();
    if let Some(rest) = m.strip_prefix("unknown field `")
        && let Some((found, expected)) = rest.split_once('`')
    {
        let hint = nearest
            .map(|n| format!("，是否应为 `{n}`？"))
            .unwrap_or_default();
        let expected = expected.trim_start_matches(',').trim();
        let valid = match expected {
            "there are no fields" => "此处不接受任何配置项".to_owned(),
            e => {
                let list = e
                    .trim_start_matches("expected ")
                    .trim_start_matches("one of ");
                format!("可用的配置项：{}", list.replace(", ", "、"))
            }
        };
        return format!("未知配置项 `{found}`{hint}（{valid}）");
    }
    if let Some(rest) = m.strip_prefix("missing field `") {
        return format!("缺少配置项 `{}", rest);
    }
    if let Some(rest) = m.strip_prefix("duplicate field `") {
        return format!("配置项 `{rest} 写了两次");
    }
    if let Some(rest) = m.strip_prefix("unknown variant `")
        && let Some((found, expected)) = rest.split_once("`, expected ")
    {
        return format!("不支持 `{found}`，应为{}", spaced(names(expected)));
    }
    if let Some((unexpected, expected)) = m
        .strip_prefix("invalid type: ")
        .and_then(|r| r.split_once(", expected "))
    {
        return format!(
            "类型不对：这里写的是{}，应为{}",
            spaced(unexpected_zh(unexpected)),
            spaced(expected_zh(expected))
        );
    }
    if let Some((unexpected, expected)) = m
        .strip_prefix("invalid value: ")
        .and_then(|r| r.split_once(", expected "))
    {
        return format!(
            "取值无效：{}，应为{}",
            spaced(unexpected_zh(unexpected)),
            spaced(expected_zh(expected))
        );
    }
    if let Some((n, expected)) = m
        .strip_prefix("invalid length ")
        .and_then(|r| r.split_once(", expected "))
    {
        return format!("长度不对：有 {n} 项，应为{}", spaced(expected_zh(expected)));
    }
    syntax_zh(m).unwrap_or_else(|| m.to_owned())
}

/// A TOML syntax error ("unclosed table, expected `]`") in Chinese; `None` for a message
/// that is not a known one.
fn syntax_zh(m: &str) -> Option<String> {
    let (description, expected) = match m.split_once(", expected ") {
        Some((d, e)) => (d, Some(e)),
        None => (m, None),
    };
    let known = match description {
        "unclosed table" => "表头 `[…]` 没有闭合",
        "unclosed array table" => "表数组的表头 `[[…]]` 没有闭合",
        "unclosed array" => "数组没有闭合",
        "unclosed inline table" => "内联表 `{…}` 没有闭合",
        "key with no value" | "missing value for key" => "配置项没有值",
        "missing value" => "缺少值",
        "string values must be quoted" => "字符串值必须加引号",
        "duplicate key" => "配置项重复",
        "invalid key" | "invalid unquoted key" => {
            "配置项名称无效（不加引号的名称只能含字母、数字、`-` 和 `_`）"
        }
        "missing comma between array elements" => "数组元素之间缺少逗号",
        "missing comma between key-value pairs" => "内联表的配置项之间缺少逗号",
        "missing assignment between key-value pairs" => "配置项和值之间缺少 `=`",
        "unexpected content" => "这里有多余的内容",
        "invalid value" => "值无效",
        "invalid string" | "invalid basic string" | "invalid literal string" => {
            "字符串无效（是否缺少结尾的引号？）"
        }
        "invalid integer number" => "整数无效",
        "invalid float" => "小数无效",
        "invalid boolean" => "布尔值无效（应为 true 或 false）",
        "invalid date-time" => "日期时间无效",
        "invalid table" => "表无效",
        _ => return None,
    };
    Some(match expected {
        Some(e) => format!("TOML 语法错误：{known}，应为{}", spaced(names(e))),
        None => format!("TOML 语法错误：{known}"),
    })
}

/// `text` after a Chinese word: a space before it when it starts with a name or a Latin
/// word (`应为 \`]\``), none before Chinese (`应为数组`).
fn spaced(text: String) -> String {
    if text.starts_with(|c: char| c.is_ascii()) {
        format!(" {text}")
    } else {
        text
    }
}

/// "one of `a`, `b`, `c`", "`a` or `b`", "`a`" in Chinese.
fn names(expected: &str) -> String {
    let e = expected.trim();
    if let Some(list) = e.strip_prefix("one of ") {
        return format!("以下之一：{}", list.replace(", ", "、"));
    }
    if let Some((a, b)) = e.split_once("` or `") {
        return format!("{a}` 或 `{b}");
    }
    e.replace(", ", "、")
}

/// What the deserializer found ("string \"ten\"", "integer `5`", "map").
fn unexpected_zh(u: &str) -> String {
    let kinds = [
        ("string ", "字符串 "),
        ("integer ", "整数 "),
        ("floating point ", "小数 "),
        ("boolean ", "布尔值 "),
        ("character ", "字符 "),
    ];
    for (en, zh) in kinds {
        if let Some(rest) = u.strip_prefix(en) {
            return format!("{zh}{rest}");
        }
    }
    match u {
        "sequence" => "数组".into(),
        "map" => "表".into(),
        "unit value" => "空值".into(),
        "date-time" | "datetime" => "日期时间".into(),
        other => other.into(),
    }
}

/// What the deserializer expected: a Rust type name or a visitor's description.
fn expected_zh(e: &str) -> String {
    let e = e.trim();
    match e {
        "usize" | "u64" | "u32" | "u16" | "u8" => "非负整数".into(),
        "isize" | "i64" | "i32" | "i16" | "i8" | "an integer" => "整数".into(),
        "f64" | "f32" | "a number" => "数字".into(),
        "bool" | "a boolean" => "true 或 false".into(),
        "a string" | "a borrowed string" | "string" => "字符串".into(),
        "a sequence" | "an array" => "数组".into(),
        "a map" | "a table" => "表".into(),
        "a character" | "char" => "单个字符".into(),
        e if e.starts_with("struct ") || e.starts_with("a table ") => "表".into(),
        e if e.starts_with("enum ") => "规定的取值之一".into(),
        e if e.contains('`') => names(e),
        other => other.into(),
    }
}

/// An operating system error in the current language ([`io_zh`] in Chinese, as the system
/// gives it in English).
pub fn io(e: &std::io::Error) -> String {
    if crate::lang::is_zh() {
        io_zh(e)
    } else {
        e.to_string()
    }
}

/// An operating system error in Chinese, for the usual reasons a configured file cannot be
/// read; any other error as the system gives it.
pub fn io_zh(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "文件或目录不存在".into(),
        ErrorKind::PermissionDenied => "没有访问权限".into(),
        ErrorKind::IsADirectory => "这是一个目录，不是文件".into(),
        ErrorKind::InvalidData => "内容不是有效的 UTF-8 文本".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializer_messages_are_rendered_in_chinese_keeping_the_names() {
        for (en, zh) in [
            (
                "unknown field `evry`, expected one of `schedule`, `every`",
                "未知配置项 `evry`（可用的配置项：`schedule`、`every`）",
            ),
            (
                "unknown field `colour`, expected `max_bytes`",
                "未知配置项 `colour`（可用的配置项：`max_bytes`）",
            ),
            (
                "unknown field `x`, there are no fields",
                "未知配置项 `x`（此处不接受任何配置项）",
            ),
            ("missing field `cert`", "缺少配置项 `cert`"),
            ("duplicate field `id`", "配置项 `id` 写了两次"),
            (
                "unknown variant `1.1`, expected `1.3` or `1.2`",
                "不支持 `1.1`，应为 `1.3` 或 `1.2`",
            ),
            (
                "invalid type: string \"ten\", expected usize",
                "类型不对：这里写的是字符串 \"ten\"，应为非负整数",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "类型不对：这里写的是整数 `5`，应为字符串",
            ),
            (
                "invalid type: map, expected a sequence",
                "类型不对：这里写的是表，应为数组",
            ),
            (
                "unclosed table, expected `]`",
                "TOML 语法错误：表头 `[…]` 没有闭合，应为 `]`",
            ),
            ("something new, expected `x`", "something new, expected `x`"),
        ] {
            assert_eq!(deserializer_zh(en, None), zh, "{en}");
        }
        assert_eq!(
            deserializer_zh("unknown field `evry`, expected `every`", Some("every")),
            "未知配置项 `evry`，是否应为 `every`？（可用的配置项：`every`）"
        );
    }

    #[test]
    fn the_usual_file_errors_are_rendered_in_chinese() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(io_zh(&missing), "文件或目录不存在");
        let other = std::io::Error::other("disk on fire");
        assert_eq!(io_zh(&other), "disk on fire");
    }
}
