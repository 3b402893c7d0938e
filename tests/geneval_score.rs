//! The scoring driver with the `detections` and `official` backends on a tiny image folder.
use imgcot::eval::geneval::layout::{load_metadata_jsonl, write_metadata, write_sample};
use imgcot::eval::geneval::summary::read_results;
use imgcot::eval::geneval::{
    python_json, score_folder, Backend, DetectionsFile, Metadata, OfficialScorer, RuleOptions,
    Summary, SummaryJson,
};
use serde_json::json;
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

/// single_object "bench", counting "two backpacks", position "dog right of a teddy bear"; two
/// images each.
fn setup(dir: &Path) -> Vec<Metadata> {
    let all = load_metadata_jsonl(Path::new(METADATA)).unwrap();
    let prompts = vec![all[0].clone(), all[180].clone(), all[353].clone()];
    assert_eq!(prompts[1].prompt, "a photo of two backpacks");
    assert_eq!(prompts[2].prompt, "a photo of a dog right of a teddy bear");
    for (i, m) in prompts.iter().enumerate() {
        write_metadata(dir, i, m).unwrap();
        for j in 0..2 {
            write_sample(dir, i, j, b"\x89PNG dummy").unwrap();
        }
    }
    prompts
}

fn d(class: &str, score: f64, b: [f64; 4]) -> serde_json::Value {
    json!({"class": class, "score": score, "box": b})
}

/// Per image: (detections, expected correct, expected reason).
fn cases() -> Vec<(&'static str, Vec<serde_json::Value>, bool, &'static str)> {
    let bear = [0.0, 0.0, 100.0, 100.0];
    vec![
        (
            "00000/samples/0000.png",
            vec![d("bench", 0.5, bear), d("dog", 0.2, bear)],
            true,
            "",
        ),
        (
            "00000/samples/0001.png",
            vec![d("bench", 0.3, bear)],
            false,
            "expected bench>=1, found 0",
        ),
        (
            "00001/samples/0000.png",
            vec![d("backpack", 0.95, bear), d("backpack", 0.91, bear)],
            true,
            "",
        ),
        (
            "00001/samples/0001.png",
            vec![
                d("backpack", 0.95, bear),
                d("backpack", 0.93, bear),
                d("backpack", 0.92, bear),
            ],
            false,
            "expected backpack<3, found 3",
        ),
        (
            "00002/samples/0000.png",
            vec![
                d("teddy bear", 0.8, bear),
                d("dog", 0.7, [150.0, 0.0, 250.0, 100.0]),
            ],
            true,
            "",
        ),
        (
            "00002/samples/0001.png",
            vec![
                d("teddy bear", 0.8, bear),
                d("dog", 0.7, [-150.0, 0.0, -50.0, 100.0]),
            ],
            false,
            "expected dog right of target, found left of target",
        ),
    ]
}

fn detections_jsonl(skip: Option<usize>) -> String {
    cases()
        .into_iter()
        .enumerate()
        .filter(|(k, _)| Some(*k) != skip)
        .map(|(_, (img, dets, _, _))| json!({"image": img, "detections": dets}).to_string() + "\n")
        .collect()
}

#[test]
fn detections_backend_scores_and_writes_outputs() {
    let root = tmp_dir("geneval-score");
    let images = root.join("images");
    let prompts = setup(&images);
    let det_path = root.join("dets.jsonl");
    std::fs::write(&det_path, detections_jsonl(None)).unwrap();
    let mut det = DetectionsFile::load(&det_path).unwrap();
    let out = root.join("out");
    let s = score_folder(
        &images,
        Backend::Detector(&mut det),
        &RuleOptions::default(),
        &out,
    )
    .unwrap();

    let recs = read_results(&out.join("results.jsonl")).unwrap();
    assert_eq!(recs.len(), 6);
    for (r, (img, _, ok, reason)) in recs.iter().zip(cases()) {
        assert_eq!(r.file.as_deref(), Some(img));
        assert_eq!((r.correct, r.reason.as_str()), (ok, reason), "{img}");
        let i: usize = img[..5].parse().unwrap();
        assert_eq!(
            (r.tag.as_str(), r.prompt.as_str()),
            (prompts[i].tag.as_str(), prompts[i].prompt.as_str())
        );
        assert_eq!(r.metadata, python_json(&prompts[i]));
        assert_eq!(Path::new(&r.filename), images.join(img));
    }
    // details: kept detections only, thresholded per the prompt's tag.
    let details: serde_json::Value = serde_json::from_str(&recs[0].details).unwrap();
    assert_eq!(details, json!({"bench": [[0.0, 0.0, 100.0, 100.0, 0.5]]}));

    let js: SummaryJson =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(js, s.to_json());
    assert_eq!(
        (js.single_object, js.counting, js.position),
        (Some(0.5), Some(0.5), Some(0.5))
    );
    assert_eq!(
        (js.two_object, js.colors, js.color_attr),
        (None, None, None)
    );
    assert_eq!(
        (js.overall, js.correct_images, js.correct_prompts),
        (0.5, 0.5, 1.0)
    );
    assert_eq!((js.images, js.prompts), (6, 3));
    assert_eq!(Summary::from_records(&recs).unwrap(), s);
    assert!(s.table().contains("counting         = 50.00% (1 / 2)\n"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn detections_file_errors_name_file_and_line() {
    let root = tmp_dir("geneval-score-bad");
    let images = root.join("images");
    setup(&images);
    let p = root.join("dets.jsonl");

    let mut lines: Vec<String> = detections_jsonl(None).lines().map(String::from).collect();
    lines[1] = r#"{"image": "00000/samples/0001.png", "detections": [{"class": "bench", "score": "high"}]}"#.into();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", DetectionsFile::load(&p).unwrap_err());
    assert!(err.contains(&format!("{}:2", p.display())), "{err}");

    lines[1] = lines[0].clone();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let err = format!("{:#}", DetectionsFile::load(&p).unwrap_err());
    assert!(
        err.contains(&format!("{}:2", p.display())) && err.contains("line 1"),
        "{err}"
    );

    // An image without a line: the error lists it.
    std::fs::write(&p, detections_jsonl(Some(3))).unwrap();
    let mut det = DetectionsFile::load(&p).unwrap();
    let err = score_folder(
        &images,
        Backend::Detector(&mut det),
        &RuleOptions::default(),
        &root.join("out"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1 image(s): 00001/samples/0001.png"), "{err}");
    assert!(!root.join("out/results.jsonl").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// Official-format results (pandas' "\/" escapes) for `cases()`, as evaluate_images.py writes.
fn official_results(images: &Path, prompts: &[Metadata], skip: Option<usize>) -> String {
    let mut s = String::new();
    for (k, (img, _, ok, reason)) in cases().into_iter().enumerate().rev() {
        if Some(k) == skip {
            continue;
        }
        let i: usize = img[..5].parse().unwrap();
        let v = json!({
            "filename": images.join(img).to_string_lossy(), "tag": prompts[i].tag, "prompt": prompts[i].prompt,
            "correct": ok, "reason": reason, "metadata": python_json(&prompts[i]), "details": "{}",
        });
        s += &(serde_json::to_string(&v).unwrap().replace('/', "\\/") + "\n");
    }
    s
}

#[test]
fn official_backend_runs_the_command_and_keeps_its_verdicts() {
    let root = tmp_dir("geneval-score-official");
    let images = root.join("images");
    let prompts = setup(&images);
    let canned = root.join("canned.jsonl");
    std::fs::write(&canned, official_results(&images, &prompts, None)).unwrap();
    let scorer = OfficialScorer {
        template: format!(
            "test -d {{images}} && test -d {{model_path}} && cp '{}' {{outfile}}",
            canned.display()
        ),
        model_path: Some(root.clone()),
    };
    let out = root.join("out");
    let s = score_folder(
        &images,
        Backend::Official(&scorer),
        &RuleOptions::default(),
        &out,
    )
    .unwrap();
    let recs = read_results(&out.join("results.jsonl")).unwrap();
    let got: Vec<(String, bool, String)> = recs
        .iter()
        .map(|r| (r.file.clone().unwrap(), r.correct, r.reason.clone()))
        .collect();
    let want: Vec<(String, bool, String)> = cases()
        .into_iter()
        .map(|(img, _, ok, reason)| (img.to_string(), ok, reason.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        (s.images, s.prompts, s.correct_images, s.correct_prompts),
        (6, 3, 3, 3)
    );
    assert!(out.join("official_results.jsonl").is_file());

    // A failing command is an error.
    let failing = OfficialScorer {
        template: "exit 3".into(),
        model_path: None,
    };
    let err = score_folder(
        &images,
        Backend::Official(&failing),
        &RuleOptions::default(),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("official scorer failed"), "{err}");
    // Results that miss an image are an error naming it.
    std::fs::write(&canned, official_results(&images, &prompts, Some(4))).unwrap();
    let err = score_folder(
        &images,
        Backend::Official(&scorer),
        &RuleOptions::default(),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("00002/samples/0000.png"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
