//! The HTML of the run report: a static page (inline CSS, no script, no external resource),
//! every image a `data:image/png;base64,` URI.

use std::fmt::Write as _;

use base64::Engine as _;

use super::{Curve, GalleryItem, MetricLine, RunData};

/// `text` with `& < > " '` escaped for HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A PNG as a `data:` URI.
pub fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}.muted{color:#666}
.curves{display:flex;flex-wrap:wrap;gap:12px}.curves figure{margin:0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:18px}
.rollout{border:1px solid #ddd;border-radius:6px;padding:10px;margin:0}
.rollout img{max-width:100%;image-rendering:pixelated}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:8px;font-size:12px;max-height:260px;overflow:auto}
.problem{color:#a33}";

/// Number formatting of the tables.
fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

/// Standard error of a proportion `p` over `n` draws.
fn proportion_se(p: f64, n: f64) -> f64 {
    (p * (1.0 - p) / n.max(1.0)).sqrt()
}

fn validation_table(out: &mut String, vals: &[&MetricLine]) {
    let _ = writeln!(out, "<h2 id=\"validation\">Validation</h2>");
    let (Some(first), Some(last)) = (vals.first(), vals.last()) else {
        let _ = writeln!(out, "<p class=\"muted\">The run logged no validation.</p>");
        return;
    };
    let columns: Vec<&MetricLine> = if vals.len() > 1 {
        vec![first, last]
    } else {
        vec![first]
    };
    let _ = write!(out, "<table id=\"validation-table\"><tr><th>metric</th>");
    for (i, c) in columns.iter().enumerate() {
        let label = match (i, columns.len(), c.step) {
            (0, _, 0) => "before GRPO (step 0)".to_string(),
            (0, 1, s) | (1, _, s) => format!("after GRPO (step {s})"),
            (_, _, s) => format!("step {s}"),
        };
        let _ = write!(out, "<th>{}</th>", escape(&label));
    }
    if columns.len() > 1 {
        let _ = write!(out, "<th>change</th>");
    }
    let _ = writeln!(out, "</tr>");
    for (key, label, decimals) in [
        ("accuracy", "accuracy", 3),
        ("format", "format", 3),
        ("reward", "reward", 3),
        ("count", "count", 3),
        ("spatial", "spatial", 3),
        ("response_length", "response length", 1),
        ("responses", "responses", 0),
    ] {
        let name = format!("val/{key}");
        let vs: Vec<Option<f64>> = columns
            .iter()
            .map(|c| c.values.get(&name).copied())
            .collect();
        if vs.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(out, "<tr><td>{label}</td>");
        for v in &vs {
            let _ = write!(out, "<td>{}</td>", num(*v, decimals));
        }
        if let [Some(a), Some(b)] = vs[..] {
            let _ = write!(out, "<td>{:+.decimals$}</td>", b - a);
        } else if vs.len() > 1 {
            let _ = write!(out, "<td>–</td>");
        }
        let _ = writeln!(out, "</tr>");
    }
    let _ = writeln!(out, "</table>");
    let get = |c: &MetricLine, k: &str| c.values.get(&format!("val/{k}")).copied();
    if let (Some(a), Some(b), Some(na), Some(nb)) = (
        get(first, "accuracy"),
        get(last, "accuracy"),
        get(first, "responses"),
        get(last, "responses"),
    ) {
        if vals.len() > 1 {
            let se = (proportion_se(a, na).powi(2) + proportion_se(b, nb).powi(2)).sqrt();
            let z = if se > 0.0 { (b - a) / se } else { 0.0 };
            let _ = writeln!(
                out,
                "<p>Accuracy {a:.3} → {b:.3} over {na:.0} and {nb:.0} responses: a change of \
                 {:+.3} with a standard error of {se:.3} ({z:.1} standard errors).</p>",
                b - a
            );
        }
    }
}

fn gallery(out: &mut String, items: &[(&GalleryItem, Vec<u8>)]) {
    let _ = writeln!(out, "<h2 id=\"gallery\">Sampled rollouts</h2>");
    if items.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"muted\">The run logged no sampled rollouts (samples.jsonl).</p>"
        );
        return;
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">The first response of a few GRPO groups at the first and the last \
         sampled step. Left: the ground-truth scene graph; right: the scene graph in the \
         response. Boxes are in the frame of the image size stated in the prompt.</p>"
    );
    let _ = writeln!(out, "<div class=\"gallery\">");
    for (i, (g, png)) in items.iter().enumerate() {
        let s = &g.sample;
        let question = s
            .prompt
            .rsplit_once("\nQ. ")
            .map_or("", |(_, q)| q)
            .to_string();
        let answer = crate::infer::parse::section(&s.ground_truth, "answer").unwrap_or_default();
        let _ = writeln!(out, "<figure class=\"rollout\" id=\"rollout-{i}\">");
        let _ = writeln!(
            out,
            "<img class=\"gallery-image\" alt=\"rollout {i}: ground truth and predicted boxes\" \
             width=\"{}\" height=\"{}\" src=\"{}\">",
            g.image.width(),
            g.image.height(),
            data_uri(png)
        );
        let _ = write!(
            out,
            "<figcaption><p><b>step {}</b> · reward {:.3} · objects: {} true, {} predicted{}</p>",
            s.step,
            s.reward,
            g.objects.0,
            g.objects.1,
            if g.has_image {
                ""
            } else {
                " · (dataset image not found: blank canvas)"
            }
        );
        if !question.is_empty() {
            let _ = write!(out, "<pre>{}</pre>", escape(&question));
        }
        let _ = write!(
            out,
            "<p>correct answer: <b>{}</b></p><table class=\"breakdown\"><tr>",
            escape(&answer)
        );
        for k in s.components.keys() {
            let _ = write!(out, "<th>{}</th>", escape(k));
        }
        let _ = write!(out, "<th>reward</th></tr><tr>");
        for v in s.components.values() {
            let _ = write!(out, "<td>{v:.3}</td>");
        }
        let _ = write!(out, "<td>{:.3}</td></tr></table>", s.reward);
        for p in &g.problems {
            let _ = write!(
                out,
                "<p class=\"problem\">could not parse {}</p>",
                escape(p)
            );
        }
        let _ = writeln!(
            out,
            "<pre>{}</pre></figcaption></figure>",
            escape(&s.response)
        );
    }
    let _ = writeln!(out, "</div>");
}

/// The whole page.
pub fn page(
    run: &RunData,
    curves: &[(&Curve, Vec<u8>)],
    items: &[(&GalleryItem, Vec<u8>)],
) -> String {
    let mut out = String::new();
    let title = format!("Run report: {}", run.dir.display());
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let steps = run
        .metrics
        .iter()
        .filter(|m| m.values.contains_key("reward/reward"))
        .count();
    let _ = writeln!(
        out,
        "<p>{steps} RL steps logged · {} supervised warm-up steps · {} sampled rollouts · \
         checkpoints: {}</p>",
        run.sft.len(),
        run.samples.len(),
        if run.checkpoints.is_empty() {
            "none".to_string()
        } else {
            escape(&run.checkpoints.join(", "))
        }
    );
    validation_table(&mut out, &run.validations());
    let _ = writeln!(out, "<h2 id=\"curves\">Curves</h2><div class=\"curves\">");
    for (c, png) in curves {
        let _ = writeln!(
            out,
            "<figure><img class=\"curve\" id=\"curve-{}\" alt=\"{}\" width=\"{}\" height=\"{}\" \
             src=\"{}\"></figure>",
            c.name,
            escape(&c.title),
            c.image.width(),
            c.image.height(),
            data_uri(png)
        );
    }
    let _ = writeln!(out, "</div>");
    gallery(&mut out, items);
    if let Some(cfg) = &run.config {
        let _ = writeln!(
            out,
            "<h2 id=\"config\">Configuration</h2><details><summary>config.toml</summary><pre>{}</pre></details>",
            escape(cfg)
        );
    }
    let _ = writeln!(out, "</body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_data_uris() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        // base64 of the three bytes "PNG" is "UE5H"
        assert_eq!(data_uri(b"PNG"), "data:image/png;base64,UE5H");
        assert!((proportion_se(0.5, 100.0) - 0.05).abs() < 1e-12);
    }
}
