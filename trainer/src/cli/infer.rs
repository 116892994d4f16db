//! `spatialthinker infer`: answer one spatial question about one image, print the observe /
//! scene / think / answer sections, and optionally draw the scene graph over the image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use trainer::infer::overlay::draw_scene_graph;
use trainer::infer::parse::{parse_response, ParsedResponse};
use trainer::infer::prompt::{question_with_options, render, Template};

/// Ask a checkpoint one question about one image.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(long, required_unless_present = "response")]
    model: Option<PathBuf>,
    /// The image.
    #[arg(long)]
    image: PathBuf,
    /// The question.
    #[arg(long)]
    question: String,
    /// Options separated by `;`, listed as (A), (B), … after the question.
    #[arg(long)]
    options: Option<String>,
    /// Write the image with the predicted scene graph drawn on it (PNG).
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Print JSON (prompt, sections, scene graph, answer) instead of text.
    #[arg(long)]
    json: bool,
    /// Most new tokens (greedy decoding).
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// Skip the model and parse this saved response (e.g. from an eval log) instead.
    #[arg(long)]
    response: Option<PathBuf>,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampler (with --temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    placement: super::Placement,
}

/// Print the sections as text.
fn print_sections(p: &ParsedResponse) {
    let show = |name: &str, v: &Option<String>| {
        println!("== {name} ==\n{}\n", v.as_deref().unwrap_or("(missing)"));
    };
    show("observe", &p.observe);
    match (&p.scene, &p.scene_error) {
        (Some(g), _) => {
            println!("== scene ==");
            for o in &g.objects {
                println!("{:<16} {:?}", o.id, o.bbox_f64());
            }
            for r in &g.relationships {
                println!("{} --{}--> {}", r.subject, r.predicate, r.object);
            }
            println!();
        }
        (None, Some(e)) => println!("== scene ==\n(unreadable: {e})\n"),
        (None, None) => println!("== scene ==\n(missing)\n"),
    }
    show("think", &p.think);
    show("answer", &p.answer);
}

/// Run one inference.
pub fn run(args: Args) -> Result<()> {
    let image = image::open(&args.image)
        .with_context(|| format!("opening image {}", args.image.display()))?
        .to_rgb8();
    let options: Vec<String> = args
        .options
        .as_deref()
        .map(|o| {
            o.split(';')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let question = question_with_options(&args.question, &options);
    let prompt = render(Template::Spatialthinker, &question, image.dimensions());
    let response = match &args.response {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading response {}", path.display()))?,
        None => {
            let model = args.model.as_deref().context("--model is required")?;
            let mut generator =
                crate::cli::generate::load_generator(model, args.placement, args.max_new_tokens)?;
            let sampling = generator
                .sampling
                .clone()
                .with_temperature(args.temperature);
            generator = generator.with_sampling(sampling, args.seed);
            generator
                .answer(&[(prompt.as_str(), Some(&image))])?
                .remove(0)
        }
    };
    let parsed = parse_response(&response);
    if let Some(out) = &args.overlay {
        let graph = parsed.scene.clone().unwrap_or_default();
        let drawn = draw_scene_graph(&image, &graph, image.dimensions());
        drawn
            .save(out)
            .with_context(|| format!("writing overlay {}", out.display()))?;
        if !args.json {
            eprintln!(
                "overlay with {} boxes and {} relationships written to {}",
                graph.objects.len(),
                graph.relationships.len(),
                out.display()
            );
        }
    }
    if args.json {
        let v = serde_json::json!({
            "prompt": prompt,
            "image_size": [image.width(), image.height()],
            "response": response,
            "parsed": parsed,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_sections(&parsed);
    }
    Ok(())
}
