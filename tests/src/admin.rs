//! The agent's admin listener from outside (`[admin] listen`): a plain `GET`, and a strict
//! parser of the Prometheus text `/metrics` serves, so that a test fails on any deviation
//! from the exposition format as well as on a wrong count.

use std::collections::{BTreeMap, BTreeSet};

/// A loopback port free right now (bound, read, released), for a listener that must be
/// configured with a fixed address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// The `[admin]` section listening on `port`, to append to a configuration.
pub fn section(port: u16) -> String {
    format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// `GET /metrics` parsed, once the admin listener answers 200.
pub async fn scrape(port: u16) -> Option<Vec<Sample>> {
    let (code, body) = get(port, "/metrics").await?;
    (code == 200).then(|| parse_prometheus(&body))
}

/// `GET path` on the admin listener: status code and body.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A sample: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus text exposition format 0.0.4 strictly: every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, values are numbers, no
/// series repeats, HELP and TYPE come once per family. Fails the test on any deviation.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    fn is_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: `{line}`", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(is_name(name), "{at}");
            assert!(helps.insert(name.to_owned()), "HELP twice; {at}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(is_name(name), "{at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice; {at}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment; {at}");
        let (series, value) = line.rsplit_once(' ').expect(&at);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value; {at}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect(&at);
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(is_name(&key), "bad label name; {at}");
                    assert_eq!(chars.next(), Some('"'), "{at}");
                    let mut v = String::new();
                    loop {
                        match chars.next().expect(&at) {
                            '\\' => match chars.next().expect(&at) {
                                'n' => v.push('\n'),
                                c @ ('\\' | '"') => v.push(c),
                                _ => panic!("bad escape; {at}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    match chars.next() {
                        None => {}
                        Some(',') => {}
                        Some(_) => panic!("{at}"),
                    }
                    assert!(labels.insert(key, v).is_none(), "label twice; {at}");
                }
                (name, labels)
            }
        };
        assert!(is_name(name), "{at}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample before its TYPE; {at}"));
        assert!(family.starts_with("exchange_"), "{at}");
        if kind == "counter" {
            assert!(family.ends_with("_total"), "a counter ends in _total; {at}");
        }
        assert!(
            seen.insert(format!("{name}{labels:?}")),
            "series twice; {at}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// The value of the sample `name` whose labels include every pair of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}
