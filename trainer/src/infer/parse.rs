//! Splitting a SpatialThinker response into its observe / scene / think / answer sections and
//! reading the scene graph with the data crate's lenient parser
//! ([`data::scene::SceneGraph::parse_lenient`]; schema and coordinates in docs/recipe.md,
//! "Scene-graph schema and coordinates").

use data::scene::SceneGraph;
use serde::Serialize;

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

impl ParsedResponse {
    /// What could not be read, one line per section, in response order (empty when every
    /// section parsed): a missing `<tag>…</tag>` pair, or the scene's parse error.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let missing = |tag: &str| format!("{tag}: no <{tag}>…</{tag}> pair in the response");
        if self.observe.is_none() {
            out.push(missing("observe"));
        }
        match (&self.scene, &self.scene_error) {
            (Some(_), _) => {}
            (None, Some(e)) => out.push(format!("scene: {e}")),
            (None, None) => out.push(missing("scene")),
        }
        if self.think.is_none() {
            out.push(missing("think"));
        }
        if self.answer.is_none() {
            out.push(missing("answer"));
        }
        out
    }
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
    let (scene, scene_error) = match scene_text.as_deref().map(SceneGraph::parse_lenient) {
        Some(Ok(g)) => (Some(g), None),
        Some(Err(e)) => (None, Some(e.to_string())),
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

#[cfg(test)]
mod tests {
    use data::scene::Relationship;

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
        assert!(p.problems().is_empty());
        assert_eq!(p.observe.as_deref(), Some("A man stands behind a bike."));
        assert_eq!(
            p.think.as_deref(),
            Some("The man is further from the camera.")
        );
        assert_eq!(p.answer.as_deref(), Some("(A) behind"));
        let g = p.scene.unwrap();
        assert_eq!(g.objects.len(), 2, "malformed objects are skipped");
        assert_eq!(g.objects[1].bbox_f64(), [0.0, 165.0, 38.5, 278.0]);
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
        let problems = p.problems();
        assert!(p.scene.is_none());
        assert!(p.scene_error.unwrap().contains("not valid JSON"));
        assert!(p.answer.is_none(), "unterminated answer is not a section");
        assert!(p.observe.is_none() && p.think.is_none());
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[1].starts_with("scene: ") && problems[1].contains("not valid JSON"));
        assert_eq!(
            problems[3],
            "answer: no <answer>…</answer> pair in the response"
        );
        let p = parse_response("<scene>[1]</scene>");
        assert_eq!(
            p.scene_error.as_deref(),
            Some("scene JSON is not an object")
        );
    }
}
