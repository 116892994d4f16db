//! `spatialthinker infer`: answer one spatial question about one image, print the observe /
//! scene / think / answer sections, and optionally draw the scene graph over the image. The
//! question goes in the prompt template the checkpoint records (the one it was trained with,
//! `prompt_template.json`), else in the authors' evaluation template; `--template` overrides.

use std::path::PathBuf;

use anyhow::{Context, Result};
use trainer::infer::overlay::draw_scene_graph;
use trainer::infer::parse::{parse_response, ParsedResponse};
use trainer::infer::prompt::{question_with_options, render, Template, TrainedTemplate};
use trainer::processor::easyr1_pre_resize;

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
    /// Instruction wrapped around the question [default: `dataset`, the template the checkpoint
    /// was trained with (its prompt_template.json), when it records one; else `spatialthinker`].
    #[arg(long, value_enum)]
    template: Option<Template>,
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

/// Print the sections as text; when one cannot be read, the raw response follows with what
/// was missing.
fn print_sections(p: &ParsedResponse, response: &str) {
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
    let problems = p.problems();
    if !problems.is_empty() {
        println!("== could not parse ==");
        for problem in &problems {
            println!("- {problem}");
        }
        println!("\n== raw response ==\n{response}");
    }
}

/// The template `--template` names, else the checkpoint's recorded one, else the authors'
/// evaluation template; `dataset` needs a recorded template (there is no dataset row here).
fn choose_template(
    asked: Option<Template>,
    recorded: Option<TrainedTemplate>,
    model: Option<&std::path::Path>,
) -> Result<(Template, Option<TrainedTemplate>)> {
    match (asked, recorded) {
        (None | Some(Template::Dataset), Some(t)) => Ok((Template::Dataset, Some(t))),
        (Some(Template::Dataset), None) => anyhow::bail!(
            "--template dataset: {} records no prompt template ({}); pick another --template",
            model.map_or("the response file".into(), |m| m.display().to_string()),
            trainer::infer::prompt::PROMPT_TEMPLATE_FILE
        ),
        (None, None) => Ok((Template::Spatialthinker, None)),
        (Some(t), _) => Ok((t, None)),
    }
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
    let model_dir = match &args.model {
        Some(m) => Some(crate::cli::generate::model_dir(m)?),
        None => None,
    };
    let recorded = match &model_dir {
        Some(dir) => TrainedTemplate::read(dir)?,
        None => None,
    };
    let (template, trained) = choose_template(args.template, recorded, model_dir.as_deref())?;
    // the trained template: the image as training saw it (EasyR1's pixel-count resize), the
    // prompt stating the original size (docs/recipe.md, "Training prompt")
    let (prompt, model_image) = match &trained {
        Some(t) => (
            t.render(&question, image.dimensions()),
            easyr1_pre_resize(
                &image::DynamicImage::ImageRgb8(image.clone()),
                t.min_pixels,
                t.max_pixels,
            ),
        ),
        None => (
            render(template, &question, image.dimensions()),
            image.clone(),
        ),
    };
    if !args.json {
        let name = match &trained {
            Some(_) => "dataset (the checkpoint's prompt_template.json)".to_string(),
            None => format!("{template:?}").to_lowercase(),
        };
        eprintln!("prompt template: {name}");
    }
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
                .answer(&[(prompt.as_str(), Some(&model_image))])?
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
            "template": format!("{template:?}").to_lowercase(),
            "prompt": prompt,
            "image_size": [image.width(), image.height()],
            "response": response,
            "parsed": parsed,
            "problems": parsed.problems(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_sections(&parsed, &response);
    }
    Ok(())
}
