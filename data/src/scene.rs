//! Scene graphs (spatialthinker.md §2.4) and their JSON text exactly as Python's `json.dumps`
//! writes it with default arguments (`", "` and `": "` separators, non-ASCII escaped), which is
//! the formatting of STVQA-7K's ground-truth subgraphs.

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

impl SceneObject {
    /// An object with an integer pixel box.
    pub fn with_int_box(id: impl Into<String>, bbox: [i64; 4]) -> Self {
        Self {
            id: id.into(),
            bbox: bbox.map(serde_json::Number::from),
        }
    }
}

impl SceneGraph {
    /// The graph as Python `json.dumps(graph)` text.
    pub fn to_python_json(&self) -> String {
        to_python_json(self)
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
    fn escapes_non_ascii_like_python() {
        // json.dumps("café 🚲") == '"caf\\u00e9 \\ud83d\\udeb2"'
        assert_eq!(to_python_json(&"café 🚲"), r#""caf\u00e9 \ud83d\udeb2""#);
        assert_eq!(
            to_python_json(&serde_json::json!({"objects": [], "relationships": []})),
            r#"{"objects": [], "relationships": []}"#
        );
    }
}
