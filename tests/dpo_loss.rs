//! DPO losses against values computed here from the formulas in plain f64, metric semantics, and
//! that every enabled loss term carries gradient to the policy (directly and through a tiny
//! linear "policy").
use imgcot::dpo::loss::{dpo_loss, DpoLossOutput, LossConfig, LossKind, PairLogps};
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// −logσ(x) = ln(1 + e^(−x)).
fn nls(x: f64) -> f64 {
    (1.0 + (-x).exp()).ln()
}

/// The per-pair loss from the formulas, in f64.
fn reference_loss(kind: LossKind, beta: f64, eps: f64, h: f64) -> f64 {
    let bh = beta * h;
    match kind {
        LossKind::Sigmoid => nls(bh),
        LossKind::Ipo => (h - 1.0 / (2.0 * beta)).powi(2),
        LossKind::Hinge => (1.0 - bh).max(0.0),
        LossKind::Robust => ((1.0 - eps) * nls(bh) - eps * nls(-bh)) / (1.0 - 2.0 * eps),
        LossKind::Cdpo => (1.0 - eps) * nls(bh) + eps * nls(-bh),
    }
}

// Three pairs; margins h = (pc − pr) − (rc − rr) = [0.2, −0.8, 1.0].
const PC: [f64; 3] = [-10.0, -12.5, -8.0];
const PR: [f64; 3] = [-11.0, -12.0, -9.5];
const RC: [f64; 3] = [-10.4, -12.0, -8.5];
const RR: [f64; 3] = [-11.2, -12.3, -9.0];

fn margins() -> Vec<f64> {
    (0..3).map(|i| (PC[i] - PR[i]) - (RC[i] - RR[i])).collect()
}

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

fn run(cfg: &LossConfig, nll: Option<&Tensor>) -> DpoLossOutput {
    let (pc, pr, rc, rr) = (t(&PC), t(&PR), t(&RC), t(&RR));
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    dpo_loss(cfg, &lp, nll).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

const ALL: [(LossKind, f64); 6] = [
    (LossKind::Sigmoid, 0.0),
    (LossKind::Ipo, 0.0),
    (LossKind::Hinge, 0.0),
    (LossKind::Robust, 0.1),
    (LossKind::Robust, 0.0),
    (LossKind::Cdpo, 0.2),
];

#[test]
fn each_loss_matches_its_formula() {
    let h = margins();
    assert!(close(h[0], 0.2, 1e-12) && close(h[1], -0.8, 1e-12) && close(h[2], 1.0, 1e-12));
    for beta in [0.1, 0.5, 2.0] {
        for (kind, eps) in ALL {
            let cfg = LossConfig {
                kind,
                beta,
                label_smoothing: eps,
                sft_coef: 0.0,
            };
            let out = run(&cfg, None);
            let per: Vec<f64> = h
                .iter()
                .map(|&h| reference_loss(kind, beta, eps, h))
                .collect();
            let got: Vec<f64> = Vec::<f64>::try_from(&out.pref_losses).unwrap();
            for i in 0..3 {
                assert!(
                    close(got[i], per[i], 1e-12),
                    "{kind:?} β={beta} ε={eps} pair {i}: {} vs {}",
                    got[i],
                    per[i]
                );
            }
            let mean = per.iter().sum::<f64>() / 3.0;
            assert!(
                close(out.loss.double_value(&[]), mean, 1e-12),
                "{kind:?} β={beta}"
            );
            assert!(close(out.metrics.loss, mean, 1e-12));
            assert!(out.sft_term.is_none());
        }
    }
}

#[test]
fn single_pair_worked_examples() {
    // h = 0.3, β = 0.1: βh = 0.03.
    let (pc, pr, rc, rr) = (t(&[-5.0]), t(&[-5.5]), t(&[-6.0]), t(&[-6.2]));
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    let loss = |kind, eps| {
        let cfg = LossConfig {
            kind,
            beta: 0.1,
            label_smoothing: eps,
            sft_coef: 0.0,
        };
        dpo_loss(&cfg, &lp, None).unwrap().loss.double_value(&[])
    };
    let e = (-0.03f64).exp();
    assert!(close(loss(LossKind::Sigmoid, 0.0), (1.0 + e).ln(), 1e-12));
    assert!(close(
        loss(LossKind::Ipo, 0.0),
        (0.3f64 - 5.0).powi(2),
        1e-12
    )); // 22.09
    assert!(close(loss(LossKind::Ipo, 0.0), 22.09, 1e-12));
    assert!(close(loss(LossKind::Hinge, 0.0), 0.97, 1e-12));
    let (a, b) = ((1.0 + e).ln(), (1.0 + 1.0 / e).ln());
    assert!(close(
        loss(LossKind::Robust, 0.25),
        (0.75 * a - 0.25 * b) / 0.5,
        1e-12
    ));
    assert!(close(
        loss(LossKind::Cdpo, 0.25),
        0.75 * a + 0.25 * b,
        1e-12
    ));
    // Zero margin: −logσ(0) = ln 2 for sigmoid; cDPO is ln 2 for any ε.
    let z = Tensor::from_slice(&[-3.0f64]);
    let lp0 = PairLogps {
        policy_chosen: &z,
        policy_rejected: &z,
        ref_chosen: &z,
        ref_rejected: &z,
    };
    for kind in [LossKind::Sigmoid, LossKind::Cdpo] {
        let cfg = LossConfig {
            kind,
            beta: 0.1,
            label_smoothing: 0.3,
            ..Default::default()
        };
        let cfg = if kind == LossKind::Sigmoid {
            LossConfig {
                label_smoothing: 0.0,
                ..cfg
            }
        } else {
            cfg
        };
        let v = dpo_loss(&cfg, &lp0, None).unwrap().loss.double_value(&[]);
        assert!(close(v, std::f64::consts::LN_2, 1e-12), "{kind:?}: {v}");
    }
}

#[test]
fn sft_term_adds_weighted_chosen_nll() {
    let nll = t(&[2.0, 3.0, 4.0]);
    let cfg = LossConfig {
        sft_coef: 0.5,
        ..Default::default()
    };
    let out = run(&cfg, Some(&nll));
    let pref = margins().iter().map(|&h| nls(0.1 * h)).sum::<f64>() / 3.0;
    assert!(close(out.metrics.pref_loss, pref, 1e-12));
    assert!(close(out.metrics.sft_loss, 3.0, 1e-12));
    assert!(close(out.loss.double_value(&[]), pref + 0.5 * 3.0, 1e-12));
    assert!(close(
        out.sft_term.as_ref().unwrap().double_value(&[]),
        1.5,
        1e-12
    ));
    // sft_coef > 0 without an NLL is an error, not a silent zero.
    let (pc, pr, rc, rr) = (t(&PC), t(&PR), t(&RC), t(&RR));
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    let e = dpo_loss(&cfg, &lp, None).err().unwrap();
    assert!(e.to_string().contains("sft_coef"), "{e}");
    // sft_coef = 0 ignores a passed NLL.
    let out0 = run(&LossConfig::default(), Some(&nll));
    assert!(close(out0.loss.double_value(&[]), pref, 1e-12));
}

#[test]
fn trl_metrics() {
    let beta = 0.1;
    let out = run(
        &LossConfig {
            beta,
            ..Default::default()
        },
        None,
    );
    let m = out.metrics;
    let cr: Vec<f64> = (0..3).map(|i| beta * (PC[i] - RC[i])).collect(); // [0.04, -0.05, 0.05]
    let rr: Vec<f64> = (0..3).map(|i| beta * (PR[i] - RR[i])).collect(); // [0.02, 0.03, -0.05]
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(close(m.rewards_chosen, mean(&cr), 1e-12));
    assert!(close(m.rewards_rejected, mean(&rr), 1e-12));
    assert!(close(m.rewards_margins, mean(&cr) - mean(&rr), 1e-12));
    assert!(close(m.rewards_accuracies, 2.0 / 3.0, 1e-12)); // pair 1 has chosen < rejected reward
    assert!(close(m.logps_chosen, mean(&PC), 1e-12));
    assert!(close(m.logps_rejected, mean(&PR), 1e-12));
    let names: Vec<&str> = m.named().iter().map(|(n, _)| *n).collect();
    for n in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(names.contains(&n), "missing metric {n}");
    }
}

#[test]
fn float32_inputs_and_shape_errors() {
    let f = |v: &[f64]| t(v).to_kind(Kind::Float);
    let (pc, pr, rc, rr) = (f(&PC), f(&PR), f(&RC), f(&RR));
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &pr,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    let out = dpo_loss(&LossConfig::default(), &lp, None).unwrap();
    assert_eq!(out.loss.kind(), Kind::Float);
    let want = margins().iter().map(|&h| nls(0.1 * h)).sum::<f64>() / 3.0;
    assert!(close(out.loss.double_value(&[]), want, 1e-5));

    let short = t(&[-1.0, -2.0]);
    let lp = PairLogps {
        policy_chosen: &pc,
        policy_rejected: &short,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    let e = dpo_loss(&LossConfig::default(), &lp, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("policy_rejected") && e.contains("[2]") && e.contains("[3]"),
        "{e}"
    );
    let m = t(&PC).view([3, 1]);
    let lp = PairLogps {
        policy_chosen: &m,
        policy_rejected: &pr,
        ref_chosen: &rc,
        ref_rejected: &rr,
    };
    assert!(dpo_loss(&LossConfig::default(), &lp, None).is_err());
}

fn grad_norm(g: &Tensor) -> f64 {
    g.abs().sum(Kind::Double).double_value(&[])
}

/// Margins where every loss is in its active region (hinge: βh < 1; IPO: h ≠ 1/(2β)).
#[test]
fn every_term_has_gradient_wrt_policy_logps() {
    for (kind, eps) in ALL {
        let cfg = LossConfig {
            kind,
            beta: 0.1,
            label_smoothing: eps,
            sft_coef: 0.3,
        };
        let pc = t(&PC).set_requires_grad(true);
        let pr = t(&PR).set_requires_grad(true);
        let (rc, rr) = (t(&RC), t(&RR));
        let nll = -&pc; // the caller's NLL of chosen
        let lp = PairLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
        };
        let out = dpo_loss(&cfg, &lp, Some(&nll)).unwrap();
        let terms = out.terms();
        assert_eq!(
            terms.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["pref", "sft"]
        );
        let g = Tensor::run_backward(&[terms[0].1], &[&pc, &pr], true, false);
        assert!(
            grad_norm(&g[0]) > 1e-6 && grad_norm(&g[1]) > 1e-6,
            "{kind:?}: pref term has no gradient"
        );
        // Finite differences of the f64 formula: d mean(ℓ)/d pc_i = ℓ'(h_i)/B, d/d pr_i = −ℓ'(h_i)/B.
        let gc = Vec::<f64>::try_from(&g[0]).unwrap();
        let gr = Vec::<f64>::try_from(&g[1]).unwrap();
        for (i, &h) in margins().iter().enumerate() {
            let d = 1e-6;
            let fd = (reference_loss(kind, 0.1, eps, h + d)
                - reference_loss(kind, 0.1, eps, h - d))
                / (2.0 * d)
                / 3.0;
            assert!(
                close(gc[i], fd, 1e-5) && close(gr[i], -fd, 1e-5),
                "{kind:?} pair {i}: {} vs {fd}",
                gc[i]
            );
        }
        let g = Tensor::run_backward(&[terms[1].1], &[&pc], true, false);
        assert!(
            grad_norm(&g[0]) > 1e-6,
            "{kind:?}: sft term has no gradient"
        );
        // ∂(sft_coef · mean(−pc))/∂pc_i = −sft_coef / B.
        for v in Vec::<f64>::try_from(&g[0]).unwrap() {
            assert!(close(v, -0.3 / 3.0, 1e-12));
        }
    }
}

#[test]
fn every_term_has_gradient_through_a_linear_policy() {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let policy = nn::linear(vs.root() / "policy", 4, 1, Default::default());
    let xc = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
    let xr = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
    let reference = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)) * 0.01;
    for (kind, eps) in ALL {
        let cfg = LossConfig {
            kind,
            beta: 0.1,
            label_smoothing: eps,
            sft_coef: 0.3,
        };
        let pc = policy.forward(&xc).squeeze_dim(-1) - 5.0;
        let pr = policy.forward(&xr).squeeze_dim(-1) - 5.0;
        let nll = -&pc;
        let (rc, rr) = (reference.get(0) - 5.0, reference.get(1) - 5.0);
        let lp = PairLogps {
            policy_chosen: &pc,
            policy_rejected: &pr,
            ref_chosen: &rc,
            ref_rejected: &rr,
        };
        let out = dpo_loss(&cfg, &lp, Some(&nll)).unwrap();
        let w = &policy.ws;
        let mut sum = Tensor::zeros_like(w);
        for (name, term) in out.terms() {
            let g = Tensor::run_backward(&[term], &[w], true, false);
            assert!(
                grad_norm(&g[0]) > 1e-7,
                "{kind:?}: term '{name}' has no gradient w.r.t. the policy weight"
            );
            sum += &g[0];
        }
        // The total's gradient is the sum of the terms' gradients.
        let g = Tensor::run_backward(&[&out.loss], &[w], false, false);
        let (diff, scale) = (grad_norm(&(&g[0] - &sum)), grad_norm(&sum));
        assert!(
            diff <= 1e-5 * (1.0 + scale),
            "{kind:?}: |Δ| = {diff}, |g| = {scale}"
        );
    }
}
