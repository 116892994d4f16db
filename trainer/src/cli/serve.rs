//! `spatialthinker serve`: an OpenAI-compatible chat-completions server for a checkpoint. Each
//! request's question is wrapped in the prompt template the checkpoint records (the one it was
//! trained with, `prompt_template.json`), as `infer` and `eval` do; `--template` picks another
//! or `none` (the messages exactly as sent).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use trainer::infer::prompt::{Template, TrainedTemplate, PROMPT_TEMPLATE_FILE};
use trainer::serve::api::Limits;
use trainer::serve::engine::DecodeEngine;
use trainer::serve::fake::FakeEngine;
use trainer::serve::model_engine::engine_for_model;
use trainer::serve::scheduler::SchedulerConfig;
use trainer::serve::template::PromptWrap;
use trainer::serve::{run_server, shutdown_signal, ServerConfig};

/// Serve `POST /v1/chat/completions`, `GET /v1/models` and `GET /health`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder (config.json, safetensors, tokenizer).
    #[arg(long, required_unless_present = "fake_engine")]
    model: Option<PathBuf>,
    /// Instruction wrapped around each request's question (the last user message's text; its
    /// first image gives the size the template states) [default: `dataset`, the template the
    /// checkpoint was trained with (its prompt_template.json), when it records one; else `none`].
    /// A message that already begins with the template's words is sent as is.
    #[arg(long, value_enum)]
    template: Option<ServeTemplate>,
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Bearer key clients must send (`Authorization: Bearer KEY`).
    #[arg(long)]
    api_key: Option<String>,
    /// Most sequences decoded together (rows of the KV pool).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most sequences waiting for a batch slot before requests get HTTP 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Largest image in pixels (width × height).
    #[arg(long, default_value_t = 12_845_056)]
    max_image_pixels: u64,
    /// Largest `max_tokens` a request may ask for (also the default).
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Largest `n`.
    #[arg(long, default_value_t = 8)]
    max_n: u32,
    /// Longest context per sequence in tokens (prompt plus generated); the generation engine's
    /// KV pool holds `max_batch` rows of this many slots.
    #[arg(long, default_value_t = 8192)]
    max_context: usize,
    #[command(flatten)]
    placement: super::Placement,
    /// Let `image_url` name absolute local file paths (only for trusted clients).
    #[arg(long)]
    allow_local_files: bool,
    /// Test only: serve the deterministic fake engine instead of a model.
    #[arg(long, hide = true)]
    fake_engine: bool,
    /// Test only: milliseconds each fake decode step takes.
    #[arg(long, hide = true, default_value_t = 0)]
    fake_step_ms: u64,
}

/// `--template`: the templates of `infer` and `eval`, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServeTemplate {
    /// The template the checkpoint was trained with (its prompt_template.json).
    Dataset,
    /// The authors' evaluation template: observe / scene / think / answer with the image size.
    Spatialthinker,
    /// Think / answer (the `reasoning` template).
    Reasoning,
    /// The question alone, after `Question: `.
    Plain,
    /// The messages exactly as the client sends them.
    None,
}

/// The wrap `--template` names, else the checkpoint's recorded template, else none; `dataset`
/// needs a recorded template.
fn choose_template(
    asked: Option<ServeTemplate>,
    recorded: Option<TrainedTemplate>,
    dir: &std::path::Path,
) -> Result<PromptWrap> {
    Ok(match (asked, recorded) {
        (None | Some(ServeTemplate::Dataset), Some(t)) => PromptWrap::Trained(t),
        (Some(ServeTemplate::Dataset), None) => anyhow::bail!(
            "--template dataset: {} records no prompt template ({PROMPT_TEMPLATE_FILE}); pick \
             another --template",
            dir.display()
        ),
        (None | Some(ServeTemplate::None), _) => PromptWrap::None,
        (Some(ServeTemplate::Spatialthinker), _) => PromptWrap::Fixed(Template::Spatialthinker),
        (Some(ServeTemplate::Reasoning), _) => PromptWrap::Fixed(Template::Reasoning),
        (Some(ServeTemplate::Plain), _) => PromptWrap::Fixed(Template::Plain),
    })
}

/// Build the engine named by the arguments.
fn engine(args: &Args) -> Result<Box<dyn DecodeEngine>> {
    if args.fake_engine {
        return Ok(Box::new(FakeEngine::new(
            "spatialthinker-fake",
            Duration::from_millis(args.fake_step_ms),
        )));
    }
    let model = args.model.as_deref().context("--model is required")?;
    let dir = crate::cli::generate::model_dir(model)?;
    let recorded = TrainedTemplate::read(&dir)?;
    let template = choose_template(args.template, recorded, &dir)?;
    let model = args.placement.load_model(&dir)?;
    let engine = engine_for_model(&dir, model, args.max_batch, args.max_context)
        .with_context(|| format!("loading {}", dir.display()))?
        .with_template(template);
    eprintln!(
        "prompt template: {}{}",
        engine.template().name(),
        match engine.template() {
            PromptWrap::Trained(_) => " (the checkpoint's prompt_template.json)",
            PromptWrap::None => " (messages as sent)",
            PromptWrap::Fixed(_) => "",
        }
    );
    Ok(Box::new(engine))
}

/// Run the server until SIGINT/SIGTERM.
pub fn run(args: Args) -> Result<()> {
    if !args.host.is_loopback() && args.api_key.is_none() {
        eprintln!(
            "warning: binding {} without --api-key; anyone who can reach it can use the model",
            args.host
        );
    }
    let engine = engine(&args)?;
    let config = ServerConfig {
        limits: Limits {
            max_body_bytes: args.max_body_mib << 20,
            max_image_pixels: args.max_image_pixels,
            max_tokens: args.max_tokens,
            max_n: args.max_n,
            allow_local_files: args.allow_local_files,
        },
        scheduler: SchedulerConfig {
            max_batch: args.max_batch.max(1),
            max_queue: args.max_queue,
        },
        api_key: args.api_key.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        println!("listening on http://{local}");
        run_server(listener, engine, config, shutdown_signal()).await?;
        println!("server stopped");
        Ok(())
    })
}
