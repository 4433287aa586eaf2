//! An error with the causes behind it, for messages: what went wrong is often deep inside a
//! client library's error (a TLS alert inside reqwest's, "connection refused" inside
//! tokio-postgres's "error connecting to server").

/// `e` and each of its sources, joined by `: `; a source whose text is already said is left
/// out.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect")]
    struct Connect(#[source] Handshake);

    /// Says its source's text itself, as some client libraries do.
    #[derive(Debug, thiserror::Error)]
    #[error("handshake failed: alert")]
    struct Handshake(#[source] Alert);

    #[derive(Debug, thiserror::Error)]
    #[error("alert")]
    struct Alert;

    #[test]
    fn every_cause_is_said_once() {
        assert_eq!(
            super::chain(&Connect(Handshake(Alert))),
            "cannot connect: handshake failed: alert"
        );
        assert_eq!(super::chain(&std::io::Error::other("refused")), "refused");
    }
}
