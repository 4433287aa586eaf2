//! The workspace's shape, checked from its source text: no import circle between modules, and
//! no function or `impl` block too long to review (outside tests).
//!
//! Run it alone with `cargo test -p exchange-tests --test architecture`; it reads the source
//! files only (no build of the crates it checks, no database).
//!
//! # Import circles
//! Every crate is read from its roots (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`) through its
//! `mod` declarations, leaving out `#[cfg(test)]` modules. An edge goes from a module to every
//! module a path in it names (`crate::a::b`, `super::…`, `self::…`, or a child's name),
//! resolved to the deepest module the path reaches. A module naming its own descendants is
//! composition (it is where they meet, as `pipeline` assembles `pull`, `queue` and `push`),
//! not an import, and counts for nothing; a descendant naming its ancestor's items does count.
//!
//! At every level of the tree the modules below one parent are collapsed into one node each
//! (the parent's own file is a node too), and that graph must have no circle: so `config`
//! and `policy` may not name each other, nor may anything inside them, and inside `pipeline`
//! neither may `queue` and `push`.
//!
//! # Messages in both languages
//! In the crates people run (not the benchmark, not the demo), outside `#[cfg(test)]` items,
//! every error message (`#[error("…")]`, `anyhow!("…")`,
//! `bail!("…")`, `.context("…")`) that holds words is written with `tr!(english, 中文)`:
//! people who run the agent and the hub read Chinese (`protocol::lang`).
//!
//! # Sizes
//! Outside `#[cfg(test)]` modules and `tests/` directories, a function spans at most
//! [`MAX_FN_LINES`] lines and an `impl` block at most [`MAX_IMPL_LINES`], from the line of its
//! `fn`/`impl` keyword to its closing brace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;
const MAX_IMPL_LINES: usize = 300;

/// The crates checked, by their directory in the workspace.
const CRATES: &[&str] = &[
    "protocol",
    "connectors",
    "rules",
    "agent",
    "hub",
    "demo",
    "bench/pipeline",
    "bench/policy",
    "bench/verify",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// A file's path from the workspace's root.
fn shown(file: &Path) -> String {
    file.strip_prefix(workspace())
        .unwrap_or(file)
        .display()
        .to_string()
}

/// Source text with comments, string and char literals blanked (newlines kept, so line
/// numbers hold).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == b'r' || (c == b'b' && b.get(i + 1) == Some(&b'r')))
            && !prev_is_ident(b, i)
            && raw_string_start(b, i).is_some()
        {
            let (hashes, body) = raw_string_start(b, i).unwrap();
            out.extend(std::iter::repeat_n(b' ', body - i));
            i = body;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == b'"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    out.extend(std::iter::repeat_n(b' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' && char_literal_len(b, i).is_some() {
            let n = char_literal_len(b, i).unwrap();
            out.extend(std::iter::repeat_n(b' ', n));
            i += n;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// At `r"`, `r#"`, `br"`…: the number of `#` and where the body starts.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i + if b[i] == b'b' { 2 } else { 1 };
    let mut hashes = 0;
    while b.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    (b.get(j) == Some(&b'"')).then_some((hashes, j + 1))
}

/// At `'`: the length of a char literal (`'a'`, `'\n'`, `'\u{1F600}'`, `'中'`), or `None` for a
/// lifetime.
fn char_literal_len(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i + 1) == Some(&b'\\') {
        let end = b[i + 2..].iter().position(|&c| c == b'\'')?;
        return Some(end + 3);
    }
    let width = match b.get(i + 1)? {
        c if *c < 0x80 => 1,
        c if *c >= 0xF0 => 4,
        c if *c >= 0xE0 => 3,
        _ => 2,
    };
    (b.get(i + 1 + width) == Some(&b'\'')).then_some(width + 2)
}

/// The index just past the brace matching the `{` at `open`.
fn matching_brace(s: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, &c) in s.iter().enumerate().skip(open) {
        if c == b'{' {
            depth += 1;
        } else if c == b'}' {
            depth -= 1;
            if depth == 0 {
                return k + 1;
            }
        }
    }
    s.len()
}

/// Blanks every `#[cfg(test)]` item (inline test modules, test-only functions); returns the
/// names of `#[cfg(test)] mod name;` declarations (files that are tests).
fn without_tests(s: &str) -> (String, BTreeSet<String>) {
    let mut b = s.as_bytes().to_vec();
    let mut test_files = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = find(&b, b"#[cfg(test)]", from) {
        let after = at + "#[cfg(test)]".len();
        let brace = b[after..].iter().position(|&c| c == b'{' || c == b';');
        let Some(rel) = brace else { break };
        let end = if b[after + rel] == b';' {
            let decl = String::from_utf8_lossy(&b[after..after + rel]).into_owned();
            if let Some(name) = decl.trim().strip_prefix("mod ") {
                test_files.insert(name.trim().to_owned());
            }
            after + rel + 1
        } else {
            matching_brace(&b, after + rel)
        };
        for c in &mut b[at..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    (
        String::from_utf8(b).expect("ascii blanks keep utf-8"),
        test_files,
    )
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// One module of a crate: its path (`a::b`, empty for the root), its file, its stripped text.
struct Module {
    file: PathBuf,
    text: String,
    children: BTreeSet<String>,
}

type Modules = BTreeMap<Vec<String>, Module>;

/// Reads a crate from `root` through its `mod` declarations.
fn read_crate(root: &Path, modules: &mut Modules, path: Vec<String>) {
    let raw = std::fs::read_to_string(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let (text, test_files) = without_tests(&strip(&raw));
    let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let owner = matches!(name, "lib.rs" | "main.rs" | "mod.rs")
        || root.parent().is_some_and(|p| p.ends_with("src/bin"));
    let dir = if owner {
        root.parent().unwrap().to_path_buf()
    } else {
        root.with_extension("")
    };
    let mut children = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("mod ") {
            let Some(child) = rest.trim().strip_suffix(';') else {
                continue;
            };
            let child = child.trim().to_owned();
            if test_files.contains(&child) {
                continue;
            }
            let file = [
                dir.join(format!("{child}.rs")),
                dir.join(&child).join("mod.rs"),
            ]
            .into_iter()
            .find(|f| f.exists())
            .unwrap_or_else(|| panic!("{}: no file for mod {child}", root.display()));
            let mut p = path.clone();
            p.push(child.clone());
            children.insert(child);
            read_crate(&file, modules, p);
        }
    }
    modules.insert(
        path,
        Module {
            file: root.to_path_buf(),
            text,
            children,
        },
    );
}

/// Every path in `text` that starts with `crate`, `super`, `self` or a child module's name,
/// with the line it is on. `use` trees with braces are expanded.
fn paths(m: &Module) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let text = &m.text;
    // `use` statements, expanded.
    let mut in_use = vec![false; text.len() + 1];
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = find(bytes, b"use ", from) {
        from = at + 4;
        if prev_is_ident(bytes, at) {
            continue;
        }
        let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
        let prefix = text[line_start..at].trim();
        if !(prefix.is_empty() || prefix.starts_with("pub")) {
            continue;
        }
        let Some(end) = text[at..].find(';').map(|e| e + at) else {
            continue;
        };
        for flag in &mut in_use[at..end] {
            *flag = true;
        }
        let line = text[..at].matches('\n').count() + 1;
        let tree = text[at + 4..end]
            .split(" as ")
            .collect::<Vec<_>>()
            .join("@");
        let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
        for p in expand(&tree) {
            out.push((p, line));
        }
    }
    // Paths in code.
    let starts: Vec<&str> = ["crate", "super", "self"]
        .into_iter()
        .chain(m.children.iter().map(String::as_str))
        .collect();
    let mut offset = 0;
    for (line_no, line) in text.split('\n').enumerate() {
        let line_offset = offset;
        offset += line.len() + 1;
        let offset = line_offset;
        let lb = line.as_bytes();
        let mut i = 0;
        while i < lb.len() {
            if (lb[i].is_ascii_alphabetic() || lb[i] == b'_') && !prev_is_ident(lb, i) {
                let mut j = i;
                while j < lb.len()
                    && (lb[j].is_ascii_alphanumeric() || lb[j] == b'_' || lb[j] == b':')
                {
                    j += 1;
                }
                let word = &line[i..j];
                if !in_use[offset + i] && word.contains("::") {
                    let segs: Vec<String> = word
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if starts.contains(&segs[0].as_str()) && (i < 2 || &lb[i - 2..i] != b"::") {
                        out.push((segs, line_no + 1));
                    }
                }
                i = j.max(i + 1);
            } else {
                i += 1;
            }
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (a rename, written `B@C` here, and
/// globs dropped).
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn go(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim_start_matches("::");
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = tree[..open]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let mut p = prefix.to_vec();
            p.extend(head);
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        go(&p, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            go(&p, &inner[start..], out);
        } else if !tree.is_empty() {
            let tree = tree.split('@').next().unwrap_or(tree); // `a::B as C`
            let mut p = prefix.to_vec();
            p.extend(
                tree.split("::")
                    .filter(|s| !s.is_empty() && *s != "*")
                    .map(str::to_owned),
            );
            out.push(p);
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

/// The module a path names from `here`, if it names one of this crate's.
fn resolve(modules: &Modules, here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut at: Vec<String>;
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            at = Vec::new();
            rest = &path[1..];
        }
        "self" => {
            at = here.to_vec();
            rest = &path[1..];
        }
        "super" => {
            at = here.to_vec();
            while rest.first().map(String::as_str) == Some("super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        _ => at = here.to_vec(),
    }
    let base = at.clone();
    let mut found = None;
    for seg in rest {
        at.push(seg.clone());
        if modules.contains_key(&at) {
            found = Some(at.clone());
        } else {
            break;
        }
    }
    // A path that names no module below its start names an item of the start itself.
    found.or_else(|| (path[0] != "crate" || !rest.is_empty()).then_some(base))
}

/// An import: from a module to another, where (file and line).
struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

fn edges(modules: &Modules) -> Vec<Edge> {
    let mut out = Vec::new();
    for (here, m) in modules {
        for (path, line) in paths(m) {
            let Some(to) = resolve(modules, here, &path) else {
                continue;
            };
            if &to == here {
                continue;
            }
            if to.len() > here.len() && to.starts_with(here) {
                continue; // a module is made of its children: composition, not an import
            }
            out.push(Edge {
                from: here.clone(),
                to,
                at: format!("{}:{line}", shown(&m.file)),
            });
        }
    }
    out
}

/// The circles of every level: for each parent, its children (and itself) collapsed, and the
/// edges that close a circle among them.
fn circles(edges: &[Edge]) -> Vec<String> {
    // level (the parent) → collapsed edge → one example import.
    let mut levels: BTreeMap<Vec<String>, BTreeMap<(String, String), String>> = BTreeMap::new();
    for e in edges {
        let common = e.from.iter().zip(&e.to).take_while(|(a, b)| a == b).count();
        let parent = e.from[..common].to_vec();
        let node = |m: &Vec<String>| m.get(common).cloned().unwrap_or_else(|| "(itself)".into());
        levels
            .entry(parent)
            .or_default()
            .entry((node(&e.from), node(&e.to)))
            .or_insert_with(|| format!("{} → {} at {}", e.from.join("::"), e.to.join("::"), e.at));
    }
    let mut found = Vec::new();
    for (parent, graph) in &levels {
        let nodes: BTreeSet<&String> = graph.keys().flat_map(|(a, b)| [a, b]).collect();
        let reach = |from: &String| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for ((a, b), _) in graph.iter() {
                    if *a == n && seen.insert(b.clone()) {
                        todo.push(b.clone());
                    }
                }
            }
            seen
        };
        for n in nodes {
            for ((a, b), example) in graph {
                if a == n && reach(b).contains(n) {
                    found.push(format!(
                        "in `{}`: {a} → {b} closes a circle ({example})",
                        if parent.is_empty() {
                            "crate root".into()
                        } else {
                            parent.join("::")
                        }
                    ));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn roots(krate: &Path) -> Vec<PathBuf> {
    let src = krate.join("src");
    let mut roots: Vec<PathBuf> = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .filter(|f| f.exists())
        .collect();
    if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
        roots.extend(
            bins.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs")),
        );
    }
    roots
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let mut found = Vec::new();
    for krate in CRATES {
        for root in roots(&workspace().join(krate)) {
            let mut modules = Modules::new();
            read_crate(&root, &mut modules, Vec::new());
            assert!(!modules.is_empty(), "{}", root.display());
            for c in circles(&edges(&modules)) {
                found.push(format!("{krate}: {c}"));
            }
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

/// Functions and `impl` blocks longer than the limits: (lines, what, where).
fn long_items(file: &Path, text: &str) -> Vec<(usize, String, String)> {
    let b = text.as_bytes();
    let line_of = |i: usize| text[..i].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (kw, limit) in [("fn", MAX_FN_LINES), ("impl", MAX_IMPL_LINES)] {
        let mut from = 0;
        while let Some(at) = find(b, kw.as_bytes(), from) {
            from = at + kw.len();
            let after = b.get(from).copied().unwrap_or(b' ');
            if prev_is_ident(b, at) || !(after == b' ' || after == b'<') {
                continue;
            }
            if kw == "impl" {
                // An item, not `impl Trait` in a type: first on its line (after `unsafe`).
                let start = text[..at].rfind('\n').map_or(0, |p| p + 1);
                let before = text[start..at].trim();
                if !(before.is_empty() || before == "unsafe") {
                    continue;
                }
            }
            let Some(rel) = b[from..].iter().position(|&c| c == b'{' || c == b';') else {
                break;
            };
            if b[from + rel] == b';' {
                continue;
            }
            let end = matching_brace(b, from + rel);
            let lines = line_of(end.saturating_sub(1)) - line_of(at) + 1;
            if lines > limit {
                let head: String = text[at..from + rel]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let head: String = head.chars().take(60).collect();
                out.push((lines, head, format!("{}:{}", shown(file), line_of(at))));
            }
        }
    }
    out
}

#[test]
fn no_function_or_impl_outside_tests_is_too_long_to_review() {
    let mut found = Vec::new();
    for krate in CRATES {
        for root in roots(&workspace().join(krate)) {
            let mut modules = Modules::new();
            read_crate(&root, &mut modules, Vec::new());
            for m in modules.values() {
                found.extend(long_items(&m.file, &m.text));
            }
        }
    }
    found.sort();
    found.dedup();
    found.reverse();
    let list: Vec<String> = found
        .iter()
        .map(|(n, what, at)| format!("{n:>5} lines  {what}  ({at})"))
        .collect();
    assert!(
        found.is_empty(),
        "longer than {MAX_FN_LINES} lines (fn) or {MAX_IMPL_LINES} (impl):\n{}",
        list.join("\n")
    );
}

/// The crates whose messages people who run the agent and the hub read (the benchmark and
/// the demo are for developers).
const USER_CRATES: &[&str] = &["protocol", "connectors", "rules", "agent", "hub"];

/// Error messages with words outside `tr!` (English only): `file:line: message`.
fn english_only_messages(file: &Path, raw: &str) -> Vec<String> {
    let (text, _) = without_tests(raw);
    let b = text.as_bytes();
    let mut found = Vec::new();
    for opener in ["#[error(", "anyhow!(", "bail!(", ".context("] {
        let mut from = 0;
        while let Some(at) = find(b, opener.as_bytes(), from) {
            from = at + opener.len();
            let args = text[from..].trim_start();
            if args.starts_with("transparent") || !args.starts_with('"') {
                continue;
            }
            let literal = args[1..].split('"').next().unwrap_or_default();
            let words = literal
                .split('{')
                .map(|part| part.split_once('}').map_or(part, |(_, rest)| rest))
                .any(|part| part.chars().any(|c| c.is_ascii_alphabetic()));
            let rest = &args[1 + literal.len()..];
            let translated = rest
                .split(")]")
                .next()
                .is_some_and(|attribute| attribute.contains("tr!("));
            if words && !(opener == "#[error(" && translated) {
                let line = text[..at].lines().count().max(1);
                found.push(format!("{}:{line}: {literal}", shown(file)));
            }
        }
    }
    found
}

#[test]
fn every_error_message_is_written_in_chinese_as_well() {
    let mut found = Vec::new();
    for krate in USER_CRATES {
        for root in roots(&workspace().join(krate)) {
            let mut modules = Modules::new();
            read_crate(&root, &mut modules, Vec::new());
            for m in modules.values() {
                let raw = std::fs::read_to_string(&m.file).expect("source file");
                found.extend(english_only_messages(&m.file, &raw));
            }
        }
    }
    found.sort();
    found.dedup();
    assert!(
        found.is_empty(),
        "English-only messages (write them with exchange_protocol::tr!(english, 中文)):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_language_checker_sees_an_english_only_message_and_passes_a_translated_one() {
    let raw = r#"
#[derive(thiserror::Error)]
enum E {
    #[error("cannot open {path}")]
    A { path: String },
    #[error("{}", tr!("cannot read {path}", "无法读取 {path}"))]
    B { path: String },
    #[error("{0}")]
    C(String),
    #[error(transparent)]
    D(Other),
}
fn f() -> anyhow::Result<()> {
    let _ = g().context(tr!("cannot start", "无法启动"));
    anyhow::bail!("no queue in {dir}")
}
#[cfg(test)]
mod tests {
    #[error("only a test fixture")]
    struct T;
}
"#;
    let found = english_only_messages(Path::new("x.rs"), raw);
    assert_eq!(
        found,
        vec!["x.rs:4: cannot open {path}", "x.rs:15: no queue in {dir}"],
    );
}

#[test]
fn the_checker_sees_a_circle_and_a_long_function() {
    // The checks above pass only if they can fail: a circle and a long function they must see.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(
        src.join("lib.rs"),
        "pub mod a;\npub mod b;\n#[cfg(test)]\nmod tests;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::inner::Thing; // crate::c\npub struct A;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod inner;\npub use inner::Thing;\n",
    )
    .unwrap();
    let long_body = "    let x = \"}\";\n".repeat(MAX_FN_LINES);
    std::fs::write(
        src.join("b/inner.rs"),
        format!("pub struct Thing;\nfn f() {{\n    let _ = super::super::a::A;\n{long_body}}}\n#[cfg(test)]\nmod tests {{ fn g() {{ crate::a::A; }} }}\n"),
    )
    .unwrap();
    let mut modules = Modules::new();
    read_crate(&src.join("lib.rs"), &mut modules, Vec::new());
    assert_eq!(
        modules.len(),
        4,
        "lib, a, b, b::inner; the test file is left out"
    );
    let found = circles(&edges(&modules));
    assert!(
        found
            .iter()
            .any(|c| c.starts_with("in `crate root`: a → b")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|c| c.starts_with("in `crate root`: b → a")),
        "{found:?}"
    );
    let inner = &modules[&vec!["b".to_owned(), "inner".to_owned()]];
    let long = long_items(&inner.file, &inner.text);
    assert_eq!(long.len(), 1, "{long:?}");
    assert_eq!(long[0].0, MAX_FN_LINES + 3);
    // A module's table of contents (b's `pub use inner::Thing`) is not an import.
    assert!(
        !edges(&modules)
            .iter()
            .any(|e| e.from == vec!["b".to_owned()])
    );
}
