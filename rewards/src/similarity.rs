//! Label similarity for the Hungarian matching: the reference uses spaCy `en_core_web_md`'s
//! `Doc.similarity` on refined labels (`"traffic light"`); here it is pluggable.

use std::collections::HashMap;
use std::path::Path;

use crate::RewardError;

/// Similarity of two refined labels in `[0, 1]` (it only steers which GT object a prediction is
/// matched to; it never enters the score itself).
pub trait LabelSimilarity: Send + Sync {
    /// Similarity of labels `a` and `b` (already refined: lower-case, `_`/`-` turned into spaces).
    fn similarity(&self, a: &str, b: &str) -> f64;

    /// `out[j] = self.similarity(a, bs[j])` for every `j` (one call per row of the matching's
    /// cost matrix; implementations may override it to avoid a dynamic call per pair).
    fn similarity_row(&self, a: &str, bs: &[&str], out: &mut [f64]) {
        for (o, b) in out.iter_mut().zip(bs) {
            *o = self.similarity(a, b);
        }
    }
}

/// 1.0 for identical labels, else 0.0: exact wherever spaCy would see identical token sequences,
/// and the stub the golden table and the differential test were produced with.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactLabelSimilarity;

impl LabelSimilarity for ExactLabelSimilarity {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        f64::from(u8::from(a == b))
    }

    fn similarity_row(&self, a: &str, bs: &[&str], out: &mut [f64]) {
        for (o, b) in out.iter_mut().zip(bs) {
            *o = f64::from(u8::from(crate::short_eq(a, b)));
        }
    }
}

/// spaCy-style `Doc.similarity` over word vectors read from a text file (`word f1 f2 …` per line):
/// identical token sequences → 1.0; otherwise the cosine of the mean token vectors, where an
/// out-of-vocabulary token contributes a zero vector and a zero-norm mean gives 0.0.
/// Tokens are whitespace-separated (labels are ids such as `traffic light`).
#[derive(Debug, Clone)]
pub struct WordVectorSimilarity {
    dim: usize,
    vectors: HashMap<String, Vec<f32>>,
}

impl WordVectorSimilarity {
    /// Read a word-vector text file; every line must have the same number of components.
    pub fn from_file(path: &Path) -> Result<Self, RewardError> {
        let text = std::fs::read_to_string(path).map_err(|e| RewardError::WordVectors {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_text(&text).map_err(|reason| RewardError::WordVectors {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parse the `word f1 f2 …` format from memory; the error names the offending line.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let mut vectors = HashMap::new();
        let mut dim = 0;
        for (n, line) in text.lines().enumerate() {
            let mut parts = line.split_whitespace();
            let Some(word) = parts.next() else { continue };
            let vec: Vec<f32> = parts
                .map(|x| x.parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            if vec.is_empty() || (dim != 0 && vec.len() != dim) {
                return Err(format!(
                    "line {}: expected {dim} components, found {}",
                    n + 1,
                    vec.len()
                ));
            }
            dim = vec.len();
            vectors.insert(word.to_string(), vec);
        }
        Ok(Self { dim, vectors })
    }

    fn mean_vector(&self, tokens: &[&str]) -> Vec<f64> {
        let mut mean = vec![0.0f64; self.dim];
        for t in tokens {
            if let Some(v) = self.vectors.get(*t) {
                for (m, x) in mean.iter_mut().zip(v) {
                    *m += f64::from(*x);
                }
            }
        }
        if !tokens.is_empty() {
            mean.iter_mut().for_each(|m| *m /= tokens.len() as f64);
        }
        mean
    }
}

impl LabelSimilarity for WordVectorSimilarity {
    fn similarity(&self, a: &str, b: &str) -> f64 {
        let ta: Vec<&str> = a.split_whitespace().collect();
        let tb: Vec<&str> = b.split_whitespace().collect();
        if ta == tb {
            return 1.0;
        }
        let (va, vb) = (self.mean_vector(&ta), self.mean_vector(&tb));
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (na, nb) = (norm(&va), norm(&vb));
        if na == 0.0 || nb == 0.0 {
            return 0.0;
        }
        va.iter().zip(&vb).map(|(x, y)| x * y).sum::<f64>() / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacy_semantics() {
        let wv = WordVectorSimilarity::from_text("red 1 0\ncar 0 1\nvan 0 2\n").unwrap();
        assert_eq!(wv.similarity("car", "car"), 1.0);
        assert_eq!(wv.similarity("zzz", "zzz"), 1.0); // identical OOV tokens
        assert_eq!(wv.similarity("zzz", "car"), 0.0); // zero-norm mean
        assert!((wv.similarity("car", "van") - 1.0).abs() < 1e-12);
        // mean(red, car) = (0.5, 0.5) vs car (0, 1): cos = 0.5 / (sqrt(0.5) * 1)
        assert!((wv.similarity("red car", "car") - 0.5f64.sqrt()).abs() < 1e-12);
        // an OOV token dilutes the mean but not the direction
        assert!((wv.similarity("car zzz", "van") - 1.0).abs() < 1e-12);
        assert!(WordVectorSimilarity::from_text("a 1 2\nb 1\n")
            .unwrap_err()
            .contains("line 2"));
    }
}
