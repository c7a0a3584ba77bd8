//! Manual control of canaries (`PauseCanary`, `ResumeCanary`, `PromoteCanary`,
//! `AbortCanary`): the action is written into the canary's status at once by
//! `crate::canary::act`, whichever replica drives it.

use quiver_api::resource::DEFAULT_NAMESPACE;
use quiver_api::v1;
use quiver_policy::canary::Action;
use tonic::{Request, Status};

use super::{AdminApi, store_status};
use crate::auth::Role;
use crate::canary::ActError;

/// The longest reason kept with a manual action.
const MAX_REASON: usize = 256;

impl AdminApi {
    pub(super) async fn canary_action(
        &self,
        method: &'static str,
        action: Action,
        req: Request<v1::CanaryActionRequest>,
    ) -> Result<v1::Canary, Status> {
        self.inputs
            .tokens
            .authorize(req.metadata(), Role::Admin, method)
            .await?;
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name: required"));
        }
        if req.reason.chars().count() > MAX_REASON || req.reason.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "reason: at most {MAX_REASON} characters, no control characters"
            )));
        }
        let namespace = if req.namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            req.namespace.as_str()
        };
        let done = crate::canary::act(
            self.inputs.store.as_ref(),
            namespace,
            &req.name,
            action,
            &req.reason,
            "api",
        )
        .await;
        match done {
            Ok(c) => {
                tracing::warn!(
                    canary = %format!("{namespace}/{}", req.name),
                    action = action.verb(),
                    reason = %req.reason,
                    "canary acted on by hand"
                );
                Ok(c)
            }
            Err(ActError::NotFound(m)) => Err(Status::not_found(m)),
            Err(ActError::Invalid(m)) => Err(Status::failed_precondition(m)),
            Err(ActError::Busy(m)) => Err(Status::aborted(m)),
            Err(ActError::Store(e)) => Err(store_status(e)),
        }
    }
}
