//! GenEval (Ghosh et al. 2023): metadata, the exact correctness rules of `evaluate_images.py`,
//! the summary of `summary_scores.py`, and the detector backends (official, detections, glyph).
//!
//! Shared types live here so that the glyph world and any external detector produce the same
//! [`Detection`]s that the rules consume.
use serde::{Deserialize, Serialize};

pub mod detectors;
pub mod layout;
pub mod rules;
pub mod score;
pub mod summary;

pub use detectors::{DetectionsFile, Detector, OfficialScorer};
pub use rules::{evaluate, RuleOptions, Verdict};
pub use score::{score_folder, Backend};
pub use summary::{Summary, SummaryJson};

/// One include clause of a GenEval metadata line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncludeClause {
    pub class: String,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// `[relation, index of an earlier include clause]`, e.g. `["left of", 0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<(String, usize)>,
}

/// One exclude clause: fires when at least `count` objects of `class` are detected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExcludeClause {
    pub class: String,
    pub count: usize,
}

/// One line of `evaluation_metadata.jsonl` (GenEval's format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub tag: String,
    pub include: Vec<IncludeClause>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<ExcludeClause>,
    pub prompt: String,
}

/// One detected object, as a detector reports it (before thresholding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub class: String,
    pub score: f64,
    /// `[x1, y1, x2, y2]`, right/bottom exclusive as mmdet boxes.
    #[serde(rename = "box")]
    pub bbox: [f64; 4],
    /// The object's already-classified color name, when the detector classifies colors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// The six GenEval tags, in GenEval's order.
pub const TAGS: [&str; 6] = [
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
];

/// Serialises like Python's `json.dumps` with default arguments: `", "` and `": "` separators
/// and non-ASCII escaped as `\uXXXX`. Upstream's results.jsonl groups prompts by this string.
pub fn python_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serialising plain data into a Vec cannot fail; the fallback keeps this total.
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{:04x}", u)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_matches_json_dumps() {
        let line = r#"{"tag": "position", "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], "prompt": "a photo of a dog right of a teddy bear"}"#;
        let meta: Metadata = serde_json::from_str(line).unwrap();
        assert_eq!(python_json(&meta), line);
        let counting = r#"{"tag": "counting", "include": [{"class": "backpack", "count": 2}], "exclude": [{"class": "backpack", "count": 3}], "prompt": "a photo of two backpacks"}"#;
        let meta: Metadata = serde_json::from_str(counting).unwrap();
        assert_eq!(python_json(&meta), counting);
        assert_eq!(
            python_json(&"caf\u{e9} \u{1F600}\n"),
            r#""caf\u00e9 \ud83d\ude00\n""#
        );
    }
}
