//! The console: static pages embedded in the binary, served at `/ui` by every node.
//!
//! One page (`ui/index.html`) with its script and style sheet, all vanilla and built into
//! the binary: no CDN, no build step. The page polls the public JSON API with relative
//! URLs, so whichever node serves it answers its calls too.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Api;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The console's routes (open, like the probes: the pages hold no data; the API calls
/// they make carry the user's token).
pub fn routes() -> Router<Arc<Api>> {
    console()
}

/// The routes over any state: the handlers use none, which lets the tests run them
/// without a node.
fn console<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(serve))
        .route("/ui/", get(serve))
        .route("/ui/{file}", get(serve))
}

/// The console's own paths: `/ui` and the assets under it.
pub fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The asset at `path`: its content type and its bytes, or `None` if there is none.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/ui" | "/ui/" | "/ui/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/ui/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/ui/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        _ => None,
    }
}

/// The console loads only its own assets and calls only its own node's API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn serve(request: Request) -> Response {
    let path = request.uri().path();
    let Some((content_type, body)) = asset(path) else {
        return super::error::ApiError::not_found(format!("no console asset at {path}")).into_response();
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate every load: a node upgraded in place serves its new console at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Nothing but its own files, no inline script or style, never in a frame.
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, Option<String>, Option<String>, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = console::<()>().oneshot(request).await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap().to_string())
        };
        let (content_type, cache) = (header(header::CONTENT_TYPE), header(header::CACHE_CONTROL));
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, cache, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_each_asset_with_its_content_type() {
        for (path, content_type, marker) in [
            ("/ui", "text/html; charset=utf-8", "<svg id=\"ring\""),
            ("/ui/", "text/html; charset=utf-8", "<table id=\"cluster-nodes\">"),
            ("/ui/app.js", "text/javascript; charset=utf-8", "function pollOnce"),
            ("/ui/style.css", "text/css; charset=utf-8", "@media"),
        ] {
            let (status, got_type, cache, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(got_type.as_deref(), Some(content_type), "{path}");
            assert_eq!(cache.as_deref(), Some("no-cache"), "{path}");
            assert!(body.contains(marker), "{path} lacks {marker:?}");
        }
    }

    #[tokio::test]
    async fn an_unknown_asset_is_a_404() {
        let (status, content_type, _, body) = get("/ui/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert!(body.contains("not_found"));
    }

    #[test]
    fn the_page_loads_only_assets_that_are_served_and_keeps_its_hooks() {
        for asset_path in ["/ui/app.js", "/ui/style.css"] {
            assert!(INDEX_HTML.contains(&format!("\"{asset_path}\"")));
            assert!(asset(asset_path).is_some());
        }
        // Nothing from elsewhere: the console works offline and under a strict CSP.
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        for hook in [
            "id=\"cluster-nodes\"",
            "id=\"ring\"",
            "id=\"faults-list\"",
            "id=\"confirm-dialog\"",
            "id=\"confirm-yes\"",
            "id=\"confirm-no\"",
            "id=\"cut-a\"",
            "id=\"cut-b\"",
            "data-action=\"cut\"",
            "data-action=\"heal\"",
            "data-action=\"load\"",
            "id=\"last-update\"",
            "id=\"errors\"",
        ] {
            assert!(INDEX_HTML.contains(hook), "index.html lacks {hook}");
        }
        for hook in ["\"shard-arc\"", "\"data-leader\"", "\"data-shard-id\"", "data-node-id"] {
            assert!(APP_JS.contains(hook), "app.js lacks {hook}");
        }
    }

    #[test]
    fn console_paths() {
        assert!(is_console_path("/ui") && is_console_path("/ui/") && is_console_path("/ui/app.js"));
        assert!(!is_console_path("/uix") && !is_console_path("/v1/ui"));
    }
}
