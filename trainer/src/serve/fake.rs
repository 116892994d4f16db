//! A deterministic stand-in engine for tests and for exercising the server without a model.
//! Each sequence's words are a pure function of its request (prompt text, image sizes, and for
//! temperature > 0 its seed), so batched and one-at-a-time runs must give identical text.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{
    Admitted, ContentPart, DecodeEngine, EngineError, FinishReason, GenerationRequest, SeqId,
    TokenEvent,
};

/// Words the fake engine draws from.
const WORDS: [&str; 16] = [
    "the", "man", "is", "behind", "bike", "left", "of", "tree", "(A)", "(B)", "box", "above",
    "near", "far", "red", "cup",
];
/// Shortest natural output before the fake end-of-sequence.
const MIN_LEN: u64 = 4;
/// Spread of natural output lengths.
const LEN_SPREAD: u64 = 12;
/// Prompt text that makes [`FakeEngine::admit`] fail as a client error (tests error paths).
pub const REJECT_MARKER: &str = "[[fake-engine-reject]]";

/// 64-bit FNV-1a.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// splitmix64 finaliser, to decorrelate (key, step) pairs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// State of one fake sequence.
struct FakeSeq {
    id: SeqId,
    key: u64,
    produced: usize,
    natural_len: usize,
    max_tokens: usize,
    image_tag: Option<String>,
}

/// The deterministic fake engine.
pub struct FakeEngine {
    model_id: String,
    seqs: Vec<FakeSeq>,
    step_delay: Duration,
    /// Ids in the batch at each step, in admission order (for continuous-batching tests).
    pub step_log: Arc<Mutex<Vec<Vec<SeqId>>>>,
}

impl FakeEngine {
    /// A fake engine named `model_id`; `step_delay` simulates the cost of one batched forward
    /// pass (independent of the batch size, as on an accelerator).
    pub fn new(model_id: &str, step_delay: Duration) -> Self {
        Self {
            model_id: model_id.to_string(),
            seqs: Vec::new(),
            step_delay,
            step_log: Arc::default(),
        }
    }

    /// The full text the fake engine produces for `request` when not cut by `max_tokens`.
    pub fn expected_text(request: &GenerationRequest) -> String {
        let mut engine = FakeEngine::new("fake", Duration::ZERO);
        let mut r = request.clone();
        r.params.max_tokens = usize::MAX;
        if engine.admit(0, &r).is_err() {
            return String::new();
        }
        let mut text = String::new();
        while engine.active() > 0 {
            for e in engine.step().unwrap_or_default() {
                text.push_str(&e.text);
            }
        }
        text
    }
}

impl DecodeEngine for FakeEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn admit(&mut self, seq: SeqId, request: &GenerationRequest) -> Result<Admitted, EngineError> {
        let mut key = fnv(b"fake", 0xcbf2_9ce4_8422_2325);
        let mut prompt_tokens = 0;
        let mut image_tag = None;
        for m in &request.messages {
            key = fnv(m.role.as_bytes(), key);
            for part in &m.content {
                match part {
                    ContentPart::Text(t) => {
                        if t.contains(REJECT_MARKER) {
                            return Err(EngineError::InvalidRequest(
                                "the fake engine rejects this prompt".into(),
                            ));
                        }
                        key = fnv(t.as_bytes(), key);
                        prompt_tokens += t.split_whitespace().count();
                    }
                    ContentPart::Image(img) => {
                        let (w, h) = img.dimensions();
                        key = fnv(&[w.to_le_bytes(), h.to_le_bytes()].concat(), key);
                        key = fnv(img.as_raw(), key);
                        prompt_tokens += 4;
                        image_tag.get_or_insert(format!("image{w}x{h}"));
                    }
                }
            }
        }
        let p = request.params;
        if p.temperature > 0.0 {
            key = mix(key ^ mix(p.seed) ^ u64::from(p.temperature.to_bits()));
        }
        self.seqs.push(FakeSeq {
            id: seq,
            key,
            produced: 0,
            natural_len: (MIN_LEN + mix(key) % LEN_SPREAD) as usize,
            max_tokens: p.max_tokens,
            image_tag,
        });
        Ok(Admitted { prompt_tokens })
    }

    fn step(&mut self) -> Result<Vec<TokenEvent>, EngineError> {
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        if let Ok(mut log) = self.step_log.lock() {
            log.push(self.seqs.iter().map(|s| s.id).collect());
        }
        if !self.step_delay.is_zero() {
            std::thread::sleep(self.step_delay);
        }
        let mut events = Vec::with_capacity(self.seqs.len());
        for s in &mut self.seqs {
            let word = match (&s.image_tag, s.produced) {
                (Some(tag), 0) => tag.clone(),
                _ => WORDS[(mix(s.key ^ s.produced as u64) % WORDS.len() as u64) as usize].into(),
            };
            let text = if s.produced == 0 {
                word
            } else {
                format!(" {word}")
            };
            s.produced += 1;
            let finish = if s.produced >= s.natural_len {
                Some(FinishReason::Stop)
            } else if s.produced >= s.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            events.push(TokenEvent {
                seq: s.id,
                text,
                finish,
            });
        }
        let finished: Vec<SeqId> = events
            .iter()
            .filter(|e| e.finish.is_some())
            .map(|e| e.seq)
            .collect();
        self.seqs.retain(|s| !finished.contains(&s.id));
        Ok(events)
    }

    fn release(&mut self, seq: SeqId) {
        self.seqs.retain(|s| s.id != seq);
    }

    fn active(&self) -> usize {
        self.seqs.len()
    }
}
