//! `exchange-hub verify` (its library, `Verifier`) names why a TLS handshake with an agent failed: the agent's
//! certificate from a CA the hub does not trust is an unknown issuer, and an agent that refuses
//! the hub's certificate is said to, instead of "connection closed". The agent's side is a TLS
//! listener built as the agent builds its verification listener (mutual TLS, h2 and
//! http/1.1), with certificates made for the test.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use exchange_hub::verify::{Verifier, VerifyCallError};
use exchange_protocol::pki::Authority;
use exchange_protocol::tls::{self, MinTlsVersion, MutualTls};
use exchange_protocol::verify::{Claim, Item, VerifyRequest};

/// A verification-like TLS listener on 127.0.0.1 presenting `cert`/`key` and trusting client
/// certificates of `client_ca` only; its URL. Each handshake's outcome is dropped: the test
/// reads what the hub says.
async fn agent_listener(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> String {
    let mut config = tls::mutual_server_config(&MutualTls {
        ca: client_ca,
        cert,
        key,
        min_version: MinTlsVersion::Tls13,
        crls: Vec::new(),
    })
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = acceptor.accept(tcp).await {
                    // Hold the connection until the hub closes it.
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            });
        }
    });
    url
}

/// What `exchange-hub verify` says when asking the agent at `url` with `client`'s
/// certificate fails (the library it runs, in this process: a shared build directory may hold
/// another build's binary).
async fn verify_error(client: &MutualTls, url: &str) -> String {
    let verifier = Verifier::new(client, url).unwrap();
    let request = VerifyRequest {
        request_id: "req-1".into(),
        purpose: "p".into(),
        case_ref: "c".into(),
        resource: "R".into(),
        items: vec![Item {
            subject: "11010519491231002X".into(),
            claims: [("name".to_owned(), Claim::Value("张三".into()))].into(),
        }],
    };
    match tokio::time::timeout(DEADLINE, verifier.verify(&request))
        .await
        .expect("verify finishes before the deadline")
    {
        Ok(answer) => panic!("the handshake should fail; got {answer:?}"),
        Err(e @ VerifyCallError::Handshake { .. }) => e.to_string(),
        Err(other) => panic!("not named as a TLS handshake failure: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_from_a_ca_the_hub_does_not_trust_is_named_an_unknown_issuer() {
    let pki = Pki::new();
    let other = Authority::generate("Another CA").unwrap();
    let (cert, key) = other
        .issue_server(&["127.0.0.1"])
        .unwrap()
        .write(pki.dir.path(), "foreign-agent")
        .unwrap();
    let url = agent_listener(cert, key, pki.ca_path.clone()).await;
    let message = verify_error(&pki.client("city-hub"), &url).await;
    assert!(
        message.contains("TLS handshake with the agent")
            && message.contains("UnknownIssuer")
            && message.contains("[client] ca"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refusing_the_hubs_client_certificate_is_named_with_its_alert() {
    let pki = Pki::new();
    // The agent trusts requesters of another CA only.
    let other = Authority::generate("Department CA").unwrap();
    let other_ca = pki.dir.path().join("other-ca.pem");
    other.write_cert(&other_ca).unwrap();
    let (cert, key) = pki
        .ca
        .issue_server(&["127.0.0.1"])
        .unwrap()
        .write(pki.dir.path(), "agent")
        .unwrap();
    let url = agent_listener(cert, key, other_ca).await;
    let client = pki.client("city-hub");
    // Over HTTP/2 the alert may reach the request as "channel closed" or "connection closed",
    // depending on timing: every attempt must still name the refusal.
    for _ in 0..10 {
        let message = verify_error(&client, &url).await;
        assert!(
            message.contains("refused the hub's certificate")
                && message.contains("UnknownCA")
                && message.contains("[verify] client_ca"),
            "{message}"
        );
    }
}
