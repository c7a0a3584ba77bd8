//! The demo's API as an admin: native gRPC with the admin token the demo prints.

use quiver_api::v1;

/// `  console + API   http://127.0.0.1:34567/` and `  admin token     qvr_...`: the first
/// word after `label`, without a trailing `/`.
pub fn banner_value(line: &str, label: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(label)?;
    Some(
        rest.split_whitespace()
            .next()?
            .trim_end_matches('/')
            .to_string(),
    )
}

/// Adds the demo's admin token to every call.
#[derive(Clone)]
pub struct AdminToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AdminToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Admin = v1::mesh_admin_client::MeshAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AdminToken>,
>;

pub async fn connect(url: &str, token: &str) -> Admin {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("API URL")
        .connect()
        .await
        .expect("connect to the demo's API");
    let bearer = AdminToken(format!("Bearer {token}").parse().expect("token"));
    v1::mesh_admin_client::MeshAdminClient::with_interceptor(channel, bearer)
}
