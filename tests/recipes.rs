//! Every shipped recipe parses (unknown keys are errors), and the ablation scripts are valid bash
//! whose every `imgcot-train` flag exists on the subcommand it is passed to.
mod common;
use imgcot::judge::recipe::JudgesRecipe;
use imgcot::recipe::Recipe;
use std::path::Path;
use std::process::Command;

fn recipes_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")
}

#[test]
fn every_recipe_parses() {
    let mut n = 0;
    for e in std::fs::read_dir(recipes_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("judges-") {
                JudgesRecipe::load(Some(&p)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            } else {
                let r = Recipe::load(Some(&p)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                assert!(r.dpo.is_some(), "{name}: no dpo section");
            }
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} recipes");
    let showo = Recipe::load(Some(&recipes_dir().join("showo-paper.yaml"))).unwrap();
    assert!(!showo.is_glyph());
    assert_eq!((showo.sampler.steps, showo.sampler.cfg_scale), (18, 1.75));
    let it = showo.iterate.expect("iterate section");
    assert_eq!(it.verify_n, 20);
    assert!(
        it.geneval_each_round.is_some(),
        "real images need a GenEval backend"
    );
}

/// The glyph DPO ablations share `recipes/glyphs.yaml`'s base checkpoint path, so any other
/// difference (a pretraining setting, the sampler, the judges) would make the base depend on
/// which recipe ran first, and the ablation compare more than its DPO settings.
#[test]
fn glyph_dpo_ablations_differ_from_the_main_recipe_in_dpo_only() {
    let value = |name: &str| {
        let r = Recipe::load(Some(&recipes_dir().join(name))).unwrap();
        let mut v = serde_json::to_value(&r).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("name");
        let dpo = m.remove("dpo").unwrap();
        (v, dpo)
    };
    let (main, main_dpo) = value("glyphs.yaml");
    for name in ["glyphs-dpo-plain.yaml", "glyphs-dpo-sft.yaml"] {
        let (v, dpo) = value(name);
        assert_eq!(v, main, "{name} differs from glyphs.yaml outside `dpo:`");
        assert_ne!(dpo, main_dpo, "{name} is not an ablation");
    }
}

fn help(sub: &[&str]) -> String {
    let mut args: Vec<&str> = sub.to_vec();
    args.push("--help");
    let o = Command::new(common::bin()).args(&args).output().unwrap();
    assert!(o.status.success(), "{sub:?} --help failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn ablation_scripts_use_existing_flags() {
    let eval_geneval = help(&["eval", "geneval"]);
    let eval = help(&["eval"]);
    let dpo = help(&["dpo"]);
    for script in ["ablation-showo.sh", "ablation-glyphs.sh"] {
        let path = recipes_dir().join(script);
        let o = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut checked = 0;
        let mut prev: Option<&String> = None; // target of a line ending in a backslash
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            // Which subcommand the line's flags go to (the helper functions wrap `eval geneval`).
            let body = line
                .split_once(')')
                .map(|(_, b)| b.trim_start())
                .unwrap_or("");
            let target = if let Some(t) = prev {
                t
            } else if line.contains("\"$BIN\" eval geneval")
                || body.starts_with("geneval ")
                || body.starts_with("verified ")
            {
                &eval_geneval
            } else if line.contains("\"$BIN\" eval ") {
                &eval
            } else if line.contains("\"$BIN\" dpo ") {
                &dpo
            } else {
                continue;
            };
            prev = line.trim_end().ends_with('\\').then_some(target);
            for flag in line
                .split_whitespace()
                .filter(|t| t.starts_with("--") && t.len() > 2)
            {
                let flag = flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
                assert!(
                    target.contains(&format!("{flag} ")) || target.contains(&format!("{flag}\n")),
                    "{script}: `{flag}` is not a flag of its subcommand in: {line}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "{script}: only {checked} flags checked");
    }
}
