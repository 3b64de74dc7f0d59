//! Bad input gets the documented status and JSON error, and the node keeps serving.

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::harness::{get, put, serial, Cluster};

fn error_code(reply: &midasflow::client::Reply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "error body must be JSON ({e}): {}",
            String::from_utf8_lossy(&reply.body)
        )
    });
    body["error"]["code"].as_str().expect("error.code").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_the_node_keeps_serving() {
    let _serial = serial().await;
    let cluster = Cluster::start(3, &["--max-value-bytes", "65536"]).await;
    let client = cluster.client(2);
    let raw = |method: Method, path: String, headers: Vec<(&'static str, String)>, body: Vec<u8>| async move {
        client
            .request(method, &path, &headers, Bytes::from(body))
            .await
            .unwrap()
    };

    let cases = vec![
        (
            "empty key",
            raw(Method::PUT, "/v1/kv/".into(), vec![], b"x".to_vec()).await,
            400,
            "bad_request",
        ),
        (
            "4097-byte key",
            raw(
                Method::PUT,
                format!("/v1/kv/{}", "k".repeat(4097)),
                vec![],
                b"x".to_vec(),
            )
            .await,
            413,
            "key_too_large",
        ),
        (
            "value over the limit",
            raw(Method::PUT, "/v1/kv/big".into(), vec![], vec![7u8; 65_537]).await,
            413,
            "value_too_large",
        ),
        (
            "value far over the limit",
            raw(Method::PUT, "/v1/kv/big".into(), vec![], vec![7u8; 3 << 20]).await,
            413,
            "value_too_large",
        ),
        (
            "body on an unknown route",
            raw(Method::POST, "/v1/nothing".into(), vec![], vec![1u8; 256 << 10]).await,
            404,
            "not_found",
        ),
        (
            "unknown route",
            raw(Method::GET, "/v2/nothing".into(), vec![], vec![]).await,
            404,
            "not_found",
        ),
        (
            "non-numeric If-Match",
            raw(
                Method::PUT,
                "/v1/kv/k".into(),
                vec![("if-match", "seven".into())],
                b"x".to_vec(),
            )
            .await,
            400,
            "bad_request",
        ),
        (
            "malformed percent-encoding",
            raw(Method::GET, "/v1/kv/bad%zzkey".into(), vec![], vec![]).await,
            400,
            "bad_request",
        ),
        (
            "truncated percent-encoding",
            raw(Method::GET, "/v1/kv/bad%4".into(), vec![], vec![]).await,
            400,
            "bad_request",
        ),
        (
            "unknown consistency",
            raw(Method::GET, "/v1/kv/k?consistency=maybe".into(), vec![], vec![]).await,
            400,
            "bad_request",
        ),
        (
            "wrong method",
            raw(Method::POST, "/v1/routing".into(), vec![], vec![]).await,
            405,
            "method_not_allowed",
        ),
        (
            "absent key",
            raw(Method::GET, "/v1/kv/never-written".into(), vec![], vec![]).await,
            404,
            "not_found",
        ),
    ];
    for (name, reply, status, code) in cases {
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{name}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(error_code(&reply), code, "{name}");
        assert!(
            reply.header("x-routing-version").is_some(),
            "{name}: X-Routing-Version on every response"
        );
    }

    // Nothing was written by the rejected requests, and the node still serves.
    assert_eq!(get(client, "big", "").await.status, 404);
    assert_eq!(get(client, "k", "").await.status, 404);
    let at_limit = put(client, "k", &vec![1u8; 65_536], &[]).await;
    assert_eq!(at_limit.status, 200, "a value exactly at the limit is accepted");
    let longest_key = "k".repeat(4096);
    assert_eq!(put(client, &longest_key, b"ok", &[]).await.status, 200);
    assert_eq!(get(cluster.client(3), &longest_key, "").await.body.as_ref(), b"ok");
    let live = client.get_path("/livez").await.unwrap();
    assert_eq!(live.status, 200);
}
