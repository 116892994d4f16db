//! The axum router: `POST /v1/chat/completions` (JSON or server-sent events), `GET /v1/models`,
//! `GET /health`; bearer-key check; every error in OpenAI's JSON shape.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::{
    validate, ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta, Limits, MessageOut,
    Usage,
};
use super::engine::FinishReason;
use super::error::ApiError;
use super::scheduler::{Job, SchedulerHandle, SeqUpdate, SubmitError};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Where generation work goes.
    pub scheduler: SchedulerHandle,
    /// Request limits.
    pub limits: Limits,
    /// Required bearer key, if any.
    pub api_key: Option<Arc<str>>,
    /// Counter for response ids.
    pub next_id: Arc<AtomicU64>,
}

/// The router with all routes and the JSON 404/405 fallbacks.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { ApiError::not_found("Unknown path.") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}

/// Unix time in seconds.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Check `Authorization: Bearer <key>` when a key is configured.
fn authorise(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compare without an early exit so timing does not reveal a matching prefix.
    let ok = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// `GET /health`: liveness plus queue depth (no key needed).
async fn health(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "model": state.scheduler.model_id(),
        "waiting": state.scheduler.waiting(),
    }))
    .into_response()
}

/// `GET /v1/models`.
async fn models(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    authorise(&state, &req)?;
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.scheduler.model_id(),
            "object": "model",
            "created": 0,
            "owned_by": "spatialthinker",
        }],
    }))
    .into_response())
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    authorise(&state, &req)?;
    let limit = state.limits.max_body_bytes;
    let bytes = to_bytes(req.into_body(), limit).await.map_err(|_| {
        ApiError::too_large(
            None,
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    })?;
    let limits = state.limits;
    let model = state.scheduler.model_id().to_string();
    let validated = tokio::task::spawn_blocking(move || validate(&bytes, &limits, &model))
        .await
        .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;

    let n = validated.choices.len();
    let (tx, rx) = mpsc::unbounded_channel();
    let jobs = validated
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, request)| Job {
            index: i as u32,
            request,
            updates: tx.clone(),
        })
        .collect();
    drop(tx);
    state.scheduler.submit(jobs).map_err(|e| match e {
        SubmitError::QueueFull { .. } => ApiError::busy(e.to_string()),
        SubmitError::Stopped => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    let id = format!(
        "chatcmpl-{:016x}",
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let model = state.scheduler.model_id().to_string();
    if validated.stream {
        Ok(stream_response(rx, n, id, model, validated.include_usage).await?)
    } else {
        Ok(Json(collect_response(rx, n, id, model).await?).into_response())
    }
}

/// Convert a failed sequence into an API error.
fn failure(client_error: bool, message: String) -> ApiError {
    if client_error {
        ApiError::invalid(Some("messages"), message)
    } else {
        ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// Wait for all `n` choices and build the JSON response.
async fn collect_response(
    mut rx: mpsc::UnboundedReceiver<SeqUpdate>,
    n: usize,
    id: String,
    model: String,
) -> Result<ChatCompletion, ApiError> {
    let mut texts = vec![String::new(); n];
    let mut reasons: Vec<Option<FinishReason>> = vec![None; n];
    let mut usage = Usage::default();
    let mut done = 0;
    while done < n {
        let Some(update) = rx.recv().await else {
            return Err(ApiError::server(
                StatusCode::SERVICE_UNAVAILABLE,
                "The generation engine stopped before the response was complete.",
            ));
        };
        match update {
            SeqUpdate::Started { prompt_tokens, .. } => usage.prompt_tokens = prompt_tokens,
            SeqUpdate::Token { index, text } => texts[index as usize].push_str(&text),
            SeqUpdate::Finished {
                index,
                reason,
                completion_tokens,
            } => {
                reasons[index as usize] = Some(reason);
                usage.completion_tokens += completion_tokens;
                done += 1;
            }
            SeqUpdate::Failed {
                client_error,
                message,
                ..
            } => return Err(failure(client_error, message)),
        }
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(ChatCompletion {
        id,
        object: "chat.completion",
        created: now(),
        model,
        choices: texts
            .into_iter()
            .zip(reasons)
            .enumerate()
            .map(|(i, (content, finish_reason))| Choice {
                index: i as u32,
                message: MessageOut {
                    role: "assistant",
                    content,
                },
                finish_reason,
                logprobs: None,
            })
            .collect(),
        usage,
    })
}

/// Stream chunks as server-sent events, ending with `data: [DONE]`. The first update is awaited
/// before the response starts, so a request the engine rejects still gets a JSON 4xx.
async fn stream_response(
    mut rx: mpsc::UnboundedReceiver<SeqUpdate>,
    n: usize,
    id: String,
    model: String,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let first = rx.recv().await;
    if let Some(SeqUpdate::Failed {
        client_error,
        message,
        ..
    }) = first
    {
        return Err(failure(client_error, message));
    }
    let (events_tx, events_rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let created = now();
        let chunk =
            |choices: Vec<ChunkChoice>, usage: Option<Usage>| -> Result<Event, Infallible> {
                let c = ChatCompletionChunk {
                    id: id.clone(),
                    object: "chat.completion.chunk",
                    created,
                    model: model.clone(),
                    choices,
                    usage,
                };
                Ok(Event::default().data(serde_json::to_string(&c).unwrap_or_default()))
            };
        let mut usage = Usage::default();
        let mut done = 0;
        let mut next = first;
        while let Some(update) = next {
            let event = match update {
                SeqUpdate::Started {
                    index,
                    prompt_tokens,
                } => {
                    usage.prompt_tokens = prompt_tokens;
                    let delta = Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    };
                    chunk(vec![choice(index, delta, None)], None)
                }
                SeqUpdate::Token { index, text } => {
                    let delta = Delta {
                        role: None,
                        content: Some(text),
                    };
                    chunk(vec![choice(index, delta, None)], None)
                }
                SeqUpdate::Finished {
                    index,
                    reason,
                    completion_tokens,
                } => {
                    usage.completion_tokens += completion_tokens;
                    done += 1;
                    chunk(vec![choice(index, Delta::default(), Some(reason))], None)
                }
                SeqUpdate::Failed { message, .. } => {
                    let e = ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, message);
                    let _ = events_tx.send(Ok(Event::default().data(e.body()))).await;
                    return;
                }
            };
            if events_tx.send(event).await.is_err() {
                return; // client went away; dropping `rx` releases the sequences
            }
            if done == n {
                break;
            }
            next = rx.recv().await;
        }
        if include_usage {
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
            let _ = events_tx.send(chunk(Vec::new(), Some(usage))).await;
        }
        let _ = events_tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    let stream = ReceiverStream::new(events_rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One streamed choice.
fn choice(index: u32, delta: Delta, finish_reason: Option<FinishReason>) -> ChunkChoice {
    ChunkChoice {
        index,
        delta,
        finish_reason,
        logprobs: None,
    }
}
