//! Secure by default: TLS with certificates from `midasflow cert`, mutual TLS on internal
//! routes, API tokens.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use hyper::Method;
use midasflow::client::{Client, ClientAuth};

use crate::harness::{get, put, serial, Cluster};

fn midasflow(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_midasflow"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_with_mutual_tls_between_nodes() {
    let _serial = serial().await;
    let certs = tempfile::tempdir().unwrap();
    let ca_dir = certs.path().join("ca");
    midasflow(&["cert", "create-ca", "--certs-dir", ca_dir.to_str().unwrap()]);
    for id in 1..=3 {
        let out = certs.path().join(format!("node{id}"));
        midasflow(&[
            "cert",
            "create-node",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
        ]);
    }
    let ca_cert = ca_dir.join("ca.crt");
    let auth = ClientAuth {
        tls: Some(midasflow::security::client_config(&ca_cert).unwrap()),
        token: None,
    };
    let certs_root = certs.path().to_path_buf();
    let cluster = Cluster::start_with(
        3,
        &[],
        move |_, id| {
            vec![
                "--certs-dir".into(),
                certs_root.join(format!("node{id}")).display().to_string(),
            ]
        },
        "https",
        auth.clone(),
    )
    .await;
    assert_eq!(put(cluster.client(1), "secure", b"yes", &[]).await.status, 200);
    let read = get(cluster.client(3), "secure", "").await;
    assert_eq!(
        read.body.as_ref(),
        b"yes",
        "replicated over mutual TLS and forwarded over TLS"
    );

    // Internal routes need a client certificate: the CLI's trust-only config has none.
    let no_cert = Client::with_auth(&format!("https://{}", cluster.addrs[&2]), auth.clone());
    let reply = no_cert
        .request(Method::POST, "/internal/pd/heartbeat", &[], Bytes::from_static(b"\x01"))
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "{}", String::from_utf8_lossy(&reply.body));
    // Plain HTTP to a TLS port gets no answer.
    let plain = Client::new(&format!("http://{}", cluster.addrs[&2]));
    assert!(plain.get_path("/livez").await.is_err() || plain.get_path("/livez").await.unwrap().status != 200);
    // A client that does not trust the CA cannot talk to the node.
    let stranger_ca = tempfile::tempdir().unwrap();
    midasflow(&["cert", "create-ca", "--certs-dir", stranger_ca.path().to_str().unwrap()]);
    let wrong = Client::with_auth(
        &format!("https://{}", cluster.addrs[&1]),
        ClientAuth {
            tls: Some(midasflow::security::client_config(&stranger_ca.path().join("ca.crt")).unwrap()),
            token: None,
        },
    );
    assert!(wrong.get_path("/livez").await.is_err());

    // The CLI speaks https with --ca-cert.
    let output = Command::new(env!("CARGO_BIN_EXE_midasflow"))
        .args(["kv", "get", "secure", "--endpoint"])
        .arg(format!("https://{}", cluster.addrs[&2]))
        .arg("--ca-cert")
        .arg(&ca_cert)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "yes");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_guard_the_public_api_but_not_the_probes() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write(&tokens, "# operators\nfirst-token\nsecond-token\n");
    let auth = ClientAuth {
        tls: None,
        token: Some("second-token".into()),
    };
    let tokens_arg = tokens.display().to_string();
    let cluster = Cluster::start_with(
        3,
        &["--insecure", "--api-token-file", &tokens_arg],
        |_, _| Vec::new(),
        "http",
        auth,
    )
    .await;
    assert_eq!(put(cluster.client(1), "k", b"v", &[]).await.status, 200);
    assert_eq!(
        get(cluster.client(2), "k", "").await.status,
        200,
        "forwarded with the token"
    );
    let anonymous = Client::new(&format!("http://{}", cluster.addrs[&1]));
    let denied = anonymous.get_path("/v1/kv/k").await.unwrap();
    assert_eq!(denied.status, 401);
    assert!(String::from_utf8_lossy(&denied.body).contains("unauthorized"));
    assert_eq!(anonymous.get_path("/v1/cluster").await.unwrap().status, 401);
    let wrong = Client::with_auth(
        &format!("http://{}", cluster.addrs[&1]),
        ClientAuth {
            tls: None,
            token: Some("second-toke".into()),
        },
    );
    assert_eq!(wrong.get_path("/v1/kv/k").await.unwrap().status, 401);
    for open in ["/livez", "/readyz", "/health", "/metrics"] {
        assert_eq!(anonymous.get_path(open).await.unwrap().status, 200, "{open}");
    }
}
