//! The glyph world's prompt grammar (glyph-world.md, "Prompts and metadata"), its full prompt
//! space, and the fixed splits committed under `data/glyphs/`:
//! - `eval_metadata.jsonl`: the "glyph-geneval" evaluation set (150 prompts, [`EVAL_COUNTS`]);
//! - `train_prompts.jsonl`: every other prompt of the grammar (all six single_object prompts).
//!
//! Lines are GenEval's `evaluation_metadata.jsonl` format, written with Python `json.dumps`
//! separators so the files read like GenEval's own.
use super::rng::{seeded, shuffle};
use super::world::{COLORS, SHAPES, SHAPE_PLURALS};
use crate::eval::geneval::{ExcludeClause, IncludeClause, Metadata, TAGS};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Number words of the counting prompts and their counts.
pub const NUMBERS: [(&str, usize); 3] = [("two", 2), ("three", 3), ("four", 4)];
/// Relations of the position prompts (GenEval's spelling).
pub const RELATIONS: [&str; 4] = ["left of", "right of", "above", "below"];
/// Seed of the committed splits (GenEval's `create_prompts.py` also uses 43).
pub const SPLIT_SEED: u64 = 43;
/// File name of the glyph-geneval set under [`data_dir`].
pub const EVAL_METADATA_FILE: &str = "eval_metadata.jsonl";
/// File name of the training prompts under [`data_dir`].
pub const TRAIN_PROMPTS_FILE: &str = "train_prompts.jsonl";

/// Prompts per tag in glyph-geneval (150 in all), in [`TAGS`] order.
///
/// GenEval's 553 are 80/99/80/94/100/100, nearly equal per tag; scaled to 150 that is about 27
/// per tag. The glyph grammar's spaces are small for four tags (6, 30, 18, 36 prompts), and
/// training prompts must stay disjoint, so: single_object takes all 6; two_object, counting and
/// colors take two thirds of their space (20, 12, 24), leaving 10, 6 and 12 for training; the
/// remainder is split equally between position and color_attr (44 each), the two tags that
/// GenEval weights most and where verification and DPO have the most headroom.
pub const EVAL_COUNTS: [(&str, usize); 6] = [
    ("single_object", 6),
    ("two_object", 20),
    ("counting", 12),
    ("colors", 24),
    ("position", 44),
    ("color_attr", 44),
];

/// The folder of the committed glyph data files (`<crate>/data/glyphs`).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("glyphs")
}

fn include(class: &str, count: usize) -> IncludeClause {
    IncludeClause {
        class: class.to_string(),
        count,
        color: None,
        position: None,
    }
}

/// "a photo of a {shape}".
pub fn single_object(shape: usize) -> Metadata {
    Metadata {
        tag: "single_object".into(),
        include: vec![include(SHAPES[shape], 1)],
        exclude: vec![],
        prompt: format!("a photo of a {}", SHAPES[shape]),
    }
}

/// "a photo of a {shape1} and a {shape2}".
pub fn two_object(shape1: usize, shape2: usize) -> Metadata {
    Metadata {
        tag: "two_object".into(),
        include: vec![include(SHAPES[shape1], 1), include(SHAPES[shape2], 1)],
        exclude: vec![],
        prompt: format!("a photo of a {} and a {}", SHAPES[shape1], SHAPES[shape2]),
    }
}

/// "a photo of {two|three|four} {shapes}"; `number` indexes [`NUMBERS`]. Exclude: count + 1.
pub fn counting(number: usize, shape: usize) -> Metadata {
    let (word, n) = NUMBERS[number];
    Metadata {
        tag: "counting".into(),
        include: vec![include(SHAPES[shape], n)],
        exclude: vec![ExcludeClause {
            class: SHAPES[shape].to_string(),
            count: n + 1,
        }],
        prompt: format!("a photo of {word} {}", SHAPE_PLURALS[shape]),
    }
}

/// "a photo of a {color} {shape}".
pub fn colors(color: usize, shape: usize) -> Metadata {
    Metadata {
        tag: "colors".into(),
        include: vec![IncludeClause {
            color: Some(COLORS[color].into()),
            ..include(SHAPES[shape], 1)
        }],
        exclude: vec![],
        prompt: format!("a photo of a {} {}", COLORS[color], SHAPES[shape]),
    }
}

/// "a photo of a {shape2} {rel} a {shape1}": include[0] = shape1 (the target), include[1] =
/// shape2 with position [rel, 0]; `relation` indexes [`RELATIONS`].
pub fn position(shape2: usize, relation: usize, shape1: usize) -> Metadata {
    let rel = RELATIONS[relation];
    Metadata {
        tag: "position".into(),
        include: vec![
            include(SHAPES[shape1], 1),
            IncludeClause {
                position: Some((rel.to_string(), 0)),
                ..include(SHAPES[shape2], 1)
            },
        ],
        exclude: vec![],
        prompt: format!("a photo of a {} {rel} a {}", SHAPES[shape2], SHAPES[shape1]),
    }
}

/// "a photo of a {color1} {shape1} and a {color2} {shape2}".
pub fn color_attr(color1: usize, shape1: usize, color2: usize, shape2: usize) -> Metadata {
    Metadata {
        tag: "color_attr".into(),
        include: vec![
            IncludeClause {
                color: Some(COLORS[color1].into()),
                ..include(SHAPES[shape1], 1)
            },
            IncludeClause {
                color: Some(COLORS[color2].into()),
                ..include(SHAPES[shape2], 1)
            },
        ],
        exclude: vec![],
        prompt: format!(
            "a photo of a {} {} and a {} {}",
            COLORS[color1], SHAPES[shape1], COLORS[color2], SHAPES[shape2]
        ),
    }
}

/// Every prompt of one tag, in a fixed enumeration order. Sizes: single_object 6, two_object 30
/// (ordered pairs, shape1 ≠ shape2), counting 18, colors 36, position 120 (shape1 ≠ shape2),
/// color_attr 1080 (shape1 ≠ shape2; the spec lets the two colors be equal).
pub fn enumerate(tag: &str) -> Result<Vec<Metadata>> {
    let n = SHAPES.len();
    let pairs = || (0..n).flat_map(move |a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)));
    Ok(match tag {
        "single_object" => (0..n).map(single_object).collect(),
        "two_object" => pairs().map(|(a, b)| two_object(a, b)).collect(),
        "counting" => (0..NUMBERS.len())
            .flat_map(|k| (0..n).map(move |s| counting(k, s)))
            .collect(),
        "colors" => (0..COLORS.len())
            .flat_map(|c| (0..n).map(move |s| colors(c, s)))
            .collect(),
        "position" => pairs()
            .flat_map(|(target, other)| {
                (0..RELATIONS.len()).map(move |r| position(other, r, target))
            })
            .collect(),
        "color_attr" => pairs()
            .flat_map(|(a, b)| {
                (0..COLORS.len())
                    .flat_map(move |ca| (0..COLORS.len()).map(move |cb| color_attr(ca, a, cb, b)))
            })
            .collect(),
        _ => bail!("unknown GenEval tag '{tag}' (expected one of {TAGS:?})"),
    })
}

/// The whole prompt space, tags in [`TAGS`] order.
pub fn prompt_space() -> Vec<Metadata> {
    TAGS.iter()
        .flat_map(|t| enumerate(t).expect("known tag"))
        .collect()
}

/// The stratum of a prompt for the stratified eval draw: the number word for counting, the color
/// for colors, the relation for position (so each is balanced in the eval set); none otherwise.
fn stratum(meta: &Metadata) -> String {
    match meta.tag.as_str() {
        "counting" => meta.include[0].count.to_string(),
        "colors" => meta.include[0].color.clone().unwrap_or_default(),
        "position" => meta.include[1]
            .position
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The evaluation and training prompt sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSplit {
    /// glyph-geneval, tags in [`TAGS`] order, each in enumeration order.
    pub eval: Vec<Metadata>,
    /// The rest of the grammar (all of single_object), same order.
    pub train: Vec<Metadata>,
}

/// Draws the split deterministically from `seed`: per tag (its own ChaCha8 stream), the
/// [`EVAL_COUNTS`] prompts are drawn without replacement, equally from each stratum (number word,
/// color, relation) where the tag has strata; the training set is the complement, except that
/// single_object is in both.
pub fn split(seed: u64) -> PromptSplit {
    let mut out = PromptSplit {
        eval: vec![],
        train: vec![],
    };
    for (stream, &(tag, k)) in EVAL_COUNTS.iter().enumerate() {
        let all = enumerate(tag).expect("known tag");
        if tag == "single_object" {
            out.eval.extend(all.iter().cloned());
            out.train.extend(all);
            continue;
        }
        let mut rng = seeded(seed, stream as u64);
        let mut strata: Vec<String> = Vec::new(); // distinct strata, first-appearance order
        for m in &all {
            let s = stratum(m);
            if !strata.contains(&s) {
                strata.push(s);
            }
        }
        assert_eq!(
            k % strata.len(),
            0,
            "{tag}: {k} eval prompts do not divide into {} strata",
            strata.len()
        );
        let mut chosen = vec![false; all.len()];
        for s in &strata {
            let mut idx: Vec<usize> = (0..all.len()).filter(|&i| &stratum(&all[i]) == s).collect();
            shuffle(&mut rng, &mut idx);
            for &i in &idx[..k / strata.len()] {
                chosen[i] = true;
            }
        }
        for (m, c) in all.into_iter().zip(chosen) {
            if c {
                out.eval.push(m);
            } else {
                out.train.push(m);
            }
        }
    }
    out
}

/// Metadata lines as GenEval writes them (`json.dumps`: ", " and ": " separators), one per line.
pub fn to_jsonl(lines: &[Metadata]) -> String {
    let mut out = String::new();
    for m in lines {
        out.push_str(&to_json_line(m));
        out.push('\n');
    }
    out
}

/// One metadata object as Python's `json.dumps` formats it (GenEval's metadata lines).
pub fn to_json_line(meta: &Metadata) -> String {
    crate::eval::geneval::python_json(meta)
}

/// Parses metadata JSONL (blank lines ignored); errors name `source` and the line number.
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Metadata>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{source}:{}: bad metadata line", i + 1))
        })
        .collect()
}

/// Reads a metadata JSONL file.
pub fn load_jsonl(path: &Path) -> Result<Vec<Metadata>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_jsonl(&text, &path.display().to_string())
}

/// The committed glyph-geneval set.
pub fn load_eval_set() -> Result<Vec<Metadata>> {
    load_jsonl(&data_dir().join(EVAL_METADATA_FILE))
}

/// The committed training prompts.
pub fn load_train_set() -> Result<Vec<Metadata>> {
    load_jsonl(&data_dir().join(TRAIN_PROMPTS_FILE))
}

/// The bytes of both data files for `seed`: `(eval_metadata.jsonl, train_prompts.jsonl)`.
pub fn data_files(seed: u64) -> (String, String) {
    let s = split(seed);
    (to_jsonl(&s.eval), to_jsonl(&s.train))
}

/// Writes `eval_metadata.jsonl` and `train_prompts.jsonl` (seed [`SPLIT_SEED`]) into `dir`.
pub fn write_data_files(dir: &Path) -> Result<()> {
    let (eval, train) = data_files(SPLIT_SEED);
    crate::util::atomic_write(&dir.join(EVAL_METADATA_FILE), eval.as_bytes())?;
    crate::util::atomic_write(&dir.join(TRAIN_PROMPTS_FILE), train.as_bytes())?;
    Ok(())
}

/// Parses a prompt of the grammar back into its metadata (the inverse of the constructors).
pub fn parse_prompt(prompt: &str) -> Result<Metadata> {
    let bad = || anyhow::anyhow!("'{prompt}' is not a glyph-world prompt");
    let rest = prompt.strip_prefix("a photo of ").ok_or_else(bad)?;
    let shape = |w: &str| SHAPES.iter().position(|&s| s == w);
    let color = |w: &str| COLORS.iter().position(|&c| c == w);
    // "a {shape}" or "a {color} {shape}" → (color, shape)
    let object = |s: &str| -> Option<(Option<usize>, usize)> {
        let words: Vec<&str> = s.strip_prefix("a ")?.split(' ').collect();
        match words.as_slice() {
            [s] => Some((None, shape(s)?)),
            [c, s] => Some((Some(color(c)?), shape(s)?)),
            _ => None,
        }
    };
    let meta = if let Some((a, b)) = rest.split_once(" and ") {
        match (object(a).ok_or_else(bad)?, object(b).ok_or_else(bad)?) {
            ((None, s1), (None, s2)) if s1 != s2 => two_object(s1, s2),
            ((Some(c1), s1), (Some(c2), s2)) if s1 != s2 => color_attr(c1, s1, c2, s2),
            _ => return Err(bad()),
        }
    } else if let Some((r, (a, b))) = RELATIONS
        .iter()
        .enumerate()
        .find_map(|(r, rel)| rest.split_once(&format!(" {rel} ")).map(|p| (r, p)))
    {
        match (object(a).ok_or_else(bad)?, object(b).ok_or_else(bad)?) {
            ((None, s2), (None, s1)) if s1 != s2 => position(s2, r, s1),
            _ => return Err(bad()),
        }
    } else if let Some((k, plural)) = NUMBERS
        .iter()
        .enumerate()
        .find_map(|(k, (w, _))| rest.strip_prefix(&format!("{w} ")).map(|p| (k, p)))
    {
        let s = SHAPE_PLURALS
            .iter()
            .position(|&p| p == plural)
            .ok_or_else(bad)?;
        counting(k, s)
    } else {
        match object(rest).ok_or_else(bad)? {
            (None, s) => single_object(s),
            (Some(c), s) => colors(c, s),
        }
    };
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    #[test]
    fn space_sizes_and_uniqueness() {
        let sizes: Vec<usize> = TAGS.iter().map(|t| enumerate(t).unwrap().len()).collect();
        assert_eq!(sizes, vec![6, 30, 18, 36, 120, 1080]);
        let all = prompt_space();
        let texts: HashSet<&str> = all.iter().map(|m| m.prompt.as_str()).collect();
        assert_eq!(texts.len(), all.len(), "prompt texts must be unique");
        assert!(enumerate("nope").is_err());
    }

    #[test]
    fn grammar_matches_geneval_format() {
        assert_eq!(
            to_json_line(&counting(0, 4)),
            r#"{"tag": "counting", "include": [{"class": "cross", "count": 2}], "exclude": [{"class": "cross", "count": 3}], "prompt": "a photo of two crosses"}"#
        );
        assert_eq!(
            to_json_line(&position(0, 1, 5)),
            r#"{"tag": "position", "include": [{"class": "ring", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a circle right of a ring"}"#
        );
        assert_eq!(
            to_json_line(&color_attr(4, 2, 5, 3)),
            r#"{"tag": "color_attr", "include": [{"class": "triangle", "count": 1, "color": "purple"}, {"class": "diamond", "count": 1, "color": "black"}], "prompt": "a photo of a purple triangle and a black diamond"}"#
        );
        for m in prompt_space() {
            assert!(!m.prompt.split(' ').any(|w| w == "an"), "{}", m.prompt);
            assert!(m.prompt.starts_with("a photo of "));
            crate::eval::geneval::rules::validate_metadata(&m).unwrap();
        }
    }

    #[test]
    fn parse_prompt_inverts_every_constructor() {
        for m in prompt_space() {
            assert_eq!(parse_prompt(&m.prompt).unwrap(), m);
        }
        for bad in [
            "a photo of an circle",
            "a photo of a circle and a circle",
            "a photo of five rings",
            "a circle",
        ] {
            assert!(parse_prompt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_counts_strata_and_disjointness() {
        let s = split(SPLIT_SEED);
        let count = |v: &[Metadata]| {
            let mut c: BTreeMap<String, usize> = BTreeMap::new();
            for m in v {
                *c.entry(m.tag.clone()).or_default() += 1;
            }
            c
        };
        let ev = count(&s.eval);
        let tr = count(&s.train);
        for (tag, k) in EVAL_COUNTS {
            assert_eq!(ev[tag], k, "{tag}");
            let space = enumerate(tag).unwrap().len();
            let want_train = if tag == "single_object" {
                space
            } else {
                space - k
            };
            assert_eq!(tr[tag], want_train, "{tag}");
        }
        assert_eq!(s.eval.len(), 150);
        let eval_texts: HashSet<&str> = s.eval.iter().map(|m| m.prompt.as_str()).collect();
        for m in &s.train {
            assert!(
                m.tag == "single_object" || !eval_texts.contains(m.prompt.as_str()),
                "{}",
                m.prompt
            );
        }
        // Strata balanced.
        for (tag, n_strata) in [("counting", 3), ("colors", 6), ("position", 4)] {
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for m in s.eval.iter().filter(|m| m.tag == tag) {
                *per.entry(stratum(m)).or_default() += 1;
            }
            assert_eq!(per.len(), n_strata, "{tag}");
            let k = EVAL_COUNTS.iter().find(|e| e.0 == tag).unwrap().1;
            assert!(per.values().all(|&v| v == k / n_strata), "{tag}: {per:?}");
        }
        // Another seed gives another split; the same seed the same one.
        assert_eq!(split(SPLIT_SEED), s);
        assert_ne!(split(SPLIT_SEED + 1).eval, s.eval);
    }

    #[test]
    fn jsonl_round_trip() {
        let s = split(SPLIT_SEED);
        let text = to_jsonl(&s.eval);
        assert_eq!(parse_jsonl(&text, "mem").unwrap(), s.eval);
        let err = parse_jsonl("{\"tag\": 1}\n", "x.jsonl").unwrap_err();
        assert!(format!("{err:#}").contains("x.jsonl:1"));
    }
}
