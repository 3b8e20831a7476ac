//! Validation errors: every problem at a JSON path, all reported at once.

use std::fmt;

/// One problem in a document, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// `taskDefinition.containerDefinitions[0].portMappings[1].containerPort`,
    /// or empty for the whole document.
    pub path: String,
    pub why: String,
}

impl SpecError {
    pub fn new(path: impl Into<String>, why: impl Into<String>) -> SpecError {
        SpecError {
            path: path.into(),
            why: why.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.why)
        } else {
            write!(f, "{}: {}", self.path, self.why)
        }
    }
}

/// Collects errors under a path prefix (`taskDefinition` inside a service
/// file, nothing in an API request).
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub(crate) list: Vec<SpecError>,
}

impl Errors {
    /// Records `why` at `prefix` joined with `field`.
    pub(crate) fn at(&mut self, prefix: &str, field: &str, why: impl Into<String>) {
        self.list.push(SpecError::new(join(prefix, field), why));
    }

    pub(crate) fn into_result(self) -> Result<(), Vec<SpecError>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }
}

/// `prefix.field`, or whichever is not empty.
pub(crate) fn join(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (_, true) => prefix.to_string(),
        _ if field.starts_with('[') => format!("{prefix}{field}"),
        _ => format!("{prefix}.{field}"),
    }
}
