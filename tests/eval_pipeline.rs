//! The evaluation loop end to end with a scripted generator: prompts as the SpatialThinker
//! template builds them, fixed vs legacy matching on hand-scored responses, the JSONL log written
//! as it goes and resumed after an interruption, and the report's numbers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use trainer::eval::dataset::read_mcq_jsonl;
use trainer::eval::matching::MatchMode;
use trainer::eval::report::{Accuracy, EvalReport, SampleLog};
use trainer::eval::runner::{run_eval, AnswerGenerator, EvalOptions, EvalPrompt};
use trainer::eval::EvalError;
use trainer::infer::prompt::Template;

/// Responses keyed by sample id; fails once `fail_after` prompts have been answered.
struct Scripted {
    responses: HashMap<String, String>,
    seen: Vec<String>,
    fail_after: Option<usize>,
}

impl AnswerGenerator for Scripted {
    fn generate(&mut self, batch: &[EvalPrompt]) -> Result<Vec<String>, EvalError> {
        if self.fail_after.is_some_and(|n| self.seen.len() >= n) {
            return Err(EvalError::Generator("interrupted".into()));
        }
        let mut out = Vec::new();
        for p in batch {
            assert!(
                p.text.contains(&format!("({} x {})", 32, 24)),
                "image size in prompt: {}",
                p.text
            );
            assert_eq!(p.image.as_ref().map(|i| i.dimensions()), Some((32, 24)));
            self.seen.push(p.id.clone());
            out.push(self.responses[&p.id].clone());
        }
        Ok(out)
    }
}

/// Eight questions (two categories) and the model's responses, with the verdict under each
/// matcher worked out by hand from (docs/recipe.md, "Answer matching"):
/// | id | truth | response answer     | fixed | legacy                         |
/// | q0 | B     | (B) in front of     | ✓     | ✓ (choice text)                |
/// | q1 | C     | C                   | ✓     | ✗ (fallback → A)               |
/// | q2 | A     | D                   | ✗     | ✓ (fallback → A)               |
/// | q3 | D     | on top of (no tags) | ✓     | ✓ (choice text)                |
/// | q4 | A     | (empty)             | ✗     | ✗ (nothing extracted)          |
/// | q5 | B     | Answer: B)          | ✓     | ✗ (→ A)                        |
/// | q6 | C     | (B) behind... wrong | ✗     | ✗                              |
/// | q7 | A     | underneath          | ✗     | ✓ (fallback → A)               |
fn fixture(dir: &Path) -> (std::path::PathBuf, HashMap<String, String>) {
    image::RgbImage::from_pixel(32, 24, image::Rgb([9, 9, 9]))
        .save(dir.join("img.png"))
        .unwrap();
    let truths = ["B", "C", "A", "D", "A", "B", "C", "A"];
    let mut lines = String::new();
    for (i, t) in truths.iter().enumerate() {
        let cat = if i < 4 { "Relation" } else { "Depth" };
        lines.push_str(&format!(
            "{{\"id\":\"q{i}\",\"question\":\"Where is object {i}?\",\"options\":[\"behind\",\"in front of\",\"beside\",\"on top of\"],\"answer\":\"({t})\",\"category\":\"{cat}\",\"image\":\"img.png\"}}\n"
        ));
    }
    let path = dir.join("bench.jsonl");
    std::fs::write(&path, lines).unwrap();
    let responses = [
        "<observe>o</observe><scene>{}</scene><think>t</think><answer> (B) in front of </answer>",
        "<think>t</think><answer>C</answer>",
        "<answer>D</answer>",
        "on top of",
        "",
        "<think>so</think> Answer: B)",
        "<answer>(B) behind</answer>",
        "<answer>underneath</answer>",
    ];
    let map = responses
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("q{i}"), r.to_string()))
        .collect();
    (path, map)
}

fn options(matching: MatchMode) -> EvalOptions {
    EvalOptions {
        template: Template::Spatialthinker,
        matching,
        batch_size: 3,
    }
}

#[test]
fn fixed_and_legacy_matching_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (data, responses) = fixture(dir.path());
    let samples = read_mcq_jsonl(&data).unwrap();
    let mut want = BTreeMap::new();
    want.insert(
        MatchMode::Fixed as u8,
        (
            [true, true, false, true, false, true, false, false],
            (3, 4),
            (1, 4),
        ),
    );
    want.insert(
        MatchMode::Legacy as u8,
        (
            [true, false, true, true, false, false, false, true],
            (3, 4),
            (1, 4),
        ),
    );
    for mode in [MatchMode::Fixed, MatchMode::Legacy] {
        let (mut log, done) =
            SampleLog::open(&dir.path().join(format!("{mode:?}/samples.jsonl"))).unwrap();
        assert!(done.is_empty());
        let mut g = Scripted {
            responses: responses.clone(),
            seen: Vec::new(),
            fail_after: None,
        };
        let records = run_eval(
            &samples,
            &mut g,
            options(mode),
            &mut log,
            &HashSet::new(),
            &mut |_, _| {},
        )
        .unwrap();
        let (correct, relation, depth) = want[&(mode as u8)];
        let got: Vec<bool> = records.iter().map(|r| r.correct).collect();
        assert_eq!(got, correct, "{mode:?}");
        let report = EvalReport::from_records(&records, BTreeMap::new());
        assert_eq!(report.overall, Accuracy::new(4, 8), "{mode:?}");
        assert_eq!(
            report.categories["Relation"],
            Accuracy::new(relation.0, relation.1)
        );
        assert_eq!(report.categories["Depth"], Accuracy::new(depth.0, depth.1));
        // The prompt is the short template with the real size, then the question and options.
        assert!(records[0].prompt.ends_with(
            "(32 x 24)\n\nNow answer the following question:\nWhere is object 0?\nOptions:\n(A) behind\n(B) in front of\n(C) beside\n(D) on top of"
        ));
        assert_eq!(records[4].pred, "Failed to extract.");
    }
}

#[test]
fn an_interrupted_run_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (data, responses) = fixture(dir.path());
    let samples = read_mcq_jsonl(&data).unwrap();
    let log_path = dir.path().join("out/samples.jsonl");

    // First run dies after two batches of three.
    let (mut log, _) = SampleLog::open(&log_path).unwrap();
    let mut g = Scripted {
        responses: responses.clone(),
        seen: Vec::new(),
        fail_after: Some(6),
    };
    let err = run_eval(
        &samples,
        &mut g,
        options(MatchMode::Fixed),
        &mut log,
        &HashSet::new(),
        &mut |_, _| {},
    );
    assert!(err.unwrap_err().to_string().contains("interrupted"));
    drop(log);

    // The log holds the six finished samples; the rerun generates only the last two.
    let (mut log, done) = SampleLog::open(&log_path).unwrap();
    assert_eq!(done.len(), 6);
    let done_ids: HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let mut g = Scripted {
        responses,
        seen: Vec::new(),
        fail_after: None,
    };
    let mut calls = Vec::new();
    let new = run_eval(
        &samples,
        &mut g,
        options(MatchMode::Fixed),
        &mut log,
        &done_ids,
        &mut |a, b| calls.push((a, b)),
    )
    .unwrap();
    assert_eq!(g.seen, ["q6", "q7"]);
    assert_eq!(calls, [(2, 2)]);
    let all: Vec<_> = done.into_iter().chain(new).collect();
    let report = EvalReport::from_records(&all, BTreeMap::new());
    assert_eq!(report.overall, Accuracy::new(4, 8));
    // Written report files.
    report.write(dir.path()).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| overall | 50.00 | 17.68 | 4 | 8 |"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["categories"]["Depth"]["correct"], 1);
}
