//! Canary webhooks: the controller's HTTP calls to the hooks a Canary names (docs/canary.md,
//! "Webhooks"). Each is a POST with a JSON body saying which canary, where it is and why; a
//! 2xx answer within the hook's timeout passes. `pre-rollout`, `rollout` and
//! `confirm-promotion` hooks are gates the controller waits for ([`gate`]); `event` hooks are
//! told of every transition and not waited for ([`notify`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use quiver_api::v1;

/// A hook's timeout when its spec gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// What a hook is told.
pub fn body(
    namespace: &str,
    name: &str,
    hook: &v1::CanaryWebhook,
    status: &v1::CanaryStatus,
) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "namespace": namespace,
        "type": hook.r#type,
        "phase": status.phase,
        "step": status.current_step + 1,
        "canaryWeight": status.canary_weight,
        "message": status.message,
        "metadata": hook.metadata,
    })
}

/// Call every hook of type `ty` in order; the first refusal, as the reason a check or a
/// start failed (`webhook load-test: HTTP 500`), or None when all passed (or there are none).
pub async fn gate(
    namespace: &str,
    name: &str,
    spec: &v1::CanarySpec,
    ty: &str,
    status: &v1::CanaryStatus,
) -> Option<String> {
    let client = client();
    for hook in spec.webhooks.iter().filter(|h| h.r#type == ty) {
        if let Err(why) = call(&client, hook, &body(namespace, name, hook, status)).await {
            return Some(format!("{ty} webhook {}: {why}", hook.name));
        }
    }
    None
}

/// Tell every `event` hook about `status` (a transition), on a task of its own: the
/// controller does not wait, and a failing hook is logged.
pub fn notify(namespace: &str, name: &str, spec: &v1::CanarySpec, status: &v1::CanaryStatus) {
    let hooks: Vec<(v1::CanaryWebhook, serde_json::Value)> = spec
        .webhooks
        .iter()
        .filter(|h| h.r#type == "event")
        .map(|h| (h.clone(), body(namespace, name, h, status)))
        .collect();
    if hooks.is_empty() {
        return;
    }
    let canary = format!("{namespace}/{name}");
    tokio::spawn(async move {
        let client = client();
        for (hook, body) in hooks {
            if let Err(why) = call(&client, &hook, &body).await {
                tracing::warn!(canary = %canary, webhook = %hook.name, error = %why, "canary event webhook failed");
            }
        }
    });
}

async fn call(
    client: &Client,
    hook: &v1::CanaryWebhook,
    body: &serde_json::Value,
) -> Result<(), String> {
    let timeout = quiver_api::duration::parse(&hook.timeout).unwrap_or(DEFAULT_TIMEOUT);
    let req = http::Request::post(hook.url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "quiver-canary")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("bad request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            quiver_api::duration::format(timeout)
        )),
        Ok(Err(e)) => Err(format!("{e}")),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("HTTP {}", resp.status().as_u16())),
    }
}
