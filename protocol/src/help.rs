//! The command lines' help (`--help`) in the operator's language.
//!
//! The English of each binary's help is its clap definition (doc comments). Its Chinese is a
//! table of pairs, the English text as clap holds it (summaries without their final period)
//! and its translation, kept beside the definition by each binary: [`localized`] puts the
//! Chinese in place, when the current language is Chinese ([`crate::lang`]), of every
//! command's `about` and `long_about` and every argument's `help` and `long_help`, and
//! translates the headings. An option's possible values are not listed in Chinese (their help
//! is English): its Chinese help names them.
//! [`untranslated`] lists the texts a table lacks, for the binaries'
//! tests, so a new option cannot arrive in English only.
//!
//! clap's own messages about a command line it cannot parse (`unexpected argument …`) stay
//! English: clap has no catalogue for them.

use clap::Command;

/// `cmd` with its help in the current language: unchanged in English; in Chinese, every text
/// `zh` translates replaced, and the headings in Chinese.
pub fn localized(cmd: Command, zh: &[(&'static str, &'static str)]) -> Command {
    if !crate::lang::is_zh() {
        return cmd;
    }
    translate(cmd, zh)
}

/// Parses the process's command line into `C`, its help in the current language ([`localized`]);
/// exits as clap does on `--help`, `--version` or an error.
pub fn parse<C: clap::Parser>(zh: &[(&'static str, &'static str)]) -> C {
    let matches = localized(C::command(), zh).get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Panics, listing them, when a help text of `C` has no translation in `zh`: each binary's
/// test that its table is complete.
pub fn assert_translated<C: clap::CommandFactory>(zh: &[(&'static str, &'static str)]) {
    let missing = untranslated(C::command(), zh);
    assert!(missing.is_empty(), "no Chinese in help.rs: {missing:#?}");
}

/// The help texts of `cmd` and its subcommands that `zh` does not translate.
pub fn untranslated(mut cmd: Command, zh: &[(&'static str, &'static str)]) -> Vec<String> {
    cmd.build();
    let mut missing = Vec::new();
    texts(&cmd, &mut |text| {
        if chinese(zh, text).is_none() {
            missing.push(text.to_owned());
        }
    });
    missing.sort();
    missing.dedup();
    missing
}

/// The translation of `text`.
fn chinese(zh: &[(&'static str, &'static str)], text: &str) -> Option<&'static str> {
    zh.iter().find(|(en, _)| *en == text).map(|(_, z)| *z)
}

/// Every help text of a command tree (built: `help` and `version` arguments included).
fn texts(cmd: &Command, f: &mut dyn FnMut(&str)) {
    for t in [cmd.get_about(), cmd.get_long_about()]
        .into_iter()
        .flatten()
    {
        f(&t.to_string());
    }
    for arg in cmd.get_arguments() {
        for t in [arg.get_help(), arg.get_long_help()].into_iter().flatten() {
            f(&t.to_string());
        }
    }
    for sub in cmd.get_subcommands() {
        texts(sub, f);
    }
}

/// One command and its subcommands translated.
fn translate(mut cmd: Command, zh: &[(&'static str, &'static str)]) -> Command {
    cmd.build();
    if let Some(t) = cmd.get_about().and_then(|a| chinese(zh, &a.to_string())) {
        cmd = cmd.about(t);
    }
    if let Some(t) = cmd
        .get_long_about()
        .and_then(|a| chinese(zh, &a.to_string()))
    {
        cmd = cmd.long_about(t);
    }
    let args: Vec<(String, Option<&str>, Option<&str>, bool)> = cmd
        .get_arguments()
        .map(|a| {
            let help = a.get_help().and_then(|h| chinese(zh, &h.to_string()));
            let long = a.get_long_help().and_then(|h| chinese(zh, &h.to_string()));
            (a.get_id().to_string(), help, long, a.is_positional())
        })
        .collect();
    for (id, help, long, positional) in args {
        cmd = cmd.mut_arg(id, |mut a| {
            if let Some(h) = help {
                a = a.help(h);
            }
            if let Some(h) = long {
                a = a.long_help(h);
            }
            // The values' own help is English; the Chinese help names them instead.
            a.hide_possible_values(true)
                .help_heading(if positional { "参数" } else { "选项" })
        });
    }
    cmd = cmd.subcommand_help_heading("命令").help_template(
        "{before-help}{about-with-newline}\n用法：{usage}\n\n{all-args}{after-help}",
    );
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |s| translate(s, zh));
    }
    cmd
}
