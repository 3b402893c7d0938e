//! `dpo --iter` interrupted anywhere resumes to the same result: a reference run on the tiny
//! glyph recipe with scripted, deterministic judges records which phase every judge call belongs
//! to; then runs whose judges fail in the middle of a chosen phase (pair labelling, DPO training
//! with the guidance term, a best-of-N eval stage) are resumed by the same call, and their
//! `summary.json` rows must equal the reference's.
mod common;
use anyhow::{bail, Result};
use imgcot::commands::eval::evaluate_with;
use imgcot::commands::iterate::{run, IterArgs, IterateConfig, Judges, Row};
use imgcot::judge::{OutcomeJudge, StepJudge};
use imgcot::recipe::Recipe;
use imgcot::verify::{OracleJudge, ParmConfig, Verifier};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::Tensor;

/// Shared by the scripted judges: calls so far, the call that fails (if any), and the phase of
/// every call (what the run was producing when the judge was asked).
#[derive(Default)]
struct Calls {
    n: usize,
    fail_at: Option<usize>,
    phases: Vec<String>,
}

#[derive(Clone)]
struct Tracker {
    calls: Arc<Mutex<Calls>>,
    run_dir: PathBuf,
    ckpt_dir: PathBuf,
}

impl Tracker {
    fn tick(&self) -> Result<()> {
        let phase = phase(&self.run_dir, &self.ckpt_dir);
        let mut c = self.calls.lock().unwrap();
        c.n += 1;
        c.phases.push(phase);
        if c.fail_at == Some(c.n) {
            bail!("injected interruption at judge call {}", c.n);
        }
        Ok(())
    }
}

/// The artifact the loop is producing: the first one of its fixed order that does not exist yet.
fn phase(run_dir: &Path, ckpt_dir: &Path) -> String {
    let rows: Vec<Row> = std::fs::read_to_string(run_dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let has_row = |s: &str| rows.iter().any(|r| r.stage == s);
    for (what, done) in [
        ("eval:base", has_row("base")),
        ("eval:base+orm@3", has_row("base+orm@3")),
        ("eval:base+parm@3", has_row("base+parm@3")),
        ("pairs:1", run_dir.join("iter-1/pairs/stats.json").exists()),
        (
            "train:1",
            ckpt_dir.join("iter-1/final/config.json").exists(),
        ),
        ("eval:dpo-1", has_row("dpo-1")),
        ("pairs:2", run_dir.join("iter-2/pairs/stats.json").exists()),
        (
            "train:2",
            ckpt_dir.join("iter-2/final/config.json").exists(),
        ),
        ("eval:dpo-2", has_row("dpo-2")),
        ("eval:final+parm@3", has_row("final+parm@3")),
    ] {
        if !done {
            return what.into();
        }
    }
    "done".into()
}

/// ORM: the exact evaluator's verdict.
struct Orm(Tracker);
impl OutcomeJudge for Orm {
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        self.0.tick()?;
        OracleJudge.p_yes(prompts, images)
    }
}

/// PARM: every step is clear; potential and outcome are the evaluator's verdict on the image.
struct Parm(Tracker);
impl OutcomeJudge for Parm {
    fn p_yes(&self, prompts: &[String], images: &Tensor) -> Result<Vec<f64>> {
        self.0.tick()?;
        OracleJudge.p_yes(prompts, images)
    }
}
impl StepJudge for Parm {
    fn clarity(&self, prompts: &[String], _images: &Tensor) -> Result<Vec<f64>> {
        self.0.tick()?;
        Ok(vec![1.0; prompts.len()])
    }
    fn potential(&self, prompts: &[String], images: &Tensor) -> Result<Vec<(f64, f64)>> {
        self.0.tick()?;
        Ok(OracleJudge
            .p_yes(prompts, images)?
            .into_iter()
            .map(|p| (p, 1.0 - p))
            .collect())
    }
}

fn iterate(recipe: &Path, run_name: &str, tracker: &Tracker) -> Result<()> {
    let t = tracker.clone();
    let loader = move |_: &Recipe, _: &IterateConfig, _: bool, _: bool| -> Result<Judges> {
        Ok(Judges {
            orm: Some(Box::new(Orm(t.clone()))),
            parm: Some(Box::new(Parm(t.clone()))),
        })
    };
    run(
        IterArgs {
            recipe: Some(recipe.to_path_buf()),
            iter: 2,
            guide: "parm".into(),
            run: run_name.into(),
            reference_base: false,
            labeller: Some("orm".into()),
        },
        &loader,
    )
}

fn rows(dir: &Path, run_name: &str) -> Vec<Row> {
    let text =
        std::fs::read_to_string(dir.join("runs").join(run_name).join("summary.json")).unwrap();
    let mut rows: Vec<Row> = serde_json::from_str(&text).unwrap();
    for r in &mut rows {
        r.eval_dir.clear(); // differs by run name only
        r.checkpoint = r.checkpoint.as_ref().map(|c| c.replace(run_name, "RUN"));
    }
    rows
}

/// The tiny glyph recipe in `dir` with the guidance term and the loop's settings (`verify_n`
/// candidates per best-of-N image), and every `every`-th evaluation prompt.
fn loop_recipe(dir: &Path, verify_n: usize, every: usize) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut recipe = std::fs::read_to_string(root.join("tests/fixtures/tiny.yaml"))
        .unwrap()
        .replace("TMP", dir.to_str().unwrap())
        // Eval passes of several batches, so that an interrupted one keeps its finished prompts.
        .replace(
            "  seed: 1234\n  batch_size: 128\n",
            "  seed: 1234\n  batch_size: 6\n",
        );
    // The online guidance term (a judge call every other step) and the loop's own settings.
    recipe.push_str(&format!(
        "  guide:\n    reward_coef: 1.0\n    prompts_per_step: 2\n    samples_per_prompt: 2\n    every: 2\n    dpo_coef: 1.0\n\
         iterate:\n  eval_images_per_prompt: 2\n  verify_n: {verify_n}\n  verify_images_per_prompt: 1\n  labeller: orm\n  orm: unused\n  parm_model: unused\n",
    ));
    assert!(recipe.contains("batch_size: 6"));
    let recipe_path = dir.join("recipe.yaml");
    std::fs::write(&recipe_path, recipe).unwrap();
    let eval: String = std::fs::read_to_string(root.join("data/glyphs/eval_metadata.jsonl"))
        .unwrap()
        .lines()
        .step_by(every)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("eval_metadata.jsonl"), eval).unwrap();
    recipe_path
}

#[test]
fn interrupted_iter_run_resumes_at_every_stage() {
    let dir = common::temp_dir("iterate-resume");
    let recipe_path = loop_recipe(&dir, 3, 15);

    let tracker = |name: &str, fail_at: Option<usize>| Tracker {
        calls: Arc::new(Mutex::new(Calls {
            fail_at,
            ..Default::default()
        })),
        run_dir: dir.join("runs").join(name),
        ckpt_dir: dir.join("ckpts").join(name),
    };

    // Reference: uninterrupted (it also pretrains the tiny base, shared by the later runs).
    let reference = tracker("ref", None);
    iterate(&recipe_path, "ref", &reference).unwrap();
    let want = rows(&dir, "ref");
    let stages: Vec<&str> = want.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "base",
            "base+orm@3",
            "base+parm@3",
            "dpo-1",
            "dpo-2",
            "final+parm@3"
        ]
    );
    // The three base rows come from one sampling pass. Evaluated one by one, as `eval` does
    // (PARM then prunes for real), each stage gives the same images and row.
    let recipe = Recipe::load(Some(&recipe_path)).unwrap();
    let base = recipe.paths.model.clone();
    let t = tracker("one-by-one", None);
    let (orm, parm) = (Orm(t.clone()), Parm(t.clone()));
    let by_orm = Verifier::Orm { judge: &orm, n: 3 };
    let by_parm = Verifier::parm(&parm, &parm, None, 3, ParmConfig::default());
    for (i, ipp, v) in [(0, 2, None), (1, 1, Some(&by_orm)), (2, 1, Some(&by_parm))] {
        let out = dir.join("one-by-one").join(&want[i].stage);
        let s = evaluate_with(&recipe, &base, &out, ipp, false, v).unwrap();
        let shared = dir.join("runs/ref").join(format!("eval-{}", want[i].stage));
        let images = pngs(&out);
        assert_eq!(images.len(), pngs(&shared).len());
        assert!(images.len() >= 10 * ipp, "{}", images.len());
        for rel in &images {
            assert_eq!(
                std::fs::read(out.join(rel)).unwrap(),
                std::fs::read(shared.join(rel)).unwrap(),
                "{}: {}",
                want[i].stage,
                rel.display()
            );
        }
        assert_eq!(s.overall(), want[i].overall, "{}", want[i].stage);
    }
    // PARM's counts, as pruning reports them, also match.
    let stats = |d: &Path| std::fs::read_to_string(d.join("verify_stats.json")).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&stats(&dir.join("runs/ref/eval-base+parm@3"))).unwrap();
    assert_eq!(
        record["counted_prompts"].as_array().unwrap().len() as u64,
        record["prompts"].as_u64().unwrap(),
        "{record}"
    );
    assert_eq!(
        stats(&dir.join("one-by-one/base+parm@3")),
        stats(&dir.join("runs/ref/eval-base+parm@3"))
    );

    let phases = reference.calls.lock().unwrap().phases.clone();
    // The call in the middle of each phase that calls judges.
    let middle = |p: &str| -> usize {
        let idx: Vec<usize> = (0..phases.len()).filter(|&i| phases[i] == p).collect();
        assert!(!idx.is_empty(), "no judge call during {p}: {phases:?}");
        idx[idx.len() / 2] + 1
    };
    for p in [
        "pairs:1",
        "train:1",
        // The shared pass of the three base rows: its judge calls come before the first row.
        "eval:base",
        "pairs:2",
        // The last round's eval shares its pass with the final PARM row.
        "eval:dpo-2",
    ] {
        let at = middle(p);
        let name = format!("cut-{}", p.replace([':', '@', '+'], "-"));
        let cut = tracker(&name, Some(at));
        let err = iterate(&recipe_path, &name, &cut).unwrap_err();
        assert!(
            format!("{err:#}").contains("injected interruption"),
            "{p}: {err:#}"
        );
        assert_eq!(
            phase(&cut.run_dir, &cut.ckpt_dir),
            p,
            "interrupted elsewhere"
        );
        // The same command again, with judges that no longer fail.
        let resumed = Tracker {
            calls: Arc::new(Mutex::new(Calls::default())),
            ..cut.clone()
        };
        iterate(&recipe_path, &name, &resumed).unwrap();
        assert_eq!(
            rows(&dir, &name),
            want,
            "resumed after an interruption in {p}"
        );
        // The verifiers' counts cover the whole pass, also when it was cut in the middle.
        for stage in ["base+orm@3", "base+parm@3", "final+parm@3"] {
            let folder = |run: &str| dir.join("runs").join(run).join(format!("eval-{stage}"));
            assert_eq!(
                stats(&folder(&name)),
                stats(&folder("ref")),
                "{stage} after an interruption in {p}"
            );
        }
        // Work finished before the interruption is not redone: fewer judge calls than a full run.
        assert!(resumed.calls.lock().unwrap().n < phases.len(), "{p}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PNG files under `dir`, relative to it, sorted.
fn pngs(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "png") {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A judge that says "yes" to everything: every prompt's images agree, so no round has pairs.
struct AlwaysYes;
impl OutcomeJudge for AlwaysYes {
    fn p_yes(&self, prompts: &[String], _images: &Tensor) -> Result<Vec<f64>> {
        Ok(vec![1.0; prompts.len()])
    }
}
impl StepJudge for AlwaysYes {
    fn clarity(&self, prompts: &[String], _images: &Tensor) -> Result<Vec<f64>> {
        Ok(vec![1.0; prompts.len()])
    }
    fn potential(&self, prompts: &[String], _images: &Tensor) -> Result<Vec<(f64, f64)>> {
        Ok(vec![(1.0, 0.0); prompts.len()])
    }
}

#[test]
fn a_round_without_pairs_keeps_its_policy_and_the_run_goes_on() {
    let dir = common::temp_dir("iterate-no-pairs");
    let recipe_path = loop_recipe(&dir, 2, 30);
    let loader = |_: &Recipe, _: &IterateConfig, _: bool, _: bool| -> Result<Judges> {
        Ok(Judges {
            orm: Some(Box::new(AlwaysYes)),
            parm: Some(Box::new(AlwaysYes)),
        })
    };
    let args = |iter| IterArgs {
        recipe: Some(recipe_path.clone()),
        iter,
        guide: "parm".into(),
        run: "nopairs".into(),
        reference_base: false,
        labeller: None,
    };
    // A start that fails its own checks (here: no judges) does not pin its settings.
    let no_judges = |_: &Recipe, _: &IterateConfig, _: bool, _: bool| -> Result<Judges> {
        anyhow::bail!("no judges here")
    };
    assert!(run(args(1), &no_judges).is_err());
    assert!(!dir.join("runs/nopairs/loop.json").exists());
    // One round first: its final row is of round 1's policy.
    run(args(1), &loader).unwrap();
    assert!(dir.join("runs/nopairs/loop.json").exists());
    let final_ckpt = |rows: &[Row]| rows.last().unwrap().checkpoint.clone().unwrap();
    assert!(final_ckpt(&rows(&dir, "nopairs")).ends_with("iter-1/final"));
    // Two rounds under the same name: round 2 runs and the final row is evaluated again.
    run(args(2), &loader).unwrap();
    let ckpts = dir.join("ckpts");
    let pairs = dir.join("runs/nopairs/iter-1/pairs/pairs.jsonl");
    assert_eq!(
        std::fs::read_to_string(&pairs).unwrap().trim(),
        "",
        "the judge should leave no pairs"
    );
    // Both rounds carry the base weights over unchanged.
    let model = Recipe::load(Some(&recipe_path)).unwrap().paths.model;
    let base = std::fs::read(model.join("pytorch_model.safetensors")).unwrap();
    for r in 1..=2 {
        let got =
            std::fs::read(ckpts.join(format!("nopairs/iter-{r}/final/pytorch_model.safetensors")))
                .unwrap();
        assert!(got == base, "round {r} changed the policy without pairs");
    }
    let rows = rows(&dir, "nopairs");
    let stages: Vec<&str> = rows.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "base",
            "base+orm@2",
            "base+parm@2",
            "dpo-1",
            "dpo-2",
            "final+parm@2"
        ]
    );
    // Same weights, same seeds: the round rows score exactly as the base row.
    let score = |r: &Row| {
        let mut v = serde_json::to_value(r).unwrap();
        v.as_object_mut().unwrap().remove("stage");
        v.as_object_mut().unwrap().remove("checkpoint");
        v
    };
    assert!(final_ckpt(&rows).ends_with("iter-2/final"), "{rows:?}");
    assert_eq!(score(&rows[3]), score(&rows[0]));
    assert_eq!(score(&rows[4]), score(&rows[0]));
    // Run again: everything is done, nothing is redone, and it still succeeds.
    run(args(2), &loader).unwrap();
    // The same folder under another guide is refused, naming it.
    let e = run(
        IterArgs {
            guide: "orm".into(),
            ..args(2)
        },
        &loader,
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("guide: \"parm\" → \"orm\""),
        "{e:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
