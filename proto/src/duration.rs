//! Human durations as operators write them in YAML and flags: `250ms`, `30s`, `5m`, `24h`, `1h30m`.

mod grammar;

pub use grammar::{format, parse};

/// serde adapter: `#[serde(with = "quiver_api::duration::serde_human")]`.
pub mod serde_human {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// [`serde_human`] for an optional duration (absent or null is `None`):
/// `#[serde(default, with = "quiver_api::duration::serde_human_opt")]`.
pub mod serde_human_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = <Option<String> as serde::Deserialize>::deserialize(d)?;
        s.map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
