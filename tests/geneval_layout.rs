//! GenEval folder layout: write/list round trip, resumability, and the shard merge property.
use imgcot::eval::geneval::layout::{
    compare_sets, folder_name, list_images, load_metadata_jsonl, merge_shards,
    prompt_folder_complete, write_metadata, write_sample, Shard,
};
use imgcot::eval::geneval::Metadata;
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

/// Dummy PNG bytes, distinct per (prompt, sample).
fn png(i: usize, j: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend(format!("prompt {i} sample {j}").bytes());
    b
}

/// Prompts picked across all six tags of the shipped metadata.
fn some_prompts() -> Vec<Metadata> {
    let all = load_metadata_jsonl(Path::new(METADATA)).unwrap();
    [0, 1, 80, 81, 179, 180, 259, 260, 353, 354, 453, 454, 552]
        .iter()
        .map(|&i| all[i].clone())
        .collect()
}

/// What a generator does for one shard: skip complete prompts, write the rest.
fn generate(out: &Path, prompts: &[Metadata], shard: Shard, n_images: usize) -> usize {
    let mut written = 0;
    for i in shard.prompt_indices(prompts.len()) {
        if prompt_folder_complete(out, i, &prompts[i], n_images).unwrap() {
            continue;
        }
        write_metadata(out, i, &prompts[i]).unwrap();
        for j in 0..n_images {
            write_sample(out, i, j, &png(i, j)).unwrap();
        }
        written += 1;
    }
    written
}

#[test]
fn write_then_list_round_trip() {
    let prompts = some_prompts();
    let out = tmp_dir("geneval-layout");
    assert_eq!(generate(&out, &prompts, Shard::default(), 4), prompts.len());
    // Things upstream ignores, and one quirk it does not.
    std::fs::write(out.join("00000/grid.png"), b"grid").unwrap();
    std::fs::write(out.join("00000/samples/0009.jpg"), b"x").unwrap();
    std::fs::write(out.join("00000/samples/0008.PNG"), b"x").unwrap();
    std::fs::write(out.join("00000/samples/0004.png.bak"), b"x").unwrap(); // re.match: prefix match
    std::fs::create_dir_all(out.join("00000/samples/0005.png")).unwrap(); // not a file
    std::fs::create_dir_all(out.join("scores-detections")).unwrap();
    std::fs::write(out.join("00099"), b"a file, not a folder").unwrap();

    let listed = list_images(&out).unwrap();
    assert_eq!(listed.len(), prompts.len());
    for (i, f) in listed.iter().enumerate() {
        assert_eq!(f.name, folder_name(i));
        assert_eq!(f.metadata, prompts[i]);
        let want: Vec<String> = (0..4)
            .map(|j| format!("{:05}/samples/{j:04}.png", i))
            .collect();
        let got: Vec<String> = f.samples.iter().map(|s| s.rel.clone()).collect();
        if i == 0 {
            assert_eq!(
                got,
                [want.clone(), vec!["00000/samples/0004.png.bak".into()]].concat()
            );
        } else {
            assert_eq!(got, want);
        }
        for (j, s) in f.samples.iter().enumerate().take(4) {
            assert_eq!(std::fs::read(&s.path).unwrap(), png(i, j));
        }
    }
    // metadata.jsonl is one json.dumps line.
    let text = std::fs::read_to_string(out.join("00005/metadata.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with(r#"{"tag": "counting", "include": [{"class": "#));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn pretty_metadata_is_accepted_and_several_lines_are_not() {
    let out = tmp_dir("geneval-layout-meta");
    let m = &some_prompts()[9];
    std::fs::create_dir_all(out.join("7/samples")).unwrap();
    std::fs::write(
        out.join("7/metadata.jsonl"),
        serde_json::to_string_pretty(m).unwrap(),
    )
    .unwrap();
    assert_eq!(list_images(&out).unwrap()[0].metadata, *m);
    let two = format!(
        "{}\n{}\n",
        serde_json::to_string(m).unwrap(),
        serde_json::to_string(m).unwrap()
    );
    std::fs::write(out.join("7/metadata.jsonl"), two).unwrap();
    let err = format!("{:#}", list_images(&out).unwrap_err());
    assert!(err.contains("7/metadata.jsonl"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resumable_generation_detects_complete_folders() {
    let prompts = some_prompts();
    let out = tmp_dir("geneval-layout-resume");
    assert!(!prompt_folder_complete(&out, 3, &prompts[3], 4).unwrap());
    assert_eq!(generate(&out, &prompts, Shard::default(), 4), prompts.len());
    assert!(prompt_folder_complete(&out, 3, &prompts[3], 4).unwrap());
    // A rerun writes nothing; a lost or empty sample makes that one prompt incomplete.
    assert_eq!(generate(&out, &prompts, Shard::default(), 4), 0);
    std::fs::remove_file(out.join("00003/samples/0002.png")).unwrap();
    std::fs::write(out.join("00004/samples/0000.png"), b"").unwrap();
    assert_eq!(generate(&out, &prompts, Shard::default(), 4), 2);
    assert!(!prompt_folder_complete(&out, 3, &prompts[3], 5).unwrap());
    // A folder holding another prompt is an error, not "incomplete".
    assert!(prompt_folder_complete(&out, 3, &prompts[4], 4).is_err());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn two_shards_merge_to_the_unsharded_set() {
    let prompts = some_prompts();
    let root = tmp_dir("geneval-layout-shards");
    let full = root.join("full");
    generate(&full, &prompts, Shard::default(), 4);
    let shards: Vec<Shard> = ["0/2", "1/2"].iter().map(|s| s.parse().unwrap()).collect();
    let dirs: Vec<PathBuf> = (0..2).map(|k| root.join(format!("shard{k}"))).collect();
    let mut covered = Vec::new();
    for (s, d) in shards.iter().zip(&dirs) {
        generate(d, &prompts, *s, 4);
        covered.extend(s.prompt_indices(prompts.len()));
    }
    covered.sort();
    assert_eq!(
        covered,
        (0..prompts.len()).collect::<Vec<_>>(),
        "shards are disjoint and cover every prompt"
    );
    assert!(
        compare_sets(&dirs[0], &full).is_err(),
        "one shard alone is not the full set"
    );

    let merged = root.join("merged");
    let n = merge_shards(&[dirs[0].as_path(), dirs[1].as_path()], &merged).unwrap();
    assert_eq!(n, prompts.len());
    compare_sets(&merged, &full).unwrap();
    // Merging is idempotent for identical overlaps...
    merge_shards(
        &[dirs[0].as_path(), dirs[0].as_path(), dirs[1].as_path()],
        &root.join("merged2"),
    )
    .unwrap();
    // ...but a conflicting copy of a folder is refused.
    write_sample(&dirs[1], 0, 1, b"different").unwrap();
    write_metadata(&dirs[1], 0, &prompts[0]).unwrap();
    let err = format!(
        "{:#}",
        merge_shards(
            &[dirs[0].as_path(), dirs[1].as_path()],
            &root.join("merged3")
        )
        .unwrap_err()
    );
    assert!(err.contains("00000"), "{err}");
    // compare_sets notices a changed byte.
    write_sample(&merged, 5, 2, b"changed").unwrap();
    let err = format!("{:#}", compare_sets(&merged, &full).unwrap_err());
    assert!(err.contains("00005/samples/0002.png"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn metadata_jsonl_errors_name_file_and_line() {
    let dir = tmp_dir("geneval-layout-jsonl");
    let p = dir.join("evaluation_metadata.jsonl");
    let good = r#"{"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"}"#;
    std::fs::write(&p, format!("{good}\n\n{{\"tag\": \"colors\"}}\n")).unwrap();
    let err = format!("{:#}", load_metadata_jsonl(&p).unwrap_err());
    assert!(err.contains(&format!("{}:3", p.display())), "{err}");
    // A position target that is not an earlier clause is rejected (upstream would crash).
    let fwd = r#"{"tag": "position", "include": [{"class": "dog", "count": 1, "position": ["above", 1]}, {"class": "cat", "count": 1}], "prompt": "p"}"#;
    std::fs::write(&p, format!("{good}\n{fwd}\n")).unwrap();
    let err = format!("{:#}", load_metadata_jsonl(&p).unwrap_err());
    assert!(
        err.contains(&format!("{}:2", p.display())) && err.contains("earlier"),
        "{err}"
    );
    std::fs::write(&p, format!("{good}\n")).unwrap();
    assert_eq!(load_metadata_jsonl(&p).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
