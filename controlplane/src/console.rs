//! Serves the web console's static bundle on the API port, behind every gRPC, gRPC-web and
//! `/metrics` route: it is only the router's fallback, so it never answers a path those own.
//!
//! The bundle is the committed `console/dist`, embedded into the binary at compile time
//! (`build.rs`), so `quiver-control` serves the console with no flag and no wasm toolchain on
//! the user's machine. `--console-dir DIR` serves a directory from disk instead, read per
//! request (console development: rebuild with `console/build.sh`, reload the page).
//!
//! - `/` and client-side routes (a last path segment without a dot, e.g. `/routes/shop/web`)
//!   get `index.html` with `Cache-Control: no-cache` (the SPA decides what to show).
//! - Content-hashed assets (`name-<16 hex>.ext`, as build.sh names them) are cached for a
//!   year, `immutable`; anything else is `no-cache` with an ETag, so a rebuilt bundle is seen
//!   at the next load.
//! - A request with a gRPC content type that reached here named no known method: it gets a
//!   gRPC `UNIMPLEMENTED`, never HTML.
//!
//! It never serves anything outside the bundle (`..`, hidden files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};

/// One file of the embedded bundle.
#[derive(Debug)]
pub struct EmbeddedFile {
    pub name: &'static str,
    pub body: &'static [u8],
    pub etag: &'static str,
}

/// The bundle compiled into this binary (empty when `console/dist` was missing at build time).
pub static EMBEDDED: &[EmbeddedFile] = include!(concat!(env!("OUT_DIR"), "/console_bundle.rs"));

/// Where the console's files come from.
#[derive(Debug, Clone)]
pub struct Console {
    dir: Option<PathBuf>,
}

/// What `/` says when there is no bundle to serve.
pub const NOT_BUILT: &str = "The Quiver web console is not in this build: console/dist was \
missing when quiver-control was compiled. Build it with console/build.sh and rebuild, or start \
quiver-control with --console-dir console/dist (or QUIVER_CONSOLE_DIR=console/dist).\n";

/// A file found for a request.
struct Found {
    name: String,
    body: Bytes,
    etag: String,
}

impl Console {
    /// The embedded bundle, or the directory `dir` when given.
    pub fn new(dir: Option<&Path>) -> Self {
        Self {
            dir: dir.map(Path::to_path_buf),
        }
    }

    /// `router` with the console as its fallback.
    pub fn mount(self, router: axum::Router) -> axum::Router {
        let console = Arc::new(self);
        router.fallback(move |req: Request<Body>| {
            let console = console.clone();
            async move { console.serve(req).await }
        })
    }

    /// Answer one request that no other route took.
    pub async fn serve(&self, req: Request<Body>) -> Response<Body> {
        // Only the head is read (the body is not `Sync`, and a GET has none).
        let (req, _body) = req.into_parts();
        let is_grpc = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if is_grpc {
            return grpc_unimplemented(req.uri.path());
        }
        if req.method != Method::GET && req.method != Method::HEAD {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console serves GET and HEAD only\n",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let Some(relative) = safe_relative(req.uri.path()) else {
            return text(StatusCode::NOT_FOUND, "no such file\n");
        };
        let found = match &self.dir {
            Some(dir) => from_dir(dir, &relative).await,
            None => from_embedded(&relative),
        };
        match found {
            Ok(found) => send(&req, found),
            Err(resp) => resp,
        }
    }
}

/// A last path segment without a dot is a client-side route: the app reads the path itself.
fn is_client_route(relative: &Path) -> bool {
    !relative
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains('.'))
}

fn from_embedded(relative: &Path) -> Result<Found, Response<Body>> {
    let lookup = |name: &str| EMBEDDED.iter().find(|f| f.name == name);
    let Some(index) = lookup("index.html") else {
        return Err(text(StatusCode::NOT_FOUND, NOT_BUILT));
    };
    // The bundle is flat: a file is one segment.
    let named = relative.to_str().and_then(lookup);
    let file = match named {
        _ if relative.as_os_str().is_empty() => index,
        Some(file) => file,
        None if is_client_route(relative) => index,
        None => {
            return Err(text(
                StatusCode::NOT_FOUND,
                "no such file in the console bundle\n",
            ));
        }
    };
    Ok(Found {
        name: file.name.to_string(),
        body: Bytes::from_static(file.body),
        etag: file.etag.to_string(),
    })
}

async fn from_dir(dir: &Path, relative: &Path) -> Result<Found, Response<Body>> {
    let index = dir.join("index.html");
    if !is_file(&index).await {
        return Err(text(
            StatusCode::NOT_FOUND,
            &format!(
                "{} (--console-dir) has no index.html: build it with console/build.sh\n",
                dir.display()
            ),
        ));
    }
    let candidate = dir.join(relative);
    let file = if relative.as_os_str().is_empty() {
        index
    } else if is_file(&candidate).await {
        candidate
    } else if is_client_route(relative) {
        index
    } else {
        return Err(text(
            StatusCode::NOT_FOUND,
            "no such file in the console bundle\n",
        ));
    };
    let (meta, body) = match tokio::fs::metadata(&file).await {
        Ok(meta) => match tokio::fs::read(&file).await {
            Ok(body) => (meta, body),
            Err(e) => return Err(read_error(&file, e)),
        },
        Err(e) => return Err(read_error(&file, e)),
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Found {
        name: file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string(),
        body: Bytes::from(body),
        etag: format!("\"{:x}-{:x}\"", meta.len(), mtime),
    })
}

fn send(req: &http::request::Parts, found: Found) -> Response<Body> {
    let Found { name, body, etag } = found;
    let cache = if is_content_hashed(&name) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let not_modified = req
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type(&name))
        .header(header::CACHE_CONTROL, cache)
        .header(header::ETAG, &etag)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_FRAME_OPTIONS, "DENY");
    if not_modified {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return builder.body(Body::empty()).unwrap_or_default();
    }
    builder = builder.header(header::CONTENT_LENGTH, body.len());
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder.body(body).unwrap_or_default()
}

/// What the console's pages may load and do: only its own files and API
/// ('wasm-unsafe-eval' lets the page compile its WebAssembly, nothing else), no plugins, no
/// framing by other sites. Inline styles stay allowed (the views set `style` attributes);
/// inline scripts do not (the bundle starts from `boot-*.js`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn is_file(p: &Path) -> bool {
    tokio::fs::metadata(p).await.is_ok_and(|m| m.is_file())
}

/// The request path as a path inside the bundle, or None when it tries to leave it (`..`),
/// names a hidden file or holds a backslash or NUL.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        out.push(segment);
    }
    Some(out)
}

/// `name-<16 lowercase hex>.ext`: build.sh puts a content hash there.
fn is_content_hashed(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("");
    stem.rsplit_once('-').is_some_and(|(_, hash)| {
        hash.len() == 16
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn read_error(file: &Path, e: std::io::Error) -> Response<Body> {
    tracing::warn!(file = %file.display(), error = %e, "console: cannot read file");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot read a console file (see the server log)\n",
    )
}

/// A trailers-only gRPC answer (works for gRPC and gRPC-web clients alike).
fn grpc_unimplemented(path: &str) -> Response<Body> {
    let message = format!("unknown method {path}");
    let mut resp = Response::new(Body::empty());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("12"));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_bundle() {
        assert_eq!(safe_relative("/"), Some(PathBuf::new()));
        assert_eq!(
            safe_relative("/a/b.js"),
            Some(PathBuf::from("a").join("b.js"))
        );
        assert_eq!(safe_relative("/../etc/passwd"), None);
        assert_eq!(safe_relative("/x/../../y"), None);
        assert_eq!(safe_relative("/.git/config"), None);
        assert_eq!(safe_relative("/a\\..\\b"), None);
    }

    #[test]
    fn content_hashes_are_recognised() {
        assert!(is_content_hashed("quiver_console-0123456789abcdef.js"));
        assert!(is_content_hashed("quiver_console_bg-0123456789abcdef.wasm"));
        assert!(!is_content_hashed("index.html"));
        assert!(!is_content_hashed("quiver_console-0123.js"));
        assert!(!is_content_hashed("quiver_console-0123456789ABCDEF.js"));
    }

    #[test]
    fn wasm_is_application_wasm() {
        assert_eq!(
            content_type("x_bg-0123456789abcdef.wasm"),
            "application/wasm"
        );
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
