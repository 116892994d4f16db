//! The STVQA-7K column layout (docs/recipe.md, "Dataset schema") and configurable column names.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};

/// Visual Genome (or synthetic) image id.
pub const IMAGE_ID: &str = "image_id";
/// HF `Image()` feature: struct `{bytes: binary, path: string}`.
pub const IMAGES: &str = "images";
/// Full training prompt including the `Image size: (W x H)` line.
pub const PROBLEM: &str = "problem";
/// The bare question.
pub const QUESTION_ONLY: &str = "question_only";
/// Question, `\nOptions:` and one `\n(A) …` line per option.
pub const QUESTION_WITH_OPTIONS: &str = "question_with_options";
/// Option texts without letters, in shuffled order.
pub const OPTIONS: &str = "options";
/// `<scene>…</scene>\n<answer>B</answer>`.
pub const ANSWER: &str = "answer";
/// The option letter, e.g. `B`.
pub const ANSWER_ONLY: &str = "answer_only";
/// `<scene>…</scene>\n<answer>behind</answer>`.
pub const ANSWER_TEXT: &str = "answer_text";
/// The option text, e.g. `behind`.
pub const ANSWER_TEXT_ONLY: &str = "answer_text_only";
/// `<scene>…</scene>\n<answer>(B) behind</answer>`: ground truth of the spatial reward.
pub const ANSWER_OPTION_TEXT: &str = "answer_option_text";
/// `(B) behind`: ground truth of the vanilla-GRPO baseline.
pub const ANSWER_OPTION_TEXT_ONLY: &str = "answer_option_text_only";
/// One of the nine question categories.
pub const CATEGORY: &str = "category";
/// `easy`, `medium` or `hard`.
pub const LEVEL: &str = "level";
/// Question quality rating 1–10 (int32).
pub const RATING: &str = "rating";
/// Extra column of synthetic and imported datasets: a response scoring 1.0 (supervised warm-up).
pub const REFERENCE_RESPONSE: &str = "reference_response";

/// The 15 STVQA-7K columns, in the published order.
pub const STVQA_COLUMNS: [&str; 15] = [
    IMAGE_ID,
    IMAGES,
    PROBLEM,
    QUESTION_ONLY,
    QUESTION_WITH_OPTIONS,
    OPTIONS,
    ANSWER,
    ANSWER_ONLY,
    ANSWER_TEXT,
    ANSWER_TEXT_ONLY,
    ANSWER_OPTION_TEXT,
    ANSWER_OPTION_TEXT_ONLY,
    CATEGORY,
    LEVEL,
    RATING,
];

/// The nine STVQA-7K category strings.
pub const CATEGORIES: [&str; 9] = [
    "relation",
    "reach",
    "size",
    "orientation",
    "instance_location",
    "depth",
    "distance",
    "count",
    "existence",
];

/// Names of the three columns training needs; other datasets may call them differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnNames {
    /// Prompt column (EasyR1 `data.prompt_key`), default `problem`.
    pub prompt: String,
    /// Image column (EasyR1 `data.image_key`), default `images`.
    pub image: String,
    /// Ground-truth column (EasyR1 `data.answer_key`), default `answer_option_text`.
    pub answer: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        Self {
            prompt: PROBLEM.into(),
            image: IMAGES.into(),
            answer: ANSWER_OPTION_TEXT.into(),
        }
    }
}

/// Arrow type of the HF `Image()` feature as stored in parquet.
pub fn image_struct_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]))
}

/// Arrow type of the `options` column (HF `Sequence(Value("string"))`).
pub fn options_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The schema this crate writes: the 15 STVQA-7K columns plus `reference_response`, carrying the
/// `huggingface` metadata key so the `datasets` library decodes `images` as an `Image` feature.
pub fn stvqa_schema() -> Schema {
    let mut fields = Vec::with_capacity(STVQA_COLUMNS.len() + 1);
    for name in STVQA_COLUMNS
        .iter()
        .chain(std::iter::once(&REFERENCE_RESPONSE))
    {
        let dtype = match *name {
            IMAGES => image_struct_type(),
            OPTIONS => options_type(),
            RATING => DataType::Int32,
            _ => DataType::Utf8,
        };
        fields.push(Field::new(*name, dtype, true));
    }
    let metadata = HashMap::from([("huggingface".to_string(), hf_features_json())]);
    Schema::new_with_metadata(fields, metadata)
}

/// The `datasets` feature description stored under the `huggingface` schema metadata key.
fn hf_features_json() -> String {
    let mut features = serde_json::Map::new();
    for name in STVQA_COLUMNS
        .iter()
        .chain(std::iter::once(&REFERENCE_RESPONSE))
    {
        let feature = match *name {
            IMAGES => serde_json::json!({"_type": "Image"}),
            OPTIONS => {
                serde_json::json!({"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"})
            }
            RATING => serde_json::json!({"dtype": "int32", "_type": "Value"}),
            _ => serde_json::json!({"dtype": "string", "_type": "Value"}),
        };
        features.insert((*name).to_string(), feature);
    }
    serde_json::json!({"info": {"features": features}}).to_string()
}
