//! Stored objects read back as API resources: the body decoded and the metadata the store
//! owns (version, timestamps) filled in from its columns. The API's handlers and the
//! discovery view both read resources this way; it sits beside them rather than in either,
//! so neither imports the other for it, and the store stays ignorant of what its bodies
//! hold.

use quiver_api::resource::Resource;

use crate::store::StoredObject;

/// The body the store holds for `obj`: its canonical form ([`quiver_api::document::canonicalize`],
/// so a re-apply of the same meaning is recognised as unchanged) without the metadata the
/// store owns (version, timestamps), protobuf-encoded. Every write of a resource body goes
/// through here.
pub fn encode<R: Resource + 'static>(mut obj: R) -> Result<Vec<u8>, serde_yaml::Error> {
    let meta = obj.metadata_mut();
    meta.resource_version = 0;
    meta.created_at.clear();
    meta.updated_at.clear();
    Ok(prost::Message::encode_to_vec(
        &quiver_api::document::canonicalize(&obj)?,
    ))
}

/// Decode a stored object, filling metadata the store owns (version, timestamps). A body
/// that does not decode is logged here, once, for every caller.
pub fn decode<R: Resource>(obj: &StoredObject) -> Result<R, prost::DecodeError> {
    let mut r = R::decode(obj.body.as_slice()).inspect_err(|e| {
        tracing::error!(error = %e, kind = %obj.kind, name = %obj.name, "stored body does not decode");
    })?;
    let meta = r.metadata_mut();
    meta.namespace = obj.namespace.clone();
    meta.name = obj.name.clone();
    meta.resource_version = obj.resource_version;
    meta.created_at = rfc3339(obj.created_at);
    meta.updated_at = rfc3339(obj.updated_at);
    Ok(r)
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
