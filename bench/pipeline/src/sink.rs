//! The acknowledging sink: a hub that stores nothing. It speaks the protocol's transport
//! (HTTP/1.1 or HTTP/2 over mutual TLS, a client certificate from the CA required) and answers
//! every `POST /v1/batches` with an `applied` Ack for the batch's seq once the whole body has
//! arrived — no decompression, no digest check, no database. It measures what the agent alone
//! can deliver; it is not a hub (it does not deduplicate or refuse gaps).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use exchange_protocol::batch::{self, Ack, AckStatus, header};
use exchange_protocol::tls::{self, MinTlsVersion, MutualTls};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves on a loopback port until SIGTERM; prints the port on standard output first.
pub async fn serve(ca: PathBuf, cert: PathBuf, key: PathBuf) -> anyhow::Result<()> {
    tls::install_provider();
    let mut config = tls::mutual_server_config(&MutualTls {
        ca,
        cert,
        key,
        min_version: MinTlsVersion::Tls13,
        crls: Vec::new(),
    })
    .context("the sink's TLS configuration")?;
    // As the reference hub offers them.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            _ = term.recv() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(answer);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if request.uri().path() == batch::HEALTH_PATH {
        return Ok(json(200, br#"{"status":"ok"}"#.to_vec()));
    }
    let seq: u64 = text(header::SEQ).parse().unwrap_or(0);
    let records: u64 = text(header::RECORDS).parse().unwrap_or(0);
    let digest = text(header::DIGEST).to_ascii_lowercase();
    // The whole body is read, as a hub must before it may acknowledge.
    let _body = request.into_body().collect().await?.to_bytes();
    let ack = Ack {
        status: AckStatus::Applied,
        seq,
        records,
        last_seq: seq,
        last_digest: digest,
        swept: 0,
    };
    Ok(json(
        200,
        serde_json::to_vec(&ack).expect("an Ack serializes"),
    ))
}

fn json(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
