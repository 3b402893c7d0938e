//! Parity of the LLaVA-OneVision judge with HF transformers 5.24 on a tiny random model
//! (tests/llava_parity.py, spec-judges §7): (c) the full anyres_max_9 path against
//! LlavaOnevisionForConditionalGeneration, (d) the seed's "pad" path against HF sub-modules, Pillow-exact
//! preprocessing, prompts + tokenizer_image_token, batched scoring (exact and seed top-k/top-p), and
//! loading both the original (sharded) and the HF layouts.
mod llava_common;
use image::RgbImage;
use imgcot::models::llava_ov::image_processing::{preprocess_anyres, preprocess_pad};
use imgcot::models::llava_ov::prompt::{orm_prompt, parm_potential_prompt, tokenizer_image_token};
use imgcot::models::llava_ov::scoring::answer_distribution;
use imgcot::models::llava_ov::{LlavaJudge, LlavaOnevision, ScoreMode};
use llava_common::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn reference() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_reference("llava_parity.py", "llava", &[]))
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.size3().unwrap();
    RgbImage::from_raw(
        w as u32,
        h as u32,
        Vec::<u8>::try_from(t.flatten(0, -1)).unwrap(),
    )
    .unwrap()
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

#[test]
fn anyres_path_matches_hf_llava_onevision() {
    let dir = reference();
    let r = read_tensors(&dir.join("anyres.safetensors"));
    let img = rgb(&r["image"]);
    assert_eq!(img.dimensions(), (300, 110));
    let model = LlavaOnevision::load(&dir.join("orig"), Device::Cpu, Kind::Float, None).unwrap();
    let (crops, grid) = preprocess_anyres(&img, &model.config().image_grid_pinpoints, 56).unwrap();
    assert_eq!(grid, (6, 2));
    // Pillow-exact bicubic: the crops equal the Python LLaVA-NeXT preprocessing.
    let dpx = max_abs_diff(&crops, &r["crops"]);
    assert!(dpx <= 1e-6, "crops max |Δ| = {dpx}");
    let feats = tch::no_grad(|| model.encode_anyres(&crops, (300, 110), 9)).unwrap();
    let df = max_abs_diff(&feats, &r["features"]);
    assert_eq!(feats.size(), vec![16 + 7 * 20, 64]); // unpad to 8×22, bilinear to 7×19, + newline column
    let seq = model.splice(&ids_of(&r["input_ids"]), &[feats]).unwrap();
    let logits = tch::no_grad(|| model.all_logits(&seq)).unwrap();
    let dl = max_abs_diff(&logits, &r["logits"]);
    println!("anyres: features max|Δ| = {df:.3e}, logits max|Δ| = {dl:.3e}");
    assert!(df <= 1e-4 && dl <= 1e-4, "features {df}, logits {dl}");
}

#[test]
fn pad_path_prompts_and_scores_match_hf() {
    let dir = reference();
    let r: HashMap<String, Tensor> = read_tensors(&dir.join("pad.safetensors"));
    let keep = r["keep"].int64_value(&[0]);
    let judge = LlavaJudge::load(&dir.join("orig"), Device::Cpu, Kind::Float).unwrap();
    let model = judge.model();
    assert_eq!(model.language_model().vocab_size(), keep);
    assert!(keep < 320, "the vocabulary must be truncated");
    let (yes, no) = judge.yes_no_ids();
    assert_eq!(
        (yes, no),
        (r["yes_id"].int64_value(&[0]), r["no_id"].int64_value(&[0]))
    );

    let texts = [orm_prompt("a red cat"), parm_potential_prompt("a red cat")];
    let tok = tokenizers::Tokenizer::from_file(dir.join("orig/tokenizer.json")).unwrap();
    let mut visual = Vec::new();
    let mut seqs = Vec::new();
    for (b, text) in texts.iter().enumerate() {
        // Prompt text and ids exactly as the Python reference builds them.
        let py_text =
            String::from_utf8(Vec::<u8>::try_from(&r[&format!("text{b}")]).unwrap()).unwrap();
        assert_eq!(text, &py_text);
        let ids = tokenizer_image_token(&tok, text).unwrap();
        assert_eq!(ids, ids_of(&r[&format!("ids{b}")]));
        // expand2square + Pillow bicubic + SigLIP normalisation.
        let px = preprocess_pad(&rgb(&r[&format!("image{b}")]), 56);
        assert!(max_abs_diff(&px, &r[&format!("pixels{b}")]) <= 1e-6);
        let vis = tch::no_grad(|| model.encode_pad(&px.unsqueeze(0)))
            .unwrap()
            .remove(0);
        let dv = max_abs_diff(&vis, &r[&format!("visual{b}")]);
        assert!(dv <= 1e-4, "visual tokens max |Δ| = {dv}");
        assert_eq!(vis.size(), vec![17, 64]);
        seqs.push(model.splice(&ids, std::slice::from_ref(&vis)).unwrap());
        visual.push(vis);
    }
    // One batched forward with right padding (the two sequences differ in length).
    let logits = tch::no_grad(|| model.last_logits(&seqs)).unwrap();
    let want = Tensor::stack(&[&r["logits0"], &r["logits1"]], 0);
    let dl = max_abs_diff(&logits, &want);
    let exact = answer_distribution(&logits, ScoreMode::Exact);
    let seed = answer_distribution(&logits, ScoreMode::paper());
    let de = max_abs_diff(&exact, &Tensor::stack(&[&r["exact0"], &r["exact1"]], 0));
    let ds = max_abs_diff(&seed, &Tensor::stack(&[&r["seed0"], &r["seed1"]], 0));
    println!("pad: last logits max|Δ| = {dl:.3e}, exact probs {de:.3e}, seed probs {ds:.3e}");
    assert!(
        dl <= 1e-4 && de <= 1e-6 && ds <= 1e-6,
        "logits {dl}, exact {de}, seed {ds}"
    );
    // The seed distribution is truncated: at most 20 tokens carry mass, and it sums to one.
    let nonzero = seed.gt(0.0).sum_dim_intlist(1, false, Kind::Int64);
    assert!(Vec::<i64>::try_from(nonzero)
        .unwrap()
        .iter()
        .all(|&n| (1..=20).contains(&n)));

    // The judge API on the same inputs (images given as [-1, 1] floats that map back to the same uint8).
    let mut judge = judge;
    judge.mode = ScoreMode::Exact;
    judge.max_batch = 2;
    for b in 0..2 {
        let img = r[&format!("image{b}")]
            .to_kind(Kind::Float)
            .permute([2, 0, 1]);
        let img = ((img + 0.5) / 255.0 * 2.0 - 1.0).unsqueeze(0);
        let pot = judge.potential(&["a red cat".to_string()], &img).unwrap();
        let orm = judge.outcome(&["a red cat".to_string()], &img).unwrap();
        let ex = &r[&format!("exact{b}")];
        if b == 0 {
            assert!((orm[0] - ex.double_value(&[yes])).abs() < 1e-6);
        } else {
            assert!((pot[0].0 - ex.double_value(&[yes])).abs() < 1e-6);
            assert!((pot[0].1 - ex.double_value(&[no])).abs() < 1e-6);
        }
    }
    let d = judge.answer_distributions(&texts, &visual).unwrap();
    assert!(max_abs_diff(&d, &exact) <= 1e-6);
}

#[test]
fn hf_layout_loads_to_the_same_model() {
    let dir = reference();
    let r = read_tensors(&dir.join("anyres.safetensors"));
    let img = rgb(&r["image"]);
    let hf = LlavaOnevision::load(&dir.join("hf"), Device::Cpu, Kind::Float, None).unwrap();
    assert_eq!(hf.config().vision_layers_used, 2);
    let (crops, _) = preprocess_anyres(&img, &hf.config().image_grid_pinpoints, 56).unwrap();
    let feats = tch::no_grad(|| hf.encode_anyres(&crops, (300, 110), 9)).unwrap();
    let seq = hf.splice(&ids_of(&r["input_ids"]), &[feats]).unwrap();
    let logits = tch::no_grad(|| hf.all_logits(&seq)).unwrap();
    assert!(max_abs_diff(&logits, &r["logits"]) <= 1e-4);
}

#[test]
fn strict_loading_names_missing_and_misshapen_tensors() {
    let dir = reference();
    let src = dir.join("orig");
    let bad = dir.join("orig-bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
    ] {
        std::fs::copy(src.join(f), bad.join(f)).unwrap();
    }
    // Rewrite every shard: drop image_newline, change the projector's first weight, add a stray key.
    for f in imgcot::models::llava_ov::weights::checkpoint_files(&src).unwrap() {
        let mut ts: Vec<(String, Tensor)> = Tensor::read_safetensors(&f)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n != "model.image_newline")
            .map(|(n, t)| {
                if n == "model.mm_projector.0.weight" {
                    (n, t.narrow(1, 0, 16).contiguous())
                } else {
                    (n, t)
                }
            })
            .collect();
        if f.ends_with("model-00001-of-00003.safetensors") {
            ts.push((
                "model.vision_resampler.weight".into(),
                Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            ));
        }
        Tensor::write_safetensors(&ts, bad.join(f.file_name().unwrap())).unwrap();
    }
    let msg = format!(
        "{:#}",
        LlavaOnevision::load(&bad, Device::Cpu, Kind::Float, None).unwrap_err()
    );
    assert!(
        msg.contains("missing tensor 'model.image_newline' (expected shape [64])"),
        "{msg}"
    );
    assert!(
        msg.contains("'model.mm_projector.0.weight'")
            && msg.contains("expected shape [64, 32], found [64, 16]"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected tensor 'model.vision_resampler.weight'"),
        "{msg}"
    );
}
