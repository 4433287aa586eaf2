//! The language of what the agent's and the hub's command lines print.
//!
//! Chinese when the locale says so (`LC_ALL`, else `LC_MESSAGES`, else `LANG`, the first one
//! set and non-empty, starting with `zh`: `zh_CN.UTF-8`, `zh_TW`, `zh`), English otherwise
//! (including `C` and `POSIX`). `EXCHANGE_LANG=zh|en` overrides the locale, for a service
//! whose unit sets no locale but whose operators read Chinese. Logs stay English: their
//! messages are the stable text that alerting rules match; their fields are the same in both.
//!
//! Every message a person reads is written in both languages where it is written:
//! [`tr!`](crate::tr) takes the English and the Chinese format strings (the same arguments,
//! captured by name) and formats the one for the current language. An error enum does it in
//! its attribute: `#[error("{}", tr!("no field `{field}`", "没有字段 `{field}`"))]` (thiserror
//! binds the fields by name; a `Path` field needs `path = path.display()`). The architecture
//! test refuses an error message of the agent, the hub or their libraries written in English
//! only. Text written now and read later by someone else (a stop reason the service stores,
//! read by an operator's `status`) is kept in both: [`Text::render`].

use std::sync::OnceLock;

/// A language of the command-line text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    /// English (the default).
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The language a locale string (`zh_CN.UTF-8`, `en_US`, `C`) names.
    pub fn of_locale(locale: &str) -> Lang {
        let l = locale.trim().to_ascii_lowercase();
        if l.starts_with("zh") || l.starts_with("chinese") {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    /// The language of an environment: `EXCHANGE_LANG`, else the first of `LC_ALL`,
    /// `LC_MESSAGES`, `LANG` that is set and not empty.
    pub fn of_env(var: impl Fn(&str) -> Option<String>) -> Lang {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("EXCHANGE_LANG") {
            return Lang::of_locale(&v);
        }
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .find_map(|n| set(n))
            .map_or(Lang::En, |v| Lang::of_locale(&v))
    }
}

static CURRENT: OnceLock<Lang> = OnceLock::new();

thread_local! {
    static SCOPED: std::cell::Cell<Option<Lang>> = const { std::cell::Cell::new(None) };
}

/// The language of this thread's text: the one [`scoped`] set, else this process's (read from
/// the environment once).
pub fn current() -> Lang {
    SCOPED
        .get()
        .unwrap_or_else(|| *CURRENT.get_or_init(|| Lang::of_env(|n| std::env::var(n).ok())))
}

/// Runs `f` with text in `lang` on this thread: the service answers an operator command in
/// the language of the operator who typed it, not its own.
pub fn scoped<R>(lang: Lang, f: impl FnOnce() -> R) -> R {
    let before = SCOPED.replace(Some(lang));
    let out = f();
    SCOPED.set(before);
    out
}

/// Whether this process prints Chinese.
pub fn is_zh() -> bool {
    current() == Lang::Zh
}

/// The English or the Chinese text, by the current language.
pub fn pick<'a>(en: &'a str, zh: &'a str) -> &'a str {
    match current() {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

/// Text written by one process and read later, maybe by another in the other language: a
/// stop reason or the last error the service keeps, which `status` prints in the language of
/// the operator who asks. Serialized as `{"en": …, "zh": …}`; a plain string (written by a
/// version that kept one language) still reads, as [`Text::One`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Text {
    /// The same message in both languages.
    Both {
        /// English.
        en: String,
        /// Simplified Chinese.
        zh: String,
    },
    /// A message in one language only.
    One(String),
}

impl Text {
    /// Renders a message in both languages: `f` runs once in each ([`scoped`]).
    pub fn render(f: impl Fn() -> String) -> Text {
        let en = scoped(Lang::En, &f);
        let zh = scoped(Lang::Zh, &f);
        if en == zh {
            Text::One(en)
        } else {
            Text::Both { en, zh }
        }
    }

    /// The message in the current language (the one it has, if only one).
    pub fn get(&self) -> &str {
        match self {
            Text::Both { en, zh } => pick(en, zh),
            Text::One(s) => s,
        }
    }

    /// The message in English (the one it has, if only one): for logs and the audit log.
    pub fn en(&self) -> &str {
        match self {
            Text::Both { en, .. } | Text::One(en) => en,
        }
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::One(s)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::One(s.to_owned())
    }
}

/// Formats the English or the Chinese format string, by the current language:
/// `tr!("no resource `{code}`", "没有资源 `{code}`")`. Both strings take the same arguments
/// (captured by name, or given after them as for `format!`).
#[macro_export]
macro_rules! tr {
    ($en:literal, $zh:literal $(, $($arg:tt)*)?) => {
        if $crate::lang::is_zh() {
            format!($zh $(, $($arg)*)?)
        } else {
            format!($en $(, $($arg)*)?)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_chinese_locale_selects_chinese_and_others_english() {
        assert_eq!(Lang::of_env(env(&[("LANG", "zh_CN.UTF-8")])), Lang::Zh);
        assert_eq!(Lang::of_env(env(&[("LANG", "zh_TW.Big5")])), Lang::Zh);
        assert_eq!(Lang::of_env(env(&[("LANG", "en_US.UTF-8")])), Lang::En);
        assert_eq!(Lang::of_env(env(&[("LANG", "C")])), Lang::En);
        assert_eq!(Lang::of_env(env(&[])), Lang::En);
    }

    #[test]
    fn lc_all_wins_over_lang_and_exchange_lang_over_both() {
        assert_eq!(
            Lang::of_env(env(&[("LC_ALL", "C"), ("LANG", "zh_CN.UTF-8")])),
            Lang::En
        );
        assert_eq!(
            Lang::of_env(env(&[("LC_ALL", ""), ("LANG", "zh_CN.UTF-8")])),
            Lang::Zh
        );
        assert_eq!(
            Lang::of_env(env(&[("EXCHANGE_LANG", "zh"), ("LC_ALL", "C")])),
            Lang::Zh
        );
    }

    #[test]
    fn scoped_text_follows_the_asked_language_and_then_the_process_again() {
        let process = current();
        let zh = scoped(Lang::Zh, || crate::tr!("queue", "队列"));
        let en = scoped(Lang::En, || crate::tr!("queue", "队列"));
        assert_eq!((zh.as_str(), en.as_str()), ("队列", "queue"));
        assert_eq!(current(), process);
    }

    #[test]
    fn a_text_rendered_in_both_languages_reads_in_the_asked_one_and_old_plain_text_still_reads() {
        let code = "people";
        let text = Text::render(|| crate::tr!("`{code}` is stopped", "`{code}` 已停止"));
        assert_eq!(
            scoped(Lang::Zh, || text.get().to_owned()),
            "`people` 已停止"
        );
        assert_eq!(
            scoped(Lang::En, || text.get().to_owned()),
            "`people` is stopped"
        );
        assert_eq!(text.en(), "`people` is stopped");
        let json = serde_json::to_string(&text).unwrap();
        assert_eq!(serde_json::from_str::<Text>(&json).unwrap(), text);
        let old: Text = serde_json::from_str("\"the hub lost batches\"").unwrap();
        assert_eq!(old, Text::One("the hub lost batches".into()));
        assert_eq!(
            scoped(Lang::Zh, || old.get().to_owned()),
            "the hub lost batches"
        );
    }

    #[test]
    fn tr_formats_captured_arguments_in_either_language() {
        let code = "people";
        let text = crate::tr!("no resource `{code}`", "没有资源 `{code}`");
        assert!(text == "no resource `people`" || text == "没有资源 `people`");
        let n = 3;
        let text = crate::tr!("{} batches", "{} 个批次", n);
        assert!(text == "3 batches" || text == "3 个批次");
    }
}
