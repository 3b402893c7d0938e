//! Judge training on tiny configs: `judge-data` records from synthetic glyph paths (labels from the
//! exact evaluator, the scaled clarity rule, the two-turn potential prompt), `reward-ft` reducing
//! the loss, the saved checkpoint reloading through `LlavaJudge::load` with identical scores, and
//! LoRA (merged on save) matching the in-memory model.
mod common;

use imgcot::eval::geneval::rules::RuleOptions;
use imgcot::glyphs::detect::is_correct;
use imgcot::glyphs::world::Codes;
use imgcot::judge::data::{clarity_label, write_split, JudgeDataConfig, PathSample};
use imgcot::judge::dataset::{load_records, DataSource, Layout, Sourced};
use imgcot::judge::reward_ft::{self, RewardFtConfig};
use imgcot::judge::vision_pretrain::VisionPretrain;
use imgcot::judge::OutcomeJudge;
use imgcot::models::llava_ov::prompt::{
    orm_prompt, parm_potential_prompt, tokenizer_image_token, JudgeQuestion, PromptLayout,
    IMAGE_TOKEN_INDEX,
};
use imgcot::models::llava_ov::train::{chat_tokens, ScratchConfig};
use imgcot::models::llava_ov::{LlavaJudge, ScoreMode};
use rand::RngExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/glyphs/tokenizer.json")
}

fn tiny_scratch() -> ScratchConfig {
    ScratchConfig {
        vision_hidden_size: 32,
        vision_intermediate_size: 64,
        vision_layers: 1,
        vision_heads: 2,
        image_size: 128,
        patch_size: 16,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        rope_theta: 10_000.0,
        weight_init: Default::default(),
    }
}

/// Synthetic paths: half end in a correct scene, half in a scene of another prompt; step s shows
/// each final cell with probability s/T (else a random code), like a sharpening prediction.
fn synthetic_paths(num_prompts: usize, n: usize, steps: usize, seed: u64) -> Vec<PathSample> {
    let metas = imgcot::glyphs::prompts::load_train_set().unwrap();
    let mut rng = imgcot::glyphs::rng::seeded(seed, 1);
    let mut out = Vec::new();
    for pi in 0..num_prompts {
        let meta = metas[pi * 7 % metas.len()].clone();
        for k in 0..n {
            let fin: Codes = if k % 2 == 0 {
                imgcot::glyphs::scene::sample_scene(&meta, &mut rng).unwrap()
            } else {
                let other = &metas[(pi * 7 + 3 + k) % metas.len()];
                imgcot::glyphs::scene::sample_scene(other, &mut rng).unwrap()
            };
            let steps_codes = (1..=steps)
                .map(|s| {
                    let mut c = fin;
                    for v in c.iter_mut() {
                        if rng.random_range(0.0..1.0) > s as f64 / steps as f64 {
                            *v = rng.random_range(0..37u8);
                        }
                    }
                    c
                })
                .collect();
            out.push(PathSample {
                meta: meta.clone(),
                prompt_index: pi,
                candidate: k,
                steps: steps_codes,
            });
        }
    }
    out
}

fn data_cfg(out: &Path) -> JudgeDataConfig {
    JudgeDataConfig {
        generator_recipe: None,
        model: None,
        prompts: "data/glyphs/train_prompts.jsonl".into(),
        num_prompts: 0,
        n: 4,
        seed: 5,
        heldout_fraction: 0.25,
        clarity_per_path: 3,
        potential_per_path: 2,
        view: Default::default(),
        sampler: None,
        dtype: None,
        batch_size: 8,
        repair_random: 0,
        repair_positive_tries: 0,
        synthetic: 0,
        captions: 0,
        caption_style: Default::default(),
        clutter: Default::default(),
        dense: Default::default(),
        dense_levels: vec![],
        out: out.to_path_buf(),
    }
}

fn build_tiny_data(dir: &Path, steps: usize) -> (Vec<PathSample>, Vec<PathSample>) {
    let train = synthetic_paths(6, 4, steps, 1);
    let held: Vec<PathSample> = synthetic_paths(8, 4, steps, 2)
        .into_iter()
        .skip(24)
        .collect();
    let cfg = data_cfg(dir);
    write_split(dir, "train", &train, &cfg).unwrap();
    write_split(dir, "heldout", &held, &cfg).unwrap();
    (train, held)
}

#[test]
fn judge_data_records_follow_the_paper() {
    let dir = common::temp_dir("judges-data");
    let steps = 12;
    let (train, _) = build_tiny_data(&dir, steps);
    let orm = load_records(&dir.join("orm_train.jsonl"), None).unwrap();
    let parm = load_records(&dir.join("parm_train.jsonl"), None).unwrap();
    assert_eq!(orm.len(), train.len());
    let opts = RuleOptions::default();
    let mut labels = [0usize; 2];
    for (r, p) in orm.iter().zip(&train) {
        let want = is_correct(&p.meta, p.steps.last().unwrap(), &opts);
        assert_eq!(r.answer(), Some(want), "{}", r.id);
        labels[want as usize] += 1;
        assert!(Path::new(&r.image).exists(), "{}", r.image);
        // The PNG decodes back to the final codes.
        let (_, _, rgb) = imgcot::glyphs::png::read_rgb(Path::new(&r.image)).unwrap();
        assert_eq!(
            imgcot::glyphs::encode(&rgb).unwrap(),
            *p.steps.last().unwrap()
        );
        assert_eq!(
            r.conversations[0].value,
            imgcot::models::llava_ov::prompt::orm_question(&p.meta.prompt)
        );
    }
    assert!(
        labels[0] > 0 && labels[1] > 0,
        "both labels present: {labels:?}"
    );
    let (mut clar, mut pot) = (0, 0);
    for r in &parm {
        let m = r.meta.as_ref().unwrap();
        match m.kind.as_str() {
            "clarity" => {
                clar += 1;
                assert_eq!(r.conversations.len(), 2);
                assert_eq!(r.answer(), clarity_label(m.step, steps));
                assert_ne!(
                    m.step, 7,
                    "step 7 of 12 lies between 10/18 and 11/18: skipped"
                );
            }
            "potential" => {
                pot += 1;
                assert_eq!(r.conversations.len(), 4);
                assert_eq!(r.conversations[1].value, "yes");
                assert_eq!(clarity_label(m.step, steps), Some(true));
                assert_eq!(r.answer(), Some(m.final_label));
            }
            k => panic!("unexpected kind {k}"),
        }
        assert!(Path::new(&r.image).exists());
    }
    assert_eq!(clar, 3 * train.len());
    assert_eq!(pot, 2 * train.len());
    // Re-paired ORM records: the final image with other prompts, labelled by the evaluator.
    let pool: Vec<_> = imgcot::glyphs::prompts::load_train_set()
        .unwrap()
        .into_iter()
        .take(60)
        .enumerate()
        .collect();
    let rep = imgcot::judge::data::repaired_records(&train, &pool, 2, 60, 9);
    assert!(rep.len() >= 2 * train.len() - 2);
    let mut yes = 0;
    for r in &rep {
        let m = r.meta.as_ref().unwrap();
        let p = &train[orm
            .iter()
            .position(|o| dir.join(&r.image) == Path::new(&o.image))
            .unwrap()];
        assert_ne!(m.prompt, p.meta.prompt);
        let meta = &pool[m.prompt_index].1;
        assert_eq!(
            r.answer(),
            Some(is_correct(meta, p.steps.last().unwrap(), &opts))
        );
        yes += (r.answer() == Some(true)) as usize;
    }
    assert!(yes > 0, "the positive search found satisfied prompts");
    // Held-out prompts are disjoint from the training prompts.
    let held = load_records(&dir.join("orm_heldout.jsonl"), None).unwrap();
    let tp: std::collections::HashSet<_> = orm
        .iter()
        .map(|r| r.meta.as_ref().unwrap().prompt_index)
        .collect();
    assert!(held
        .iter()
        .all(|r| !tp.contains(&r.meta.as_ref().unwrap().prompt_index)));
}

#[test]
fn training_ids_match_the_inference_prompts() {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_path()).unwrap();
    let p = "a photo of a red circle";
    let orm = chat_tokens(
        &tok,
        &[
            (false, imgcot::models::llava_ov::prompt::orm_question(p)),
            (true, "yes".into()),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        orm.prompt_ids(),
        tokenizer_image_token(&tok, &orm_prompt(p)).unwrap()
    );
    assert_eq!(
        orm.ids[orm.answer_pos],
        tok.token_to_id("yes").unwrap() as i64
    );
    assert_eq!(orm.labels[orm.answer_pos], orm.ids[orm.answer_pos]);
    assert!(
        orm.labels[..orm.answer_pos - 4].iter().all(|&l| l == -100),
        "system/user masked"
    );
    let pot = chat_tokens(
        &tok,
        &[
            (
                false,
                imgcot::models::llava_ov::prompt::parm_clarity_question(p),
            ),
            (true, "yes".into()),
            (
                false,
                imgcot::models::llava_ov::prompt::PARM_POTENTIAL_QUESTION.into(),
            ),
            (true, "no".into()),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        pot.prompt_ids(),
        tokenizer_image_token(&tok, &parm_potential_prompt(p)).unwrap()
    );
    // Both assistant answers are supervised.
    let yes = tok.token_to_id("yes").unwrap() as i64;
    assert!(pot.labels.contains(&yes));
    assert_eq!(
        pot.labels[pot.answer_pos],
        tok.token_to_id("no").unwrap() as i64
    );
}

fn ft_cfg(dir: &Path, out: &str, steps: u64) -> RewardFtConfig {
    RewardFtConfig {
        data: vec![
            DataSource {
                path: dir.join("orm_train.jsonl"),
                sampling: "all".into(),
                tags: vec![],
                loss_weight: 1.0,
                layout: Default::default(),
            },
            DataSource {
                path: dir.join("parm_train.jsonl"),
                sampling: "random:50%".into(),
                tags: vec![],
                loss_weight: 1.0,
                layout: Default::default(),
            },
        ],
        heldout: vec![
            DataSource {
                path: dir.join("orm_heldout.jsonl"),
                sampling: "all".into(),
                tags: vec![],
                loss_weight: 1.0,
                layout: Default::default(),
            },
            DataSource {
                path: dir.join("parm_heldout.jsonl"),
                sampling: "all".into(),
                tags: vec![],
                loss_weight: 1.0,
                layout: Default::default(),
            },
        ],
        init: None,
        out: dir.join(out),
        run_dir: dir.join(format!("run-{out}")),
        lr: 3e-3,
        vision_lr_mult: 0.5,
        weight_decay: 0.0,
        warmup_ratio: 0.0,
        min_lr_ratio: 1.0,
        decay_ratio: None,
        epochs: 1.0,
        max_steps: Some(steps),
        batch_size: 8,
        max_grad_norm: 1.0,
        seed: 0,
        lora: None,
        log_every: 5,
        eval_every: 0,
        eval_subset: 0,
        save_every: 0,
        image_to_front: true,
        save_dtype: "fp32".into(),
        answer_only: false,
        vision_pretrain: None,
        prompt_layout: None,
        retry: None,
    }
}

/// P(yes) of the held-out ORM records through `LlavaJudge` (the API the DPO loop uses).
fn judge_scores(dir: &Path, ckpt: &Path) -> Vec<f64> {
    let mut judge = LlavaJudge::load(ckpt, Device::Cpu, Kind::Float).unwrap();
    judge.mode = ScoreMode::Exact;
    let recs = load_records(&dir.join("orm_heldout.jsonl"), None).unwrap();
    let prompts: Vec<String> = recs
        .iter()
        .map(|r| r.meta.as_ref().unwrap().prompt.clone())
        .collect();
    let imgs: Vec<Tensor> = recs.iter().map(|r| unit_image(&r.image)).collect();
    judge.p_yes(&prompts, &Tensor::stack(&imgs, 0)).unwrap()
}

/// `iterate.judge_probs` reaches the judges that `sample` / `eval --verify` load: `exact` scores
/// are the softmax's (`exact`, from [`judge_scores`]), the default reads the paper's truncated
/// distribution, and the verifier's name (which eval folders are reused by) tells them apart.
fn recipe_judges_read_p_yes_as_the_recipe_says(dir: &Path, exact: &[f64]) {
    use imgcot::commands::iterate::VerifyJudges;
    let recipe = |extra: &str| {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/glyphs.yaml"),
        )
        .unwrap();
        imgcot::recipe::Recipe::from_yaml(&format!("{text}{extra}")).unwrap()
    };
    let recs = load_records(&dir.join("orm_heldout.jsonl"), None).unwrap();
    let prompts: Vec<String> = recs
        .iter()
        .map(|r| r.meta.as_ref().unwrap().prompt.clone())
        .collect();
    let imgs = Tensor::stack(
        &recs
            .iter()
            .map(|r| unit_image(&r.image))
            .collect::<Vec<_>>(),
        0,
    );
    let ckpt = dir.join("full");
    let scores = |extra: &str| {
        let judges = VerifyJudges::load("orm", Some(&ckpt), &recipe(extra), Device::Cpu).unwrap();
        let VerifyJudges::Orm(j) = &judges else {
            panic!("not an ORM")
        };
        (j.p_yes(&prompts, &imgs).unwrap(), judges.verifier(4).name())
    };
    let (got, name) = scores("  judge_probs: exact\n");
    assert_eq!(got, exact);
    assert_eq!(name, "orm-best-of-4-exact-probs");
    let (seed, name) = scores("");
    assert_eq!(name, "orm-best-of-4");
    let mut judge = LlavaJudge::load(&ckpt, Device::Cpu, Kind::Float).unwrap();
    judge.mode = ScoreMode::paper();
    assert_eq!(seed, judge.p_yes(&prompts, &imgs).unwrap());
    assert_ne!(
        seed, got,
        "the two readings should differ on a trained judge"
    );
    // PARM too (the recipe's static clarity rule is in its name).
    for (extra, mode, name) in [
        (
            "  judge_probs: exact\n",
            ScoreMode::Exact,
            "parm-best-of-4-clarity-rule-exact-probs",
        ),
        ("", ScoreMode::paper(), "parm-best-of-4-clarity-rule"),
    ] {
        let judges = VerifyJudges::load("parm", Some(&ckpt), &recipe(extra), Device::Cpu).unwrap();
        let VerifyJudges::Parm { judge, .. } = &judges else {
            panic!("not PARM")
        };
        assert_eq!(judge.mode, mode);
        assert_eq!(judges.verifier(4).name(), name);
    }
}

/// A record's PNG as the generators hand images to judges: float [3, 128, 128] in [-1, 1].
fn unit_image(path: &str) -> Tensor {
    let (_, _, rgb) = imgcot::glyphs::png::read_rgb(Path::new(path)).unwrap();
    Tensor::from_slice(&rgb)
        .view([128, 128, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0
}

#[test]
fn reward_ft_reduces_loss_and_the_checkpoint_reloads_identically() {
    let dir = common::temp_dir("judges-ft");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut cfg = ft_cfg(&dir, "full", 30);
    let rep = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    assert!(
        rep.final_loss < 0.7 * rep.first_loss,
        "loss {} → {}",
        rep.first_loss,
        rep.final_loss
    );
    assert!(rep.heldout.contains_key("orm") && rep.heldout.contains_key("potential"));
    assert!(dir.join("run-full/tb").is_dir() && dir.join("run-full/log.txt").is_file());
    assert!(
        rep.reload_max_abs_diff < 1e-6,
        "{}",
        rep.reload_max_abs_diff
    );
    // Saved in the LLaVA-NeXT layout: loadable by LlavaJudge, and deterministic across loads.
    let a = judge_scores(&dir, &dir.join("full"));
    let b = judge_scores(&dir, &dir.join("full"));
    assert_eq!(a, b);
    recipe_judges_read_p_yes_as_the_recipe_says(&dir, &a);
    // LlavaJudge's inference path (its own prompt text and preprocessing) gives the scores of the
    // training-side scorer.
    let recs = load_records(&dir.join("orm_heldout.jsonl"), None).unwrap();
    let judge = LlavaJudge::load(&dir.join("full"), Device::Cpu, Kind::Float).unwrap();
    let tk = tokenizers::Tokenizer::from_file(tok.as_path()).unwrap();
    let prep = reward_ft::prepare(&recs, &tk, 128, true).unwrap();
    // The same records as loaded from a source with `loss_weight` and `layout`.
    let sourced = |loss_weight: f64, layout: Layout, answer_only: bool| {
        let items: Vec<Sourced> = recs
            .iter()
            .map(|r| Sourced {
                record: r.clone(),
                loss_weight,
                layout,
            })
            .collect();
        reward_ft::prepare_sourced(&items, &tk, 128, true, answer_only).unwrap()
    };
    // The `bare` layout: the image, the generation prompt, then the answer.
    let bare = sourced(0.5, Layout::Bare, false);
    for ((b, p), r) in bare.iter().zip(&prep).zip(&recs) {
        let prompt = &r.meta.as_ref().unwrap().prompt;
        let mut want = vec![IMAGE_TOKEN_INDEX];
        want.extend(tokenizer_image_token(&tk, prompt).unwrap());
        assert_eq!(b.tokens.prompt_ids(), &want[..]);
        assert_eq!(b.kind, format!("{}+bare", p.kind));
        assert_eq!((b.label, b.weight), (p.label, 0.5));
        assert!(b.image.equal(&p.image));
    }
    // `answer_only`: the same ids, the loss on the answer token alone.
    let only = sourced(1.0, Layout::Chat, true);
    for (o, p) in only.iter().zip(&prep) {
        assert_eq!(o.tokens.ids, p.tokens.ids);
        let supervised: Vec<usize> = (0..o.tokens.labels.len())
            .filter(|&i| o.tokens.labels[i] != -100)
            .collect();
        assert_eq!(supervised, [p.tokens.answer_pos]);
        assert!(p.tokens.labels.iter().filter(|&&l| l != -100).count() > 1);
    }
    let refs: Vec<_> = prep.iter().collect();
    let s = reward_ft::score_items(judge.model(), &refs, judge.yes_no_ids(), 16).unwrap();
    for (x, y) in a.iter().zip(&s) {
        assert!(
            (x - y.0).abs() < 1e-5,
            "LlavaJudge {x} vs training scorer {}",
            y.0
        );
    }
    // --init continues from the checkpoint: a 0-LR run saves identical weights.
    cfg.init = Some(dir.join("full"));
    cfg.out = dir.join("again");
    cfg.run_dir = dir.join("run-again");
    cfg.lr = 0.0;
    cfg.max_steps = Some(1);
    reward_ft::run(&cfg, None, Device::Cpu).unwrap();
    assert_eq!(judge_scores(&dir, &dir.join("again")), a);
}

#[test]
fn lora_fine_tune_saves_merged_weights_that_score_like_the_trained_model() {
    let dir = common::temp_dir("judges-lora");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut base = ft_cfg(&dir, "base", 4);
    base.heldout.clear();
    reward_ft::run(&base, Some((&sc, &tok)), Device::Cpu).unwrap();
    let before = judge_scores(&dir, &dir.join("base"));
    let mut cfg = ft_cfg(&dir, "lora", 20);
    cfg.init = Some(dir.join("base"));
    cfg.lora = Some(
        serde_json::from_str(r#"{"r": 4, "alpha": 8, "train_also": ["mm_projector"]}"#).unwrap(),
    );
    let rep = reward_ft::run(&cfg, None, Device::Cpu).unwrap();
    assert!(
        rep.final_loss < rep.first_loss,
        "loss {} → {}",
        rep.first_loss,
        rep.final_loss
    );
    // Adapters + projector only: far fewer trainable parameters than the model.
    let n_model: i64 = LlavaJudge::load(&dir.join("base"), Device::Cpu, Kind::Float)
        .unwrap()
        .model()
        .named_tensors()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert!(
        rep.trainable_params < n_model / 2,
        "{} of {n_model}",
        rep.trainable_params
    );
    let after = judge_scores(&dir, &dir.join("lora"));
    assert_ne!(before, after, "merged LoRA changed the weights");
    // The saved (merged) checkpoint scores exactly like the model that trained with the adapters.
    assert!(
        rep.reload_max_abs_diff < 1e-6,
        "{}",
        rep.reload_max_abs_diff
    );
    // Frozen weights outside the targets are untouched: the vision tower equals the base's.
    let w = |d: &str| {
        let t =
            imgcot::train::ckpt::read_safetensors(&dir.join(d).join("model.safetensors")).unwrap();
        t.into_iter()
            .find(|(n, _)| n.ends_with("encoder.layers.0.mlp.fc1.weight"))
            .unwrap()
            .1
    };
    assert!(w("base").equal(&w("lora")));
    let q = |d: &str| {
        let t =
            imgcot::train::ckpt::read_safetensors(&dir.join(d).join("model.safetensors")).unwrap();
        t.into_iter()
            .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .1
    };
    assert!(
        !q("base").equal(&q("lora")),
        "q_proj got the merged LoRA delta"
    );
}

/// `vision_lr_mult: 0` freezes the tower: it is not among the trainable parameters and its
/// saved weights equal the initial ones, while the projector and the LM train.
#[test]
fn a_zero_vision_lr_mult_freezes_the_tower() {
    let dir = common::temp_dir("judges-freeze-vision");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut base = ft_cfg(&dir, "base", 2);
    base.heldout.clear();
    let rep_base = reward_ft::run(&base, Some((&sc, &tok)), Device::Cpu).unwrap();
    let mut cfg = ft_cfg(&dir, "frozen", 4);
    cfg.heldout.clear();
    cfg.init = Some(dir.join("base"));
    cfg.vision_lr_mult = 0.0;
    let rep = reward_ft::run(&cfg, None, Device::Cpu).unwrap();
    let n_vision: i64 = saved_weights(&dir.join("base"))
        .iter()
        .filter(|(n, _)| n.starts_with(imgcot::models::llava_ov::weights::VISION_PREFIX))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert!(n_vision > 0);
    assert_eq!(rep.trainable_params, rep_base.trainable_params - n_vision);
    let (before, after) = (
        saved_weights(&dir.join("base")),
        saved_weights(&dir.join("frozen")),
    );
    assert_eq!(before.len(), after.len());
    let mut changed = 0;
    for ((n, a), (m, b)) in before.iter().zip(&after) {
        assert_eq!(n, m);
        if n.starts_with(imgcot::models::llava_ov::weights::VISION_PREFIX) {
            assert!(a.equal(b), "{n} changed although the tower is frozen");
        } else if !a.equal(b) {
            changed += 1;
        }
    }
    assert!(changed > 0, "the projector and the LM trained");
    let mut bad = ft_cfg(&dir, "bad", 1);
    bad.vision_lr_mult = -1.0;
    let err = reward_ft::run(&bad, Some((&sc, &tok)), Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("vision_lr_mult"), "{err:#}");
}

/// `retry` trains a stage again with the next seed while a held-out kind's accuracy is under
/// the floor, records the short tries in `<run_dir>/tries.json`, and fails loudly when every
/// try falls short; a floor that is met keeps the first try and clears the record.
#[test]
fn retry_trains_again_with_the_next_seed_and_fails_loudly() {
    use imgcot::judge::reward_ft::RetryConfig;
    let dir = common::temp_dir("judges-retry");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut cfg = ft_cfg(&dir, "r", 1);
    // LR 0: an untrained judge, so the floor below is out of reach.
    cfg.lr = 0.0;
    cfg.retry = Some(RetryConfig {
        kind: "orm".into(),
        min_accuracy: 0.999,
        max_tries: 2,
    });
    let tries = dir.join("run-r").join("tries.json");
    let err = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("in 2 tries") && msg.contains("seed 0") && msg.contains("seed 1"),
        "{msg}"
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tries).unwrap()).unwrap();
    let seeds: Vec<u64> = rec["tries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [0, 1]);
    // No judge under the floor is left where the next stage would find it; none was ever saved,
    // so no kill could have left one that looks finished.
    assert!(!dir.join("r").exists());
    let log = dir.join("run-r").join("log.txt");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.matches("under 0.999: not saved").count(),
        2,
        "{logged}"
    );
    let saved_line = format!("saved {} (", dir.join("r").display());
    assert!(!logged.contains(&saved_line), "{logged}");
    // The record makes the same command fail again without training (the run's log is as it was).
    let again = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap_err();
    assert_eq!(format!("{again:#}"), msg);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), logged);
    // Other settings start over; a floor that is met keeps the first try and clears the record.
    cfg.retry.as_mut().unwrap().min_accuracy = 0.0;
    let rep = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    assert_eq!(rep.config.seed, 0);
    assert!(!tries.exists());
    assert!(dir.join("r/config.json").exists());
    // A judge already at `out` does not outlive tries that all fall under the floor.
    cfg.retry.as_mut().unwrap().min_accuracy = 0.999;
    cfg.retry.as_mut().unwrap().max_tries = 1;
    assert!(reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).is_err());
    assert!(!dir.join("r").exists());
    cfg.retry.as_mut().unwrap().kind = "no-such-kind".into();
    let err = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a held-out kind"),
        "{err:#}"
    );
}

/// Every saved tensor of a checkpoint folder, sorted by name.
fn saved_weights(ckpt: &Path) -> Vec<(String, Tensor)> {
    let mut w = imgcot::train::ckpt::read_safetensors(&ckpt.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Runs `imgcot-train reward-ft --recipe RECIPE ARGS…` in its own process (each run starts
/// from libtorch's fixed default generator, as a user's command does, whatever other tests of
/// this binary draw meanwhile). Returns (success, stdout + stderr).
fn reward_ft_cli(recipe: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgcot-train"))
        .arg("reward-ft")
        .arg("--recipe")
        .arg(recipe)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn an_interrupted_reward_ft_resumes_to_the_uninterrupted_result() {
    let dir = common::temp_dir("judges-resume");
    build_tiny_data(&dir, 12);
    // Stage `orm`: a full fine-tune of a scratch judge, its tower pretrained first, on a cosine
    // schedule (so the step matters). Stage `parm`: LoRA on top of it, the tower pretrained
    // again first, saving every 3 steps.
    let mut recipe = imgcot::judge::recipe::JudgesRecipe::load(None).unwrap();
    recipe.scratch = Some(tiny_scratch());
    recipe.tokenizer = Some(tokenizer_path());
    recipe.pretrain.clear();
    let vp = VisionPretrain {
        steps: 5,
        lr: 3e-3,
        batch_size: 8,
    };
    recipe.orm = ft_cfg(&dir, "whole", 12);
    recipe.orm.min_lr_ratio = 0.1;
    recipe.orm.warmup_ratio = 0.2;
    recipe.orm.vision_pretrain = Some(vp.clone());
    recipe.parm = ft_cfg(&dir, "lora-whole", 10);
    recipe.parm.init = Some(dir.join("whole"));
    recipe.parm.min_lr_ratio = 0.1;
    recipe.parm.vision_pretrain = Some(vp);
    recipe.parm.save_every = 3;
    recipe.parm.lora = Some(
        serde_json::from_str(r#"{"r": 4, "alpha": 8, "train_also": ["mm_projector"]}"#).unwrap(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, serde_norway::to_string(&recipe).unwrap()).unwrap();
    let ok = |args: &[&str]| {
        let (ok, text) = reward_ft_cli(&path, args);
        assert!(ok, "reward-ft {args:?} failed:\n{text}");
        text
    };
    let same = |a: &str, b: &str| {
        let (wa, wb) = (saved_weights(&dir.join(a)), saved_weights(&dir.join(b)));
        assert_eq!(wa.len(), wb.len());
        for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
            assert_eq!(na, nb);
            let d = (ta - tb).abs().max().double_value(&[]);
            assert!(ta.equal(tb), "'{na}' of {b} differs after resuming by {d}");
        }
        // The report carries the losses and the tower pretraining of the first part over.
        let report = |d: &str| {
            let mut r: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(d).join("reward_ft.json")).unwrap(),
            )
            .unwrap();
            r["vision_pretrain"]["seconds"] = 0.into();
            (
                r["first_loss"].clone(),
                r["final_loss"].clone(),
                r["vision_pretrain"].clone(),
            )
        };
        assert_eq!(report(a), report(b));
    };
    let whole = ["--stage", "orm"];
    ok(&whole);
    assert!(!dir.join("run-whole").join(reward_ft::RESUME_DIR).exists());

    // Stopped after step 5 (the batches cross an epoch's end there), then run again.
    let cut_out = dir.join("cut").display().to_string();
    let cut_run = dir.join("run-cut").display().to_string();
    let cut = ["--stage", "orm", "--out", &cut_out, "--run-dir", &cut_run];
    let text = ok(&[&cut[..], &["--stop-after", "5"]].concat());
    assert!(text.contains("stopped after step 5"), "{text}");
    assert!(!dir.join("cut").exists());
    let resume = dir.join("run-cut").join(reward_ft::RESUME_DIR);
    assert!(resume.is_dir());
    // A full fine-tune saves all its weights as what trains; nothing is frozen.
    assert!(!resume.join("frozen").exists());
    // Other settings do not continue from it.
    let (ok_other, err) = reward_ft_cli(&path, &[&cut[..], &["--lr", "0.01"]].concat());
    assert!(!ok_other && err.contains("config.lr"), "{err}");
    ok(&cut);
    same("whole", "cut");
    assert!(
        !resume.exists(),
        "the finished stage removes its resume state"
    );
    let log = std::fs::read_to_string(dir.join("run-cut/log.txt")).unwrap();
    assert!(
        log.contains("resumed from") && log.contains("at step 5"),
        "{log}"
    );
    assert_eq!(log.matches("vision_pretrain done").count(), 1, "{log}");

    // LoRA: the resumed run restores the weights it froze (saved once: its initial checkpoint
    // does not hold the pretrained tower) and rebuilds the merged weights from the factors.
    ok(&["--stage", "parm"]);
    let lcut_out = dir.join("lora-cut").display().to_string();
    let lcut_run = dir.join("run-lora-cut").display().to_string();
    let lcut = [
        "--stage",
        "parm",
        "--out",
        &lcut_out,
        "--run-dir",
        &lcut_run,
    ];
    ok(&[&lcut[..], &["--stop-after", "7"]].concat());
    let frozen = dir
        .join("run-lora-cut")
        .join(reward_ft::RESUME_DIR)
        .join("frozen");
    assert!(frozen.join("weights.safetensors").is_file());
    ok(&lcut);
    same("lora-whole", "lora-cut");
    let n_changed = saved_weights(&dir.join("lora-whole"))
        .iter()
        .zip(saved_weights(&dir.join("whole")))
        .filter(|((_, a), (_, b))| !a.equal(b))
        .count();
    assert!(n_changed > 0, "LoRA trained nothing");

    // A full fine-tune with the tower frozen after its pretraining: the pretrained tower is in
    // no trainable weight, so the resume state holds it apart, as for LoRA.
    let mut frozen_recipe = recipe.clone();
    frozen_recipe.orm = ft_cfg(&dir, "tower-frozen", 8);
    frozen_recipe.orm.vision_lr_mult = 0.0;
    frozen_recipe.orm.vision_pretrain = recipe.orm.vision_pretrain.clone();
    let fpath = dir.join("recipe-frozen.yaml");
    std::fs::write(&fpath, serde_norway::to_string(&frozen_recipe).unwrap()).unwrap();
    let fok = |args: &[&str]| {
        let (ok, text) = reward_ft_cli(&fpath, args);
        assert!(ok, "reward-ft {args:?} failed:\n{text}");
    };
    fok(&["--stage", "orm"]);
    let fcut_out = dir.join("tower-frozen-cut").display().to_string();
    let fcut_run = dir.join("run-tower-frozen-cut").display().to_string();
    let fcut = ["--stage", "orm", "--out", &fcut_out, "--run-dir", &fcut_run];
    fok(&[&fcut[..], &["--stop-after", "3"]].concat());
    let frozen_dir = dir
        .join("run-tower-frozen-cut")
        .join(reward_ft::RESUME_DIR)
        .join("frozen");
    // Only what does not train: the tower (the rest is in the trainable state).
    let held =
        imgcot::train::ckpt::read_safetensors(&frozen_dir.join("weights.safetensors")).unwrap();
    assert!(!held.is_empty());
    assert!(
        held.iter().all(|(n, _)| n.contains("vision_tower")),
        "{:?}",
        held.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    fok(&fcut);
    same("tower-frozen", "tower-frozen-cut");
    // A state without `frozen/` (as older builds saved it) is refused, not resumed with the
    // initial tower.
    fok(&[&fcut[..], &["--stop-after", "3"]].concat());
    std::fs::remove_dir_all(&frozen_dir).unwrap();
    let (ok_old, err) = reward_ft_cli(&fpath, &fcut);
    assert!(!ok_old && err.contains("older build"), "{err}");
}

#[test]
fn inspect_judge_scores_prompt_and_input_ids_alike() {
    use imgcot::judge::cli::{inspect_judge, InspectJudgeArgs};
    let dir = common::temp_dir("judges-inspect");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut cfg = ft_cfg(&dir, "j", 3);
    cfg.heldout.clear();
    reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    let rec = &load_records(&dir.join("orm_heldout.jsonl"), None).unwrap()[0];
    let prompt = rec.meta.as_ref().unwrap().prompt.clone();
    let mut args = InspectJudgeArgs {
        model: dir.join("j"),
        image: PathBuf::from(&rec.image),
        prompt: Some(prompt.clone()),
        input_ids: None,
        kind: "orm".into(),
        device: "cpu".into(),
        dtype: "fp32".into(),
    };
    let [exact, seed] = inspect_judge(&args).unwrap();
    assert!(exact.0 > 0.0 && exact.0 + exact.1 <= 1.0 + 1e-9);
    assert!(seed.0 + seed.1 <= 1.0 + 1e-6);
    // Same question as token ids with −200 at the image.
    let tk = tokenizers::Tokenizer::from_file(&tok).unwrap();
    let ids = tokenizer_image_token(&tk, &orm_prompt(&prompt)).unwrap();
    assert!(ids.contains(&-200));
    let f = dir.join("ids.safetensors");
    imgcot::train::ckpt::write_safetensors(
        &f,
        &[("input_ids".into(), Tensor::from_slice(&ids).unsqueeze(0))],
    )
    .unwrap();
    args.prompt = None;
    args.input_ids = Some(f);
    assert_eq!(inspect_judge(&args).unwrap(), [exact, seed]);
    // The judge's own outcome score agrees (LlavaJudge, exact mode).
    let a = judge_scores(&dir, &dir.join("j"));
    assert!((a[0] - exact.0).abs() < 1e-5, "{} vs {}", a[0], exact.0);
    args.kind = "bogus".into();
    args.prompt = Some(prompt);
    args.input_ids = None;
    assert!(inspect_judge(&args).is_err());
}

#[test]
fn qwen2_logits_reads_a_text_only_checkpoint() {
    use imgcot::models::llava_ov::config::LlavaOvConfig;
    use imgcot::models::llava_ov::train::{init_weights, model_from_tensors};
    let dir = common::temp_dir("judges-qwen2");
    let json = tiny_scratch().config_json(50);
    let cfg = LlavaOvConfig::from_json_str(&json.to_string()).unwrap();
    let tensors = init_weights(&cfg, 4);
    let lm_tensors: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| {
            (n.starts_with("model.")
                && !n.starts_with("model.vision_tower")
                && !n.starts_with("model.mm_projector")
                && n != "model.image_newline")
                || n == "lm_head.weight"
        })
        .map(|(n, t)| (n.clone(), t.copy()))
        .collect();
    let model = model_from_tensors(cfg, tensors, Device::Cpu).unwrap();
    imgcot::train::ckpt::write_safetensors(&dir.join("model.safetensors"), &lm_tensors).unwrap();
    let mut qcfg = json.clone();
    qcfg["model_type"] = "qwen2".into();
    std::fs::write(dir.join("config.json"), qcfg.to_string()).unwrap();
    assert!(imgcot::judge::cli::is_qwen2_dir(&dir));
    let ids = Tensor::from_slice(&[1i64, 5, 7, 49, 3, 3]).view([2, 3]);
    let got = imgcot::judge::cli::qwen2_logits(&dir, &ids).unwrap();
    let want = tch::no_grad(|| model.language_model().forward(&ids).unwrap());
    assert_eq!(got.size(), vec![2, 3, 50]);
    assert!(got.allclose(&want, 1e-6, 1e-6, false));
    assert!(
        imgcot::judge::cli::qwen2_logits(&dir, &Tensor::from_slice(&[0i64, 50]).view([1, 2]))
            .is_err()
    );
}

/// The tokenizer and a scratch judge of `tiny_scratch()`'s sizes, weights drawn with `seed`.
fn tiny_judge(
    seed: i64,
) -> (
    tokenizers::Tokenizer,
    imgcot::models::llava_ov::model::LlavaOnevision,
) {
    use imgcot::models::llava_ov::config::LlavaOvConfig;
    use imgcot::models::llava_ov::train::{init_weights, model_from_tensors};
    let tok = tokenizers::Tokenizer::from_file(tokenizer_path()).unwrap();
    let json = tiny_scratch().config_json(tok.get_vocab_size(true) as i64);
    let cfg = LlavaOvConfig::from_json_str(&json.to_string()).unwrap();
    let model = model_from_tensors(cfg.clone(), init_weights(&cfg, seed), Device::Cpu).unwrap();
    (tok, model)
}

/// One user turn and the assistant's answer.
fn question_answer(q: &str, a: &str) -> Vec<(bool, String)> {
    vec![(false, q.to_string()), (true, a.to_string())]
}

/// A source's `loss_weight` makes the batch loss the token-weighted mean of the per-sample token
/// CEs (equal weights keep LLaVA's plain token mean), so a caption source can be mixed with yes/no
/// records without its many tokens drowning the one answer token.
#[test]
fn loss_weights_give_the_token_weighted_mean() {
    use imgcot::models::llava_ov::train::{forward_batch, BatchItem};
    let (tok, model) = tiny_judge(5);
    let q = imgcot::models::llava_ov::prompt::orm_question("a photo of a red circle");
    let short = chat_tokens(&tok, &question_answer(&q, "yes"), true).unwrap();
    let long = chat_tokens(
        &tok,
        &question_answer(
            "<image> Which one of the object is in this image?",
            "circle red, square blue, cross green",
        ),
        true,
    )
    .unwrap();
    tch::manual_seed(1);
    let img_a = Tensor::randint(256, [3, 128, 128], (Kind::Uint8, Device::Cpu));
    let img_b = Tensor::randint(256, [3, 128, 128], (Kind::Uint8, Device::Cpu));
    let item = |tokens, image, weight| BatchItem {
        tokens,
        image,
        weight,
    };
    let one = |it: BatchItem| {
        let o = tch::no_grad(|| forward_batch(&model, &[it])).unwrap();
        (o.loss.double_value(&[]), o.tokens as f64)
    };
    let (la, na) = one(item(&short, &img_a, 1.0));
    let (lb, nb) = one(item(&long, &img_b, 1.0));
    assert!(nb > na, "the caption has more supervised tokens");
    let both = |wa, wb| {
        tch::no_grad(|| forward_batch(&model, &[item(&short, &img_a, wa), item(&long, &img_b, wb)]))
            .unwrap()
            .loss
            .double_value(&[])
    };
    let plain = (na * la + nb * lb) / (na + nb);
    assert!(
        (both(2.0, 2.0) - plain).abs() < 1e-5,
        "equal weights: token mean"
    );
    let weighted = (na * la + 0.25 * nb * lb) / (na + 0.25 * nb);
    let got = both(1.0, 0.25);
    assert!((got - weighted).abs() < 1e-5, "{got} vs {weighted}");
    assert!((got - plain).abs() > 1e-3, "the weights change the loss");
}

/// The LM runs once per group of similar lengths; the loss, the answer logits and every
/// gradient are those of one padded pass.
#[test]
fn length_grouped_passes_match_one_padded_pass() {
    use imgcot::models::llava_ov::train::{forward_batch_grouped, BatchItem};
    let (tok, model) = tiny_judge(7);
    let params: Vec<(String, Tensor)> = model.named_tensors();
    for (_, p) in &params {
        let _ = p.set_requires_grad(true);
    }
    let q = imgcot::models::llava_ov::prompt::orm_question("a photo of a red circle");
    let q2 = imgcot::models::llava_ov::prompt::orm_question(
        "a photo of a blue square left of a green triangle",
    );
    let samples = [
        chat_tokens(&tok, &question_answer(&q, "yes"), true).unwrap(),
        chat_tokens(
            &tok,
            &question_answer(
                "<image> Which one of the object is in this image?",
                "circle red, square blue, cross green, triangle yellow",
            ),
            true,
        )
        .unwrap(),
        chat_tokens(&tok, &question_answer(&q2, "no"), true).unwrap(),
        chat_tokens(&tok, &question_answer(&q, "no"), true).unwrap(),
    ];
    tch::manual_seed(3);
    let images: Vec<Tensor> = (0..samples.len())
        .map(|_| Tensor::randint(256, [3, 128, 128], (Kind::Uint8, Device::Cpu)))
        .collect();
    let batch: Vec<BatchItem> = samples
        .iter()
        .zip(&images)
        .zip([1.0, 0.2, 1.0, 1.0])
        .map(|((tokens, image), weight)| BatchItem {
            tokens,
            image,
            weight,
        })
        .collect();
    let run = |cost: Option<i64>| {
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let out = forward_batch_grouped(&model, &batch, cost).unwrap();
        out.loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad().copy()).collect();
        (
            out.loss.double_value(&[]),
            out.answer_logits.detach(),
            grads,
        )
    };
    // One padded pass against one pass per distinct length (3 here).
    let (l1, a1, g1) = run(None);
    let (lg, ag, gg) = run(Some(0));
    assert!((l1 - lg).abs() < 1e-5, "loss {l1} vs {lg}");
    let da = (&a1 - &ag).abs().max().double_value(&[]);
    assert!(da < 1e-4, "answer logits differ by {da}");
    for ((name, _), (x, y)) in params.iter().zip(g1.iter().zip(&gg)) {
        let d = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-6);
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{name}: gradient differs by {d} (max {scale})"
        );
    }
    assert!(
        g1.iter()
            .any(|g| g.abs().sum(Kind::Double).double_value(&[]) > 0.0),
        "the gradients are not all zero"
    );
}

#[test]
fn vision_pretrain_teaches_the_tower_to_name_each_cell() {
    let dir = common::temp_dir("judges-vision-pretrain");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut cfg = ft_cfg(&dir, "vp", 1);
    cfg.lr = 0.0;
    cfg.vision_pretrain = Some(VisionPretrain {
        steps: 1,
        lr: 3e-3,
        batch_size: 16,
    });
    // One step, taken at the warmup's LR 0: the heads' chance level (7 classes per cell).
    let before = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu)
        .unwrap()
        .vision_pretrain
        .unwrap();
    cfg.vision_pretrain.as_mut().unwrap().steps = 120;
    cfg.out = dir.join("vp120");
    cfg.run_dir = dir.join("run-vp120");
    let rep = reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    let after = rep.vision_pretrain.clone().unwrap();
    assert_eq!(after.steps, 120);
    assert!(after.heldout_images > 0);
    let (s0, c0) = (
        before.heldout_shape_acc.unwrap(),
        before.heldout_color_acc.unwrap(),
    );
    let (s1, c1) = (
        after.heldout_shape_acc.unwrap(),
        after.heldout_color_acc.unwrap(),
    );
    assert!(
        s1 > 0.95 && c1 > 0.95 && s1 > s0 && c1 > c0,
        "cell accuracy shape {s0} → {s1}, color {c0} → {c1}"
    );
    assert!(after.final_loss < 0.2, "{}", after.final_loss);
    // The pretrained tower is what the fine-tune (here at LR 0) saved: the judge changed.
    assert_ne!(
        judge_scores(&dir, &dir.join("vp")),
        judge_scores(&dir, &dir.join("vp120"))
    );
}

#[test]
fn a_bare_judge_is_asked_at_inference_as_it_was_trained() {
    let dir = common::temp_dir("judges-bare");
    build_tiny_data(&dir, 12);
    let sc = tiny_scratch();
    let tok = tokenizer_path();
    let mut cfg = ft_cfg(&dir, "bare", 3);
    for d in cfg.data.iter_mut().chain(cfg.heldout.iter_mut()) {
        d.layout = Layout::Bare;
    }
    cfg.prompt_layout = Some(PromptLayout::Bare);
    reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    let mut judge = LlavaJudge::load(&dir.join("bare"), Device::Cpu, Kind::Float).unwrap();
    judge.mode = ScoreMode::Exact;
    assert_eq!(judge.layout, PromptLayout::Bare);
    let tk = tokenizers::Tokenizer::from_file(tok.as_path()).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for file in ["orm_heldout.jsonl", "parm_heldout.jsonl"] {
        let recs = load_records(&dir.join(file), None).unwrap();
        let items: Vec<Sourced> = recs
            .iter()
            .map(|r| Sourced {
                record: r.clone(),
                loss_weight: 1.0,
                layout: Layout::Bare,
            })
            .collect();
        let prep = reward_ft::prepare_sourced(&items, &tk, 128, true, false).unwrap();
        let refs: Vec<_> = prep.iter().collect();
        let want = reward_ft::score_items(judge.model(), &refs, judge.yes_no_ids(), 16).unwrap();
        for (r, (y, n)) in recs.iter().zip(want) {
            let m = r.meta.as_ref().unwrap();
            let p = [m.prompt.clone()];
            let img = unit_image(&r.image).unsqueeze(0);
            // Each question through the judge's API: the scores of the records it was trained on.
            let (gy, gn) = match m.kind.as_str() {
                "clarity" => (y, 1.0 - judge.clarity(&p, &img).unwrap()[0]),
                "potential" => judge.potential(&p, &img).unwrap()[0],
                _ => (judge.outcome(&p, &img).unwrap()[0], n),
            };
            assert!(
                (gy - y).abs() < 1e-5 && (gn - n).abs() < 1e-5,
                "{} ({}): judge ({gy}, {gn}) vs training scorer ({y}, {n})",
                r.id,
                m.kind
            );
            kinds.insert(m.kind.clone());
            // `inspect judge --prompt` asks in the checkpoint's layout too.
            let [exact, _] =
                imgcot::judge::cli::inspect_judge(&imgcot::judge::cli::InspectJudgeArgs {
                    model: dir.join("bare"),
                    image: PathBuf::from(&r.image),
                    prompt: Some(m.prompt.clone()),
                    input_ids: None,
                    kind: match m.kind.as_str() {
                        "clarity" | "potential" => m.kind.clone(),
                        _ => "orm".into(),
                    },
                    device: "cpu".into(),
                    dtype: "fp32".into(),
                })
                .unwrap();
            assert!((exact.0 - y).abs() < 1e-5 && (exact.1 - n).abs() < 1e-5);
        }
    }
    assert!(["orm", "clarity", "potential"]
        .iter()
        .all(|k| kinds.contains(*k)));
    // The three questions differ, and a judge saved without the setting asks the paper's template.
    let texts: Vec<String> = [
        JudgeQuestion::Outcome,
        JudgeQuestion::Clarity,
        JudgeQuestion::Potential,
    ]
    .iter()
    .map(|&q| judge.prompt_text(q, "a photo of a red circle"))
    .collect();
    assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2]);
    cfg.prompt_layout = None;
    cfg.out = dir.join("chat");
    cfg.run_dir = dir.join("run-chat");
    cfg.max_steps = Some(1);
    reward_ft::run(&cfg, Some((&sc, &tok)), Device::Cpu).unwrap();
    let chat = LlavaJudge::load(&dir.join("chat"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(chat.layout, PromptLayout::Chat);
    assert_eq!(
        chat.prompt_text(JudgeQuestion::Outcome, "a photo of a red circle"),
        orm_prompt("a photo of a red circle")
    );
    // --init from the bare judge keeps its layout.
    cfg.init = Some(dir.join("bare"));
    cfg.out = dir.join("bare-again");
    cfg.run_dir = dir.join("run-bare-again");
    reward_ft::run(&cfg, None, Device::Cpu).unwrap();
    let again = LlavaJudge::load(&dir.join("bare-again"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(again.layout, PromptLayout::Bare);
}
