//! Probe: does a glyph judge know the color GenEval's rule checks on crowded scenes?
//!
//! GenEval's colors and color_attr rules check the color of the *first* glyph of a shape in
//! reading order. This probe draws crowded scenes like the glyph generator's images
//! ([`Dense::scene`]: 6–10 glyphs of two shapes), keeps those where a shape's first glyph and a
//! later glyph of it differ in color, and scores three first-of-class captions
//! ([`first_caption`], the `caption_style: first` records) with the judge: the true one, one where
//! that shape takes the later glyph's color, one where it takes a color no glyph of it has. A judge
//! that reads the first glyph gives the true caption the lowest loss; one that reads "some glyph of
//! the shape" cannot tell the first two apart.
//!
//! ```text
//! cargo run --release --example probe_first_caption -- CKPT_DIR [SCENES]
//! ```
//! CKPT_DIR is a `reward-ft` output (with its `tokenizer.json`); images go to a temp folder.

use anyhow::{anyhow, Context, Result};
use imgcot::glyphs::rng::{below, seeded};
use imgcot::glyphs::world::{glyphs, COLORS, IMAGE_SIZE, SHAPES};
use imgcot::judge::data::{first_caption, Dense, FIRST_CAPTION_QUESTION};
use imgcot::judge::dataset::load_records;
use imgcot::judge::reward_ft::prepare;
use imgcot::models::llava_ov::train::{forward_batch, BatchItem};
use imgcot::models::llava_ov::LlavaJudge;
use std::path::{Path, PathBuf};

/// True, later-glyph and absent-color captions of one scene.
fn variants(codes: &imgcot::glyphs::world::Codes, shape: usize) -> Option<[String; 3]> {
    let of: Vec<usize> = glyphs(codes)
        .iter()
        .filter(|g| g.2.shape == shape)
        .map(|g| g.2.color)
        .collect();
    let first = *of.first()?;
    let later = of[1..].iter().copied().find(|&c| c != first)?;
    let absent = (0..COLORS.len()).find(|c| !of.contains(c))?;
    let truth = first_caption(codes);
    let key = format!("{} {}", SHAPES[shape], COLORS[first]);
    let with = |c: usize| truth.replace(&key, &format!("{} {}", SHAPES[shape], COLORS[c]));
    Some([truth.clone(), with(later), with(absent)])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ckpt = PathBuf::from(
        args.get(1)
            .ok_or_else(|| anyhow!("usage: probe_first_caption CKPT_DIR [SCENES]"))?,
    );
    let scenes: usize = match args.get(2) {
        Some(s) => s.parse().with_context(|| format!("SCENES '{s}'"))?,
        None => 150,
    };
    let judge = LlavaJudge::load(&ckpt, tch::Device::Cpu, tch::Kind::Float)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    let tok = tokenizers::Tokenizer::from_file(ckpt.join("tokenizer.json"))
        .map_err(|e| anyhow!("{}/tokenizer.json: {e}", ckpt.display()))?;
    let dir = std::env::temp_dir().join(format!("imgcot-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (dense, mut rng, mut lines) = (Dense::default(), seeded(99, 1), Vec::new());
    let mut n = 0;
    while n < scenes {
        let s1 = below(&mut rng, SHAPES.len());
        let s2 = (s1 + 1 + below(&mut rng, SHAPES.len() - 1)) % SHAPES.len();
        let (c1, c2) = (below(&mut rng, COLORS.len()), below(&mut rng, COLORS.len()));
        let meta = imgcot::glyphs::prompts::color_attr(c1, s1, c2, s2);
        let codes = dense.scene(&meta, &mut rng);
        let Some(texts) = variants(&codes, s1) else {
            continue;
        };
        let img = format!("img{n}.png");
        let px = imgcot::glyphs::render(&codes);
        let side = IMAGE_SIZE as u32;
        imgcot::glyphs::png::write_png(&dir.join(&img), side, side, &px)?;
        for t in texts {
            lines.push(
                serde_json::json!({"id": n.to_string(), "image": img, "conversations": [
                    {"from": "human", "value": FIRST_CAPTION_QUESTION},
                    {"from": "gpt", "value": t}]})
                .to_string(),
            );
        }
        n += 1;
    }
    let file = dir.join("probe.jsonl");
    std::fs::write(&file, lines.join("\n"))?;
    let recs = load_records(&file, None)?;
    let prep = prepare(&recs, &tok, judge.model().config().vision.image_size, true)?;
    // Summed NLL of a caption's supervised tokens: the captions differ in one color token.
    let nll = |i: usize| -> Result<f64> {
        let b = [BatchItem {
            tokens: &prep[i].tokens,
            image: &prep[i].image,
            weight: 1.0,
        }];
        let out = tch::no_grad(|| forward_batch(judge.model(), &b))?;
        Ok(out.loss.double_value(&[]) * out.tokens as f64)
    };
    let (mut wins, mut gaps) = ([0usize; 2], [0f64; 2]);
    for k in 0..n {
        let truth = nll(3 * k)?;
        for j in 0..2 {
            let other = nll(3 * k + 1 + j)?;
            wins[j] += (truth < other) as usize;
            gaps[j] += other - truth;
        }
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
    println!(
        "{n} crowded scenes: the first glyph's color beats a later glyph's color in {} \
         (mean NLL gap {:.3}) and an absent color in {} (mean NLL gap {:.3})",
        wins[0],
        gaps[0] / n as f64,
        wins[1],
        gaps[1] / n as f64
    );
    Ok(())
}
