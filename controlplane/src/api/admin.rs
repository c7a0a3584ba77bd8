//! `quiver.v1.MeshAdmin`: one line per RPC, delegating to the generic handlers.

use quiver_api::v1::{self, mesh_admin_server::MeshAdmin};
use quiver_policy::canary::Action;
use tonic::{Request, Response, Status};

use super::{AdminApi, WatchStream};

#[tonic::async_trait]
impl MeshAdmin for AdminApi {
    async fn apply_service(
        &self,
        req: Request<v1::Service>,
    ) -> Result<Response<v1::ApplyServiceResponse>, Status> {
        self.call("ApplyService", async {
            let (obj, outcome) = self.apply("ApplyService", req).await?;
            Ok(v1::ApplyServiceResponse {
                service: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_service(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        self.call("GetService", self.get("GetService", req)).await
    }

    async fn list_services(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ServiceList>, Status> {
        self.call("ListServices", async {
            let (items, resource_version) = self.list("ListServices", req).await?;
            Ok(v1::ServiceList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_service(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteService",
            self.delete::<v1::Service>("DeleteService", req),
        )
        .await
    }

    type WatchServicesStream = WatchStream;

    async fn watch_services(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchServices",
            self.watch::<v1::Service>("WatchServices", req),
        )
        .await
    }

    async fn apply_route(
        &self,
        req: Request<v1::Route>,
    ) -> Result<Response<v1::ApplyRouteResponse>, Status> {
        self.call("ApplyRoute", async {
            let (obj, outcome) = self.apply("ApplyRoute", req).await?;
            Ok(v1::ApplyRouteResponse {
                route: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_route(&self, req: Request<v1::GetRequest>) -> Result<Response<v1::Route>, Status> {
        self.call("GetRoute", self.get("GetRoute", req)).await
    }

    async fn list_routes(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::RouteList>, Status> {
        self.call("ListRoutes", async {
            let (items, resource_version) = self.list("ListRoutes", req).await?;
            Ok(v1::RouteList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_route(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call("DeleteRoute", self.delete::<v1::Route>("DeleteRoute", req))
            .await
    }

    type WatchRoutesStream = WatchStream;

    async fn watch_routes(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call("WatchRoutes", self.watch::<v1::Route>("WatchRoutes", req))
            .await
    }

    async fn apply_http_route(
        &self,
        req: Request<v1::HttpRoute>,
    ) -> Result<Response<v1::ApplyHttpRouteResponse>, Status> {
        self.call("ApplyHTTPRoute", async {
            let (obj, outcome) = self.apply("ApplyHTTPRoute", req).await?;
            Ok(v1::ApplyHttpRouteResponse {
                http_route: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_http_route(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::HttpRoute>, Status> {
        self.call("GetHTTPRoute", self.get("GetHTTPRoute", req))
            .await
    }

    async fn list_http_routes(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::HttpRouteList>, Status> {
        self.call("ListHTTPRoutes", async {
            let (items, resource_version) = self.list("ListHTTPRoutes", req).await?;
            Ok(v1::HttpRouteList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_http_route(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteHTTPRoute",
            self.delete::<v1::HttpRoute>("DeleteHTTPRoute", req),
        )
        .await
    }

    type WatchHTTPRoutesStream = WatchStream;

    async fn watch_http_routes(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchHTTPRoutes",
            self.watch::<v1::HttpRoute>("WatchHTTPRoutes", req),
        )
        .await
    }

    async fn apply_grpc_route(
        &self,
        req: Request<v1::GrpcRoute>,
    ) -> Result<Response<v1::ApplyGrpcRouteResponse>, Status> {
        self.call("ApplyGRPCRoute", async {
            let (obj, outcome) = self.apply("ApplyGRPCRoute", req).await?;
            Ok(v1::ApplyGrpcRouteResponse {
                grpc_route: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_grpc_route(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GrpcRoute>, Status> {
        self.call("GetGRPCRoute", self.get("GetGRPCRoute", req))
            .await
    }

    async fn list_grpc_routes(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::GrpcRouteList>, Status> {
        self.call("ListGRPCRoutes", async {
            let (items, resource_version) = self.list("ListGRPCRoutes", req).await?;
            Ok(v1::GrpcRouteList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_grpc_route(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteGRPCRoute",
            self.delete::<v1::GrpcRoute>("DeleteGRPCRoute", req),
        )
        .await
    }

    type WatchGRPCRoutesStream = WatchStream;

    async fn watch_grpc_routes(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchGRPCRoutes",
            self.watch::<v1::GrpcRoute>("WatchGRPCRoutes", req),
        )
        .await
    }

    async fn apply_canary(
        &self,
        req: Request<v1::Canary>,
    ) -> Result<Response<v1::ApplyCanaryResponse>, Status> {
        self.call("ApplyCanary", async {
            let (obj, outcome) = self.apply("ApplyCanary", req).await?;
            Ok(v1::ApplyCanaryResponse {
                canary: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_canary(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::Canary>, Status> {
        self.call("GetCanary", self.get("GetCanary", req)).await
    }

    async fn list_canaries(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::CanaryList>, Status> {
        self.call("ListCanaries", async {
            let (items, resource_version) = self.list("ListCanaries", req).await?;
            Ok(v1::CanaryList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn pause_canary(
        &self,
        req: Request<v1::CanaryActionRequest>,
    ) -> Result<Response<v1::Canary>, Status> {
        self.call(
            "PauseCanary",
            self.canary_action("PauseCanary", Action::Pause, req),
        )
        .await
    }

    async fn resume_canary(
        &self,
        req: Request<v1::CanaryActionRequest>,
    ) -> Result<Response<v1::Canary>, Status> {
        self.call(
            "ResumeCanary",
            self.canary_action("ResumeCanary", Action::Resume, req),
        )
        .await
    }

    async fn promote_canary(
        &self,
        req: Request<v1::CanaryActionRequest>,
    ) -> Result<Response<v1::Canary>, Status> {
        self.call(
            "PromoteCanary",
            self.canary_action("PromoteCanary", Action::Promote, req),
        )
        .await
    }

    async fn abort_canary(
        &self,
        req: Request<v1::CanaryActionRequest>,
    ) -> Result<Response<v1::Canary>, Status> {
        self.call(
            "AbortCanary",
            self.canary_action("AbortCanary", Action::Abort, req),
        )
        .await
    }

    async fn delete_canary(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteCanary",
            self.delete::<v1::Canary>("DeleteCanary", req),
        )
        .await
    }

    type WatchCanariesStream = WatchStream;

    async fn watch_canaries(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchCanaries",
            self.watch::<v1::Canary>("WatchCanaries", req),
        )
        .await
    }

    async fn apply_authorization_policy(
        &self,
        req: Request<v1::AuthorizationPolicy>,
    ) -> Result<Response<v1::ApplyAuthorizationPolicyResponse>, Status> {
        self.call("ApplyAuthorizationPolicy", async {
            let (obj, outcome) = self.apply("ApplyAuthorizationPolicy", req).await?;
            Ok(v1::ApplyAuthorizationPolicyResponse {
                authorization_policy: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_authorization_policy(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::AuthorizationPolicy>, Status> {
        self.call(
            "GetAuthorizationPolicy",
            self.get("GetAuthorizationPolicy", req),
        )
        .await
    }

    async fn list_authorization_policies(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::AuthorizationPolicyList>, Status> {
        self.call("ListAuthorizationPolicies", async {
            let (items, resource_version) = self.list("ListAuthorizationPolicies", req).await?;
            Ok(v1::AuthorizationPolicyList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_authorization_policy(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteAuthorizationPolicy",
            self.delete::<v1::AuthorizationPolicy>("DeleteAuthorizationPolicy", req),
        )
        .await
    }

    type WatchAuthorizationPoliciesStream = WatchStream;

    async fn watch_authorization_policies(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchAuthorizationPolicies",
            self.watch::<v1::AuthorizationPolicy>("WatchAuthorizationPolicies", req),
        )
        .await
    }

    async fn apply_mesh_config(
        &self,
        req: Request<v1::MeshConfig>,
    ) -> Result<Response<v1::ApplyMeshConfigResponse>, Status> {
        self.call("ApplyMeshConfig", async {
            let (obj, outcome) = self.apply("ApplyMeshConfig", req).await?;
            Ok(v1::ApplyMeshConfigResponse {
                mesh_config: Some(obj),
                outcome: outcome as i32,
            })
        })
        .await
    }

    async fn get_mesh_config(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::MeshConfig>, Status> {
        self.call("GetMeshConfig", self.get("GetMeshConfig", req))
            .await
    }

    async fn list_mesh_configs(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::MeshConfigList>, Status> {
        self.call("ListMeshConfigs", async {
            let (items, resource_version) = self.list("ListMeshConfigs", req).await?;
            Ok(v1::MeshConfigList {
                items,
                resource_version,
            })
        })
        .await
    }

    async fn delete_mesh_config(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        self.call(
            "DeleteMeshConfig",
            self.delete::<v1::MeshConfig>("DeleteMeshConfig", req),
        )
        .await
    }

    type WatchMeshConfigsStream = WatchStream;

    async fn watch_mesh_configs(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchMeshConfigs",
            self.watch::<v1::MeshConfig>("WatchMeshConfigs", req),
        )
        .await
    }

    async fn get_workload(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        self.call("GetWorkload", async {
            let w: v1::Workload = self.get("GetWorkload", req).await?;
            let ns = w.metadata.as_ref().map(|m| m.namespace.clone());
            let mut live = self.with_leases(vec![w], ns.as_deref()).await?;
            live.pop()
                .ok_or_else(|| Status::not_found("workload lease lapsed"))
        })
        .await
    }

    async fn list_workloads(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::WorkloadList>, Status> {
        self.call("ListWorkloads", async {
            let ns = req.get_ref().namespace.clone();
            let (items, resource_version) = self.list("ListWorkloads", req).await?;
            let items = self
                .with_leases(items, (!ns.is_empty()).then_some(ns.as_str()))
                .await?;
            Ok(v1::WorkloadList {
                items,
                resource_version,
            })
        })
        .await
    }

    type WatchWorkloadsStream = WatchStream;

    async fn watch_workloads(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        self.call(
            "WatchWorkloads",
            self.watch::<v1::Workload>("WatchWorkloads", req),
        )
        .await
    }

    async fn create_api_token(
        &self,
        req: Request<v1::CreateApiTokenRequest>,
    ) -> Result<Response<v1::CreateApiTokenResponse>, Status> {
        self.call("CreateApiToken", AdminApi::create_api_token(self, req))
            .await
    }

    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        self.call("CreateJoinToken", AdminApi::create_join_token(self, req))
            .await
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::TokenList>, Status> {
        self.call("ListTokens", AdminApi::list_tokens(self, req))
            .await
    }

    async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        self.call("RevokeToken", AdminApi::revoke_token(self, req))
            .await
    }

    async fn get_trust_bundle(
        &self,
        req: Request<v1::GetTrustBundleRequest>,
    ) -> Result<Response<v1::TrustBundle>, Status> {
        self.call("GetTrustBundle", self.trust_bundle(req)).await
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.call("Status", AdminApi::status(self, req)).await
    }

    async fn rotate_ca(
        &self,
        req: Request<v1::RotateCaRequest>,
    ) -> Result<Response<v1::CaStatus>, Status> {
        self.call("RotateCa", super::ca::rotate(&self.inputs, req))
            .await
    }

    async fn retire_ca(
        &self,
        req: Request<v1::RetireCaRequest>,
    ) -> Result<Response<v1::CaStatus>, Status> {
        self.call("RetireCa", super::ca::retire(&self.inputs, req))
            .await
    }

    async fn get_ca_status(
        &self,
        req: Request<v1::GetCaStatusRequest>,
    ) -> Result<Response<v1::CaStatus>, Status> {
        self.call("GetCaStatus", super::ca::status(&self.inputs, req))
            .await
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::Revocation>, Status> {
        self.call("Revoke", super::revocations::revoke(&self.inputs, req))
            .await
    }

    async fn list_revocations(
        &self,
        req: Request<v1::ListRevocationsRequest>,
    ) -> Result<Response<v1::RevocationList>, Status> {
        self.call(
            "ListRevocations",
            super::revocations::list(&self.inputs, req),
        )
        .await
    }

    async fn search_traces(
        &self,
        req: Request<v1::SearchTracesRequest>,
    ) -> Result<Response<v1::SearchTracesResponse>, Status> {
        self.call("SearchTraces", AdminApi::search_traces(self, req))
            .await
    }

    async fn get_trace(
        &self,
        req: Request<v1::GetTraceRequest>,
    ) -> Result<Response<v1::Trace>, Status> {
        self.call("GetTrace", AdminApi::get_trace(self, req)).await
    }

    async fn get_service_graph(
        &self,
        req: Request<v1::GetServiceGraphRequest>,
    ) -> Result<Response<v1::ServiceGraph>, Status> {
        self.call("GetServiceGraph", self.service_graph(req)).await
    }

    async fn dry_run_apply(
        &self,
        req: Request<v1::DryRunApplyRequest>,
    ) -> Result<Response<v1::DryRunApplyResponse>, Status> {
        self.call("DryRunApply", AdminApi::dry_run_apply(self, req))
            .await
    }

    async fn list_proxy_status(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ProxyStatusList>, Status> {
        self.call("ListProxyStatus", super::proxies::list(&self.inputs, req))
            .await
    }

    async fn get_proxy_config(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::ProxyConfig>, Status> {
        self.call("GetProxyConfig", super::proxies::config(&self.inputs, req))
            .await
    }
}
