//! Serde helpers for the checkpoint's saved pipeline state (JSON): byte buffers as base64 text
//! instead of arrays of numbers, and maps with non-string keys as lists of pairs.

use std::collections::HashMap;
use std::hash::Hash;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Vec<u8>` as a base64 string.
pub mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// `HashMap<K, V>` as `[[k, v], ...]`, for keys JSON cannot use as object keys.
pub mod map_as_pairs {
    use super::*;

    pub fn serialize<S, K, V>(map: &HashMap<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        K: Serialize,
        V: Serialize,
    {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<HashMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
    {
        Vec::<(K, V)>::deserialize(d).map(|pairs| pairs.into_iter().collect())
    }
}
