//! summary_scores.py's numbers from an official-format results.jsonl built over the shipped
//! evaluation_metadata.jsonl (553 prompts x 4 images), checked against an independent count
//! and against a stdlib-Python mirror of summary_scores.py.
use imgcot::eval::geneval::layout::load_metadata_jsonl;
use imgcot::eval::geneval::summary::read_results;
use imgcot::eval::geneval::{python_json, Metadata, Summary, TAGS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const METADATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/geneval/evaluation_metadata.jsonl"
);

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgcot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic "correct" for image `j` of prompt `i`, with a tag-dependent rate so per-tag
/// accuracies differ and some prompts have no correct image.
fn correct(i: usize, j: usize, tag: usize) -> bool {
    let h = (i as u64)
        .wrapping_mul(2_654_435_761)
        .wrapping_add((j as u64).wrapping_mul(40_503))
        >> 5;
    (h % 10) < [9, 6, 4, 7, 2, 3][tag] as u64
}

/// A deterministic permutation (upstream's row order is os.listdir's, i.e. arbitrary): sort by
/// a splitmix64 hash of the index.
fn permutation(n: usize) -> Vec<usize> {
    let mix = |k: u64| {
        let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut keyed: Vec<(u64, usize)> = (0..n).map(|k| (mix(k as u64), k)).collect();
    keyed.sort();
    keyed.into_iter().map(|(_, k)| k).collect()
}

/// One results.jsonl line as pandas' `to_json(orient="records", lines=True)` writes it.
fn official_line(dir: &Path, i: usize, j: usize, meta: &Metadata, ok: bool) -> String {
    let v = serde_json::json!({
        "filename": format!("{}/{i:05}/samples/{j:04}.png", dir.display()),
        "tag": meta.tag,
        "prompt": meta.prompt,
        "correct": ok,
        "reason": if ok { String::new() } else { format!("expected {}>=1, found 0", meta.include[0].class) },
        "metadata": python_json(meta),
        "details": "{}",
    });
    // pandas escapes every "/" (only strings contain one in JSON text).
    serde_json::to_string(&v).unwrap().replace('/', "\\/")
}

fn python() -> String {
    std::env::var("IMGCOT_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn official_results_summary_matches_summary_scores() {
    let metas = load_metadata_jsonl(Path::new(METADATA)).unwrap();
    assert_eq!(metas.len(), 553);
    let dir = tmp_dir("geneval-summary");
    let images = (0..metas.len())
        .flat_map(|i| (0..4).map(move |j| (i, j)))
        .collect::<Vec<_>>();
    let tag_index = |m: &Metadata| TAGS.iter().position(|t| *t == m.tag).unwrap();
    let mut text = String::new();
    for k in permutation(images.len()) {
        let (i, j) = images[k];
        let ok = correct(i, j, tag_index(&metas[i]));
        text += &official_line(Path::new("/data/geneval run"), i, j, &metas[i], ok);
        text.push('\n');
    }
    assert!(text.contains(r#"\/samples\/"#));
    let results = dir.join("results.jsonl");
    std::fs::write(&results, &text).unwrap();

    // Independent count straight from the generated booleans.
    let mut per_tag: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut ok_images, mut ok_prompts) = (0, 0);
    for (i, m) in metas.iter().enumerate() {
        let oks: Vec<bool> = (0..4).map(|j| correct(i, j, tag_index(m))).collect();
        let e = per_tag.entry(m.tag.as_str()).or_default();
        e.0 += oks.iter().filter(|&&b| b).count();
        e.1 += 4;
        ok_images += oks.iter().filter(|&&b| b).count();
        ok_prompts += oks.iter().any(|&b| b) as usize;
    }
    let denominators: Vec<usize> = TAGS.iter().map(|t| per_tag[t].1).collect();
    assert_eq!(denominators, [320, 396, 320, 376, 400, 400]);

    let s = Summary::from_results_file(&results).unwrap();
    println!("{}", s.table());
    let order: Vec<&str> = s.tags.iter().map(|t| t.tag.as_str()).collect();
    assert_ne!(
        order, TAGS,
        "the shuffled rows should list tags in another first-appearance order"
    );
    assert_eq!((s.images, s.prompts), (2212, 553));
    assert_eq!(
        (s.correct_images, s.correct_prompts),
        (ok_images, ok_prompts)
    );
    assert!(
        ok_prompts < 553,
        "the rule must leave some prompts without a correct image"
    );
    for t in TAGS {
        let ts = s.tag(t).unwrap();
        assert_eq!((ts.correct, ts.images), per_tag[t], "{t}");
    }
    let accs: Vec<f64> = TAGS
        .iter()
        .map(|t| per_tag[t].0 as f64 / per_tag[t].1 as f64)
        .collect();
    let overall = accs.iter().sum::<f64>() / 6.0;
    assert!((s.overall() - overall).abs() < 1e-12);
    // Not the per-image mean: the tags have different sizes and rates.
    assert!((s.overall() - ok_images as f64 / 2212.0).abs() > 1e-3);
    let json = serde_json::to_value(s.to_json()).unwrap();
    for (t, a) in TAGS.iter().zip(&accs) {
        assert!((json[t].as_f64().unwrap() - a).abs() < 1e-15, "{t}");
    }
    assert_eq!(
        (json["images"].as_u64(), json["prompts"].as_u64()),
        (Some(2212), Some(553))
    );
    assert!((json["correct_prompts"].as_f64().unwrap() - ok_prompts as f64 / 553.0).abs() < 1e-15);

    // The stdlib-Python mirror of summary_scores.py prints the same table and numbers.
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/geneval_summary_mirror.py"
    );
    let py_json = dir.join("py.json");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(&results)
        .arg(&py_json)
        .output()
        .unwrap_or_else(|e| panic!("running {} (set IMGCOT_PYTHON): {e}", python()));
    assert!(
        out.status.success(),
        "mirror failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), s.table());
    let py: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&py_json).unwrap()).unwrap();
    for key in ["overall", "correct_images", "correct_prompts"] {
        assert_eq!(py[key].as_f64(), json[key].as_f64(), "{key}");
    }
    for t in TAGS {
        assert_eq!(py[t].as_f64(), json[t].as_f64(), "{t}");
        assert_eq!(py["denominators"][t].as_u64(), Some(per_tag[t].1 as u64));
    }

    // Round trip of the records themselves.
    let recs = read_results(&results).unwrap();
    assert!(recs[0].filename.starts_with("/data/geneval run/"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_results_line_names_file_and_line() {
    let dir = tmp_dir("geneval-summary-bad");
    let p = dir.join("results.jsonl");
    std::fs::write(&p, "{\"filename\": \"a\", \"tag\": \"colors\", \"prompt\": \"p\", \"correct\": true, \"metadata\": \"{}\"}\n{\"tag\": 1}\n").unwrap();
    let err = format!("{:#}", Summary::from_results_file(&p).unwrap_err());
    assert!(err.contains(&format!("{}:2", p.display())), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
