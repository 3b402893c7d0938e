//! The glyph world's canvas, shapes, colors and codes (glyph-world.md, "Canvas and grid" to
//! "Codes"): the exact renderer and the nearest-patch encoder on host pixels.
//!
//! Images are 128 × 128 RGB, 8-bit, HWC row-major (`3 · (128·y + x) + channel`).
use anyhow::{bail, ensure, Result};
use std::sync::OnceLock;

/// Side of the image in pixels.
pub const IMAGE_SIZE: usize = 128;
/// Side of one grid cell in pixels.
pub const CELL: usize = 16;
/// Cells per row and per column.
pub const GRID: usize = 8;
/// Cells (and codes) per image, row-major (index 8r + c).
pub const NUM_CELLS: usize = GRID * GRID;
/// Codebook size: the empty cell plus 6 shapes × 6 colors.
pub const NUM_CODES: usize = 1 + SHAPES.len() * COLORS.len();
/// Bytes of one HWC image.
pub const IMAGE_BYTES: usize = IMAGE_SIZE * IMAGE_SIZE * 3;
/// Background color.
pub const WHITE: [u8; 3] = [255, 255, 255];

/// Shape names; the index is part of the code.
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "diamond", "cross", "ring"];
/// Plural shape names, same order.
pub const SHAPE_PLURALS: [&str; 6] = [
    "circles",
    "squares",
    "triangles",
    "diamonds",
    "crosses",
    "rings",
];
/// Color names; the index is part of the code.
pub const COLORS: [&str; 6] = ["red", "green", "blue", "yellow", "purple", "black"];
/// Exact RGB of each color.
pub const COLOR_RGB: [[u8; 3]; 6] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [145, 30, 180],
    [0, 0, 0],
];

/// The 64 codes of one image, row-major.
pub type Codes = [u8; NUM_CELLS];

/// One glyph: a shape in a color (indices into [`SHAPES`] and [`COLORS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Glyph {
    pub shape: usize,
    pub color: usize,
}

impl Glyph {
    /// The glyph's code, `1 + 6·shape + color`.
    pub fn code(self) -> u8 {
        debug_assert!(self.shape < SHAPES.len() && self.color < COLORS.len());
        (1 + COLORS.len() * self.shape + self.color) as u8
    }

    /// The glyph of a code; `None` for the empty cell (0) and out-of-range codes.
    pub fn from_code(code: u8) -> Option<Glyph> {
        let code = code as usize;
        if code == 0 || code >= NUM_CODES {
            return None;
        }
        Some(Glyph {
            shape: (code - 1) / COLORS.len(),
            color: (code - 1) % COLORS.len(),
        })
    }

    pub fn shape_name(self) -> &'static str {
        SHAPES[self.shape]
    }

    pub fn color_name(self) -> &'static str {
        COLORS[self.color]
    }
}

/// Index of a shape name (singular or plural).
pub fn shape_index(name: &str) -> Option<usize> {
    SHAPES
        .iter()
        .position(|&s| s == name)
        .or_else(|| SHAPE_PLURALS.iter().position(|&s| s == name))
}

/// Index of a color name.
pub fn color_index(name: &str) -> Option<usize> {
    COLORS.iter().position(|&c| c == name)
}

/// Whether shape `shape` paints the pixel at offset (`dx`, `dy`) ∈ [0, 16)² inside its cell.
/// The spec's u = dx − 7.5, v = dy − 7.5 are doubled (U = 2u, V = 2v, odd integers) so every
/// predicate is exact integer arithmetic.
pub fn shape_covers(shape: usize, dx: usize, dy: usize) -> bool {
    let u = 2 * dx as i32 - 15;
    let v = 2 * dy as i32 - 15;
    let (au, av, r2) = (u.abs(), v.abs(), u * u + v * v);
    match shape {
        0 => r2 <= 144,                                      // u² + v² ≤ 36
        1 => au <= 11 && av <= 11,                           // |u|, |v| ≤ 5.5
        2 => (-11..=11).contains(&v) && 2 * au <= v + 12,    // |u| ≤ (v + 6) / 2
        3 => au + av <= 13,                                  // |u| + |v| ≤ 6.5
        4 => (au <= 3 && av <= 11) || (av <= 3 && au <= 11), // two bars of half-width 1.5
        5 => (49..=169).contains(&r2),                       // 12.25 ≤ u² + v² ≤ 42.25
        _ => false,
    }
}

/// The painted 16 × 16 patch of every code, HWC (`3 · (16·dy + dx) + channel`).
pub fn patches() -> &'static [[u8; CELL * CELL * 3]; NUM_CODES] {
    static PATCHES: OnceLock<[[u8; CELL * CELL * 3]; NUM_CODES]> = OnceLock::new();
    PATCHES.get_or_init(|| {
        let mut out = [[255u8; CELL * CELL * 3]; NUM_CODES];
        for (code, patch) in out.iter_mut().enumerate().skip(1) {
            let g = Glyph::from_code(code as u8).expect("code in range");
            for dy in 0..CELL {
                for dx in 0..CELL {
                    if shape_covers(g.shape, dx, dy) {
                        let p = 3 * (CELL * dy + dx);
                        patch[p..p + 3].copy_from_slice(&COLOR_RGB[g.color]);
                    }
                }
            }
        }
        out
    })
}

/// Checks and converts int64 codes (as a model emits them) to [`Codes`].
pub fn codes_from_i64(codes: &[i64]) -> Result<Codes> {
    ensure!(
        codes.len() == NUM_CELLS,
        "expected {NUM_CELLS} glyph codes, found {}",
        codes.len()
    );
    let mut out = [0u8; NUM_CELLS];
    for (i, (&c, o)) in codes.iter().zip(out.iter_mut()).enumerate() {
        if !(0..NUM_CODES as i64).contains(&c) {
            bail!("glyph code {c} at cell {i} is outside 0..{NUM_CODES}");
        }
        *o = c as u8;
    }
    Ok(out)
}

/// Paints the codes on a white canvas: 128 × 128 × 3 bytes, HWC. Codes ≥ 37 are drawn as empty
/// cells (use [`codes_from_i64`] to reject them instead).
pub fn render(codes: &Codes) -> Vec<u8> {
    let patches = patches();
    let mut img = vec![255u8; IMAGE_BYTES];
    for (k, &code) in codes.iter().enumerate() {
        if code == 0 || code as usize >= NUM_CODES {
            continue;
        }
        let (r, c) = (k / GRID, k % GRID);
        let patch = &patches[code as usize];
        for dy in 0..CELL {
            let src = &patch[3 * CELL * dy..3 * CELL * (dy + 1)];
            let start = 3 * (IMAGE_SIZE * (CELL * r + dy) + CELL * c);
            img[start..start + 3 * CELL].copy_from_slice(src);
        }
    }
    img
}

/// Renders int64 codes after checking them.
pub fn render_i64(codes: &[i64]) -> Result<Vec<u8>> {
    Ok(render(&codes_from_i64(codes)?))
}

/// For each cell, the code whose painted patch is nearest to the image's patch in summed squared
/// RGB difference (ties: the lowest code). `image` is 128 × 128 × 3 bytes, HWC.
pub fn encode(image: &[u8]) -> Result<Codes> {
    ensure!(
        image.len() == IMAGE_BYTES,
        "glyph image must be {IMAGE_SIZE}x{IMAGE_SIZE}x3 = {IMAGE_BYTES} bytes, found {}",
        image.len()
    );
    let patches = patches();
    let mut codes = [0u8; NUM_CELLS];
    for (k, out) in codes.iter_mut().enumerate() {
        let (r, c) = (k / GRID, k % GRID);
        let mut best = (u64::MAX, 0u8);
        for (code, patch) in patches.iter().enumerate() {
            let mut d = 0u64;
            for dy in 0..CELL {
                let start = 3 * (IMAGE_SIZE * (CELL * r + dy) + CELL * c);
                let row = &image[start..start + 3 * CELL];
                let prow = &patch[3 * CELL * dy..3 * CELL * (dy + 1)];
                d += row
                    .iter()
                    .zip(prow)
                    .map(|(&a, &b)| (a as i64 - b as i64).pow(2) as u64)
                    .sum::<u64>();
            }
            // Strict `<` keeps the lowest code on ties.
            if d < best.0 {
                best = (d, code as u8);
            }
        }
        *out = best.1;
    }
    Ok(codes)
}

/// The glyphs of an image with their cells: `(row, column, glyph)` in row-major order.
pub fn glyphs(codes: &Codes) -> Vec<(usize, usize, Glyph)> {
    codes
        .iter()
        .enumerate()
        .filter_map(|(k, &c)| Glyph::from_code(c).map(|g| (k / GRID, k % GRID, g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The doubled-integer predicates agree with the spec's float formulas (u, v are exact halves).
    #[test]
    fn predicates_match_float_formulas() {
        for dy in 0..CELL {
            for dx in 0..CELL {
                let (u, v) = (dx as f64 - 7.5, dy as f64 - 7.5);
                let r2 = u * u + v * v;
                let want = [
                    r2 <= 36.0,
                    u.abs() <= 5.5 && v.abs() <= 5.5,
                    (-5.5..=5.5).contains(&v) && u.abs() <= (v + 6.0) / 2.0,
                    u.abs() + v.abs() <= 6.5,
                    (u.abs() <= 1.5 && v.abs() <= 5.5) || (v.abs() <= 1.5 && u.abs() <= 5.5),
                    (12.25..=42.25).contains(&r2),
                ];
                for (s, &w) in want.iter().enumerate() {
                    assert_eq!(shape_covers(s, dx, dy), w, "shape {s} at ({dx},{dy})");
                }
            }
        }
    }

    #[test]
    fn code_glyph_bijection() {
        assert_eq!(NUM_CODES, 37);
        assert_eq!(Glyph::from_code(0), None);
        assert_eq!(Glyph::from_code(37), None);
        for code in 1..NUM_CODES as u8 {
            assert_eq!(Glyph::from_code(code).unwrap().code(), code);
        }
        assert_eq!(Glyph { shape: 5, color: 5 }.code(), 36);
        assert_eq!(Glyph { shape: 1, color: 2 }.code(), 9);
    }

    #[test]
    fn shape_pixel_counts() {
        // Painted-pixel counts: a fingerprint of the predicates (all distinct, none empty).
        let counts: Vec<usize> = (0..6)
            .map(|s| {
                (0..256)
                    .filter(|&p| shape_covers(s, p % 16, p / 16))
                    .count()
            })
            .collect();
        assert_eq!(counts, vec![112, 144, 72, 84, 80, 92]);
    }

    #[test]
    fn render_places_glyph_in_its_cell() {
        let mut codes = [0u8; NUM_CELLS];
        codes[8 * 2 + 5] = Glyph { shape: 1, color: 2 }.code(); // blue square at r2 c5
        let img = render(&codes);
        let px = |x: usize, y: usize| {
            [
                img[3 * (128 * y + x)],
                img[3 * (128 * y + x) + 1],
                img[3 * (128 * y + x) + 2],
            ]
        };
        assert_eq!(px(16 * 5 + 8, 16 * 2 + 8), COLOR_RGB[2]);
        assert_eq!(px(16 * 5 + 2, 16 * 2 + 2), COLOR_RGB[2]); // u = v = -5.5: on the edge
        assert_eq!(px(16 * 5 + 1, 16 * 2 + 8), WHITE); // u = -6.5: outside
        assert_eq!(px(0, 0), WHITE);
        let painted = (0..128 * 128)
            .filter(|&p| img[3 * p..3 * p + 3] != WHITE)
            .count();
        assert_eq!(painted, 144);
    }
}
