//! The golden table (docs/recipe.md, "The reward"): numbers produced by running the
//! reference `spatial_sgg.py` with the exact-label similarity stub, plus the raw CIoU01 checks.

use rewards::spatial::ciou01;
use rewards::{score, ExactLabelSimilarity, RewardKind, RewardScore};

const PROBLEM: &str =
    "Look at the image. Image size: (800 x 600)\nQ. Where is the man relative to the bike?";
const GT_SCENE: &str = r#"{"objects": [{"id": "bike.1", "bbox": [0, 272, 310, 551]}, {"id": "man.1", "bbox": [0, 165, 38, 278]}], "relationships": [{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]}"#;
const REL: &str = r#"[{"subject": "man.1", "predicate": "behind", "object": "bike.1"}]"#;

fn gt() -> String {
    format!("<scene>{GT_SCENE}</scene>\n<answer>(B) behind</answer>")
}

fn response(scene: &str, answer: &str) -> String {
    format!("<observe>A man and a bike.</observe>\n<scene>{scene}</scene>\n<think>The man is farther away.</think>\n<answer>{answer}</answer>")
}

fn run(resp: &str) -> RewardScore {
    score(
        RewardKind::Spatial,
        resp,
        &gt(),
        PROBLEM,
        &ExactLabelSimilarity,
    )
    .expect("scores")
}

#[track_caller]
fn check(resp: &str, overall: f64, f: f64, c: f64, a: f64, s: f64) {
    let got = run(resp);
    let want = [overall, f, c, a, s];
    let have = [
        got.overall,
        got.format,
        got.count,
        got.accuracy,
        got.spatial,
    ];
    for (h, w) in have.iter().zip(want) {
        assert!(
            (h - w).abs() <= 1e-6,
            "got {got:?}, want {want:?}\nresponse: {resp}"
        );
    }
}

fn scene(objects: &str, rels: &str) -> String {
    format!(r#"{{"objects": [{objects}], "relationships": {rels}}}"#)
}

const BIKE: &str = r#"{"id": "bike.1", "bbox": [0, 272, 310, 551]}"#;
const MAN: &str = r#"{"id": "man.1", "bbox": [0, 165, 38, 278]}"#;

#[test]
fn exact_scene_and_answer_case() {
    check(
        &response(GT_SCENE, "(B) behind"),
        0.999999,
        1.0,
        1.0,
        1.0,
        0.999997,
    );
    check(
        &response(GT_SCENE, "(b) BEHIND"),
        0.999999,
        1.0,
        1.0,
        1.0,
        0.999997,
    );
}

#[test]
fn wrong_answers_get_format_and_count_only() {
    for a in ["B", "behind", "(A) in front of"] {
        check(&response(GT_SCENE, a), 0.3, 1.0, 1.0, 0.0, 0.0);
    }
}

#[test]
fn shifted_boxes() {
    let s = scene(
        r#"{"id": "bike.1", "bbox": [20, 280, 330, 560]}, {"id": "man.1", "bbox": [5, 160, 45, 290]}"#,
        REL,
    );
    check(
        &response(&s, "(B) behind"),
        0.973642,
        1.0,
        1.0,
        1.0,
        0.868212,
    );
    check(&response(&s, "(A) in front of"), 0.3, 1.0, 1.0, 0.0, 0.0);
}

#[test]
fn format_failures_score_zero() {
    let ok = response(GT_SCENE, "(B) behind");
    let cases = [
        ok.replace("<observe>A man and a bike.</observe>\n", ""),
        response(&scene(&format!("{BIKE}, {MAN}, {MAN}"), REL), "(B) behind"),
        response(
            &scene(
                &format!(r#"{BIKE}, {{"id": "man.1", "bbox": [0, 165, 38, 278], "label": "man"}}"#),
                REL,
            ),
            "(B) behind",
        ),
        response(
            &scene(
                &format!(r#"{BIKE}, {{"id": "traffic light.1", "bbox": [0, 165, 38, 278]}}"#),
                "[]",
            ),
            "(B) behind",
        ),
        response(
            &scene(
                &format!(r#"{BIKE}, {{"id": "man.1", "bbox": [0, 165, 38]}}"#),
                REL,
            ),
            "(B) behind",
        ),
        response("not json", "(B) behind"),
        response("{}", "(B) behind"),
        format!("{ok}\n<think>second</think>"),
    ];
    for c in cases {
        check(&c, 0.0, 0.0, 0.0, 0.0, 0.0);
    }
}

#[test]
fn tag_order_is_not_checked() {
    let r = format!(
        "<answer>(B) behind</answer><think>t</think><scene>{GT_SCENE}</scene><observe>o</observe>"
    );
    check(&r, 0.999999, 1.0, 1.0, 1.0, 0.999997);
}

#[test]
fn partial_and_extra_objects() {
    let tl = r#"{"id": "traffic_light.1", "bbox": [0, 165, 38, 278]}"#;
    check(
        &response(&scene(tl, "[]"), "(B) behind"),
        0.769999,
        1.0,
        0.35,
        1.0,
        0.499997,
    );
    check(
        &response(&scene(MAN, "[]"), "(B) behind"),
        0.769999,
        1.0,
        0.35,
        1.0,
        0.499997,
    );
    let extra = format!(
        r#"{BIKE}, {MAN}, {{"id": "car.1", "bbox": [400, 300, 500, 400]}}, {{"id": "dog.1", "bbox": [600, 500, 700, 590]}}"#
    );
    let rels = r#"[{"subject": "man.1", "predicate": "behind", "object": "bike.1"}, {"subject": "dog.1", "predicate": "near", "object": "car.1"}]"#;
    check(
        &response(&scene(&extra, rels), "(B) behind"),
        0.799999,
        1.0,
        0.0,
        1.0,
        0.999997,
    );
    check(
        &response(&scene("", "[]"), "(B) behind"),
        0.6,
        1.0,
        0.0,
        1.0,
        0.0,
    );
}

#[test]
fn relation_to_unlisted_object_is_fine() {
    let rels = r#"[{"subject": "dog.1", "predicate": "behind", "object": "bike.1"}]"#;
    check(
        &response(&scene(&format!("{BIKE}, {MAN}"), rels), "(B) behind"),
        0.999999,
        1.0,
        1.0,
        1.0,
        0.999997,
    );
}

#[test]
fn swapped_labels() {
    let s = scene(
        r#"{"id": "man.1", "bbox": [0, 272, 310, 551]}, {"id": "bike.1", "bbox": [0, 165, 38, 278]}"#,
        REL,
    );
    check(
        &response(&s, "(B) behind"),
        0.876738,
        1.0,
        1.0,
        1.0,
        0.383688,
    );
}

#[test]
fn raw_ciou01() {
    let b = [0.1, 0.2, 0.5, 0.9];
    assert!((ciou01(&b, &b).unwrap() - 0.9999998).abs() < 1e-6);
    let v = ciou01(&[0.0, 0.0, 0.1, 0.1], &[0.9, 0.9, 1.0, 1.0]).unwrap();
    assert!((v - 0.0950000).abs() < 1e-6, "{v}");
    let v = ciou01(&[0.0, 0.0, 0.2, 0.2], &[0.1, 0.0, 0.3, 0.2]).unwrap();
    assert!((v - 0.6282049).abs() < 1e-6, "{v}");
}

#[test]
fn reference_raises_become_errors() {
    // No size line: the reference raises ValueError.
    assert!(score(
        RewardKind::Spatial,
        &response(GT_SCENE, "(B) behind"),
        &gt(),
        "no size",
        &ExactLabelSimilarity
    )
    .is_err());
    // Width 0 with objects to scale: ZeroDivisionError (only reached when F = A = 1).
    let p = "Image size: (0 x 600)";
    assert!(score(
        RewardKind::Spatial,
        &response(GT_SCENE, "(B) behind"),
        &gt(),
        p,
        &ExactLabelSimilarity
    )
    .is_err());
    let wrong = score(
        RewardKind::Spatial,
        &response(GT_SCENE, "B"),
        &gt(),
        p,
        &ExactLabelSimilarity,
    )
    .unwrap();
    assert_eq!(wrong.overall, 0.1 + 0.2);
    // h + eps == 0 in the aspect-ratio term: ZeroDivisionError.
    let tiny = r#"{"objects": [{"id": "a.1", "bbox": [0, 1e-7, 1, 0]}]}"#;
    let r = score(
        RewardKind::Spatial,
        &response(tiny, "(B) behind"),
        &gt(),
        "Image size: (1 x 1)",
        &ExactLabelSimilarity,
    );
    assert!(
        matches!(r, Err(rewards::RewardError::ZeroDivision(_))),
        "{r:?}"
    );
}

/// `score_batch` parses each group's ground truth once; every response must still get exactly
/// what scoring it alone gives, including a ground-truth error that only the responses reaching
/// the spatial term raise (here an object id that is not a string), and a prompt without the
/// image-size line (every response of that group raises).
#[test]
fn grouped_batch_scores_equal_single_scores() {
    use rewards::{score_batch, RewardError, RewardInput};
    let good = gt();
    let bad_gt = "<scene>{\"objects\": [{\"id\": 7, \"bbox\": [0, 0, 10, 10]}], \"relationships\": []}</scene>\n<answer>(B) behind</answer>";
    let scene = r#"{"objects": [{"id": "man.1", "bbox": [0, 160, 40, 280]}], "relationships": []}"#;
    let correct = response(scene, "(B) behind");
    let wrong = response(scene, "(A) in front of");
    let malformed = "<answer>(B) behind</answer>".to_string();
    let no_size = "Q. Where is the man?";
    let mut rows = Vec::new();
    for (truth, problem) in [
        (good.as_str(), PROBLEM),
        (bad_gt, PROBLEM),
        (good.as_str(), no_size),
    ] {
        for resp in [&correct, &wrong, &malformed, &correct] {
            rows.push(RewardInput {
                response: resp,
                ground_truth: truth,
                problem,
            });
        }
    }
    let batch = score_batch(RewardKind::Spatial, &rows, &ExactLabelSimilarity);
    for (i, (row, got)) in rows.iter().zip(&batch).enumerate() {
        let alone = score(
            RewardKind::Spatial,
            row.response,
            row.ground_truth,
            row.problem,
            &ExactLabelSimilarity,
        );
        assert_eq!(got, &alone, "row {i}");
    }
    // the first group scores; in the second only the two correct answers reach the bad object
    assert!(batch[..4].iter().all(Result::is_ok));
    let raised: Vec<bool> = batch[4..8].iter().map(Result::is_err).collect();
    assert_eq!(raised, [true, false, false, true]);
    assert!(matches!(batch[4], Err(RewardError::GroundTruth(_))));
    assert!(batch[8..]
        .iter()
        .all(|r| matches!(r, Err(RewardError::ImageSizeMissing))));
}
