//! Continuous batching: one thread owns the [`DecodeEngine`], admits waiting sequences whenever
//! the batch has room (so a new request joins at the next decode step), steps the batch, and
//! routes each token to the request that owns it. Requests whose client went away are released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::engine::{DecodeEngine, EngineError, FinishReason, GenerationRequest, SeqId};

/// What a request's receiver gets for one of its choices (`index` = the choice).
#[derive(Debug, Clone, PartialEq)]
pub enum SeqUpdate {
    /// The sequence was admitted; its prompt has this many tokens.
    Started {
        /// Choice index.
        index: u32,
        /// Prompt tokens.
        prompt_tokens: usize,
    },
    /// New text.
    Token {
        /// Choice index.
        index: u32,
        /// The text delta.
        text: String,
    },
    /// The sequence ended.
    Finished {
        /// Choice index.
        index: u32,
        /// Why.
        reason: FinishReason,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The sequence could not run.
    Failed {
        /// Choice index.
        index: u32,
        /// Whether the request (not the engine) was at fault.
        client_error: bool,
        /// The reason.
        message: String,
    },
}

/// One sequence waiting for the engine.
pub struct Job {
    /// Which choice of its request this is.
    pub index: u32,
    /// What to generate.
    pub request: GenerationRequest,
    /// Where updates go (shared by the choices of one request).
    pub updates: UnboundedSender<SeqUpdate>,
}

/// Batch and queue sizes.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most sequences waiting for a batch slot; beyond it requests are refused (HTTP 429).
    pub max_queue: usize,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The waiting queue is full.
    #[error("the server is busy: {waiting} sequences are already waiting (limit {limit})")]
    QueueFull {
        /// Sequences waiting now.
        waiting: usize,
        /// The limit.
        limit: usize,
    },
    /// The scheduler thread has stopped.
    #[error("the generation engine has stopped")]
    Stopped,
}

/// Cloneable handle used by request handlers to submit work.
#[derive(Clone)]
pub struct SchedulerHandle {
    jobs: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    config: SchedulerConfig,
    model_id: Arc<str>,
}

impl SchedulerHandle {
    /// Queue all choices of one request together, or none of them.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        let n = jobs.len();
        let limit = self.config.max_queue;
        let mut current = self.waiting.load(Ordering::SeqCst);
        loop {
            if current + n > limit {
                return Err(SubmitError::QueueFull {
                    waiting: current,
                    limit,
                });
            }
            match self.waiting.compare_exchange(
                current,
                current + n,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        for job in jobs {
            if self.jobs.send(job).is_err() {
                return Err(SubmitError::Stopped);
            }
        }
        Ok(())
    }

    /// Sequences waiting for a batch slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The engine's model name.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The configuration.
    pub fn config(&self) -> SchedulerConfig {
        self.config
    }
}

/// A sequence in the batch.
struct Running {
    index: u32,
    produced: usize,
    updates: UnboundedSender<SeqUpdate>,
}

/// Start the scheduler thread. It runs until every handle is dropped and the batch has drained;
/// join the returned thread to wait for that.
pub fn spawn(
    engine: Box<dyn DecodeEngine>,
    config: SchedulerConfig,
) -> std::io::Result<(SchedulerHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = SchedulerHandle {
        jobs: tx,
        waiting: waiting.clone(),
        config,
        model_id: engine.model_id().into(),
    };
    let thread = std::thread::Builder::new()
        .name("decode-scheduler".into())
        .spawn(move || run(engine, config, rx, waiting))?;
    Ok((handle, thread))
}

/// The scheduler loop.
fn run(
    mut engine: Box<dyn DecodeEngine>,
    config: SchedulerConfig,
    jobs: mpsc::Receiver<Job>,
    waiting: Arc<AtomicUsize>,
) {
    let mut next_id: SeqId = 0;
    let mut running: HashMap<SeqId, Running> = HashMap::new();
    let mut open = true;
    loop {
        // Admit while there is room; block only when idle.
        while open && running.len() < config.max_batch.max(1) {
            let job = if running.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            if job.updates.is_closed() {
                continue; // the client left while waiting
            }
            let id = next_id;
            next_id += 1;
            match engine.admit(id, &job.request) {
                Ok(a) => {
                    let _ = job.updates.send(SeqUpdate::Started {
                        index: job.index,
                        prompt_tokens: a.prompt_tokens,
                    });
                    running.insert(
                        id,
                        Running {
                            index: job.index,
                            produced: 0,
                            updates: job.updates,
                        },
                    );
                }
                Err(e) => {
                    let _ = job.updates.send(SeqUpdate::Failed {
                        index: job.index,
                        client_error: matches!(e, EngineError::InvalidRequest(_)),
                        message: e.to_string(),
                    });
                }
            }
        }
        if running.is_empty() {
            if open {
                continue;
            }
            return;
        }
        // Drop sequences nobody listens to any more.
        let gone: Vec<SeqId> = running
            .iter()
            .filter(|(_, r)| r.updates.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            engine.release(id);
            running.remove(&id);
        }
        if running.is_empty() {
            continue;
        }
        match engine.step() {
            Ok(events) => {
                for e in events {
                    let Some(r) = running.get_mut(&e.seq) else {
                        continue;
                    };
                    r.produced += 1;
                    if !e.text.is_empty() {
                        let _ = r.updates.send(SeqUpdate::Token {
                            index: r.index,
                            text: e.text,
                        });
                    }
                    if let Some(reason) = e.finish {
                        let _ = r.updates.send(SeqUpdate::Finished {
                            index: r.index,
                            reason,
                            completion_tokens: r.produced,
                        });
                        running.remove(&e.seq);
                    }
                }
            }
            Err(e) => {
                for (id, r) in running.drain() {
                    engine.release(id);
                    let _ = r.updates.send(SeqUpdate::Failed {
                        index: r.index,
                        client_error: false,
                        message: e.to_string(),
                    });
                }
            }
        }
    }
}
