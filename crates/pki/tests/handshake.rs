//! Real TLS handshakes over loopback (127.124.0.1): only certificates of this cluster's CA get
//! through, in both directions. Each case runs the server's accept and the client's connect
//! concurrently, and a case passes only if the bytes arrive (accepted) or the handshake fails
//! on the side that must refuse.

use std::sync::Arc;
use std::time::Duration;

use citadel_pki::{Ca, Identity, Issued, client_config, identity_of, server_config, server_name};
use rcgen::{CertificateParams, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ADDR: &str = "127.124.0.1:0";

/// Runs one connection: Ok(identity the server saw) if a byte made it both ways.
async fn exchange(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<Identity, String> {
    let listener = TcpListener::bind(ADDR).await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("server: no client certificate")?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&b)
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let name = server_name(host).expect("server name");
    let connect = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"x")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| "client: timed out".to_string())?;
    let server_result = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .map_err(|_| "server: timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match (client_result, server_result) {
        (Ok(()), Ok(cert)) => identity_of(&cert).ok_or_else(|| "no identity".to_string()),
        (c, s) => Err(format!("{:?} / {:?}", c.err(), s.err())),
    }
}

fn pair(ca: &Ca) -> (Issued, Issued) {
    let host = ca
        .issue(
            &Identity::Host("server-1".into()),
            &["127.124.0.1".parse().expect("ip")],
        )
        .expect("host cert");
    let op = ca
        .issue(&Identity::Operator("admin".into()), &[])
        .expect("operator cert");
    (host, op)
}

#[tokio::test]
async fn certificates_of_the_cluster_authenticate_both_ways() {
    let ca = Ca::create("t").expect("ca");
    let (host, op) = pair(&ca);
    let seen = exchange(
        server_config(&ca.cert_pem, &host).expect("server config"),
        client_config(&ca.cert_pem, &op).expect("client config"),
        "server-1",
    )
    .await
    .expect("handshake");
    assert_eq!(seen, Identity::Operator("admin".into()));
}

#[tokio::test]
async fn a_client_of_another_cluster_is_refused() {
    let ca = Ca::create("t").expect("ca");
    let other = Ca::create("t").expect("another ca with the same cluster name");
    let (host, _) = pair(&ca);
    let (_, foreign_op) = pair(&other);
    let err = exchange(
        server_config(&ca.cert_pem, &host).expect("server config"),
        client_config(&ca.cert_pem, &foreign_op).expect("client config"),
        "server-1",
    )
    .await
    .expect_err("a foreign client must be refused");
    assert!(err.contains("server:"), "the server refuses it: {err}");
}

#[tokio::test]
async fn a_server_of_another_cluster_is_refused() {
    let ca = Ca::create("t").expect("ca");
    let other = Ca::create("t").expect("other");
    let (_, op) = pair(&ca);
    let (foreign_host, _) = pair(&other);
    let err = exchange(
        server_config(&other.cert_pem, &foreign_host).expect("server config"),
        client_config(&ca.cert_pem, &op).expect("client config"),
        "server-1",
    )
    .await
    .expect_err("a foreign server must be refused");
    assert!(err.contains("client:"), "the client refuses it: {err}");
}

#[tokio::test]
async fn a_self_signed_forgery_with_the_right_names_is_refused() {
    let ca = Ca::create("t").expect("ca");
    let (host, _) = pair(&ca);
    let mut params =
        CertificateParams::new(vec![Identity::Operator("admin".into()).dns_name()]).expect("p");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let forged = Issued {
        cert_pem: params.self_signed(&key).expect("self-signed").pem(),
        key_pem: key.serialize_pem(),
    };
    let err = exchange(
        server_config(&ca.cert_pem, &host).expect("server config"),
        client_config(&ca.cert_pem, &forged).expect("client config"),
        "server-1",
    )
    .await
    .expect_err("a forgery must be refused");
    assert!(err.contains("server:"), "the server refuses it: {err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let ca = Ca::create("t").expect("ca");
    let err = ca
        .issue(&Identity::Host("no spaces please".into()), &[])
        .expect_err("bad name");
    assert!(err.to_string().contains("not a valid name"), "{err}");
    let broken = Issued {
        cert_pem: "not pem".into(),
        key_pem: "not pem".into(),
    };
    let err = client_config(&ca.cert_pem, &broken).expect_err("bad pem");
    assert!(err.to_string().contains("the certificate"), "{err}");
}
