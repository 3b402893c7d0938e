//! Random ground-truth scenes for a metadata line (glyph-world.md, "Base generator"): exactly the
//! named glyphs (`count` of each include clause, nothing else), unnamed colors and cells uniform,
//! and the whole scene accepted only if GenEval's rule scores it correct — so position scenes are
//! uniform over the layouts where the relation holds under the 0.1 threshold.
use super::detect::detect;
use super::rng::{below, sample_distinct};
use super::world::{color_index, Codes, Glyph, COLORS, NUM_CELLS, SHAPES};
use crate::eval::geneval::rules::{evaluate, RuleOptions};
use crate::eval::geneval::Metadata;
use anyhow::{bail, ensure, Context, Result};
use rand::Rng;

/// Proposals tried before a metadata line is declared unsatisfiable. The hardest grammar tag
/// (position) accepts well over a quarter of its proposals, so a valid line never gets near this.
pub const MAX_TRIES: usize = 10_000;

/// What a scene must contain: per include clause, (shape, fixed color if any, count).
fn plan(meta: &Metadata) -> Result<Vec<(usize, Option<usize>, usize)>> {
    let mut out: Vec<(usize, Option<usize>, usize)> = Vec::new();
    for (i, c) in meta.include.iter().enumerate() {
        let shape = SHAPES
            .iter()
            .position(|&s| s == c.class)
            .with_context(|| format!("include[{i}]: '{}' is not a glyph shape", c.class))?;
        let color = match &c.color {
            Some(name) => Some(
                color_index(name)
                    .with_context(|| format!("include[{i}]: '{name}' is not a glyph color"))?,
            ),
            None => None,
        };
        ensure!(
            out.iter().all(|p| p.0 != shape),
            "include[{i}]: class '{}' is named twice (the glyph grammar never does this)",
            c.class
        );
        out.push((shape, color, c.count));
    }
    let total: usize = out.iter().map(|p| p.2).sum();
    ensure!(
        total <= NUM_CELLS,
        "{total} glyphs do not fit in {NUM_CELLS} cells"
    );
    Ok(out)
}

/// A random scene (64 codes) that GenEval's rule (default options) scores correct for `meta`.
pub fn sample_scene<R: Rng + ?Sized>(meta: &Metadata, rng: &mut R) -> Result<Codes> {
    sample_scene_with(meta, &RuleOptions::default(), rng)
}

/// [`sample_scene`] under explicit rule options.
pub fn sample_scene_with<R: Rng + ?Sized>(
    meta: &Metadata,
    opts: &RuleOptions,
    rng: &mut R,
) -> Result<Codes> {
    let plan = plan(meta).with_context(|| format!("prompt '{}'", meta.prompt))?;
    let total: usize = plan.iter().map(|p| p.2).sum();
    for _ in 0..MAX_TRIES {
        let cells = sample_distinct(rng, NUM_CELLS, total);
        let mut codes = [0u8; NUM_CELLS];
        let mut next = cells.into_iter();
        for &(shape, color, count) in &plan {
            for cell in next.by_ref().take(count) {
                let color = color.unwrap_or_else(|| below(rng, COLORS.len()));
                codes[cell] = Glyph { shape, color }.code();
            }
        }
        if evaluate(meta, &detect(&codes), opts).correct {
            return Ok(codes);
        }
    }
    bail!(
        "prompt '{}': no correct scene in {MAX_TRIES} random layouts (unsatisfiable?)",
        meta.prompt
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glyphs::prompts;
    use crate::glyphs::rng::seeded;
    use crate::glyphs::world::glyphs;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn scenes_contain_exactly_the_named_glyphs() {
        let mut rng = seeded(7, 0);
        let m = prompts::counting(2, 3); // four diamonds
        for _ in 0..50 {
            let g = glyphs(&sample_scene(&m, &mut rng).unwrap());
            assert_eq!(g.len(), 4);
            assert!(g.iter().all(|(_, _, g)| g.shape == 3));
        }
        let m = prompts::color_attr(1, 0, 1, 4); // green circle and green cross
        for _ in 0..50 {
            let mut g: Vec<Glyph> = glyphs(&sample_scene(&m, &mut rng).unwrap())
                .into_iter()
                .map(|x| x.2)
                .collect();
            g.sort();
            assert_eq!(
                g,
                vec![Glyph { shape: 0, color: 1 }, Glyph { shape: 4, color: 1 }]
            );
        }
    }

    #[test]
    fn unnamed_attributes_vary() {
        let mut rng = seeded(8, 0);
        let m = prompts::single_object(2);
        let (mut colors, mut cells) = (BTreeSet::new(), BTreeSet::new());
        for _ in 0..600 {
            let (r, c, g) = glyphs(&sample_scene(&m, &mut rng).unwrap())[0];
            colors.insert(g.color);
            cells.insert(8 * r + c);
        }
        assert_eq!(colors.len(), 6);
        assert!(cells.len() >= 60, "only {} of 64 cells used", cells.len());
    }

    /// Position scenes: every accepted layout satisfies the relation, and the accepted layouts are
    /// spread over all valid target cells (not a few favourites).
    #[test]
    fn position_layouts_are_spread() {
        let mut rng = seeded(9, 0);
        let m = prompts::position(1, 0, 0); // a square left of a circle
        let mut per_target: BTreeMap<usize, usize> = BTreeMap::new();
        for _ in 0..2000 {
            let codes = sample_scene(&m, &mut rng).unwrap();
            let g = glyphs(&codes);
            let circle = g.iter().find(|x| x.2.shape == 0).unwrap();
            let square = g.iter().find(|x| x.2.shape == 1).unwrap();
            assert!(
                square.1 < circle.1,
                "square must be in a column left of the circle"
            );
            *per_target.entry(8 * circle.0 + circle.1).or_default() += 1;
        }
        // A circle in column 0 leaves nothing to its left.
        assert!(per_target.keys().all(|k| k % 8 != 0));
        assert_eq!(per_target.len(), 56);
    }

    #[test]
    fn rejects_foreign_and_unsatisfiable_metadata() {
        let mut rng = seeded(10, 0);
        let mut m = prompts::single_object(0);
        m.include[0].class = "dog".into();
        assert!(sample_scene(&m, &mut rng).is_err());
        let mut m = prompts::counting(0, 0);
        m.exclude[0].count = 2; // include 2 and exclude 2: impossible
        let err = sample_scene(&m, &mut rng).unwrap_err();
        assert!(format!("{err:#}").contains("unsatisfiable"));
        let mut m = prompts::position(1, 0, 0);
        m.include[1].class = "circle".into(); // a circle left of itself
        assert!(sample_scene(&m, &mut rng).is_err());
    }
}
