//! GenEval's correctness rule (`evaluate_images.py` at djghosh13/geneval `af4902f`, spec-geneval
//! §2.3, §2.4, §2.7, §7), applied to detector outputs.
//!
//! Upstream keeps boxes and scores as float32 numpy arrays and compares them with Python floats,
//! which numpy casts to float32. [`RuleOptions::float32`] (default on) reproduces that, so a score
//! stored as `f64(f32(0.3))` fails the 0.3 threshold as it does upstream.
use super::{Detection, IncludeClause, Metadata};
use std::collections::BTreeMap;
use std::ops::{Add, Div, Mul, Sub};

/// The ten color labels of the CLIP color classifier, in GenEval's order (spec §2.6).
pub const COLORS: [&str; 10] = [
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
];

/// The four relations of the position rule, in the order this crate reports them.
pub const RELATIONS: [&str; 4] = ["left of", "right of", "above", "below"];

/// The tunables of `evaluate_images.py --options` that affect the rule (spec §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOptions {
    /// Minimum score (strict `>`) for every non-counting prompt.
    pub threshold: f64,
    /// Minimum score (strict `>`) for every class when the prompt's tag is `counting`.
    pub counting_threshold: f64,
    /// Detections kept per class after thresholding (before NMS).
    pub max_objects: usize,
    /// Same-class NMS IoU threshold; exactly 1 disables NMS.
    pub max_overlap: f64,
    /// Shrink factor of the position rule.
    pub position_threshold: f64,
    /// Compare scores and compute positions in f32, as upstream's float32 arrays do.
    pub float32: bool,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self {
            threshold: 0.3,
            counting_threshold: 0.9,
            max_objects: 16,
            max_overlap: 1.0,
            position_threshold: 0.1,
            float32: true,
        }
    }
}

impl RuleOptions {
    /// The score threshold used for every class of a prompt with this tag.
    pub fn threshold_for(&self, tag: &str) -> f64 {
        if tag == "counting" {
            self.counting_threshold
        } else {
            self.threshold
        }
    }
}

/// The outcome of the rule for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub correct: bool,
    /// Every failure message, joined with "\n" ("" when correct), worded as upstream.
    pub reason: String,
    /// Detections that survived filtering, per class, by descending score.
    pub kept: BTreeMap<String, Vec<Detection>>,
}

/// Filters, thresholds, scores and judges one image (spec §2.3 + §2.4).
pub fn evaluate(meta: &Metadata, detections: &[Detection], opts: &RuleOptions) -> Verdict {
    let kept = filter_detections(detections, &meta.tag, opts);
    let (correct, reasons) = judge(meta, &kept, opts);
    Verdict {
        correct,
        reason: reasons.join("\n"),
        kept,
    }
}

/// Per-class filtering (spec §2.3): sort by descending score, ties by higher index first (the
/// reverse of a stable ascending argsort), keep `score > thr`, cap at `max_objects`, then the
/// optional same-class NMS. The index of a detection is its position among the detections of
/// its class in `detections`.
pub fn filter_detections(
    detections: &[Detection],
    tag: &str,
    opts: &RuleOptions,
) -> BTreeMap<String, Vec<Detection>> {
    let thr = opts.threshold_for(tag);
    let mut by_class: BTreeMap<&str, Vec<&Detection>> = BTreeMap::new();
    for d in detections {
        by_class.entry(d.class.as_str()).or_default().push(d);
    }
    let key = |s: f64| if opts.float32 { s as f32 as f64 } else { s };
    let mut kept = BTreeMap::new();
    for (class, dets) in by_class {
        let mut order: Vec<usize> = (0..dets.len()).collect();
        order.sort_by(|&a, &b| {
            key(dets[b].score)
                .total_cmp(&key(dets[a].score))
                .then(b.cmp(&a))
        });
        let mut order: Vec<usize> = order
            .into_iter()
            .filter(|&i| passes_threshold(dets[i].score, thr, opts.float32))
            .take(opts.max_objects)
            .collect();
        let mut out = Vec::new();
        while !order.is_empty() {
            let head = order.remove(0);
            out.push(dets[head].clone());
            if opts.max_overlap != 1.0 {
                order.retain(|&o| iou_plus_one(&dets[head].bbox, &dets[o].bbox) < opts.max_overlap);
            }
        }
        if !out.is_empty() {
            kept.insert(class.to_string(), out);
        }
    }
    kept
}

/// Strict `score > thr`, in f32 when upstream's float32 comparison is reproduced.
pub fn passes_threshold(score: f64, thr: f64, float32: bool) -> bool {
    if float32 {
        (score as f32) > (thr as f32)
    } else {
        score > thr
    }
}

/// `compute_iou` of upstream: inclusive "+1 pixel" areas, 0 when the union is 0.
pub fn iou_plus_one(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let area =
        |x1: f64, y1: f64, x2: f64, y2: f64| (x2 - x1 + 1.0).max(0.0) * (y2 - y1 + 1.0).max(0.0);
    let inter = area(
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    );
    let union = area(a[0], a[1], a[2], a[3]) + area(b[0], b[1], b[2], b[3]) - inter;
    if union != 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The include/exclude rule on already filtered detections (spec §2.4, §7.5–§7.11). Returns
/// correctness and every failure message in clause order.
pub fn judge(
    meta: &Metadata,
    kept: &BTreeMap<String, Vec<Detection>>,
    opts: &RuleOptions,
) -> (bool, Vec<String>) {
    let mut correct = true;
    let mut reasons = Vec::new();
    let mut groups: Vec<Option<&[Detection]>> = Vec::new();
    for clause in &meta.include {
        let all = kept.get(&clause.class).map(Vec::as_slice).unwrap_or(&[]);
        let found = &all[..all.len().min(clause.count)];
        let ok = clause_ok(clause, found, &groups, opts, &mut reasons);
        correct &= ok;
        groups.push(if ok { Some(found) } else { None });
    }
    for clause in &meta.exclude {
        let n = kept.get(&clause.class).map_or(0, Vec::len);
        if n >= clause.count {
            correct = false;
            reasons.push(format!(
                "expected {}<{}, found {n}",
                clause.class, clause.count
            ));
        }
    }
    (correct, reasons)
}

fn clause_ok(
    clause: &IncludeClause,
    found: &[Detection],
    groups: &[Option<&[Detection]>],
    opts: &RuleOptions,
    reasons: &mut Vec<String>,
) -> bool {
    let class = &clause.class;
    if found.len() < clause.count {
        reasons.push(format!(
            "expected {class}>={}, found {}",
            clause.count,
            found.len()
        ));
        return false;
    }
    if let Some(color) = &clause.color {
        // A detection without a color never matches (it was not classified).
        let count_of = |c: &str| {
            found
                .iter()
                .filter(|d| d.color.as_deref() == Some(c))
                .count()
        };
        let hits = count_of(color);
        if hits < clause.count {
            let seen: Vec<String> = COLORS
                .iter()
                .filter(|c| count_of(c) > 0)
                .map(|c| format!("{} {c}", count_of(c)))
                .collect();
            reasons.push(format!(
                "expected {color} {class}>={}, found {hits} {color}; and {}",
                clause.count,
                seen.join(", ")
            ));
            return false;
        }
    }
    if let Some((rel, target)) = &clause.position {
        let Some(Some(targets)) = groups.get(*target) else {
            // Upstream raises IndexError for a target index that is not an earlier clause;
            // validated metadata never has one, so it is reported as a missing target.
            reasons.push(format!("no target for {class} to be {rel}"));
            return false;
        };
        for obj in found {
            for t in targets.iter() {
                let rels = relative_position(&obj.bbox, &t.bbox, opts);
                if !rels.contains(&rel.as_str()) {
                    reasons.push(format!(
                        "expected {class} {rel} target, found {} target",
                        rels.join(" and ")
                    ));
                    return false;
                }
            }
        }
    }
    true
}

/// Minimal float abstraction so the position rule runs in f32 (upstream) or f64.
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Relations of box `a` relative to box `b` (spec §2.7), in [`RELATIONS`] order; empty when the
/// boxes are (nearly) centred on each other.
pub fn relative_position(a: &[f64; 4], b: &[f64; 4], opts: &RuleOptions) -> Vec<&'static str> {
    if opts.float32 {
        relative_position_in::<f32>(a, b, opts.position_threshold)
    } else {
        relative_position_in::<f64>(a, b, opts.position_threshold)
    }
}

fn relative_position_in<T: Real>(a: &[f64; 4], b: &[f64; 4], thr: f64) -> Vec<&'static str> {
    let a = a.map(T::of);
    let b = b.map(T::of);
    let (zero, two, thr) = (T::of(0.0), T::of(2.0), T::of(thr));
    let axis = |i: usize| {
        let off = (a[i] + a[i + 2]) / two - (b[i] + b[i + 2]) / two;
        let dims = (a[i + 2] - a[i]).abs() + (b[i + 2] - b[i]).abs();
        let shrunk = off.abs() - thr * dims;
        let shrunk = if shrunk > zero { shrunk } else { zero };
        // np.sign: 0 for 0, so a zero offset stays zero.
        let rev = if off > zero {
            shrunk
        } else if off < zero {
            zero - shrunk
        } else {
            zero
        };
        (off, rev)
    };
    let ((ox, rx), (oy, ry)) = (axis(0), axis(1));
    let eps = T::of(1e-3);
    if rx.abs() < eps && ry.abs() < eps {
        return Vec::new();
    }
    let norm = (ox * ox + oy * oy).sqrt();
    let (dx, dy) = (rx / norm, ry / norm);
    let (lo, hi) = (T::of(-0.5), T::of(0.5));
    let mut rels = Vec::new();
    if dx < lo {
        rels.push(RELATIONS[0]);
    }
    if dx > hi {
        rels.push(RELATIONS[1]);
    }
    if dy < lo {
        rels.push(RELATIONS[2]);
    }
    if dy > hi {
        rels.push(RELATIONS[3]);
    }
    rels
}

/// Checks what upstream would crash on: position targets must name an earlier include clause,
/// counts must be positive, colors must be one of [`COLORS`].
pub fn validate_metadata(meta: &Metadata) -> anyhow::Result<()> {
    for (i, c) in meta.include.iter().enumerate() {
        anyhow::ensure!(c.count >= 1, "include[{i}] ({}) has count 0", c.class);
        if let Some(color) = &c.color {
            anyhow::ensure!(
                COLORS.contains(&color.as_str()),
                "include[{i}] has unknown color '{color}'"
            );
        }
        if let Some((rel, target)) = &c.position {
            anyhow::ensure!(
                RELATIONS.contains(&rel.as_str()),
                "include[{i}] has unknown relation '{rel}'"
            );
            anyhow::ensure!(
                *target < i,
                "include[{i}] position target {target} is not an earlier include clause"
            );
        }
    }
    for (i, c) in meta.exclude.iter().enumerate() {
        anyhow::ensure!(c.count >= 1, "exclude[{i}] ({}) has count 0", c.class);
    }
    Ok(())
}

/// The `details` string of upstream's results.jsonl: `{class: [[x1, y1, x2, y2, score], ...]}`.
pub fn details_json(kept: &BTreeMap<String, Vec<Detection>>) -> String {
    let map: BTreeMap<&str, Vec<[f64; 5]>> = kept
        .iter()
        .map(|(c, ds)| {
            let rows = ds
                .iter()
                .map(|d| [d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score])
                .collect();
            (c.as_str(), rows)
        })
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}
