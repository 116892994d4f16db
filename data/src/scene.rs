//! Scene graphs — `{"objects": [{"id", "bbox"}], "relationships": [{"subject", "predicate",
//! "object"}]}` with boxes in pixels of the image size stated in the prompt (docs/recipe.md,
//! "Scene-graph schema and coordinates") — and their JSON text exactly as Python's `json.dumps`
//! writes it with default arguments (`", "` and `": "` separators, non-ASCII escaped), which is
//! the formatting of STVQA-7K's ground-truth subgraphs.
//!
//! This is the project's one scene-graph type: datasets (synthesis, import, the ground-truth
//! column) and inference (a model's `<scene>` section, [`SceneGraph::parse_lenient`]) share it.
//! The `rewards` crate deliberately keeps its own arena-parsed internal representation of scene
//! objects (a refined label and a prepared, normalised box), built for speed and for reproducing
//! the Python reference's errors; it is not meant to be merged into this type.

use std::io;

use serde::{Deserialize, Serialize};

/// One object: an id `name.N` and a pixel box `[x1, y1, x2, y2]` in the stated image frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// `name.N`, e.g. `circle.1`.
    pub id: String,
    /// `[x1, y1, x2, y2]`, top-left and bottom-right corners in pixels (ints or floats).
    pub bbox: [serde_json::Number; 4],
}

/// One relationship triplet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relationship {
    /// Subject object id.
    pub subject: String,
    /// Free-text predicate, e.g. `left of`.
    pub predicate: String,
    /// Object id.
    pub object: String,
}

/// A scene graph: `{"objects": [...], "relationships": [...]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SceneGraph {
    /// Objects in the order written.
    pub objects: Vec<SceneObject>,
    /// Relationship triplets.
    pub relationships: Vec<Relationship>,
}

/// Why a model's scene text could not be read as a scene graph at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SceneParseError {
    /// The text is not JSON.
    #[error("scene is not valid JSON: {0}")]
    NotJson(String),
    /// The text is JSON but not an object.
    #[error("scene JSON is not an object")]
    NotObject,
}

impl SceneObject {
    /// An object with an integer pixel box.
    pub fn with_int_box(id: impl Into<String>, bbox: [i64; 4]) -> Self {
        Self {
            id: id.into(),
            bbox: bbox.map(serde_json::Number::from),
        }
    }

    /// The box as floats `[x1, y1, x2, y2]` (for drawing and geometry).
    pub fn bbox_f64(&self) -> [f64; 4] {
        // `as_f64` is `None` only for numbers serde_json cannot hold as i64, u64 or f64, which
        // this workspace never builds (no `arbitrary_precision`).
        self.bbox.each_ref().map(|n| n.as_f64().unwrap_or(f64::NAN))
    }
}

impl SceneGraph {
    /// The graph as Python `json.dumps(graph)` text.
    pub fn to_python_json(&self) -> String {
        to_python_json(self)
    }

    /// Read the scene graph a model wrote (the JSON inside its `<scene>` tags), leniently: an
    /// object entry without a string `id` or without a `bbox` of exactly four numbers is skipped,
    /// as is a relationship without string `subject`, `predicate` and `object`; extra keys are
    /// ignored and missing `objects` / `relationships` lists read as empty. The whole fails only
    /// when the text is not a JSON object. Numbers keep their JSON form (ints stay ints).
    ///
    /// This is for showing what a model predicted, not for scoring it: the reward's format check
    /// is strict (docs/recipe.md, "Format") and lives in the `rewards` crate.
    pub fn parse_lenient(text: &str) -> Result<SceneGraph, SceneParseError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SceneParseError::NotJson(e.to_string()))?;
        let obj = value.as_object().ok_or(SceneParseError::NotObject)?;
        let list = |key: &str| {
            obj.get(key)
                .and_then(|v| v.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let objects = list("objects")
            .iter()
            .filter_map(|o| {
                let id = o.get("id")?.as_str()?;
                let bbox = match o.get("bbox")?.as_array()?.as_slice() {
                    [a, b, c, d] => [a, b, c, d].map(|v| v.as_number().cloned()),
                    _ => return None,
                };
                let [Some(x1), Some(y1), Some(x2), Some(y2)] = bbox else {
                    return None;
                };
                Some(SceneObject {
                    id: id.to_string(),
                    bbox: [x1, y1, x2, y2],
                })
            })
            .collect();
        let relationships = list("relationships")
            .iter()
            .filter_map(|r| {
                let field = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
                Some(Relationship {
                    subject: field("subject")?,
                    predicate: field("predicate")?,
                    object: field("object")?,
                })
            })
            .collect();
        Ok(SceneGraph {
            objects,
            relationships,
        })
    }
}

/// Serialise `value` like Python's `json.dumps(value)` with default arguments.
pub fn to_python_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising plain data into memory cannot fail");
    String::from_utf8(out).expect("the formatter writes ASCII only")
}

/// `serde_json` formatter reproducing `json.dumps` defaults (`ensure_ascii=True`).
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // Expected text produced by Python 3: json.dumps({"objects": [{"id": "bike.1", "bbox":
        // [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}], "relationships":
        // [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]})
        let g = SceneGraph {
            objects: vec![
                SceneObject::with_int_box("bike.1", [0, 272, 310, 551]),
                SceneObject::with_int_box("man.1", [0, 165, 38, 278]),
            ],
            relationships: vec![Relationship {
                subject: "man.1".into(),
                predicate: "behind".into(),
                object: "bike.1".into(),
            }],
        };
        assert_eq!(
            g.to_python_json(),
            r#"{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}], "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]}"#
        );
    }

    #[test]
    fn lenient_parse_skips_malformed_entries() {
        let text = r#"{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]},
            {"id": "man.1", "bbox": [0, 165, 38.5, 278], "label": "man"},
            {"id": "bad.1", "bbox": [1, 2, 3]}, {"id": "bad.2", "bbox": [1, 2, "3", 4]},
            {"bbox": [1, 2, 3, 4]}, {"id": 7, "bbox": [1, 2, 3, 4]}],
          "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"},
            {"subject": "man.1"}, {"subject": "man.1", "predicate": 3, "object": "bike.1"}]}"#;
        let g = SceneGraph::parse_lenient(text).unwrap();
        let ids: Vec<&str> = g.objects.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["bike.1", "man.1"]);
        assert_eq!(
            g.objects[0],
            SceneObject::with_int_box("bike.1", [0, 272, 310, 551])
        );
        assert_eq!(g.objects[1].bbox_f64(), [0.0, 165.0, 38.5, 278.0]);
        // ints stay ints, floats stay floats when written back
        assert_eq!(
            to_python_json(&g.objects[1]),
            r#"{"id": "man.1", "bbox": [0, 165, 38.5, 278]}"#
        );
        assert_eq!(
            g.relationships,
            vec![Relationship {
                subject: "man.1".into(),
                predicate: "behind".into(),
                object: "bike.1".into(),
            }]
        );
    }

    #[test]
    fn lenient_parse_errors_and_missing_lists() {
        assert_eq!(
            SceneGraph::parse_lenient("{}").unwrap(),
            SceneGraph::default()
        );
        assert_eq!(
            SceneGraph::parse_lenient(r#"{"objects": 5}"#).unwrap(),
            SceneGraph::default()
        );
        assert_eq!(
            SceneGraph::parse_lenient("[1]").unwrap_err(),
            SceneParseError::NotObject
        );
        assert_eq!(
            SceneGraph::parse_lenient("[1]").unwrap_err().to_string(),
            "scene JSON is not an object"
        );
        let err = SceneGraph::parse_lenient("{objects: oops}").unwrap_err();
        assert!(matches!(err, SceneParseError::NotJson(_)));
        assert!(err.to_string().starts_with("scene is not valid JSON: "));
    }

    #[test]
    fn escapes_non_ascii_like_python() {
        // json.dumps("café 🚲") == '"caf\\u00e9 \\ud83d\\udeb2"'
        assert_eq!(to_python_json(&"café 🚲"), r#""caf\u00e9 \ud83d\udeb2""#);
        assert_eq!(
            to_python_json(&serde_json::json!({"objects": [], "relationships": []})),
            r#"{"objects": [], "relationships": []}"#
        );
    }
}
