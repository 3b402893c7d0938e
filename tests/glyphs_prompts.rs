//! Glyph prompt sets: committed files regenerate byte for byte, every prompt is satisfiable and
//! its ground-truth render scores correct under GenEval's rules, blank images score 0, and the
//! committed tokenizer covers every prompt.
//!
//! To regenerate the committed files after a deliberate change to the grammar, the split or the
//! tokenizer texts: `IMGCOT_WRITE_GLYPH_DATA=1 cargo test --release --test glyphs_prompts`.
use imgcot::eval::geneval::rules::{evaluate, RuleOptions};
use imgcot::eval::geneval::{Metadata, TAGS};
use imgcot::glyphs::detect::{detect, strict};
use imgcot::glyphs::prompts::{
    self, data_dir, EVAL_COUNTS, EVAL_METADATA_FILE, SPLIT_SEED, TRAIN_PROMPTS_FILE,
};
use imgcot::glyphs::rng::seeded;
use imgcot::glyphs::scene::sample_scene;
use imgcot::glyphs::tokenizer::{self, TOKENIZER_FILE, UNK};
use imgcot::glyphs::world::{encode, render};

fn committed(name: &str) -> String {
    let path = data_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn data_files_regenerate_byte_identical() {
    if std::env::var("IMGCOT_WRITE_GLYPH_DATA").is_ok_and(|v| v == "1") {
        imgcot::glyphs::write_data_files(&data_dir()).unwrap();
    }
    let (eval, train) = prompts::data_files(SPLIT_SEED);
    assert!(
        committed(EVAL_METADATA_FILE) == eval,
        "{EVAL_METADATA_FILE} differs from its generator"
    );
    assert!(
        committed(TRAIN_PROMPTS_FILE) == train,
        "{TRAIN_PROMPTS_FILE} differs from its generator"
    );
    assert!(
        committed(TOKENIZER_FILE) == tokenizer::tokenizer_json().unwrap(),
        "{TOKENIZER_FILE} differs from its generator"
    );
}

#[test]
fn committed_sets_have_the_documented_counts() {
    let eval = prompts::load_eval_set().unwrap();
    let train = prompts::load_train_set().unwrap();
    for (tag, k) in EVAL_COUNTS {
        assert_eq!(eval.iter().filter(|m| m.tag == tag).count(), k, "{tag}");
        let space = prompts::enumerate(tag).unwrap().len();
        let want = if tag == "single_object" {
            space
        } else {
            space - k
        };
        assert_eq!(train.iter().filter(|m| m.tag == tag).count(), want, "{tag}");
    }
    assert_eq!(eval.len(), 150);
    // Tags appear in GenEval's order.
    let order: Vec<&str> = eval
        .iter()
        .map(|m| m.tag.as_str())
        .fold(vec![], |mut v, t| {
            if v.last() != Some(&t) {
                v.push(t);
            }
            v
        });
    assert_eq!(order, TAGS.to_vec());
}

fn check_ground_truth(meta: &Metadata, scenes: usize, seed: u64) {
    let opts = RuleOptions::default();
    let mut rng = seeded(seed, 7);
    for _ in 0..scenes {
        let codes = sample_scene(meta, &mut rng).unwrap_or_else(|e| panic!("{e:#}"));
        // The full path a generated image takes: pixels → codes → detections → rules.
        let decoded = encode(&render(&codes)).unwrap();
        assert_eq!(decoded, codes);
        let dets = detect(&decoded);
        let v = evaluate(meta, &dets, &opts);
        assert!(
            v.correct,
            "'{}': ground truth scored wrong: {}",
            meta.prompt, v.reason
        );
        assert!(
            strict(meta, &dets, &opts),
            "'{}': ground truth not strict",
            meta.prompt
        );
    }
}

#[test]
fn every_eval_prompt_is_satisfiable_and_its_ground_truth_scores_correct() {
    for (i, m) in prompts::load_eval_set().unwrap().iter().enumerate() {
        check_ground_truth(m, 8, i as u64);
    }
}

#[test]
fn every_train_prompt_is_satisfiable_and_its_ground_truth_scores_correct() {
    for (i, m) in prompts::load_train_set().unwrap().iter().enumerate() {
        check_ground_truth(m, 2, 10_000 + i as u64);
    }
}

#[test]
fn blank_images_score_zero_on_every_eval_prompt() {
    let opts = RuleOptions::default();
    let blank = encode(&vec![255u8; 128 * 128 * 3]).unwrap();
    assert!(detect(&blank).is_empty());
    for m in prompts::load_eval_set().unwrap() {
        assert!(
            !evaluate(&m, &detect(&blank), &opts).correct,
            "{}",
            m.prompt
        );
        assert!(!strict(&m, &detect(&blank), &opts), "{}", m.prompt);
    }
}

#[test]
fn committed_tokenizer_encodes_every_prompt_without_unk() {
    let tok = tokenizer::load().unwrap();
    let unk = tok.token_to_id(UNK).unwrap();
    let mut texts: Vec<String> = prompts::prompt_space()
        .into_iter()
        .map(|m| m.prompt)
        .collect();
    texts.extend(tokenizer::source_texts());
    for t in &texts {
        let enc = tok.encode(t.as_str(), false).unwrap();
        assert!(
            !enc.get_ids().contains(&unk),
            "'{t}' has an unknown word: {:?}",
            enc.get_tokens()
        );
        assert!(!enc.get_ids().is_empty());
    }
    // The eval/train files hold prompts of this grammar only.
    for m in prompts::load_eval_set()
        .unwrap()
        .iter()
        .chain(prompts::load_train_set().unwrap().iter())
    {
        assert_eq!(&prompts::parse_prompt(&m.prompt).unwrap(), m);
    }
    assert_eq!(tok.get_vocab_size(true), tokenizer::llm_vocab_size() + 10);
    assert_eq!(
        tok.token_to_id("[PAD]"),
        Some(tokenizer::llm_vocab_size() as u32)
    );
    assert_eq!(
        tok.token_to_id("<|lvg|>"),
        Some(tokenizer::llm_vocab_size() as u32 + 9)
    );
}
