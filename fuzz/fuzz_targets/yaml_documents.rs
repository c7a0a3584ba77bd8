//! YAML/JSON documents as `quiverctl apply -f` reads them (`quiver_api::document`), then the
//! API's validation of every document that parses (`quiver_policy::validate`). Any input:
//! no panic, and every refusal names a field and a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver_api::document::{DocumentError, parse_documents};
use quiver_api::resource::AnyResource;
use quiver_policy::validate::{ServiceSpecs, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let resources = match parse_documents(text) {
        Ok(r) => r,
        Err(e) => {
            if let DocumentError::Field { path, reason, .. } = &e {
                assert!(!path.is_empty(), "a field error without a path: {e}");
                assert!(!reason.is_empty(), "a field error without a reason: {e}");
            }
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // References resolve against the Services of the same input, as if applied first, so
    // Routes, policies and canaries are compiled against real subsets.
    let mut services = ServiceSpecs::new();
    for r in &resources {
        if let AnyResource::Service(s) = r {
            let name = s
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            services.insert(name, s.spec.clone().unwrap_or_default());
        }
    }
    for r in &resources {
        if let Err(invalid) = validate(r, &services) {
            assert!(!invalid.errors.is_empty(), "refused without a reason");
            for e in &invalid.errors {
                assert!(!e.path.is_empty(), "an error without a field path: {e}");
                assert!(!e.reason.is_empty(), "an error without a reason: {e}");
            }
        }
    }
});
