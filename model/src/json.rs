//! Reading untrusted JSON: a size cap, and duplicate keys refused (with
//! serde_json alone the last one silently wins, so a service file with two
//! `image` keys would run the second one without a word).

use crate::error::SpecError;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Documents larger than this are refused before parsing: a service file or
/// a task definition is a few KiB; ECS caps a task definition at 64 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A JSON value whose objects had no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?} (the same field given twice)"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `text` as JSON, refusing duplicate keys and oversized input. The
/// error names the path of a duplicate, or the line and column of a syntax
/// error.
pub fn parse_strict(text: &str) -> Result<Value, SpecError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(SpecError::new(
            "",
            format!(
                "document is {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted",
                text.len()
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = match serde_path_to_error::deserialize::<_, Strict>(&mut de) {
        Ok(Strict(v)) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(if inner.is_syntax() || inner.is_eof() || path == "." {
                syntax(&inner)
            } else {
                SpecError::new(path, strip_position(&inner.to_string()))
            });
        }
    };
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

fn syntax(e: &serde_json::Error) -> SpecError {
    SpecError::new(
        "",
        format!(
            "invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            strip_position(&e.to_string())
        ),
    )
}

/// serde_json appends " at line L column C"; the JSON path says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_their_path() {
        let e = parse_strict(r#"{"a": {"b": [{"c": 1, "c": 2}]}}"#).unwrap_err();
        assert_eq!(e.path, "a.b[0]");
        assert!(e.why.contains("duplicate key \"c\""), "{e}");
        assert!(parse_strict(r#"{"a": 1, "b": {"a": 2}}"#).is_ok());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = parse_strict("{\n  \"a\": 1,\n}").unwrap_err();
        assert!(e.why.starts_with("invalid JSON at line 3 column 1"), "{e}");
        let e = parse_strict("{} x").unwrap_err();
        assert!(e.why.contains("trailing characters"), "{e}");
        assert!(parse_strict("").is_err());
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let big = format!("\"{}\"", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(parse_strict(&big).unwrap_err().why.contains("at most"));
    }
}
