//! Container instances: what a host offers (`Resource`) and says about
//! itself (`Attribute`), in ECS's shapes.

use serde::{Deserialize, Serialize};

/// ECS's `Resource`: `CPU` and `MEMORY` as `INTEGER`, `PORTS` (and
/// `PORTS_UDP`) as `STRINGSET` of port numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_value: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub double_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_set_value: Option<Vec<String>>,
}

impl Resource {
    pub fn integer(name: &str, value: i64) -> Resource {
        Resource {
            name: name.to_string(),
            kind: "INTEGER".into(),
            integer_value: Some(value),
            long_value: None,
            double_value: None,
            string_set_value: None,
        }
    }

    pub fn string_set(name: &str, values: Vec<String>) -> Resource {
        Resource {
            name: name.to_string(),
            kind: "STRINGSET".into(),
            integer_value: None,
            long_value: None,
            double_value: None,
            string_set_value: Some(values),
        }
    }
}

/// ECS's `Attribute` of a container instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
}

impl Attribute {
    pub fn new(name: &str, value: Option<&str>) -> Attribute {
        Attribute {
            name: name.to_string(),
            value: value.map(str::to_string),
            target_type: None,
            target_id: None,
        }
    }

    /// At most this many attributes on one container instance (ECS's
    /// limit).
    pub const MAX_PER_INSTANCE: usize = 100;

    /// Whether an attribute is one ECS (and the control endpoint) takes:
    /// a name of 1-128 letters, digits, `-`, `_`, `.`, `/` or `@`, and a
    /// value of at most 128 characters. The reason when not.
    pub fn check(name: &str, value: Option<&str>) -> Result<(), String> {
        let ok_name = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./@".contains(&b));
        if !ok_name || value.is_some_and(|v| v.chars().count() > 128) {
            return Err(format!(
                "attribute {name:?}: names are 1-128 letters, digits, hyphens, underscores, periods, at signs or slashes; values at most 128 characters"
            ));
        }
        Ok(())
    }
}

/// ECS's `VersionInfo` of a container instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
}
