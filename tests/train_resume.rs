//! k steps + checkpoint + resume into a fresh process state + k steps == 2k uninterrupted steps,
//! on a tiny MLP with everything the trainers use: our AdamW (decay/no-decay groups), warmup +
//! cosine LR, grad clipping, data order from `epoch_order`, host RNG draws (`DataRng`) and torch
//! RNG (dropout, noise) re-seeded per step, all through the real checkpoint save/load.
//! Variants: fp32 params, and bf16 params with fp32 master weights.

use imgcot::train::ckpt::{save_checkpoint, Checkpoint, TrainerState};
use imgcot::train::grad::clip_grad_norm;
use imgcot::train::optim::{AdamW, AdamWConfig};
use imgcot::train::rng::{epoch_order, seed_torch, seed_torch_for_step, DataRng};
use imgcot::train::schedule::LrSchedule;
use std::path::Path;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

const N: usize = 24;
const BATCH: usize = 8;
const K: u64 = 7; // crosses epoch boundaries (3 steps per epoch) on both sides of the resume
const SEED: u64 = 1234;
const SCHED: LrSchedule = LrSchedule::Cosine {
    warmup_steps: 3,
    total_steps: 2 * K,
    min_lr_ratio: 0.1,
};
const BASE_LR: f64 = 5e-2;

struct Trainer {
    vs: VarStore,
    l1: nn::Linear,
    ln: nn::LayerNorm,
    l2: nn::Linear,
    opt: AdamW,
    rng: DataRng,
    st: TrainerState,
    kind: Kind,
}

fn data() -> (Tensor, Tensor) {
    seed_torch(99);
    let x = Tensor::randn([N as i64, 6], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([N as i64, 2], (Kind::Float, Device::Cpu));
    (x, y)
}

impl Trainer {
    /// A fresh trainer; `init_seed` differs between runs so the resumed one must really load.
    fn new(init_seed: u64, bf16: bool) -> Self {
        seed_torch(init_seed);
        let mut vs = VarStore::new(Device::Cpu);
        let l1 = nn::linear(vs.root() / "fc1", 6, 16, Default::default());
        let ln = nn::layer_norm(vs.root() / "norm", vec![16], Default::default());
        let l2 = nn::linear(vs.root() / "fc2", 16, 2, Default::default());
        let kind = if bf16 {
            vs.bfloat16();
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let cfg = AdamWConfig {
            lr: BASE_LR,
            weight_decay: 0.1,
            ..Default::default()
        };
        let opt = AdamW::new(&vs, cfg).unwrap();
        let st = TrainerState {
            seed: SEED,
            ..Default::default()
        };
        Self {
            vs,
            l1,
            ln,
            l2,
            opt,
            rng: DataRng::new(SEED),
            st,
            kind,
        }
    }

    fn train(&mut self, steps: u64, (x, y): &(Tensor, Tensor)) {
        for _ in 0..steps {
            let step = self.st.step;
            seed_torch_for_step(self.st.seed, step);
            let order = epoch_order(self.st.seed, self.st.epoch, N);
            let pos = self.st.data_position as usize;
            let idx: Vec<i64> = order[pos..pos + BATCH].iter().map(|&i| i as i64).collect();
            self.st.data_position += BATCH as u64;
            if self.st.data_position as usize >= N {
                self.st.epoch += 1;
                self.st.data_position = 0;
            }
            let idx = Tensor::from_slice(&idx);
            // Host-RNG augmentation strength, torch-RNG noise and dropout.
            let strength = 0.05 * self.rng.uniform();
            let xb = x.index_select(0, &idx)
                + Tensor::randn([BATCH as i64, 6], (Kind::Float, Device::Cpu)) * strength;
            let yb = y.index_select(0, &idx);
            let h = self
                .ln
                .forward(&self.l1.forward(&xb.to_kind(self.kind)))
                .relu()
                .dropout(0.2, true);
            let out = self.l2.forward(&h).to_kind(Kind::Float);
            let loss = (out - yb).square().mean(Kind::Float);
            loss.backward();
            clip_grad_norm(&self.opt.vars(), 0.5);
            self.opt.set_lr(SCHED.lr(BASE_LR, step));
            self.opt.step().unwrap();
            self.opt.zero_grad();
            self.st.step += 1;
        }
    }

    fn save(&mut self, run: &Path) {
        self.st.data_rng = Some(self.rng.state());
        save_checkpoint(
            run,
            &self.vs,
            Some(&serde_json::json!({"hidden": 16})),
            &self.opt,
            &self.st,
        )
        .unwrap();
    }

    fn resume(run: &Path, bf16: bool, load_optimizer: bool) -> Self {
        let mut t = Self::new(777, bf16);
        let c = Checkpoint::latest(run).unwrap().expect("checkpoint");
        c.load_model(&t.vs).unwrap();
        if load_optimizer {
            c.load_optimizer(&mut t.opt).unwrap();
        }
        t.st = c.trainer_state().unwrap();
        t.rng = DataRng::from_state(t.st.data_rng.as_ref().unwrap()).unwrap();
        assert_eq!(t.st.step, K);
        t
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        imgcot::train::ckpt::named_variables_sorted(&self.vs)
    }
}

fn max_param_diff(a: &Trainer, b: &Trainer) -> f64 {
    a.params()
        .iter()
        .zip(b.params())
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, &nb);
            (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Both variants drive libtorch's global generator; tests run on parallel threads.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(bf16: bool) {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = data();
    let run = std::env::temp_dir().join(format!("imgcot-resume-{bf16}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);

    let mut full = Trainer::new(5, bf16);
    full.train(2 * K, &d);

    let mut first = Trainer::new(5, bf16);
    first.train(K, &d);
    first.save(&run);
    drop(first);
    let mut resumed = Trainer::resume(&run, bf16, true);
    resumed.train(K, &d);

    let diff = max_param_diff(&full, &resumed);
    println!("bf16={bf16}: max |2k - (k + resume + k)| = {diff:e}");
    assert!(
        diff <= 1e-6,
        "resumed run differs by {diff:e} (bf16={bf16})"
    );
    assert_eq!(
        (full.st.step, full.st.epoch, full.st.data_position),
        (resumed.st.step, resumed.st.epoch, resumed.st.data_position)
    );
    assert_eq!(full.rng.state(), resumed.rng.state());
    assert_eq!(full.opt.step_count(), resumed.opt.step_count());

    // Negative control: resuming without the optimizer state does not reproduce the run, so the
    // check above is sensitive to it.
    let mut no_opt = Trainer::resume(&run, bf16, false);
    no_opt.train(K, &d);
    let bad = max_param_diff(&full, &no_opt);
    assert!(
        bad > 1e-3,
        "resume without optimizer state should differ, got {bad:e}"
    );
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn resume_equals_uninterrupted_fp32() {
    check(false);
}

#[test]
fn resume_equals_uninterrupted_bf16_master() {
    check(true);
}
