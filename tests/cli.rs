//! End-to-end tests of the `imgcot-train` binary on the tiny glyph-world recipe: pretrain (loss
//! falls), sample, eval, pair building, one DPO round (bad input, resume, interrupted checkpoint),
//! and clear errors on bad input.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run imgcot-train")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "imgcot-train {args:?} failed:\n{text}");
    text
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success(),
        "imgcot-train {args:?} should fail:\n{text}"
    );
    text
}

/// A tiny recipe under a fresh folder, with a 12-prompt evaluation set; pretrained once.
fn tiny(name: &str, pretrain: bool) -> (PathBuf, String) {
    let dir = common::temp_dir(name);
    let recipe = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny.yaml"),
    )
    .unwrap()
    .replace("TMP", dir.to_str().unwrap());
    let r = dir.join("recipe.yaml");
    std::fs::write(&r, recipe).unwrap();
    let eval: String = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/glyphs/eval_metadata.jsonl"),
    )
    .unwrap()
    .lines()
    .step_by(12)
    .map(|l| format!("{l}\n"))
    .collect();
    std::fs::write(dir.join("eval_metadata.jsonl"), eval).unwrap();
    let r = r.to_str().unwrap().to_string();
    if pretrain {
        ok(&["pretrain", "--recipe", &r]);
    }
    (dir, r)
}

fn losses(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(" loss=").nth(1))
        .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn pretrain_sample_eval_pairs_dpo() {
    let (dir, r) = tiny("cli-e2e", true);
    // Loss falls.
    let l = losses(&dir.join("runs/pretrain-tiny/log.txt"));
    assert!(l.len() >= 3, "{l:?}");
    assert!(
        l[l.len() - 1] < l[0] * 0.85,
        "pretrain loss did not fall: {l:?}"
    );
    assert!(dir.join("ckpts/tiny/base/config.json").exists());
    assert!(dir
        .join("ckpts/tiny/base/pytorch_model.safetensors")
        .exists());

    // Sample: PNGs + sidecars; the same seed gives the same image.
    let out = dir.join("samples");
    let o = out.to_str().unwrap();
    ok(&[
        "sample",
        "--recipe",
        &r,
        "--prompt",
        "a photo of a red circle",
        "--n",
        "3",
        "--seed",
        "5",
        "--out",
        o,
        "--save-steps",
    ]);
    assert_eq!(imgcot::commands::sample::count_pngs(&out), 3 + 3 * 4);
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("00000-001.json")).unwrap())
            .unwrap();
    assert_eq!(side["prompt"], "a photo of a red circle");
    assert_eq!(side["sampler"]["steps"], 4);
    let again = dir.join("samples2");
    ok(&[
        "sample",
        "--recipe",
        &r,
        "--prompt",
        "a photo of a red circle",
        "--n",
        "3",
        "--seed",
        "5",
        "--out",
        again.to_str().unwrap(),
    ]);
    for k in 0..3 {
        let f = format!("00000-00{k}.png");
        assert_eq!(
            std::fs::read(out.join(&f)).unwrap(),
            std::fs::read(again.join(&f)).unwrap(),
            "{f}"
        );
    }

    // Best-of-N with the exact evaluator: one image per prompt, every candidate's judgment, and
    // the pick is a candidate with the best outcome score.
    let best = dir.join("best");
    let text = ok(&[
        "sample",
        "--recipe",
        &r,
        "--prompt",
        "a photo of a red circle",
        "--n",
        "3",
        "--seed",
        "5",
        "--verify",
        "oracle",
        "--out",
        best.to_str().unwrap(),
    ]);
    assert!(text.contains("judge calls"), "{text}");
    assert_eq!(imgcot::commands::sample::count_pngs(&best), 1);
    let tr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("00000.trajectory.json")).unwrap())
            .unwrap();
    let scores: Vec<f64> = tr["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 3, "{tr}");
    let chosen = tr["chosen"].as_u64().unwrap() as usize;
    assert!(
        scores.iter().all(|s| *s <= scores[chosen]),
        "{scores:?} {chosen}"
    );
    // A judge the recipe does not name, and an unknown verifier, are clear errors.
    let verify_fails = |v: &str| {
        fails(&[
            "sample", "--recipe", &r, "--prompt", "x", "--verify", v, "--out", "/tmp/x",
        ])
    };
    assert!(verify_fails("orm").contains("give --judge DIR"));
    assert!(verify_fails("best").contains("unknown --verify 'best'"));

    // Eval writes GenEval's layout, results and summary.
    let ev = dir.join("eval");
    let text = ok(&[
        "eval",
        "--recipe",
        &r,
        "--out",
        ev.to_str().unwrap(),
        "--images-per-prompt",
        "2",
    ]);
    assert!(text.contains("Overall score"), "{text}");
    assert!(ev.join("00000/metadata.jsonl").exists() && ev.join("00000/samples/0001.png").exists());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["images"], 26, "13 prompts × 2 images");
    assert!(s["strict"].is_number() && s["glyphs_per_image"].is_number());
    assert_eq!(
        std::fs::read_to_string(ev.join("results.jsonl"))
            .unwrap()
            .lines()
            .count(),
        26
    );
    // Score-only re-reads the same folder and gives the same summary.
    ok(&[
        "eval",
        "--recipe",
        &r,
        "--out",
        ev.to_str().unwrap(),
        "--score-only",
    ]);
    let s2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s, s2);

    // GenEval-layout generation: two shards merge into exactly the unsharded set.
    let meta = dir.join("eval_metadata.jsonl");
    let base = dir.join("ckpts/tiny/base");
    for (name, shard) in [("g-all", None), ("g-0", Some("0/2")), ("g-1", Some("1/2"))] {
        let img = dir.join(name);
        let mut a = vec![
            "eval",
            "geneval",
            "--ckpt",
            base.to_str().unwrap(),
            "--recipe",
            &r,
            "--metadata",
            meta.to_str().unwrap(),
        ];
        a.extend([
            "--images",
            img.to_str().unwrap(),
            "--images-per-prompt",
            "2",
            "--seed",
            "3",
        ]);
        if let Some(s) = shard {
            a.extend(["--shard", s]);
        }
        ok(&a);
    }
    let merged = dir.join("g-merged");
    imgcot::eval::geneval::layout::merge_shards(&[&dir.join("g-0"), &dir.join("g-1")], &merged)
        .unwrap();
    imgcot::eval::geneval::layout::compare_sets(&dir.join("g-all"), &merged).unwrap();
    let t = ok(&[
        "eval",
        "geneval",
        "--score",
        "glyph",
        "--images",
        dir.join("g-all").to_str().unwrap(),
    ]);
    assert!(t.contains("Overall score"), "{t}");
    let t = fails(&[
        "eval",
        "geneval",
        "--ckpt",
        base.to_str().unwrap(),
        "--recipe",
        &r,
        "--metadata",
        "/nonexistent/evaluation_metadata.jsonl",
        "--images",
        "/tmp/x",
    ]);
    assert!(t.contains("djghosh13/geneval"), "{t}");

    // Pairs with the exact evaluator, then DPO.
    let pairs = dir.join("pairs");
    ok(&[
        "pairs",
        "--recipe",
        &r,
        "--out",
        pairs.to_str().unwrap(),
        "--num-prompts",
        "40",
        "--n",
        "6",
    ]);
    let pf = pairs.join("pairs.jsonl");
    let n_pairs = std::fs::read_to_string(&pf).unwrap().lines().count();
    assert!(n_pairs >= 4, "only {n_pairs} pairs");
    let pf = pf.to_str().unwrap();

    // k steps + resume + k steps == 2k steps, and a stale half-written checkpoint is ignored.
    let whole = ok(&["dpo", "--recipe", &r, "--pairs", pf, "--run", "whole"]);
    ok(&[
        "dpo",
        "--recipe",
        &r,
        "--pairs",
        pf,
        "--run",
        "split",
        "--max-steps",
        "3",
    ]);
    let stale = dir.join("ckpts/split").join("step-6.tmp-999999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("pytorch_model.safetensors"), b"partial").unwrap();
    let text = ok(&[
        "dpo", "--recipe", &r, "--pairs", pf, "--run", "split", "--resume",
    ]);
    assert!(text.contains("resumed from"), "{text}");
    // The same run folder resumed under another learning rate is refused, naming the change.
    let r_lr = dir.join("recipe-lr.yaml");
    let text_lr = std::fs::read_to_string(&r).unwrap().replacen(
        "  reference: frozen\n  lr: 0.0001\n",
        "  reference: frozen\n  lr: 0.0002\n",
        1,
    );
    assert!(text_lr.contains("lr: 0.0002"));
    std::fs::write(&r_lr, text_lr).unwrap();
    let e = fails(&[
        "dpo",
        "--recipe",
        r_lr.to_str().unwrap(),
        "--pairs",
        pf,
        "--run",
        "split",
        "--resume",
    ]);
    assert!(e.contains("other settings") && e.contains("dpo.lr"), "{e}");
    let sorted = |p: PathBuf| {
        let mut t = tch::Tensor::read_safetensors(p).unwrap();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let a = sorted(dir.join("ckpts/whole/final/pytorch_model.safetensors"));
    let b = sorted(dir.join("ckpts/split/final/pytorch_model.safetensors"));
    assert_eq!(a.len(), b.len());
    let mut changed = 0.0f64;
    let base = tch::Tensor::read_safetensors(dir.join("ckpts/tiny/base/pytorch_model.safetensors"))
        .unwrap();
    // How far a trained tensor moved from the base's tensor of the same name.
    let from_base = |name: &str, t: &tch::Tensor| {
        let orig = &base.iter().find(|(n, _)| n == name).unwrap().1;
        common::max_abs_diff(t, orig)
    };
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let d = common::max_abs_diff(ta, tb);
        assert!(d <= 1e-6, "{na}: resumed run differs by {d}");
        changed = changed.max(from_base(na, ta));
    }
    assert!(changed > 0.0, "DPO did not change the policy");

    // bf16 training (fp32 master weights) runs on a CPU with native bf16 and saves the fp32
    // masters; elsewhere it is refused, as bf16 there is slower than fp32.
    let r16 = dir.join("recipe-bf16.yaml");
    let text16 = std::fs::read_to_string(&r).unwrap().replacen(
        "  reference: frozen\n",
        "  reference: frozen\n  reference_dtype: bf16\n  train_dtype: bf16\n",
        1,
    );
    assert!(text16.contains("train_dtype: bf16"));
    std::fs::write(&r16, text16).unwrap();
    let r16 = r16.to_str().unwrap();
    let args16 = ["dpo", "--recipe", r16, "--pairs", pf, "--run", "bf16"];
    if imgcot::util::cpu_has_native_bf16() {
        let t = ok(&args16);
        assert!(t.contains("fp32 master weights"), "{t}");
        let saved =
            tch::Tensor::read_safetensors(dir.join("ckpts/bf16/final/pytorch_model.safetensors"))
                .unwrap();
        let mut moved = 0.0f64;
        for (name, t) in &saved {
            assert_eq!(t.kind(), tch::Kind::Float, "{name}");
            moved = moved.max(from_base(name, t));
        }
        assert!(moved > 0.0, "bf16 DPO did not change the policy");
    } else {
        let t = fails(&args16);
        assert!(t.contains("AVX512-BF16"), "{t}");
    }

    // Pair building records each image's commit steps; DPO on the sampler's trajectory
    // likelihood replays them, and refuses pairs without them or another step count.
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(pf).unwrap().lines().next().unwrap()).unwrap();
    for side in ["chosen_commit", "rejected_commit"] {
        let c = first[side]
            .as_array()
            .unwrap_or_else(|| panic!("no {side}: {first}"));
        assert_eq!(c.len(), 64, "{side}: one step per image token");
        assert!(c.iter().all(|s| s.as_u64().unwrap() < 4), "{side}: {c:?}");
        // MaskGIT commits some codes at the first step and the rest by the last.
        assert!(c.iter().any(|s| s.as_u64() == Some(0)), "{side}: {c:?}");
        assert!(c.iter().any(|s| s.as_u64() == Some(3)), "{side}: {c:?}");
    }
    let traj = |steps: usize| {
        let path = dir.join(format!("recipe-traj{steps}.yaml"));
        let text = std::fs::read_to_string(&r).unwrap().replacen(
            "    columns: full\n",
            &format!("    columns: codebook\n    cfg_scale: 1.75\n    trajectory_steps: {steps}\n"),
            1,
        );
        assert!(text.contains("trajectory_steps"));
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (rt, rt_bad) = (traj(4), traj(5));
    ok(&["dpo", "--recipe", &rt, "--pairs", pf, "--run", "traj"]);
    let saved =
        tch::Tensor::read_safetensors(dir.join("ckpts/traj/final/pytorch_model.safetensors"))
            .unwrap();
    let moved = saved
        .iter()
        .map(|(n, t)| from_base(n, t))
        .fold(0.0f64, f64::max);
    assert!(moved > 0.0, "trajectory DPO did not change the policy");
    let t = fails(&[
        "dpo", "--recipe", &rt_bad, "--pairs", pf, "--run", "traj-bad",
    ]);
    assert!(t.contains("sampler runs 4 steps"), "{t}");
    let bare = dir.join("pairs/no-commits.jsonl");
    let stripped: String = std::fs::read_to_string(pf)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("chosen_commit");
            o.remove("rejected_commit");
            format!("{v}\n")
        })
        .collect();
    std::fs::write(&bare, stripped).unwrap();
    let t = fails(&[
        "dpo",
        "--recipe",
        &rt,
        "--pairs",
        bare.to_str().unwrap(),
        "--run",
        "traj-bare",
    ]);
    assert!(t.contains("no chosen_commit"), "{t}");

    // `--max-steps 0 --init CKPT --reference BASE` only measures CKPT's held-out implicit-reward
    // accuracy: it reproduces the round's own end-of-run figure, and a model against itself scores 0
    // (every reward difference is exactly 0).
    let end_acc = |t: &str| {
        let line = t
            .lines()
            .find(|l| l.starts_with("dpo round:"))
            .unwrap_or_else(|| panic!("no summary line in {t}"));
        let after = line.split("→ ").nth(1).unwrap();
        after.split(';').next().unwrap().trim().to_string()
    };
    let trained_acc = end_acc(&whole);
    assert_ne!(trained_acc, "-", "no held-out pairs: {whole}");
    assert_ne!(
        trained_acc, "0.000",
        "the trained policy ties the reference: {whole}"
    );
    let base_dir = dir.join("ckpts/tiny/base");
    let measure = |init: &Path, run: &str| {
        end_acc(&ok(&[
            "dpo",
            "--recipe",
            &r,
            "--pairs",
            pf,
            "--run",
            run,
            "--init",
            init.to_str().unwrap(),
            "--reference",
            base_dir.to_str().unwrap(),
            "--max-steps",
            "0",
        ]))
    };
    assert_eq!(
        measure(&dir.join("ckpts/whole/final"), "measure"),
        trained_acc
    );
    assert_eq!(measure(&base_dir, "measure-base"), "0.000");

    // A bad pairs file fails before any training step, naming file and line; nothing under ckpts/.
    let bad = dir.join("pairs/bad.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(pf)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let broken = lines[1].replacen("images/", "images/missing-", 1);
    std::fs::write(&bad, format!("{}\n{}\n{}\n", lines[0], broken, lines[2])).unwrap();
    let text = fails(&[
        "dpo",
        "--recipe",
        &r,
        "--pairs",
        bad.to_str().unwrap(),
        "--run",
        "bad",
    ]);
    assert!(text.contains("bad.jsonl:2"), "{text}");
    assert!(!dir.join("ckpts/bad").exists());
    ok(&[
        "dpo",
        "--recipe",
        &r,
        "--pairs",
        bad.to_str().unwrap(),
        "--run",
        "skip",
        "--skip-bad-rows",
        "--max-steps",
        "1",
    ]);
}

#[test]
fn bad_input_gets_clear_errors() {
    let (dir, r) = tiny("cli-errors", false);
    let model = dir.join("m");
    std::fs::create_dir_all(&model).unwrap();
    // Missing checkpoint directory / file.
    let t = fails(&[
        "sample",
        "--recipe",
        &r,
        "--model",
        "/nonexistent/ckpt",
        "--prompt",
        "x",
        "--out",
        "/tmp/x",
    ]);
    assert!(t.contains("/nonexistent/ckpt/config.json"), "{t}");
    std::fs::write(model.join("config.json"), r#"{"llm_vocab_size":20,"codebook_size":12,"num_vq_tokens":16,"vocab_size":43,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":2}"#).unwrap();
    let m = model.to_str().unwrap();
    let t = fails(&[
        "sample", "--recipe", &r, "--model", m, "--prompt", "x", "--out", "/tmp/x",
    ]);
    assert!(
        t.contains("no weights in") && t.contains("pytorch_model.safetensors"),
        "{t}"
    );
    // Unknown config key type.
    std::fs::write(model.join("config.json"), r#"{"hidden_size":"big"}"#).unwrap();
    let t = fails(&[
        "sample", "--recipe", &r, "--model", m, "--prompt", "x", "--out", "/tmp/x",
    ]);
    assert!(
        t.contains("config.json") && t.contains("invalid type"),
        "{t}"
    );
    // Empty prompt file.
    let pf = dir.join("empty.txt");
    std::fs::write(&pf, "\n  \n").unwrap();
    let t = fails(&[
        "sample",
        "--recipe",
        &r,
        "--prompts",
        pf.to_str().unwrap(),
        "--out",
        "/tmp/x",
    ]);
    assert!(t.contains("holds no prompt"), "{t}");
    // A recipe with a typo.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&r)
            .unwrap()
            .replace("cfg_scale", "cfg_scal"),
    )
    .unwrap();
    let t = fails(&["eval", "--recipe", bad.to_str().unwrap()]);
    assert!(t.contains("cfg_scal"), "{t}");
}

#[test]
fn inspect_logits_matches_the_python_reference() {
    let dir = common::temp_dir("cli-inspect");
    let d = dir.to_str().unwrap();
    common::run_python("showo_ref.py", &[d]);
    let out = dir.join("logits.safetensors");
    ok(&[
        "inspect",
        "logits",
        "--model",
        d,
        "--input-ids",
        dir.join("reference.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let got = tch::Tensor::read_safetensors(&out).unwrap();
    let want = tch::Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    let want = &want.iter().find(|(n, _)| n == "logits").unwrap().1;
    assert!(common::max_abs_diff(&got[0].1, want) <= 1e-4);
    // A checkpoint tensor of the wrong shape is named.
    let f = dir.join("pytorch_model.safetensors");
    let mut t = tch::Tensor::read_safetensors(&f).unwrap();
    for (n, v) in t.iter_mut() {
        if n == "showo.model.layers.0.self_attn.q_proj.weight" {
            *v = tch::Tensor::zeros([3, 3], tch::kind::FLOAT_CPU);
        }
    }
    tch::Tensor::write_safetensors(&t, &f).unwrap();
    let t = fails(&[
        "inspect",
        "logits",
        "--model",
        d,
        "--input-ids",
        dir.join("reference.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(t.contains("showo.model.layers.0.self_attn.q_proj.weight': expected shape [256, 256], found [3, 3]"), "{t}");
}
