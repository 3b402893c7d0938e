//! The glyph world's exact detector (glyph-world.md, "Detection") and its two diagnostics,
//! `strict` and `glyphs_per_image`. Correctness itself is GenEval's rule
//! ([`crate::eval::geneval::rules`]), unchanged.
use super::world::{glyphs, Codes, GRID};
use crate::eval::geneval::rules::{evaluate, RuleOptions};
use crate::eval::geneval::{Detection, Metadata};

/// One detection per non-empty cell, in row-major order: class = shape name, color = color name,
/// box = the cell `[16c, 16r, 16c+16, 16r+16]`, score = 1 − k/1000 with k = 8r + c.
pub fn detect(codes: &Codes) -> Vec<Detection> {
    glyphs(codes)
        .into_iter()
        .map(|(r, c, g)| {
            let k = (GRID * r + c) as f64;
            let (x, y) = (16.0 * c as f64, 16.0 * r as f64);
            Detection {
                class: g.shape_name().to_string(),
                score: 1.0 - k / 1000.0,
                bbox: [x, y, x + 16.0, y + 16.0],
                color: Some(g.color_name().to_string()),
            }
        })
        .collect()
}

/// GenEval correctness of one glyph image under the given rule options.
pub fn is_correct(meta: &Metadata, codes: &Codes, opts: &RuleOptions) -> bool {
    evaluate(meta, &detect(codes), opts).correct
}

/// The glyph world's `strict` check: the image is GenEval-correct (colors and positions as the
/// rule), every detected class is named by an include clause, and each named class is detected
/// exactly `count` times (all detections, not GenEval's per-class cap of 16).
pub fn strict(meta: &Metadata, detections: &[Detection], opts: &RuleOptions) -> bool {
    let named = |class: &str| meta.include.iter().any(|c| c.class == class);
    if !detections.iter().all(|d| named(&d.class)) {
        return false;
    }
    let exact = meta
        .include
        .iter()
        .all(|c| detections.iter().filter(|d| d.class == c.class).count() == c.count);
    exact && evaluate(meta, detections, opts).correct
}

/// Number of glyphs (non-empty cells) in an image.
pub fn glyph_count(codes: &Codes) -> usize {
    codes.iter().filter(|&&c| c != 0).count()
}

/// Mean number of detected glyphs over images (0 for no images).
pub fn glyphs_per_image(images: &[Codes]) -> f64 {
    if images.is_empty() {
        return 0.0;
    }
    images.iter().map(glyph_count).sum::<usize>() as f64 / images.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::geneval::IncludeClause;
    use crate::glyphs::world::Glyph;

    fn clause(class: &str, count: usize) -> IncludeClause {
        IncludeClause {
            class: class.into(),
            count,
            color: None,
            position: None,
        }
    }

    #[test]
    fn detection_fields() {
        let mut codes = [0u8; 64];
        codes[8 * 3 + 6] = Glyph { shape: 5, color: 4 }.code();
        codes[1] = Glyph { shape: 2, color: 0 }.code();
        let d = detect(&codes);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].class, "triangle");
        assert_eq!(d[0].color.as_deref(), Some("red"));
        assert_eq!(d[0].bbox, [16.0, 0.0, 32.0, 16.0]);
        assert!((d[0].score - 0.999).abs() < 1e-12);
        assert_eq!(d[1].class, "ring");
        assert_eq!(d[1].color.as_deref(), Some("purple"));
        assert_eq!(d[1].bbox, [96.0, 48.0, 112.0, 64.0]);
        assert!((d[1].score - (1.0 - 30.0 / 1000.0)).abs() < 1e-12);
    }

    #[test]
    fn strict_and_glyph_count_on_hand_made_cases() {
        let opts = RuleOptions::default();
        let meta = Metadata {
            tag: "two_object".into(),
            include: vec![clause("circle", 1), clause("square", 1)],
            exclude: vec![],
            prompt: "a photo of a circle and a square".into(),
        };
        let circle = Glyph { shape: 0, color: 0 }.code();
        let square = Glyph { shape: 1, color: 3 }.code();
        let ring = Glyph { shape: 5, color: 1 }.code();
        let mut exact = [0u8; 64];
        exact[0] = circle;
        exact[10] = square;
        assert!(is_correct(&meta, &exact, &opts));
        assert!(strict(&meta, &detect(&exact), &opts));

        // An extra unnamed glyph: still GenEval-correct, not strict.
        let mut extra = exact;
        extra[20] = ring;
        assert!(is_correct(&meta, &extra, &opts));
        assert!(!strict(&meta, &detect(&extra), &opts));

        // A second circle: correct (count is >=), not strict (count must be exact).
        let mut twice = exact;
        twice[63] = circle;
        assert!(is_correct(&meta, &twice, &opts));
        assert!(!strict(&meta, &detect(&twice), &opts));

        // Missing square: neither.
        let mut missing = exact;
        missing[10] = 0;
        assert!(!is_correct(&meta, &missing, &opts));
        assert!(!strict(&meta, &detect(&missing), &opts));

        assert_eq!(glyph_count(&exact), 2);
        assert_eq!(glyph_count(&extra), 3);
        assert_eq!(
            glyphs_per_image(&[exact, extra, twice, missing]),
            (2 + 3 + 3 + 1) as f64 / 4.0
        );
        assert_eq!(glyphs_per_image(&[]), 0.0);
    }

    #[test]
    fn strict_checks_color_and_position_like_geneval() {
        let opts = RuleOptions::default();
        let red_circle = Glyph { shape: 0, color: 0 }.code();
        let blue_circle = Glyph { shape: 0, color: 2 }.code();
        let meta = Metadata {
            tag: "colors".into(),
            include: vec![IncludeClause {
                color: Some("red".into()),
                ..clause("circle", 1)
            }],
            exclude: vec![],
            prompt: "a photo of a red circle".into(),
        };
        let mut img = [0u8; 64];
        img[5] = red_circle;
        assert!(strict(&meta, &detect(&img), &opts));
        img[5] = blue_circle;
        assert!(!strict(&meta, &detect(&img), &opts));

        let pos = Metadata {
            tag: "position".into(),
            include: vec![
                clause("circle", 1),
                IncludeClause {
                    position: Some(("left of".into(), 0)),
                    ..clause("square", 1)
                },
            ],
            exclude: vec![],
            prompt: "a photo of a square left of a circle".into(),
        };
        let square = Glyph { shape: 1, color: 5 }.code();
        let mut left = [0u8; 64];
        left[8 * 4 + 1] = square;
        left[8 * 4 + 6] = red_circle;
        assert!(strict(&pos, &detect(&left), &opts));
        let mut right = [0u8; 64];
        right[8 * 4 + 6] = square;
        right[8 * 4 + 1] = red_circle;
        assert!(!strict(&pos, &detect(&right), &opts));
        // Straight above: no horizontal relation.
        let mut above = [0u8; 64];
        above[8 + 3] = square;
        above[8 * 5 + 3] = red_circle;
        assert!(!strict(&pos, &detect(&above), &opts));
    }
}
