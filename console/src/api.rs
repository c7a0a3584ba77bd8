//! The console's only way to the control plane: the generated `quiver.v1.MeshAdmin` client
//! over gRPC-web (`tonic-web-wasm-client`, i.e. `fetch`) with the signed-in user's token.
//! It owns error classification (field errors, stale versions) and the live lists fed by the
//! API's Watch streams. It must never decide what is valid by rules of its own: before a
//! save, [`check`] runs the control plane's own validation (`quiver_policy::validate`) in the
//! browser, so the form shows the API's field errors without a round trip; the API checks
//! again.

use std::collections::BTreeMap;
use std::future::Future;

use futures_util::future::{AbortHandle, Abortable};
use leptos::prelude::*;
use leptos::task::spawn_local;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

use quiver_api::resource::{AnyResource, DEFAULT_NAMESPACE};
use quiver_policy::validate::ServiceSpecs;

use crate::pb;
use crate::pb::mesh_admin_client::MeshAdminClient;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(v) => {
                req.metadata_mut().insert("authorization", v.clone());
                Ok(req)
            }
            None => Err(tonic::Status::unauthenticated(
                "the token holds characters that cannot be sent in a header",
            )),
        }
    }
}

pub type Admin = MeshAdminClient<InterceptedService<tonic_web_wasm_client::Client, Bearer>>;

/// A client for the API this page was served from, acting as `token`.
pub fn client(token: &str) -> Admin {
    let origin = window().location().origin().unwrap_or_default();
    let bearer = format!("Bearer {}", token.trim()).parse().ok();
    MeshAdminClient::with_interceptor(tonic_web_wasm_client::Client::new(origin), Bearer(bearer))
}

/// A failed call, as the console shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: Code,
    /// The first line of the server's message (for validation errors: "X is invalid:").
    pub message: String,
    /// `(field path, reason)` from an INVALID_ARGUMENT answer, e.g.
    /// `("spec.rules[0].backends", "weights sum to 90, must sum to 100")`.
    pub fields: Vec<(String, String)>,
}

impl ApiError {
    pub fn from_status(s: &tonic::Status) -> Self {
        let mut lines = s.message().lines();
        let message = lines.next().unwrap_or_default().trim().to_string();
        let fields = lines
            .filter_map(|l| l.trim().strip_prefix("- "))
            .filter_map(|l| l.split_once(": "))
            .map(|(path, reason)| (path.trim().to_string(), reason.trim().to_string()))
            .collect();
        let message = if message.is_empty() {
            format!("{:?}", s.code())
        } else {
            message
        };
        Self {
            code: s.code(),
            message,
            fields,
        }
    }

    /// The object was written by someone else after this form read it.
    pub fn is_conflict(&self) -> bool {
        self.code == Code::Aborted
    }

    /// One line for a banner.
    pub fn summary(&self) -> String {
        match self.code {
            Code::Unavailable | Code::Unknown | Code::Internal => {
                format!(
                    "The control plane could not be reached or failed: {}",
                    self.message
                )
            }
            Code::PermissionDenied => format!("Not allowed: {}", self.message),
            Code::Unauthenticated => format!("Not signed in: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

/// `resource` checked with the control plane's own validation (the policy compiler), against
/// the Services of its namespace in `services`: the same field paths and reasons an Apply
/// would answer.
pub fn check(resource: &AnyResource, services: &[pb::Service]) -> Result<(), ApiError> {
    let ns = resource
        .metadata()
        .map(|m| m.namespace.as_str())
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    let specs: ServiceSpecs = services
        .iter()
        .filter_map(|s| {
            let m = s.metadata.as_ref()?;
            let spec = s.spec.clone().unwrap_or_default();
            (m.namespace == ns).then(|| (m.name.clone(), spec))
        })
        .collect();
    quiver_policy::validate::validate(resource, &specs).map_err(|e| ApiError {
        code: Code::InvalidArgument,
        message: format!("{} {} is invalid:", e.kind, e.key),
        fields: e.errors.into_iter().map(|f| (f.path, f.reason)).collect(),
    })
}

/// [`check`] before a save: `Err` (for the form's banner and fields) when the API would refuse
/// the resource. Until the services list has arrived the API alone decides (checked against
/// an empty list, every reference would look unknown). `None`: a kind that names no Service.
pub fn check_before_save(
    resource: &AnyResource,
    services: Option<Live<pb::Service>>,
) -> Result<(), ApiError> {
    match services {
        Some(live) if !live.synced.get_untracked() => Ok(()),
        Some(live) => live.items.with_untracked(|items| check(resource, items)),
        None => check(resource, &[]),
    }
}

/// Wait `ms` milliseconds (a browser timer).
pub async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// A resource kind the console watches.
pub trait Watched: Clone + Send + Sync + 'static {
    fn meta(&self) -> Option<&pb::ObjectMeta>;
    fn from_event(object: pb::watch_event::Object) -> Option<Self>;
    fn open(
        client: Admin,
        req: pb::WatchRequest,
    ) -> impl Future<Output = Result<tonic::Streaming<pb::WatchEvent>, tonic::Status>>;

    fn key(&self) -> (String, String) {
        self.meta()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default()
    }
    fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.resource_version)
    }
}

macro_rules! watched {
    ($ty:ident, $variant:ident, $rpc:ident) => {
        impl Watched for pb::$ty {
            fn meta(&self) -> Option<&pb::ObjectMeta> {
                self.metadata.as_ref()
            }
            fn from_event(object: pb::watch_event::Object) -> Option<Self> {
                match object {
                    pb::watch_event::Object::$variant(o) => Some(o),
                    _ => None,
                }
            }
            async fn open(
                mut client: Admin,
                req: pb::WatchRequest,
            ) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
                Ok(client.$rpc(req).await?.into_inner())
            }
        }
    };
}

watched!(Service, Service, watch_services);
watched!(Route, Route, watch_routes);
watched!(Canary, Canary, watch_canaries);
watched!(
    AuthorizationPolicy,
    AuthorizationPolicy,
    watch_authorization_policies
);
watched!(MeshConfig, MeshConfig, watch_mesh_configs);
watched!(Workload, Workload, watch_workloads);

/// Every object of one kind, kept current by a Watch stream for as long as the component
/// that asked for it is mounted.
pub struct Live<T: Send + Sync + 'static> {
    /// Ordered by namespace, then name.
    pub items: RwSignal<Vec<T>>,
    /// The first full snapshot has arrived.
    pub synced: RwSignal<bool>,
    /// Why the stream is down (it reconnects by itself).
    pub error: RwSignal<Option<String>>,
}

impl<T: Send + Sync + 'static> Clone for Live<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Send + Sync + 'static> Copy for Live<T> {}

impl<T: Watched> Live<T> {
    pub fn get(&self, ns: &str, name: &str) -> Option<T> {
        self.items.with(|items| {
            items
                .iter()
                .find(|o| {
                    o.meta()
                        .is_some_and(|m| m.namespace == ns && m.name == name)
                })
                .cloned()
        })
    }
}

/// Start watching `T` with `token`; the stream is closed when the calling component unmounts.
pub fn live<T: Watched>(token: String) -> Live<T> {
    let live = Live {
        items: RwSignal::new(Vec::new()),
        synced: RwSignal::new(false),
        error: RwSignal::new(None),
    };
    let (abort, registration) = AbortHandle::new_pair();
    // Dropping the stream aborts its fetch, so an unmounted page holds no connection (HTTP/1.1
    // allows a browser only six per host).
    on_cleanup(move || abort.abort());
    spawn_local(async move {
        let _ = Abortable::new(run_watch(token, live), registration).await;
    });
    live
}

async fn run_watch<T: Watched>(token: String, live: Live<T>) {
    let mut backoff = 500;
    loop {
        let mut objects: BTreeMap<(String, String), T> = BTreeMap::new();
        let mut synced = false;
        let req = pb::WatchRequest {
            namespace: String::new(),
            resource_version: 0,
        };
        let failure = match T::open(client(&token), req).await {
            Err(s) => ApiError::from_status(&s),
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        use pb::watch_event::Type;
                        let kind = event.r#type();
                        match (kind, event.object.and_then(T::from_event)) {
                            (Type::Added | Type::Modified, Some(o)) => {
                                objects.insert(o.key(), o);
                            }
                            (Type::Deleted, Some(o)) => {
                                objects.remove(&o.key());
                            }
                            (Type::Synced, _) => synced = true,
                            _ => {}
                        }
                        if synced {
                            backoff = 500;
                            live.items.set(objects.values().cloned().collect());
                            live.synced.set(true);
                            live.error.set(None);
                        }
                    }
                    Ok(None) => {
                        break ApiError {
                            code: Code::Unavailable,
                            message: "the watch stream ended".into(),
                            fields: Vec::new(),
                        };
                    }
                    Err(s) => break ApiError::from_status(&s),
                }
            },
        };
        let permanent = matches!(failure.code, Code::Unauthenticated | Code::PermissionDenied);
        live.error.set(Some(if permanent {
            failure.summary()
        } else {
            format!("{} — reconnecting…", failure.summary())
        }));
        if permanent {
            return;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(8_000);
    }
}

/// Parse "a, b ,c" into ["a", "b", "c"].
pub fn split_list(s: &str) -> Vec<String> {
    s.split([',', '\n'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}
