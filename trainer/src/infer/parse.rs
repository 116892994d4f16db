//! Splitting a SpatialThinker response into its observe / scene / think / answer sections and
//! reading the scene graph (spec §2.4: `objects` with `id` + `bbox` in the stated image's pixels,
//! `relationships` with `subject` / `predicate` / `object`).

use serde::{Deserialize, Serialize};

/// One localised object of the scene graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    /// `name.number`, e.g. `bike.1`.
    pub id: String,
    /// `[x1, y1, x2, y2]` in pixels of the image size stated in the prompt.
    pub bbox: [f64; 4],
}

/// One directed relation between two objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    /// Id of the subject object.
    pub subject: String,
    /// Free-text predicate, e.g. `behind`.
    pub predicate: String,
    /// Id of the object object.
    pub object: String,
}

/// The scene graph inside `<scene>` tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SceneGraph {
    /// Objects with a well-formed id and box, in the order written.
    pub objects: Vec<SceneObject>,
    /// Relationships with string subject, predicate and object, in the order written.
    pub relationships: Vec<Relationship>,
}

/// A response split into sections; a missing section is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ParsedResponse {
    /// Text inside `<observe>`.
    pub observe: Option<String>,
    /// Raw text inside `<scene>`.
    pub scene_text: Option<String>,
    /// The scene graph when `scene_text` is valid JSON.
    pub scene: Option<SceneGraph>,
    /// Why the scene text could not be read, when it could not.
    pub scene_error: Option<String>,
    /// Text inside `<think>`.
    pub think: Option<String>,
    /// Text inside `<answer>` (as extracted for evaluation).
    pub answer: Option<String>,
}

/// The trimmed text between the first `<tag>` and the following `</tag>`.
pub fn section(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let rest = &text[start..];
    let end = rest.find(&close)?;
    Some(rest[..end].trim().to_string())
}

/// Parse a response; never fails, problems are recorded in the result.
pub fn parse_response(text: &str) -> ParsedResponse {
    let scene_text = section(text, "scene");
    let (scene, scene_error) = match scene_text.as_deref().map(parse_scene_graph) {
        Some(Ok(g)) => (Some(g), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    ParsedResponse {
        observe: section(text, "observe"),
        scene_text,
        scene,
        scene_error,
        think: section(text, "think"),
        answer: section(text, "answer"),
    }
}

/// Read a scene graph from JSON text. Entries with a missing id, or a box that is not four
/// numbers, are skipped; the whole fails only when the text is not a JSON object.
pub fn parse_scene_graph(text: &str) -> Result<SceneGraph, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("scene is not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "scene JSON is not an object".to_string())?;
    let mut graph = SceneGraph::default();
    for o in obj
        .get("objects")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let id = o.get("id").and_then(|v| v.as_str());
        let bbox = o.get("bbox").and_then(|v| v.as_array());
        if let (Some(id), Some(bbox)) = (id, bbox) {
            let nums: Vec<f64> = bbox.iter().filter_map(|v| v.as_f64()).collect();
            if let [x1, y1, x2, y2] = nums[..] {
                if bbox.len() == 4 {
                    graph.objects.push(SceneObject {
                        id: id.to_string(),
                        bbox: [x1, y1, x2, y2],
                    });
                }
            }
        }
    }
    for r in obj
        .get("relationships")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let field = |k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if let (Some(subject), Some(predicate), Some(object)) =
            (field("subject"), field("predicate"), field("object"))
        {
            graph.relationships.push(Relationship {
                subject,
                predicate,
                object,
            });
        }
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"<observe>A man stands behind a bike.</observe>
<scene>
{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38.5, 278]},
             {"id": "bad.1", "bbox": [1, 2, 3]}, {"bbox": [1, 2, 3, 4]}],
 "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}, {"subject": "man.1"}]}
</scene>
<think>The man is further from the camera.</think>
<answer>(A) behind</answer>"#;

    #[test]
    fn sections_and_graph() {
        let p = parse_response(RESPONSE);
        assert_eq!(p.observe.as_deref(), Some("A man stands behind a bike."));
        assert_eq!(
            p.think.as_deref(),
            Some("The man is further from the camera.")
        );
        assert_eq!(p.answer.as_deref(), Some("(A) behind"));
        let g = p.scene.unwrap();
        assert_eq!(g.objects.len(), 2, "malformed objects are skipped");
        assert_eq!(g.objects[1].bbox, [0.0, 165.0, 38.5, 278.0]);
        assert_eq!(
            g.relationships,
            vec![Relationship {
                subject: "man.1".into(),
                predicate: "behind".into(),
                object: "bike.1".into()
            }]
        );
        assert!(p.scene_error.is_none());
    }

    #[test]
    fn missing_and_invalid_sections() {
        let p = parse_response("<scene>{objects: oops}</scene><answer>B");
        assert!(p.scene.is_none());
        assert!(p.scene_error.unwrap().contains("not valid JSON"));
        assert!(p.answer.is_none(), "unterminated answer is not a section");
        assert!(p.observe.is_none() && p.think.is_none());
        assert_eq!(
            parse_scene_graph("[1]").unwrap_err(),
            "scene JSON is not an object"
        );
    }
}
