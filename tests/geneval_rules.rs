//! GenEval's correctness rule (spec-geneval §2.3, §2.4, §2.7, §7) on hand-made detections.
use imgcot::eval::geneval::rules::{
    evaluate, filter_detections, iou_plus_one, relative_position, RuleOptions,
};
use imgcot::eval::geneval::{Detection, Metadata};

fn meta(json: &str) -> Metadata {
    serde_json::from_str(json).unwrap()
}

fn det(class: &str, score: f64, bbox: [f64; 4]) -> Detection {
    Detection {
        class: class.into(),
        score,
        bbox,
        color: None,
    }
}

fn colored(class: &str, score: f64, color: &str) -> Detection {
    Detection {
        color: Some(color.into()),
        ..det(class, score, [0.0, 0.0, 10.0, 10.0])
    }
}

fn single(class: &str) -> Metadata {
    meta(&format!(
        r#"{{"tag": "single_object", "include": [{{"class": "{class}", "count": 1}}], "prompt": "p"}}"#
    ))
}

fn counting(class: &str, n: usize) -> Metadata {
    meta(&format!(
        r#"{{"tag": "counting", "include": [{{"class": "{class}", "count": {n}}}], "exclude": [{{"class": "{class}", "count": {}}}], "prompt": "p"}}"#,
        n + 1
    ))
}

fn position(a: &str, rel: &str, b: &str) -> Metadata {
    meta(&format!(
        r#"{{"tag": "position", "include": [{{"class": "{b}", "count": 1}}, {{"class": "{a}", "count": 1, "position": ["{rel}", 0]}}], "prompt": "p"}}"#
    ))
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn threshold_is_strict_and_float32() {
    let o = RuleOptions::default();
    let m = single("dog");
    let v = evaluate(&m, &[det("dog", 0.3, [0.0; 4])], &o);
    assert!(!v.correct);
    assert_eq!(v.reason, "expected dog>=1, found 0");
    assert!(v.kept.is_empty());
    assert!(evaluate(&m, &[det("dog", 0.3001, [0.0; 4])], &o).correct);
    // f64(f32(0.3)) > 0.3 in f64, but upstream compares float32 with float32(0.3).
    let s32 = 0.3f32 as f64;
    assert!(!evaluate(&m, &[det("dog", s32, [0.0; 4])], &o).correct);
    let o64 = RuleOptions {
        float32: false,
        ..o.clone()
    };
    assert!(evaluate(&m, &[det("dog", s32, [0.0; 4])], &o64).correct);
}

#[test]
fn counting_uses_0_9_for_every_class() {
    let o = RuleOptions::default();
    let m = counting("backpack", 2);
    let dets = [
        det("backpack", 0.95, [0.0; 4]),
        det("backpack", 0.9, [0.0; 4]),
        det("cat", 0.89, [0.0; 4]),
    ];
    let v = evaluate(&m, &dets, &o);
    assert!(!v.correct);
    assert_eq!(v.reason, "expected backpack>=2, found 1");
    // Neither the 0.9 backpack nor the 0.89 cat survives: the tag picks the threshold.
    assert_eq!(v.kept.keys().collect::<Vec<_>>(), ["backpack"]);
    assert_eq!(v.kept["backpack"].len(), 1);
    let dets = [
        det("backpack", 0.95, [0.0; 4]),
        det("backpack", 0.91, [0.0; 4]),
        det("cat", 0.95, [0.0; 4]),
    ];
    assert!(evaluate(&m, &dets, &o).correct);
    // The same detections under a non-counting tag keep everything above 0.3.
    let v = evaluate(
        &single("cat"),
        &[det("cat", 0.89, [0.0; 4]), det("backpack", 0.9, [0.0; 4])],
        &o,
    );
    assert!(v.correct);
    assert_eq!(v.kept.len(), 2);
}

#[test]
fn counting_exclude_fires_at_n_plus_one() {
    let o = RuleOptions::default();
    let m = counting("backpack", 2);
    let three = [
        det("backpack", 0.99, [0.0; 4]),
        det("backpack", 0.98, [0.0; 4]),
        det("backpack", 0.97, [0.0; 4]),
    ];
    let v = evaluate(&m, &three, &o);
    assert!(!v.correct);
    assert_eq!(v.reason, "expected backpack<3, found 3");
    // The third one below 0.9 is not counted.
    let mut two = three.clone();
    two[2].score = 0.85;
    assert!(evaluate(&m, &two, &o).correct);
}

#[test]
fn sixteen_cap_applies_before_exclude() {
    let o = RuleOptions::default();
    let many: Vec<Detection> = (0..20)
        .map(|i| det("person", 0.95 + i as f64 * 0.001, [0.0; 4]))
        .collect();
    let kept = filter_detections(&many, "counting", &o);
    assert_eq!(kept["person"].len(), 16);
    // Kept are the 16 best, in descending order.
    let scores: Vec<f64> = kept["person"].iter().map(|d| d.score).collect();
    let mut want: Vec<f64> = many.iter().map(|d| d.score).collect();
    want.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(scores, want[..16]);
    // An exclude for 17 cannot fire: at most 16 are kept.
    let m = meta(
        r#"{"tag": "counting", "include": [{"class": "person", "count": 4}], "exclude": [{"class": "person", "count": 17}], "prompt": "p"}"#,
    );
    assert!(evaluate(&m, &many, &o).correct);
    let m16 = meta(
        r#"{"tag": "counting", "include": [{"class": "person", "count": 4}], "exclude": [{"class": "person", "count": 16}], "prompt": "p"}"#,
    );
    let v = evaluate(&m16, &many, &o);
    assert_eq!(
        (v.correct, v.reason.as_str()),
        (false, "expected person<16, found 16")
    );
    // With a larger cap the same exclude fires with the true count.
    let o32 = RuleOptions {
        max_objects: 32,
        ..o
    };
    assert_eq!(
        evaluate(&m, &many, &o32).reason,
        "expected person<17, found 20"
    );
}

#[test]
fn color_checks_only_the_top_count_objects() {
    let o = RuleOptions::default();
    let m = meta(
        r#"{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "black"}], "prompt": "p"}"#,
    );
    let dets = [colored("dog", 0.5, "black"), colored("dog", 0.8, "brown")];
    let v = evaluate(&m, &dets, &o);
    assert!(!v.correct);
    assert_eq!(
        v.reason,
        "expected black dog>=1, found 0 black; and 1 brown"
    );
    let dets = [colored("dog", 0.9, "black"), colored("dog", 0.8, "brown")];
    assert!(evaluate(&m, &dets, &o).correct);
    // An unclassified object never matches.
    let v = evaluate(&m, &[det("dog", 0.9, [0.0, 0.0, 10.0, 10.0])], &o);
    assert_eq!(
        (v.correct, v.reason.as_str()),
        (false, "expected black dog>=1, found 0 black; and ")
    );
    // count 2: both top-2 must match; the breakdown lists colors in GenEval's order.
    let m2 = meta(
        r#"{"tag": "colors", "include": [{"class": "dog", "count": 2, "color": "black"}], "prompt": "p"}"#,
    );
    let dets = [
        colored("dog", 0.9, "white"),
        colored("dog", 0.8, "black"),
        colored("dog", 0.7, "black"),
    ];
    assert_eq!(
        evaluate(&m2, &dets, &o).reason,
        "expected black dog>=2, found 1 black; and 1 black, 1 white"
    );
}

#[test]
fn ties_break_by_higher_index_first() {
    let o = RuleOptions::default();
    let m = meta(
        r#"{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "black"}], "prompt": "p"}"#,
    );
    let dets = [
        colored("dog", 0.8, "brown"),
        colored("cat", 0.99, "white"),
        colored("dog", 0.8, "black"),
    ];
    assert!(evaluate(&m, &dets, &o).correct);
    let swapped = [dets[2].clone(), dets[1].clone(), dets[0].clone()];
    assert!(!evaluate(&m, &swapped, &o).correct);
    // Scores equal in float32 tie as well; in f64 mode the larger one wins.
    let near = [
        colored("dog", 0.8 + 1e-12, "brown"),
        colored("dog", 0.8, "black"),
    ];
    assert!(evaluate(&m, &near, &o).correct);
    assert!(
        !evaluate(
            &m,
            &near,
            &RuleOptions {
                float32: false,
                ..o
            }
        )
        .correct
    );
}

#[test]
fn position_horizontal_vertical_diagonal() {
    let o = RuleOptions::default();
    let b = [0.0, 0.0, 100.0, 100.0];
    // 100-px boxes, centres 25 px apart -> dx = -0.2 (none); 150 px -> dx = -0.87 (left of).
    assert!(relative_position(&[-25.0, 0.0, 75.0, 100.0], &b, &o).is_empty());
    assert_eq!(
        relative_position(&[-150.0, 0.0, -50.0, 100.0], &b, &o),
        ["left of"]
    );
    assert_eq!(
        relative_position(&[150.0, 0.0, 250.0, 100.0], &b, &o),
        ["right of"]
    );
    // +y points down.
    assert_eq!(
        relative_position(&[0.0, -150.0, 100.0, -50.0], &b, &o),
        ["above"]
    );
    assert_eq!(
        relative_position(&[0.0, 150.0, 100.0, 250.0], &b, &o),
        ["below"]
    );
    // Diagonal offset (-100, -100): dx = dy = -0.566, two relations.
    assert_eq!(
        relative_position(&[-100.0, -100.0, 0.0, 0.0], &b, &o),
        ["left of", "above"]
    );

    let dets = [
        det("teddy bear", 0.9, b),
        det("dog", 0.9, [-100.0, -100.0, 0.0, 0.0]),
    ];
    assert!(evaluate(&position("dog", "left of", "teddy bear"), &dets, &o).correct);
    assert!(evaluate(&position("dog", "above", "teddy bear"), &dets, &o).correct);
    let v = evaluate(&position("dog", "right of", "teddy bear"), &dets, &o);
    assert!(!v.correct);
    assert_eq!(
        v.reason,
        "expected dog right of target, found left of and above target"
    );
}

#[test]
fn position_uses_the_top_scoring_objects() {
    let o = RuleOptions::default();
    let b = [0.0, 0.0, 100.0, 100.0];
    let dets = [
        det("teddy bear", 0.9, b),
        det("dog", 0.5, [250.0, 0.0, 350.0, 100.0]), // right of, but not the top dog
        det("dog", 0.7, [-250.0, 0.0, -150.0, 100.0]), // the top dog is left of
    ];
    let v = evaluate(&position("dog", "right of", "teddy bear"), &dets, &o);
    assert_eq!(
        v.reason,
        "expected dog right of target, found left of target"
    );
}

#[test]
fn overlapping_boxes_have_no_relation() {
    let o = RuleOptions::default();
    let dets = [
        det("teddy bear", 0.9, [0.0, 0.0, 100.0, 100.0]),
        det("dog", 0.9, [10.0, 10.0, 90.0, 90.0]),
    ];
    for rel in ["left of", "right of", "above", "below"] {
        let v = evaluate(&position("dog", rel, "teddy bear"), &dets, &o);
        assert!(!v.correct);
        assert_eq!(
            v.reason,
            format!("expected dog {rel} target, found  target")
        );
    }
    // The 1e-3 rule: without shrinking, a 0.0005 offset is still "no relation", 0.002 is not.
    let o0 = RuleOptions {
        position_threshold: 0.0,
        float32: false,
        ..o
    };
    let b = [0.0, 0.0, 10.0, 10.0];
    assert!(relative_position(&[0.0005, 0.0, 10.0005, 10.0], &b, &o0).is_empty());
    assert_eq!(
        relative_position(&[0.002, 0.0, 10.002, 10.0], &b, &o0),
        ["right of"]
    );
}

#[test]
fn half_cutoff_is_strict() {
    for float32 in [true, false] {
        let o = RuleOptions {
            float32,
            ..RuleOptions::default()
        };
        // Widths 5 + 5, offset 2: shrink 0.1 * 10 = 1, revised 1, dx = 1 / 2 = 0.5 exactly.
        let b = [0.0, 0.0, 5.0, 5.0];
        assert!(
            relative_position(&[2.0, 0.0, 7.0, 5.0], &b, &o).is_empty(),
            "float32={float32}"
        );
        assert!(relative_position(&[-2.0, 0.0, 3.0, 5.0], &b, &o).is_empty());
        assert!(relative_position(&[0.0, 2.0, 5.0, 7.0], &b, &o).is_empty());
        assert_eq!(
            relative_position(&[2.25, 0.0, 7.25, 5.0], &b, &o),
            ["right of"]
        );
        assert_eq!(
            relative_position(&[0.0, 2.25, 5.0, 7.25], &b, &o),
            ["below"]
        );
        // An exactly representable shrink factor: widths 10 + 10, offset 10, 0.25 -> dx = 0.5.
        let o = RuleOptions {
            position_threshold: 0.25,
            ..o
        };
        let b = [0.0, 0.0, 10.0, 10.0];
        assert!(relative_position(&[10.0, 0.0, 20.0, 10.0], &b, &o).is_empty());
        assert_eq!(
            relative_position(&[10.5, 0.0, 20.5, 10.0], &b, &o),
            ["right of"]
        );
    }
}

#[test]
fn failed_target_fails_position_and_reasons_accumulate() {
    let o = RuleOptions::default();
    let m = position("dog", "right of", "teddy bear");
    let v = evaluate(&m, &[det("dog", 0.9, [0.0; 4])], &o);
    assert!(!v.correct);
    assert_eq!(
        v.reason,
        "expected teddy bear>=1, found 0\nno target for dog to be right of"
    );
    // A clause that fails its count skips its position check: only the count reasons.
    let v = evaluate(&m, &[], &o);
    assert_eq!(
        v.reason,
        "expected teddy bear>=1, found 0\nexpected dog>=1, found 0"
    );
    // Every clause is evaluated: two failed colors give two reasons.
    let m = meta(
        r#"{"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"}, {"class": "apple", "count": 1, "color": "black"}], "prompt": "p"}"#,
    );
    let v = evaluate(
        &m,
        &[
            colored("wine glass", 0.5, "red"),
            colored("apple", 0.5, "green"),
        ],
        &o,
    );
    assert_eq!(
        v.reason.lines().collect::<Vec<_>>(),
        strings(&[
            "expected purple wine glass>=1, found 0 purple; and 1 red",
            "expected black apple>=1, found 0 black; and 1 green"
        ])
    );
    // A failed color skips the position check and makes the clause's group None.
    let m = meta(
        r#"{"tag": "position", "include": [{"class": "cat", "count": 1, "color": "red"}, {"class": "dog", "count": 1, "position": ["left of", 0]}], "prompt": "p"}"#,
    );
    let v = evaluate(
        &m,
        &[colored("cat", 0.9, "blue"), colored("dog", 0.9, "red")],
        &o,
    );
    assert_eq!(
        v.reason,
        "expected red cat>=1, found 0 red; and 1 blue\nno target for dog to be left of"
    );
    // Include and exclude failures accumulate too.
    let m = meta(
        r#"{"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cat", "count": 1}], "prompt": "p"}"#,
    );
    let v = evaluate(&m, &[det("cat", 0.95, [0.0; 4])], &o);
    assert_eq!(
        v.reason,
        "expected cup>=3, found 0\nexpected cat<1, found 1"
    );
}

#[test]
fn nms_only_below_one_with_plus_one_iou() {
    let a = [0.0, 0.0, 9.0, 9.0];
    let b = [5.0, 0.0, 14.0, 9.0];
    // +1 convention: inter 5x10 = 50, union 150 -> 1/3 (without +1 it would be 36/126).
    assert!((iou_plus_one(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
    let dets = [det("cup", 0.8, a), det("cup", 0.7, b), det("cup", 0.6, a)];
    let o = RuleOptions::default();
    assert_eq!(filter_detections(&dets, "two_object", &o)["cup"].len(), 3);
    let o = RuleOptions {
        max_overlap: 0.3,
        ..o
    };
    let kept = filter_detections(&dets, "two_object", &o);
    assert_eq!(kept["cup"].len(), 1);
    assert_eq!(kept["cup"][0].score, 0.8);
    let o = RuleOptions {
        max_overlap: 0.34,
        ..o
    };
    assert_eq!(
        filter_detections(&dets, "two_object", &o)["cup"]
            .iter()
            .map(|d| d.score)
            .collect::<Vec<_>>(),
        [0.8, 0.7]
    );
}

#[test]
fn two_object_needs_both_and_allows_extras() {
    let o = RuleOptions::default();
    let m = meta(
        r#"{"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], "prompt": "p"}"#,
    );
    let dets = [
        det("cat", 0.4, [0.0; 4]),
        det("dog", 0.31, [0.0; 4]),
        det("dog", 0.9, [0.0; 4]),
        det("car", 0.99, [0.0; 4]),
    ];
    assert!(evaluate(&m, &dets, &o).correct);
    assert_eq!(
        evaluate(&m, &dets[..1], &o).reason,
        "expected dog>=1, found 0"
    );
}
