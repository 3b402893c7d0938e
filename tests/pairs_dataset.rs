//! The preference-pairs JSONL (validation with file:line errors, skip_bad_rows, writer) and the
//! on-disk image-code cache (each distinct image encoded once; identity change invalidates).
use anyhow::Result;
use imgcot::models::ImageTokenizer;
use imgcot::preference::cache::{encode_all, png_to_tensor, CodeCache};
use imgcot::preference::pairs::{load_pairs, write_pairs, PairRecord, PairsOptions};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A fresh, empty scratch folder per test (under target/, kept for inspection).
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tmp")
        .join(format!("pairs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("img")).unwrap();
    d
}

/// Writes an RGB PNG whose 2×2 blocks (row-major) have the given grey levels.
fn write_blocks(path: &Path, blocks: &[[u8; 2]; 2]) {
    let img = image::RgbImage::from_fn(4, 4, |x, y| {
        let v = blocks[(y / 2) as usize][(x / 2) as usize];
        image::Rgb([v, v, v])
    });
    img.save(path).unwrap();
}

fn write_solid(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

fn line(prompt: &str, chosen: &str, rejected: &str) -> String {
    format!(r#"{{"prompt":"{prompt}","chosen":"{chosen}","rejected":"{rejected}"}}"#)
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// a.png, b.png, c.png (4×4) and small.png (2×2).
fn images(d: &Path) {
    write_solid(&d.join("img/a.png"), 4, 4, [255, 0, 0]);
    write_solid(&d.join("img/b.png"), 4, 4, [0, 255, 0]);
    write_solid(&d.join("img/c.png"), 4, 4, [0, 0, 255]);
    write_solid(&d.join("img/small.png"), 2, 2, [9, 9, 9]);
}

fn strict(size: Option<(u32, u32)>) -> PairsOptions {
    PairsOptions {
        image_size: size,
        skip_bad_rows: false,
    }
}

#[test]
fn valid_file_loads_with_optional_fields() {
    let d = scratch("valid");
    images(&d);
    let f = d.join("pairs.jsonl");
    let full = r#"{"prompt":"a red A","chosen":"img/a.png","rejected":"img/b.png","chosen_score":0.9,"rejected_score":0.1,"tag":"color","metadata":{"seed":[1,2],"judge":"orm"}}"#;
    std::fs::write(
        &f,
        format!("{full}\n\n{}\r\n", line("p2", "img/c.png", "img/a.png")),
    )
    .unwrap();
    let (pairs, report) = load_pairs(&f, &strict(Some((4, 4)))).unwrap();
    assert_eq!((report.rows, report.kept, report.skipped.len()), (2, 2, 0));
    assert_eq!(pairs[0].line, 1);
    assert_eq!(pairs[1].line, 3); // blank line 2 is not a row, but line numbers stay true
    assert_eq!(pairs[0].chosen_path, d.join("img/a.png"));
    assert_eq!(pairs[1].rejected_path, d.join("img/a.png"));
    let r = &pairs[0].record;
    assert_eq!(
        (r.chosen_score, r.rejected_score, r.tag.as_deref()),
        (Some(0.9), Some(0.1), Some("color"))
    );
    assert_eq!(r.metadata.as_ref().unwrap()["seed"][1], 2);
    assert_eq!(pairs[1].record.metadata, None);
}

#[test]
fn missing_image_names_file_and_line() {
    let d = scratch("missing");
    images(&d);
    let f = d.join("pairs.jsonl");
    write_lines(
        &f,
        &[
            line("p1", "img/a.png", "img/b.png"),
            line("p2", "img/nope.png", "img/b.png"),
        ],
    );
    let e = load_pairs(&f, &strict(None)).unwrap_err().to_string();
    assert!(
        e.contains("pairs.jsonl:2: chosen image 'img/nope.png' not found"),
        "{e}"
    );
    assert!(e.starts_with(&f.display().to_string()), "{e}");
}

#[test]
fn wrong_size_corrupt_png_and_same_image() {
    let d = scratch("size");
    images(&d);
    std::fs::write(d.join("img/broken.png"), b"definitely not a png").unwrap();
    let f = d.join("pairs.jsonl");
    write_lines(
        &f,
        &[
            line("p1", "img/a.png", "img/b.png"),
            line("p2", "img/a.png", "img/small.png"),
        ],
    );
    let e = load_pairs(&f, &strict(Some((4, 4))))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pairs.jsonl:2: rejected image 'img/small.png' is 2x2, expected 4x4"),
        "{e}"
    );
    // Without an expected size any size passes.
    assert_eq!(load_pairs(&f, &strict(None)).unwrap().1.kept, 2);

    write_lines(&f, &[line("p1", "img/broken.png", "img/b.png")]);
    let e = load_pairs(&f, &strict(None)).unwrap_err().to_string();
    assert!(
        e.contains("pairs.jsonl:1: chosen image 'img/broken.png' is not a readable PNG"),
        "{e}"
    );

    write_lines(&f, &[line("p1", "img/a.png", "img/a.png")]);
    let e = load_pairs(&f, &strict(None)).unwrap_err().to_string();
    assert!(
        e.contains("pairs.jsonl:1: chosen and rejected are the same image"),
        "{e}"
    );
}

#[test]
fn malformed_lines() {
    let d = scratch("malformed");
    images(&d);
    let f = d.join("pairs.jsonl");
    let ok = line("p1", "img/a.png", "img/b.png");
    let cases: [(&str, &str); 6] = [
        (
            r#"{"prompt":"p","chosen":"img/a.png","#,
            "pairs.jsonl:2: malformed JSON",
        ),
        (
            r#"{"prompt":"p","chosen":"img/a.png"}"#,
            "pairs.jsonl:2: invalid pair: missing field `rejected`",
        ),
        (
            r#"{"prompt":"p","chosen":"img/a.png","rejected":"img/b.png","score":1}"#,
            "unknown field `score`",
        ),
        (
            r#"{"prompt":"p","chosen":"img/a.png","rejected":7}"#,
            "pairs.jsonl:2: invalid pair",
        ),
        (
            r#"["p","img/a.png","img/b.png"]"#,
            "pairs.jsonl:2: expected a JSON object",
        ),
        (
            r#"{"prompt":"  ","chosen":"img/a.png","rejected":"img/b.png"}"#,
            "pairs.jsonl:2: empty prompt",
        ),
    ];
    for (bad, want) in cases {
        write_lines(&f, &[ok.clone(), bad.to_string()]);
        let e = load_pairs(&f, &strict(None)).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: got '{e}', want '{want}'");
    }
    std::fs::write(&f, [ok.as_bytes(), b"\n\xff\xfe{}\n"].concat()).unwrap();
    let e = load_pairs(&f, &strict(None)).unwrap_err().to_string();
    assert!(e.contains("pairs.jsonl:2: not valid UTF-8"), "{e}");
    let e = load_pairs(&d.join("absent.jsonl"), &strict(None)).unwrap_err();
    assert!(format!("{e:#}").contains("absent.jsonl"), "{e:#}");
}

#[test]
fn skip_bad_rows_counts_and_strict_mode_reports_all() {
    let d = scratch("skip");
    images(&d);
    let f = d.join("pairs.jsonl");
    write_lines(
        &f,
        &[
            line("p1", "img/a.png", "img/b.png"),
            line("p2", "img/gone.png", "img/b.png"),
            line("p3", "img/b.png", "img/c.png"),
            "{oops".to_string(),
            line("p5", "img/c.png", "img/small.png"),
            line("p6", "img/c.png", "img/a.png"),
        ],
    );
    let opts = PairsOptions {
        image_size: Some((4, 4)),
        skip_bad_rows: true,
    };
    let (pairs, report) = load_pairs(&f, &opts).unwrap();
    assert_eq!(pairs.iter().map(|p| p.line).collect::<Vec<_>>(), [1, 3, 6]);
    assert_eq!((report.rows, report.kept), (6, 3));
    assert_eq!(
        report.skipped.iter().map(|b| b.line).collect::<Vec<_>>(),
        [2, 4, 5]
    );
    assert!(
        report.skipped[0].reason.contains("not found"),
        "{:?}",
        report.skipped[0]
    );
    assert!(
        report.skipped[1].reason.contains("malformed JSON"),
        "{:?}",
        report.skipped[1]
    );
    assert!(
        report.skipped[2].reason.contains("2x2"),
        "{:?}",
        report.skipped[2]
    );

    let e = load_pairs(&f, &strict(Some((4, 4))))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pairs.jsonl:2: chosen image 'img/gone.png' not found"),
        "{e}"
    );
    assert!(e.contains("2 more bad rows, lines 4, 5"), "{e}");

    // All rows bad: even skip_bad_rows fails rather than training on nothing.
    write_lines(&f, &[line("p2", "img/gone.png", "img/b.png")]);
    let e = load_pairs(&f, &opts).unwrap_err().to_string();
    assert!(e.contains("no valid pairs"), "{e}");
}

#[test]
fn writer_round_trips_atomically() {
    let d = scratch("writer");
    images(&d);
    let f = d.join("round1").join("pairs.jsonl");
    std::fs::create_dir_all(d.join("round1/img")).unwrap();
    for n in ["a", "b"] {
        std::fs::copy(
            d.join(format!("img/{n}.png")),
            d.join(format!("round1/img/{n}.png")),
        )
        .unwrap();
    }
    let recs = vec![
        PairRecord {
            prompt: "a \"quoted\"\nprompt".into(),
            chosen: "img/a.png".into(),
            rejected: "img/b.png".into(),
            chosen_score: Some(0.75),
            rejected_score: Some(0.25),
            tag: Some("t".into()),
            metadata: Some(serde_json::json!({"k": [1, "x", null]})),
            chosen_commit: None,
            rejected_commit: None,
        },
        PairRecord {
            prompt: "p".into(),
            chosen: "img/b.png".into(),
            rejected: "img/a.png".into(),
            chosen_score: None,
            rejected_score: None,
            tag: None,
            metadata: None,
            chosen_commit: None,
            rejected_commit: None,
        },
    ];
    write_pairs(&f, &recs).unwrap();
    let (pairs, _) = load_pairs(&f, &strict(Some((4, 4)))).unwrap();
    assert_eq!(
        pairs.iter().map(|p| p.record.clone()).collect::<Vec<_>>(),
        recs
    );
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text.lines().count(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(d.join("round1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn png_to_tensor_layout_and_range() {
    let d = scratch("png");
    let p = d.join("img/x.png");
    let img = image::RgbImage::from_fn(3, 2, |x, y| {
        image::Rgb([(x * 100) as u8, (y * 255) as u8, 0])
    });
    img.save(&p).unwrap();
    let t = png_to_tensor(&p).unwrap();
    assert_eq!(t.size(), [3, 2, 3]);
    assert_eq!(t.kind(), Kind::Float);
    let at = |c: i64, y: i64, x: i64| t.double_value(&[c, y, x]);
    assert!((at(0, 0, 2) - (200.0 / 127.5 - 1.0)).abs() < 1e-6);
    assert!((at(1, 1, 0) - 1.0).abs() < 1e-6);
    assert!((at(1, 0, 0) + 1.0).abs() < 1e-6);
    assert!((at(2, 1, 2) + 1.0).abs() < 1e-6);
    assert!(png_to_tensor(&d.join("img/none.png")).is_err());
}

/// Mean grey level of each 2×2 block, quantised to `levels` codes; counts its calls.
struct BlockMean {
    levels: i64,
    calls: Cell<usize>,
    images: Cell<usize>,
}

impl BlockMean {
    fn new() -> Self {
        Self {
            levels: 4,
            calls: Cell::new(0),
            images: Cell::new(0),
        }
    }
}

impl ImageTokenizer for BlockMean {
    fn codebook_size(&self) -> i64 {
        self.levels
    }
    fn grid_size(&self, image_size: i64) -> i64 {
        image_size / 2
    }
    fn encode(&self, images: &Tensor) -> Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        self.images
            .set(self.images.get() + images.size()[0] as usize);
        let m = images
            .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
            .mean_dim(1, false, Kind::Float);
        let q = ((m + 1.0) / 2.0 * (self.levels - 1) as f64)
            .round()
            .clamp(0, self.levels - 1);
        Ok(q.to_kind(Kind::Int64).view([images.size()[0], -1]))
    }
    fn decode(&self, _codes: &Tensor) -> Result<Tensor> {
        anyhow::bail!("not needed")
    }
}

/// Expected code of a grey level v: round(v/255 · 3).
fn code(v: u8) -> i64 {
    (v as f64 / 255.0 * 3.0).round() as i64
}

#[test]
fn cache_encodes_each_image_once() {
    let d = scratch("cache");
    let levels: [[[u8; 2]; 2]; 4] = [
        [[255, 0], [0, 0]],
        [[0, 255], [90, 170]],
        [[170, 170], [0, 255]],
        [[0, 0], [0, 90]],
    ];
    for (i, b) in levels.iter().enumerate() {
        write_blocks(&d.join(format!("img/{i}.png")), b);
    }
    // Same bytes as 0.png under another name: cached by content, encoded once.
    std::fs::copy(d.join("img/0.png"), d.join("img/0-copy.png")).unwrap();
    let f = d.join("pairs.jsonl");
    write_lines(
        &f,
        &[
            line("p1", "img/0.png", "img/1.png"),
            line("p2", "img/2.png", "img/0-copy.png"),
            line("p3", "img/1.png", "img/2.png"),
        ],
    );
    let (pairs, _) = load_pairs(&f, &strict(Some((4, 4)))).unwrap();
    let cache_dir = d.join("cache");
    let tok = BlockMean::new();
    let codes = encode_all(&pairs, &tok, "blockmean-v1", &cache_dir, Device::Cpu, 2).unwrap();
    // Distinct contents: 0, 1, 2 → 3 images in 2 batches of ≤ 2.
    assert_eq!((tok.calls.get(), tok.images.get()), (2, 3));
    let expect = |i: usize| {
        levels[i]
            .iter()
            .flatten()
            .map(|&v| code(v))
            .collect::<Vec<i64>>()
    };
    let got = |t: &Tensor| Vec::<i64>::try_from(t).unwrap();
    assert_eq!(codes.len(), 3);
    assert_eq!((got(&codes[0].0), got(&codes[0].1)), (expect(0), expect(1)));
    assert_eq!((got(&codes[1].0), got(&codes[1].1)), (expect(2), expect(0)));
    assert_eq!((got(&codes[2].0), got(&codes[2].1)), (expect(1), expect(2)));
    assert_eq!(expect(1), [0, 3, 1, 2]);

    // Second run, fresh tokenizer: everything comes from disk.
    let tok2 = BlockMean::new();
    let again = encode_all(&pairs, &tok2, "blockmean-v1", &cache_dir, Device::Cpu, 2).unwrap();
    assert_eq!(tok2.calls.get(), 0);
    for (a, b) in codes.iter().zip(&again) {
        assert_eq!((got(&a.0), got(&a.1)), (got(&b.0), got(&b.1)));
    }

    // A new image: only it is encoded.
    write_lines(
        &f,
        &[
            line("p1", "img/0.png", "img/1.png"),
            line("p4", "img/3.png", "img/1.png"),
        ],
    );
    let (pairs2, _) = load_pairs(&f, &strict(Some((4, 4)))).unwrap();
    let tok3 = BlockMean::new();
    let c3 = encode_all(&pairs2, &tok3, "blockmean-v1", &cache_dir, Device::Cpu, 8).unwrap();
    assert_eq!((tok3.calls.get(), tok3.images.get()), (1, 1));
    assert_eq!(got(&c3[1].0), expect(3));
    assert_eq!(
        CodeCache::open(&cache_dir, "blockmean-v1").unwrap().len(),
        4
    );

    // A changed tokenizer identity sees none of it.
    let tok4 = BlockMean::new();
    encode_all(&pairs2, &tok4, "blockmean-v2", &cache_dir, Device::Cpu, 8).unwrap();
    assert_eq!((tok4.calls.get(), tok4.images.get()), (1, 3));
    assert!(CodeCache::open(&cache_dir, "blockmean-v1").unwrap().len() == 4);
}

#[test]
fn inconsistent_cache_is_rebuilt_not_trusted() {
    let d = scratch("stale");
    write_blocks(&d.join("img/0.png"), &[[255, 0], [0, 0]]);
    write_blocks(&d.join("img/1.png"), &[[0, 0], [0, 255]]);
    let f = d.join("pairs.jsonl");
    write_lines(&f, &[line("p1", "img/0.png", "img/1.png")]);
    let (pairs, _) = load_pairs(&f, &strict(None)).unwrap();
    let cache_dir = d.join("cache");
    let tok = BlockMean::new();
    encode_all(&pairs, &tok, "bm", &cache_dir, Device::Cpu, 4).unwrap();
    let dir = CodeCache::open(&cache_dir, "bm")
        .unwrap()
        .dir()
        .to_path_buf();
    // Flip one byte of the codes file: the index's hash no longer matches.
    let cf = dir.join("codes.safetensors");
    let mut bytes = std::fs::read(&cf).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&cf, bytes).unwrap();
    assert_eq!(CodeCache::open(&cache_dir, "bm").unwrap().len(), 0);
    let tok2 = BlockMean::new();
    let c = encode_all(&pairs, &tok2, "bm", &cache_dir, Device::Cpu, 4).unwrap();
    assert_eq!(tok2.images.get(), 2);
    assert_eq!(Vec::<i64>::try_from(&c[0].0).unwrap(), [3, 0, 0, 0]);
    assert_eq!(CodeCache::open(&cache_dir, "bm").unwrap().len(), 2);
}

/// A tokenizer that returns codes outside its codebook is an error, not cached garbage.
#[test]
fn out_of_range_codes_are_rejected() {
    struct Bad;
    impl ImageTokenizer for Bad {
        fn codebook_size(&self) -> i64 {
            2
        }
        fn grid_size(&self, s: i64) -> i64 {
            s
        }
        fn encode(&self, images: &Tensor) -> Result<Tensor> {
            Ok(Tensor::full(
                [images.size()[0], 4],
                5,
                (Kind::Int64, Device::Cpu),
            ))
        }
        fn decode(&self, _: &Tensor) -> Result<Tensor> {
            anyhow::bail!("unused")
        }
    }
    let d = scratch("range");
    images(&d);
    let f = d.join("pairs.jsonl");
    write_lines(&f, &[line("p1", "img/a.png", "img/b.png")]);
    let (pairs, _) = load_pairs(&f, &strict(None)).unwrap();
    let e = encode_all(&pairs, &Bad, "bad", &d.join("cache"), Device::Cpu, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside [0, 2)"), "{e}");
    assert_eq!(CodeCache::open(&d.join("cache"), "bad").unwrap().len(), 0);
}
