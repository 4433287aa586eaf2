//! `exchange-hub prove`: for one record, the batch that last wrote it, and the files and
//! commands with which anyone checks, with `openssl` alone, that the node sent that record
//! (docs/PROTOCOL.md §4.7):
//! - `batch.ndjson`: the batch's records as the node sent them; its SM3 is the digest signed;
//! - `record.ndjson`: the record's line, found in `batch.ndjson` as it is;
//! - `message.txt`: the signed message (node, resource, stream, seq, SM3);
//! - `signature.der`: the node's signature of it; `node.pem`: the certificate it verifies with,
//!   which chains to the platform CA.
//!
//! The hub checks the signature itself before it writes anything.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use exchange_protocol::signature::{Signature, Signed};
use exchange_protocol::tr;

use crate::store::Store;

/// Writes the proof of record `key` of `resource` into `out` (created) and returns the report
/// to print.
pub async fn prove(store: &Store, resource: &str, key: &str, out: &Path) -> anyhow::Result<String> {
    let Some(proof) = store.proof(resource, key).await? else {
        bail!(tr!(
            "no signed batch holds record `{key}` of `{resource}`: there is no such record, or the batch that last wrote it was not signed (an agent before signatures)",
            "没有已签名的批次包含资源 `{resource}` 的记录 `{key}`：该记录不存在，或最后写入它的批次没有签名（签名功能之前的代理）"
        ));
    };
    let ndjson = exchange_protocol::batch::decompress(&proof.evidence.body, usize::MAX)
        .context(tr!("the stored batch body", "保存的批次内容"))?;
    let digest = exchange_protocol::digest::sm3_hex(&ndjson);
    if digest != proof.sm3 {
        bail!(tr!(
            "the stored batch body does not match its digest: the store was changed",
            "保存的批次内容与其摘要不符：存储已被改动"
        ));
    }
    let line = ndjson
        .split(|b| *b == b'\n')
        .find(|l| {
            serde_json::from_slice::<serde_json::Value>(l)
                .is_ok_and(|v| v["key"].as_str() == Some(key))
        })
        .with_context(|| {
            tr!(
                "the batch holds no line for the record",
                "批次中没有该记录的行"
            )
        })?;
    let signed = Signed {
        node: &proof.node,
        resource,
        stream: &proof.stream,
        seq: proof.seq,
        sm3: &proof.sm3,
    };
    let signature = Signature::parse(&proof.evidence.signature)?;
    let certificate = rustls::pki_types::CertificateDer::from(proof.evidence.certificate.clone());
    signature.verify(&signed, &certificate)?;
    write_files(
        out,
        &ndjson,
        line,
        &signed,
        &signature,
        &proof.evidence.certificate,
    )?;
    Ok(report(&proof, resource, key, out, signature.scheme))
}

fn write_files(
    out: &Path,
    ndjson: &[u8],
    line: &[u8],
    signed: &Signed<'_>,
    signature: &Signature,
    certificate: &[u8],
) -> anyhow::Result<()> {
    use base64::Engine;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    let pem = base64::engine::general_purpose::STANDARD.encode(certificate);
    let mut cert = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in pem.as_bytes().chunks(64) {
        cert.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        cert.push('\n');
    }
    cert.push_str("-----END CERTIFICATE-----\n");
    let mut record = line.to_vec();
    record.push(b'\n');
    for (name, bytes) in [
        ("batch.ndjson", ndjson),
        ("record.ndjson", &record[..]),
        ("message.txt", &signed.message()[..]),
        ("signature.der", &signature.bytes[..]),
        ("node.pem", cert.as_bytes()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// What the proof says, and the commands that check it.
fn report(
    proof: &crate::store::Proof,
    resource: &str,
    key: &str,
    out: &Path,
    scheme: &str,
) -> String {
    let mut t = String::new();
    let dir = out.display();
    let (seq, stream, node, at) = (proof.seq, &proof.stream, &proof.node, &proof.applied_at);
    let _ = writeln!(
        t,
        "{}",
        tr!(
            "record `{key}` of `{resource}` was last written by batch {seq} of stream {stream} from node `{node}`, applied {at}; its signature ({scheme}) verifies with the node's certificate.\nFiles in {dir}. Check with openssl alone:",
            "资源 `{resource}` 的记录 `{key}` 最后由节点 `{node}` 数据流 {stream} 的第 {seq} 批写入，应用于 {at}；其签名（{scheme}）可用节点证书验证。\n文件在 {dir}。只用 openssl 即可核对："
        )
    );
    let verify = match scheme {
        "ed25519" => {
            "openssl pkeyutl -verify -pubin -inkey node.pub -rawin -in message.txt -sigfile signature.der"
        }
        "ecdsa-p384-sha384" => {
            "openssl dgst -sha384 -verify node.pub -signature signature.der message.txt"
        }
        _ => "openssl dgst -sha256 -verify node.pub -signature signature.der message.txt",
    };
    let _ = writeln!(t, "  cd {dir}");
    let _ = writeln!(
        t,
        "  openssl dgst -sm3 -r batch.ndjson      # {} {}",
        proof.sm3,
        tr!(
            "(the last line of message.txt)",
            "（message.txt 的最后一行）"
        )
    );
    let _ = writeln!(
        t,
        "  grep -c -x -F -f record.ndjson batch.ndjson   # {}",
        tr!("1: the record is in the batch", "1：该记录在批次中")
    );
    let _ = writeln!(t, "  openssl x509 -in node.pem -noout -pubkey > node.pub");
    let _ = writeln!(t, "  {verify}   # Verified OK");
    let _ = writeln!(
        t,
        "  openssl verify -CAfile PLATFORM-CA.pem node.pem   # {}",
        tr!(
            "the node's certificate chains to the platform CA",
            "节点证书由平台 CA 签发"
        )
    );
    t
}
