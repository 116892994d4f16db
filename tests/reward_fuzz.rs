//! Property test: arbitrary strings and near-valid scenes never panic and give finite components,
//! F and A in {0, 1}, C in [0, 1], and overall and S in [0, 1] whenever every box is well-formed
//! (the reference itself leaves [0, 1] for inverted boxes, e.g. S < 0, and we reproduce it).
//!
//! Cases: `REWARD_FUZZ_CASES` (default 256); the 1,000,000-case run is
//! `REWARD_FUZZ_CASES=1000000 cargo test -p rewards --release --test reward_fuzz`.

use proptest::prelude::*;
use rewards::{score, ExactLabelSimilarity, RewardKind};

fn cases() -> u32 {
    std::env::var("REWARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A JSON number literal, sometimes one Python reads specially.
fn number() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        8 => (0u32..1200).prop_map(|v| (v.to_string(), true)),
        2 => (-1e4f64..1e4).prop_map(|v| (format!("{v}"), false)),
        1 => prop_oneof![
            Just("NaN"), Just("Infinity"), Just("-Infinity"), Just("true"), Just("false"), Just("1e400"),
            Just("-1e308"), Just("123456789012345678901234567890"), Just("1e-7"), Just("0"), Just("null"),
            Just("\"5\""), Just("[1]"), Just("-0.0")
        ]
        .prop_map(|s| (s.to_string(), false)),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "(man|bike|car|dog|traffic_light|Tree)\\.[1-3]",
        1 => ".{0,8}",
        1 => "[a-z_ -]{1,6}\\.[0-9\u{663}]{1,2}",
    ]
}

/// `(json text, every box well-formed)`.
fn object() -> impl Strategy<Value = (String, bool)> {
    (label(), number(), number(), number(), number(), 0u8..10).prop_map(
        |(id, x1, y1, x2, y2, shape)| {
            let sane_order = |a: &str, b: &str| {
                a.parse::<f64>()
                    .ok()
                    .zip(b.parse::<f64>().ok())
                    .is_some_and(|(a, b)| a <= b)
            };
            let sane = x1.1
                && y1.1
                && x2.1
                && y2.1
                && sane_order(&x1.0, &x2.0)
                && sane_order(&y1.0, &y2.0);
            let id = serde_json::to_string(&id).expect("string");
            let text = match shape {
                0 => format!(r#"{{"id": {id}, "bbox": [{}, {}, {}]}}"#, x1.0, y1.0, x2.0),
                1 => format!(
                    r#"{{"id": {id}, "bbox": [{}, {}, {}, {}], "label": "x"}}"#,
                    x1.0, y1.0, x2.0, y2.0
                ),
                2 => format!(
                    r#"{{"id": {id}, "id": "man.1", "bbox": [{}, {}, {}, {}]}}"#,
                    x1.0, y1.0, x2.0, y2.0
                ),
                _ => format!(
                    r#"{{"id": {id}, "bbox": [{}, {}, {}, {}]}}"#,
                    x1.0, y1.0, x2.0, y2.0
                ),
            };
            (text, sane)
        },
    )
}

fn relation() -> impl Strategy<Value = String> {
    (label(), "[a-z ]{0,8}", label()).prop_map(|(s, p, o)| {
        format!(
            r#"{{"subject": {}, "predicate": "{p}", "object": {}}}"#,
            serde_json::json!(s),
            serde_json::json!(o)
        )
    })
}

fn scene() -> impl Strategy<Value = (String, bool)> {
    (
        prop::collection::vec(object(), 0..8),
        prop::collection::vec(relation(), 0..4),
        0u8..12,
    )
        .prop_map(|(objs, rels, damage)| {
            let sane = objs.iter().all(|o| o.1);
            let objs: Vec<String> = objs.into_iter().map(|o| o.0).collect();
            let text = format!(
                r#"{{"objects": [{}], "relationships": [{}]}}"#,
                objs.join(", "),
                rels.join(", ")
            );
            let text = match damage {
                0 => text.replacen(']', "],", 1),
                1 => text.chars().take(text.chars().count() / 2).collect(),
                2 => text.replace("\"objects\"", "\"objects\": null, \"objects\""),
                _ => text,
            };
            (text, sane)
        })
}

fn answer() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("(B) behind".to_string()),
        Just("(b) BEHIND ".to_string()),
        Just("B".to_string()),
        ".{0,12}"
    ]
}

fn size() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (1u32..5000, 1u32..5000).prop_map(|(w, h)| format!("Image size: ({w} x {h})")),
        1 => ".{0,30}",
        1 => prop_oneof![Just("Image size: (0 x 5)"), Just("Image size: (1_0 x \u{663})"), Just("Image size: ( 9 x +9 )")]
            .prop_map(str::to_string),
    ]
}

fn check(resp: &str, gt: &str, problem: &str, sane: bool) -> Result<(), TestCaseError> {
    for kind in [RewardKind::Spatial, RewardKind::R1v] {
        let Ok(s) = score(kind, resp, gt, problem, &ExactLabelSimilarity) else {
            continue;
        };
        let all = [s.overall, s.format, s.count, s.accuracy, s.spatial];
        prop_assert!(all.iter().all(|v| v.is_finite()), "{s:?}");
        prop_assert!(s.format == 0.0 || s.format == 1.0);
        prop_assert!(s.accuracy == 0.0 || s.accuracy == 1.0);
        prop_assert!((0.0..=1.0).contains(&s.count), "{s:?}");
        if sane {
            prop_assert!((0.0..=1.0).contains(&s.spatial), "{s:?} for {resp}");
            prop_assert!((0.0..=1.0 + 1e-12).contains(&s.overall), "{s:?} for {resp}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(resp in ".{0,200}", gt in ".{0,100}", problem in ".{0,60}") {
        check(&resp, &gt, &problem, false)?;
    }

    #[test]
    fn near_valid_scenes(
        (pred, sane_pred) in scene(),
        (gt_scene, sane_gt) in scene(),
        ans in answer(),
        problem in size(),
        order in 0u8..6,
    ) {
        let resp = match order {
            0 => format!("<scene>{pred}</scene><answer>{ans}</answer><think>t</think><observe>o</observe>"),
            1 => format!("<observe>o</observe><think>t<answer></think><scene>{pred}</scene><answer>{ans}</answer>"),
            _ => format!("<observe>o</observe>\n<scene>\n{pred}\n</scene>\n<think>t</think>\n<answer>{ans}</answer>"),
        };
        let gt = format!("<scene>{gt_scene}</scene>\n<answer>(B) behind</answer>");
        let sane = sane_pred && sane_gt && !problem.contains("(0 x");
        check(&resp, &gt, &problem, sane)?;
    }
}
