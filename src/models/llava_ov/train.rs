//! Training support for the LLaVA-OneVision judges (spec-judges §6): chat samples → input ids and
//! labels as the seed's `preprocess_qwen` builds them, the shifted cross-entropy on the supervised
//! tokens, the trainable parameters as a `VarStore` (for [`crate::train::optim::AdamW`]), LoRA
//! adapters kept merged in the weights, random initialisation of small configs, and saving in the
//! original LLaVA-NeXT key layout (loadable by [`super::LlavaJudge::load`]).
use super::config::LlavaOvConfig;
use super::image_processing::expand2square;
use super::image_processing::resize_bicubic;
use super::model::LlavaOnevision;
use super::prompt::{
    bare_prompt, tokenizer_image_token, JudgeQuestion, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX,
};
use super::weights::{Weights, VISION_PREFIX};
use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// Label of positions without loss (`IGNORE_INDEX`).
pub const IGNORE_INDEX: i64 = -100;
/// The `qwen_1_5` system prompt (train.py `preprocess_qwen`).
pub const SYSTEM_MESSAGE: &str = "You are a helpful assistant.";

/// One tokenised chat sample: ids (with −200 at the image) and labels aligned to ids.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTokens {
    pub ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// Index in `ids` of the first content token of the last assistant turn (the answer scored).
    pub answer_pos: usize,
    /// One past that turn's last content token (before its closing tokens).
    pub answer_end: usize,
}

impl ChatTokens {
    /// The ids up to the answer: the generation prompt a judge sees at inference.
    pub fn prompt_ids(&self) -> &[i64] {
        &self.ids[..self.answer_pos]
    }

    /// Keeps the loss on the last answer's own tokens (`answer_pos..answer_end`) and drops it from
    /// the role header, closing tokens and earlier turns.
    pub fn supervise_answer_only(&mut self) {
        for (i, l) in self.labels.iter_mut().enumerate() {
            if !(self.answer_pos..self.answer_end).contains(&i) {
                *l = IGNORE_INDEX;
            }
        }
    }
}

/// `preprocess_multimodal` (train.py:378-403): a message holding `<image>` becomes
/// `"<image>\n" + rest.strip()`.
pub fn move_image_to_front(value: &str) -> String {
    if !value.contains(IMAGE_PLACEHOLDER) {
        return value.to_string();
    }
    format!(
        "{IMAGE_PLACEHOLDER}\n{}",
        value.replace(IMAGE_PLACEHOLDER, "").trim()
    )
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    tokenizer_image_token(tok, text)
}

/// Ids that `preprocess_qwen` un-masks everywhere (198 "\n", 151644, 151645 for Qwen2): the strings
/// "\n", `<|im_start|>`, `<|im_end|>` when the tokenizer encodes each as exactly one token.
pub fn always_supervised_ids(tok: &Tokenizer) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for s in ["\n", "<|im_start|>", "<|im_end|>"] {
        let ids = encode(tok, s)?;
        if ids.len() == 1 {
            out.push(ids[0]);
        }
    }
    Ok(out)
}

/// Tokenises a conversation `(is_assistant, text)` the way `preprocess_qwen` does: system and user
/// segments masked, assistant segments (`<|im_start|>assistant\n` … `<|im_end|>\n`) supervised,
/// then the [`always_supervised_ids`] un-masked everywhere. The last turn must be the assistant's.
pub fn chat_tokens(
    tok: &Tokenizer,
    turns: &[(bool, String)],
    image_to_front: bool,
) -> Result<ChatTokens> {
    ensure!(
        turns.last().is_some_and(|t| t.0),
        "the conversation must end with an assistant turn"
    );
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut push = |seg: Vec<i64>, supervised: bool, ids: &mut Vec<i64>| {
        labels.extend(
            seg.iter()
                .map(|&t| if supervised { t } else { IGNORE_INDEX }),
        );
        ids.extend(seg);
    };
    push(
        encode(
            tok,
            &format!("<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n"),
        )?,
        false,
        &mut ids,
    );
    let (mut answer_pos, mut answer_end) = (0, 0);
    for (assistant, text) in turns {
        if *assistant {
            ensure!(
                !text.contains(IMAGE_PLACEHOLDER),
                "an assistant turn holds <image>"
            );
            push(encode(tok, "<|im_start|>assistant\n")?, true, &mut ids);
            answer_pos = ids.len();
            push(encode(tok, text)?, true, &mut ids);
            answer_end = ids.len();
            push(encode(tok, "<|im_end|>\n")?, true, &mut ids);
        } else {
            let v = if image_to_front {
                move_image_to_front(text)
            } else {
                text.clone()
            };
            push(
                encode(tok, &format!("<|im_start|>user\n{v}<|im_end|>\n"))?,
                false,
                &mut ids,
            );
        }
    }
    ensure!(
        answer_pos < ids.len(),
        "the last assistant turn tokenises to nothing"
    );
    let always = always_supervised_ids(tok)?;
    for (l, &t) in labels.iter_mut().zip(&ids) {
        if always.contains(&t) {
            *l = t;
        }
    }
    Ok(ChatTokens {
        ids,
        labels,
        answer_pos,
        answer_end,
    })
}

/// The `bare` layout ([`super::prompt::PromptLayout::Bare`], not in the paper): the image, the
/// question's word, the generation prompt (unsupervised), the answer and LLaVA `plain`'s "\n"
/// separator (supervised).
pub fn bare_tokens(
    tok: &Tokenizer,
    question: JudgeQuestion,
    prompt: &str,
    answer: &str,
) -> Result<ChatTokens> {
    let mut ids = encode(tok, &bare_prompt(question, prompt))?;
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let answer_pos = ids.len();
    let mut tail = encode(tok, answer)?;
    ensure!(!tail.is_empty(), "the answer tokenises to nothing");
    let answer_end = answer_pos + tail.len();
    tail.extend(encode(tok, "\n")?);
    labels.extend(&tail);
    ids.extend(tail);
    Ok(ChatTokens {
        ids,
        labels,
        answer_pos,
        answer_end,
    })
}

/// An image as the seed's "pad" preprocessing sees it: expand2square, bicubic resize to `size`²
/// (skipped at that size), as uint8 [3, size, size]; [`normalize_pixels`] finishes the SigLIP step.
pub fn pad_image_u8(img: &RgbImage, size: u32) -> Tensor {
    let sq = expand2square(img);
    let r = if sq.dimensions() == (size, size) {
        sq
    } else {
        resize_bicubic(&sq, size, size)
    };
    Tensor::from_slice(r.as_raw())
        .view([size as i64, size as i64, 3])
        .permute([2, 0, 1])
        .contiguous()
}

/// uint8 [..., 3, S, S] → `(x·(1/255) − 0.5)/0.5` as float32, bit-identical to `siglip_pixels`.
pub fn normalize_pixels(u8s: &Tensor) -> Tensor {
    ((u8s.to_kind(Kind::Double) * (1.0 / 255.0)).to_kind(Kind::Float) - 0.5) / 0.5
}

/// A batch element for [`forward_batch`].
pub struct BatchItem<'a> {
    pub tokens: &'a ChatTokens,
    /// uint8 [3, S, S] from [`pad_image_u8`].
    pub image: &'a Tensor,
    /// Weight of this sample's supervised tokens in the batch loss (1 = LLaVA's token mean).
    pub weight: f64,
}

/// What one forward pass over a batch gives.
pub struct BatchOutput {
    /// Mean CE over the supervised tokens of the batch (shift by one, as Qwen2ForCausalLM),
    /// weighted by each sample's `weight` when the weights differ.
    pub loss: Tensor,
    /// Supervised tokens counted in `loss`.
    pub tokens: i64,
    /// fp32 logits [B, V] at the position predicting each sample's answer token.
    pub answer_logits: Tensor,
}

/// What one more LM pass costs, in padded token positions, when [`length_groups`] weighs a split:
/// on CPU a pass of a few rows has a fixed cost of roughly this many positions' compute.
pub const GROUP_COST_TOKENS: i64 = 64;

/// Splits sample indices into groups of similar length that minimise the padded positions plus
/// `group_cost` per group (exact dynamic programme over the lengths in sorted order). Judge
/// batches mix short yes/no records with long captions; one padded pass pads every short row to
/// the longest caption.
pub fn length_groups(lens: &[i64], group_cost: i64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let n = order.len();
    // best[j]: the least cost of grouping the first j sorted samples; cut[j]: where its last group starts.
    let mut best = vec![0i64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let longest = lens[order[j - 1]];
        let (i, c) = (0..j)
            .map(|i| {
                let c = best[i]
                    .saturating_add(group_cost)
                    .saturating_add((j - i) as i64 * longest);
                (i, c)
            })
            .min_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))
            .expect("j >= 1");
        best[j] = c;
        cut[j] = i;
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = cut[j];
        groups.push(order[i..j].to_vec());
        j = i;
    }
    groups.reverse();
    groups
}

/// Forward pass of a batch through the "pad" visual path with gradients. The LM runs once per
/// group of similar lengths ([`length_groups`]): judge batches mix one-token yes/no records with
/// long captions, and one pass would pad every row to the longest.
pub fn forward_batch(model: &LlavaOnevision, batch: &[BatchItem]) -> Result<BatchOutput> {
    forward_batch_grouped(model, batch, Some(GROUP_COST_TOKENS))
}

/// [`forward_batch`] with the LM's groups chosen by [`length_groups`] at `group_cost` (0: one
/// pass per distinct length; `None`: one padded pass over the batch in its order). The result
/// is the same in exact arithmetic and differs only by float rounding.
pub fn forward_batch_grouped(
    model: &LlavaOnevision,
    batch: &[BatchItem],
    group_cost: Option<i64>,
) -> Result<BatchOutput> {
    ensure!(!batch.is_empty(), "empty batch");
    let dev = model.device();
    let px = Tensor::stack(
        &batch
            .iter()
            .map(|b| b.image.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let visual = model.encode_pad(&normalize_pixels(&px).to_device(dev))?;
    let n_vis = visual[0].size()[0];
    let mut seqs = Vec::with_capacity(batch.len());
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut target_weights = Vec::new();
    let mut answer_rows = Vec::new();
    let mut spliced_labels = Vec::with_capacity(batch.len());
    for (b, v) in batch.iter().zip(&visual) {
        let t = b.tokens;
        let n_img = t.ids.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count();
        ensure!(
            n_img == 1,
            "a judge sample needs exactly one <image>, found {n_img}"
        );
        let seq = model.splice(&t.ids, std::slice::from_ref(v))?;
        let mut lab = Vec::with_capacity(seq.size()[0] as usize);
        let mut answer = None;
        for (i, (&id, &l)) in t.ids.iter().zip(&t.labels).enumerate() {
            if i == t.answer_pos {
                answer = Some(lab.len() as i64);
            }
            if id == IMAGE_TOKEN_INDEX {
                lab.extend(std::iter::repeat_n(IGNORE_INDEX, n_vis as usize));
            } else {
                lab.push(l);
            }
        }
        let a = answer.context("answer position")?;
        ensure!(a >= 1, "the answer cannot be the first token");
        answer_rows.push(a - 1);
        spliced_labels.push(lab);
        seqs.push(seq);
    }
    // The LM runs once per group of similar lengths (`length_groups`): right padding is invisible
    // to real tokens under causal attention, so each row's states are the same as in one padded
    // pass, without the padded positions' compute. `start[b]` is row 0 of sample b in `flat`.
    let lens: Vec<i64> = spliced_labels.iter().map(|l| l.len() as i64).collect();
    let lm = model.language_model();
    let mut start = vec![0i64; batch.len()];
    let mut flats = Vec::new();
    let mut offset = 0i64;
    let groups = match group_cost {
        Some(c) => length_groups(&lens, c),
        None => vec![(0..lens.len()).collect()],
    };
    for group in groups {
        let len = group
            .iter()
            .map(|&b| lens[b])
            .max()
            .expect("non-empty group");
        let padded: Vec<Tensor> = group
            .iter()
            .map(|&b| seqs[b].constant_pad_nd([0, 0, 0, len - lens[b]]))
            .collect();
        let hidden = lm.forward_hidden(&Tensor::stack(&padded, 0))?;
        let h = hidden.size()[2];
        for (k, &b) in group.iter().enumerate() {
            start[b] = offset + k as i64 * len;
        }
        offset += group.len() as i64 * len;
        flats.push(hidden.reshape([-1, h]));
    }
    let flat = Tensor::cat(&flats, 0);
    for (bi, lab) in spliced_labels.iter().enumerate() {
        for p in 0..lab.len().saturating_sub(1) {
            if lab[p + 1] != IGNORE_INDEX {
                rows.push(start[bi] + p as i64);
                targets.push(lab[p + 1]);
                target_weights.push(batch[bi].weight);
            }
        }
    }
    ensure!(!targets.is_empty(), "no supervised tokens in the batch");
    let sel = flat.index_select(0, &Tensor::from_slice(&rows).to_device(dev));
    let logits = lm.lm_logits(&sel);
    let tgt = Tensor::from_slice(&targets).to_device(dev);
    let loss = if target_weights.iter().all(|&w| w == target_weights[0]) {
        logits.cross_entropy_for_logits(&tgt)
    } else {
        let w = Tensor::from_slice(&target_weights)
            .to_kind(Kind::Float)
            .to_device(dev);
        let nll = -logits
            .log_softmax(-1, Kind::Float)
            .gather(1, &tgt.unsqueeze(1), false)
            .squeeze_dim(1);
        (nll * &w).sum(Kind::Float) / w.sum(Kind::Float)
    };
    let arows: Vec<i64> = answer_rows
        .iter()
        .enumerate()
        .map(|(b, &p)| start[b] + p)
        .collect();
    let answer_logits =
        lm.lm_logits(&flat.index_select(0, &Tensor::from_slice(&arows).to_device(dev)));
    Ok(BatchOutput {
        loss,
        tokens: targets.len() as i64,
        answer_logits,
    })
}

/// LoRA settings (PEFT semantics: `W' = W + (alpha/r)·B·A`, A kaiming-uniform(a=√5), B = 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    /// Leaf module names to adapt (the seed's `--lora_enable`: all LLM linears but lm_head).
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    /// Also adapt matching linears of the vision tower (PEFT's suffix match would; LLaVA means not to).
    #[serde(default)]
    pub include_vision: bool,
    /// Substrings of parameter names trained in full besides the adapters (`non_lora_trainables`).
    #[serde(default)]
    pub train_also: Vec<String>,
}

fn default_targets() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A LoRA adapter on one linear weight. The model always runs the merged weight
/// `W = W0 + s·B·A`; gradients reach A and B by the chain rule from dL/dW
/// ([`LoraAdapter::backward_from_weight_grad`]), which equals autograd through the unmerged form
/// `x·W0ᵀ + s·(x·Aᵀ)·Bᵀ` without changing the model's forward code.
pub struct LoraAdapter {
    /// Module prefix, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// The model's weight tensor (shared storage; holds the merged value).
    pub weight: Tensor,
    /// Frozen original weight W0.
    pub base: Tensor,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraAdapter {
    /// A is drawn from `seed` and the module name alone (not libtorch's global generator), so a
    /// run's adapters do not depend on what else the process drew before.
    pub fn new(module: &str, weight: &Tensor, r: i64, alpha: f64, seed: u64) -> Result<Self> {
        let (out, inp) = weight.size2().context("LoRA target is not a 2-D weight")?;
        ensure!(r >= 1, "LoRA rank must be ≥ 1");
        let opts = (weight.kind(), weight.device());
        // kaiming_uniform_(a=√5) on [r, in]: bound = 1/√in.
        let bound = 1.0 / (inp as f64).sqrt();
        // FNV-1a of the name picks the module's stream.
        let stream = module.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = crate::train::rng::DataRng::with_stream(seed, stream);
        let u: Vec<f64> = (0..r * inp).map(|_| rng.uniform()).collect();
        let a = (Tensor::from_slice(&u)
            .view([r, inp])
            .to_kind(opts.0)
            .to_device(opts.1)
            * (2.0 * bound)
            - bound)
            .set_requires_grad(true);
        let b = Tensor::zeros([out, r], opts).set_requires_grad(true);
        let base = weight.detach().copy();
        Ok(Self {
            module: module.to_string(),
            weight: weight.shallow_clone(),
            base,
            a,
            b,
            scale: alpha / r as f64,
        })
    }

    /// `s·B·A`.
    pub fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }

    /// Writes `W0 + s·B·A` into the model's weight.
    pub fn merge(&self) {
        tch::no_grad(|| {
            let mut w = self.weight.shallow_clone();
            w.copy_(&(&self.base + self.delta()));
        });
    }

    /// The unmerged forward `x·W0ᵀ + bias + s·(x·Aᵀ)·Bᵀ` (reference for tests).
    pub fn forward_unmerged(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        x.linear(&self.base, bias) + x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }

    /// Moves dL/dW (accumulated on the model's weight by `backward`) to A and B:
    /// dL/dA = s·Bᵀ·G, dL/dB = s·G·Aᵀ, accumulated into their grads; then clears W's grad.
    pub fn backward_from_weight_grad(&self) {
        let g = self.weight.grad();
        if !g.defined() {
            return;
        }
        let g = g.detach().copy();
        (self.delta() * &g).sum(g.kind()).backward();
        let _ = self.weight.grad().zero_();
    }
}

/// The trainable side of a model: its parameters in a `VarStore` (names = original keys, or
/// `<module>.lora_A.weight` / `.lora_B.weight`), plus LoRA adapters.
pub struct Trainable {
    pub vs: VarStore,
    pub adapters: Vec<LoraAdapter>,
    /// Some weights neither train nor have an adapter (a frozen tower, LoRA's untargeted
    /// weights): a resume state must hold them apart when they differ from the initial
    /// checkpoint (a pretrained tower).
    pub freezes_some: bool,
}

impl Trainable {
    /// Full fine-tune (`lora = None`): every weight trains (the seed's tunable parts
    /// `mm_vision_tower,mm_mlp_adapter,mm_language_model`). With LoRA: adapters on the targets plus
    /// the `train_also` parameters; everything else is frozen. `seed` draws the adapters.
    /// `freeze_vision`: the vision tower neither trains nor gets gradients (its backward pass is
    /// skipped), whatever `lora` says.
    pub fn new(
        model: &LlavaOnevision,
        lora: Option<&LoraConfig>,
        seed: u64,
        freeze_vision: bool,
    ) -> Result<Self> {
        let mut adapters = Vec::new();
        let mut vars: Vec<(String, Tensor)> = Vec::new();
        let mut freezes_some = false;
        for (name, t) in model.named_tensors() {
            if freeze_vision && name.starts_with(VISION_PREFIX) {
                let _ = t.set_requires_grad(false);
                freezes_some = true;
                continue;
            }
            let trainable = match lora {
                None => true,
                Some(l) => l.train_also.iter().any(|p| name.contains(p.as_str())),
            };
            let target = lora.and_then(|l| {
                let module = name.strip_suffix(".weight")?;
                let leaf = module.rsplit('.').next()?;
                let vision = name.starts_with(VISION_PREFIX);
                (l.target_modules.iter().any(|m| m == leaf) && (!vision || l.include_vision))
                    .then(|| module.to_string())
            });
            if let (Some(module), Some(l)) = (target, lora) {
                ensure!(
                    !trainable,
                    "'{name}' is both a LoRA target and in train_also"
                );
                // W gets grads (chain rule to A, B) but is not optimised itself.
                let _ = t.set_requires_grad(true);
                let ad = LoraAdapter::new(&module, &t, l.r, l.alpha, seed)?;
                vars.push((format!("{module}.lora_A.weight"), ad.a.shallow_clone()));
                vars.push((format!("{module}.lora_B.weight"), ad.b.shallow_clone()));
                adapters.push(ad);
            } else {
                let _ = t.set_requires_grad(trainable);
                if trainable {
                    vars.push((name, t));
                } else {
                    freezes_some = true;
                }
            }
        }
        let vs = crate::train::ckpt::var_store_of(model.device(), vars)?;
        Ok(Self {
            vs,
            freezes_some: freezes_some || !adapters.is_empty(),
            adapters,
        })
    }

    /// After `loss.backward()`: route weight grads into the LoRA factors.
    pub fn after_backward(&self) {
        for a in &self.adapters {
            a.backward_from_weight_grad();
        }
    }

    /// After the optimizer step: refresh the merged weights.
    pub fn after_step(&self) {
        for a in &self.adapters {
            a.merge();
        }
    }

    /// Trainable parameter count.
    pub fn num_params(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}

/// Sizes of a judge initialised from scratch (the glyph world's: 128² images, 16-pixel patches = the
/// 8×8 glyph cells).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScratchConfig {
    pub vision_hidden_size: i64,
    pub vision_intermediate_size: i64,
    /// SigLIP layers run (the config stores one more: LLaVA drops the last, `mm_vision_select_layer=-2`).
    pub vision_layers: i64,
    pub vision_heads: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// How the weights are drawn (default `hf`).
    #[serde(default)]
    pub weight_init: WeightInit,
}

/// How a judge trained from scratch draws its weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// HF's `initializer_range`: N(0, 0.02²) for every matrix and embedding, as the 7B configs say.
    #[default]
    Hf,
    /// N(0, 1/fan_in) for matrices and the patch convolution, N(0, 1) for the token and position
    /// embeddings. At hidden size 128, 0.02 is a quarter of 1/√fan_in: attention starts nearly
    /// uniform and a scratch glyph judge sat at chance for hundreds of steps (README, "What is not
    /// done").
    FanIn,
}

fn default_theta() -> f64 {
    10_000.0
}

impl ScratchConfig {
    /// `config.json` in the original LLaVA-NeXT layout (`model_type: llava`, Qwen2 fields at the top
    /// level, a `vision_config` object for the non-so400m tower, `image_aspect_ratio: pad`).
    pub fn config_json(&self, vocab_size: i64) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlavaQwenForCausalLM"],
            "model_type": "llava",
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
            "torch_dtype": "float32",
            "mm_hidden_size": self.vision_hidden_size,
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_patch_merge_type": "spatial_unpad",
            "mm_use_im_patch_token": false,
            "mm_use_im_start_end": false,
            "image_aspect_ratio": "pad",
            "vision_config": {
                "hidden_size": self.vision_hidden_size,
                "intermediate_size": self.vision_intermediate_size,
                "num_hidden_layers": self.vision_layers + 1,
                "num_attention_heads": self.vision_heads,
                "num_channels": 3,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "layer_norm_eps": 1e-6,
                "hidden_act": "gelu_pytorch_tanh"
            }
        })
    }
}

/// (name, shape) of every tensor a model of `cfg` loads, original key names.
pub fn expected_shapes(cfg: &LlavaOvConfig) -> Vec<(String, Vec<i64>)> {
    let v = &cfg.vision;
    let t = &cfg.text;
    let (vh, vi) = (v.hidden_size, v.intermediate_size);
    let mut out: Vec<(String, Vec<i64>)> = vec![
        (
            format!("{VISION_PREFIX}embeddings.patch_embedding.weight"),
            vec![vh, v.num_channels, v.patch_size, v.patch_size],
        ),
        (
            format!("{VISION_PREFIX}embeddings.patch_embedding.bias"),
            vec![vh],
        ),
        (
            format!("{VISION_PREFIX}embeddings.position_embedding.weight"),
            vec![v.num_patches(), vh],
        ),
    ];
    for i in 0..cfg.vision_layers_used {
        let p = format!("{VISION_PREFIX}encoder.layers.{i}");
        for ln in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{p}.{ln}.weight"), vec![vh]));
            out.push((format!("{p}.{ln}.bias"), vec![vh]));
        }
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((format!("{p}.self_attn.{n}.weight"), vec![vh, vh]));
            out.push((format!("{p}.self_attn.{n}.bias"), vec![vh]));
        }
        out.push((format!("{p}.mlp.fc1.weight"), vec![vi, vh]));
        out.push((format!("{p}.mlp.fc1.bias"), vec![vi]));
        out.push((format!("{p}.mlp.fc2.weight"), vec![vh, vi]));
        out.push((format!("{p}.mlp.fc2.bias"), vec![vh]));
    }
    let (h, im, d) = (t.hidden_size, t.intermediate_size, t.head_dim());
    out.push(("model.mm_projector.0.weight".into(), vec![h, vh]));
    out.push(("model.mm_projector.0.bias".into(), vec![h]));
    out.push(("model.mm_projector.2.weight".into(), vec![h, h]));
    out.push(("model.mm_projector.2.bias".into(), vec![h]));
    if cfg.has_image_newline {
        out.push(("model.image_newline".into(), vec![h]));
    }
    out.push(("model.embed_tokens.weight".into(), vec![t.vocab_size, h]));
    let (q, kv) = (t.num_attention_heads * d, t.num_key_value_heads * d);
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![im, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![im, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, im]));
    }
    out.push(("model.norm.weight".into(), vec![h]));
    if !t.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![t.vocab_size, h]));
    }
    out
}

/// Random initial weights for `cfg` (HF-style: normal(0, 0.02) matrices and embeddings, zero
/// biases, unit norms; `image_newline` ~ N(0, 1/hidden) as LLaVA's `embed_std`), seeded.
pub fn init_weights(cfg: &LlavaOvConfig, seed: i64) -> Vec<(String, Tensor)> {
    init_weights_on(cfg, seed, Device::Cpu, Kind::Float, WeightInit::Hf)
}

/// [`init_weights`] drawn directly on `device` in `kind`, so a 7B judge never exists as 30 GB of
/// CPU fp32 first. CPU fp32 gives exactly [`init_weights`]'s values.
pub fn init_weights_on(
    cfg: &LlavaOvConfig,
    seed: i64,
    device: Device,
    kind: Kind,
    init: WeightInit,
) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let opts = (kind, device);
    expected_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let is_norm = name.contains("norm");
            let t = if name.ends_with(".bias") {
                Tensor::zeros(&shape, opts)
            } else if is_norm {
                Tensor::ones(&shape, opts)
            } else {
                // In place: no second copy of the 1 GB embedding matrices (same values as the
                // out-of-place ops).
                let mut t = Tensor::randn(&shape, opts);
                let embedding = name.ends_with("embed_tokens.weight")
                    || name.ends_with("position_embedding.weight");
                // Weights are [out, in, kernel…]: fan-in = all but the first dimension.
                let fan_in: i64 = shape[1..].iter().product();
                let scale = if name == "model.image_newline" {
                    1.0 / (shape[0] as f64).sqrt()
                } else if init == WeightInit::Hf {
                    0.02
                } else if embedding {
                    1.0
                } else {
                    1.0 / (fan_in.max(1) as f64).sqrt()
                };
                let _ = t.g_mul_scalar_(scale);
                t
            };
            (name, t)
        })
        .collect()
}

/// Builds a model from in-memory tensors (strict, as a checkpoint load).
pub fn model_from_tensors(
    cfg: LlavaOvConfig,
    tensors: Vec<(String, Tensor)>,
    device: Device,
) -> Result<LlavaOnevision> {
    model_from_tensors_kind(cfg, tensors, device, Kind::Float)
}

/// [`model_from_tensors`] in `kind`; tensors already on `device` in `kind` are used as they are.
pub fn model_from_tensors_kind(
    cfg: LlavaOvConfig,
    tensors: Vec<(String, Tensor)>,
    device: Device,
    kind: Kind,
) -> Result<LlavaOnevision> {
    let mut w = Weights::from_tensors(tensors, device, kind);
    let m = LlavaOnevision::from_weights(cfg, &mut w, None)?;
    w.finish()?;
    Ok(m)
}

/// Files copied from the initial checkpoint into a saved one (besides weights and config.json).
const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// Saves `model` as a LLaVA-NeXT checkpoint folder: `model.safetensors` (original key names, fp32
/// unless `kind` says otherwise; LoRA already merged), `config.json` (`config` with `vocab_size` set
/// to the rows kept) and the tokenizer/side files of `side_dir`. Written into a temp folder and
/// renamed into place, so `dir` is either the old or the complete new checkpoint.
pub fn save_checkpoint(
    model: &LlavaOnevision,
    mut config: serde_json::Value,
    side_dir: &Path,
    dir: &Path,
    kind: Kind,
) -> Result<()> {
    let tmp = crate::util::tmp_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let tensors: Vec<(String, Tensor)> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).to_kind(kind)))
        .collect();
    crate::train::ckpt::write_safetensors(&tmp.join("model.safetensors"), &tensors)?;
    let obj = config
        .as_object_mut()
        .context("config.json is not an object")?;
    let vocab = model.language_model().vocab_size();
    if obj.contains_key("text_config") {
        bail!("saving HF-layout (text_config) checkpoints is not supported; convert to the original layout");
    }
    obj.insert("vocab_size".into(), vocab.into());
    crate::util::atomic_write(
        &tmp.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    for f in SIDE_FILES {
        let src = side_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, tmp.join(f))
                .with_context(|| format!("copying {} into {}", src.display(), tmp.display()))?;
        }
    }
    if !tmp.join("tokenizer.json").exists() {
        bail!("{}: no tokenizer.json to copy", side_dir.display());
    }
    // Durable before it is published: a crash after the rename must not leave a judge that
    // looks complete with empty weights.
    crate::train::ckpt::sync_tree(&tmp)?;
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        crate::util::owner_tag()
    ));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).ok();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_split_short_from_long_and_cover_every_sample_once() {
        // 4 yes/no records of ~78 positions and 3 captions of ~105: two groups beat one.
        let lens = [105, 78, 77, 104, 79, 78, 105];
        let g = length_groups(&lens, 64);
        assert_eq!(g, vec![vec![2, 1, 5, 4], vec![3, 0, 6]]);
        // A group costs more than the padding it saves (4 rows × 26): one group.
        assert_eq!(length_groups(&lens, 110).len(), 1);
        // Without a group cost no group pads.
        for g in length_groups(&lens, 0) {
            assert!(g.iter().all(|&i| lens[i] == lens[g[0]]), "{g:?}");
        }
        let mut all: Vec<usize> = length_groups(&[5, 1, 9, 9, 2], 3).concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(length_groups(&[], 256).is_empty());
    }

    #[test]
    fn bare_layout_is_image_prompt_answer_with_only_the_answer_supervised() {
        let tok = crate::glyphs::tokenizer::load().unwrap();
        let prompt = "a photo of a red circle";
        let t = bare_tokens(&tok, JudgeQuestion::Outcome, prompt, "yes").unwrap();
        let words = encode(&tok, prompt).unwrap();
        let yes = encode(&tok, "yes").unwrap();
        assert_eq!(t.ids[0], IMAGE_TOKEN_INDEX);
        // Nothing between the prompt's last word and the answer.
        assert_eq!(&t.ids[1..t.answer_pos], &words[..]);
        assert_eq!(t.ids[t.answer_pos..t.answer_pos + yes.len()], yes[..]);
        assert!(t.labels[..t.answer_pos].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(&t.labels[t.answer_pos..], &t.ids[t.answer_pos..]);
        assert!(bare_tokens(&tok, JudgeQuestion::Outcome, prompt, "").is_err());
        // PARM's questions: one word naming the question before the prompt.
        for (q, word) in [
            (JudgeQuestion::Clarity, "clear"),
            (JudgeQuestion::Potential, "potential"),
        ] {
            let t = bare_tokens(&tok, q, prompt, "no").unwrap();
            let mut want = vec![IMAGE_TOKEN_INDEX];
            want.extend(encode(&tok, word).unwrap());
            want.extend(&words);
            assert_eq!(t.prompt_ids(), &want[..]);
        }
        // Answer-only supervision keeps exactly the answer's tokens, in either layout.
        let turns = [
            (false, format!("<image> {prompt}")),
            (true, "yes".to_string()),
        ];
        let mut chat = chat_tokens(&tok, &turns, true).unwrap();
        assert!(chat.labels[chat.answer_pos + yes.len()..]
            .iter()
            .any(|&l| l != IGNORE_INDEX));
        chat.supervise_answer_only();
        let kept: Vec<usize> = (0..chat.labels.len())
            .filter(|&i| chat.labels[i] != IGNORE_INDEX)
            .collect();
        assert_eq!(
            kept,
            (chat.answer_pos..chat.answer_pos + yes.len()).collect::<Vec<_>>()
        );
        assert_eq!(chat.labels[chat.answer_pos], yes[0]);
    }

    #[test]
    fn image_moves_to_front() {
        assert_eq!(
            move_image_to_front("<image> This image is x. "),
            "<image>\nThis image is x."
        );
        assert_eq!(move_image_to_front("no image"), "no image");
    }

    #[test]
    fn lora_merged_equals_unmerged_and_grads_match() {
        tch::manual_seed(3);
        let w = Tensor::randn([6, 5], (Kind::Double, Device::Cpu));
        let bias = Tensor::randn([6], (Kind::Double, Device::Cpu));
        let ad = LoraAdapter::new("m", &w, 2, 4.0, 0).unwrap();
        let _ = w.set_requires_grad(true);
        tch::no_grad(|| {
            let mut b = ad.b.shallow_clone();
            b.copy_(&Tensor::randn([6, 2], (Kind::Double, Device::Cpu)));
        });
        ad.merge();
        let x = Tensor::randn([3, 5], (Kind::Double, Device::Cpu));
        let merged = x.linear(&w, Some(&bias));
        let unmerged = ad.forward_unmerged(&x, Some(&bias));
        assert!(merged.allclose(&unmerged, 1e-12, 1e-12, false));
        // Chain-rule grads through the merged weight = autograd through the unmerged form.
        (merged.pow_tensor_scalar(2).sum(Kind::Double)).backward();
        ad.backward_from_weight_grad();
        let (ga, gb) = (ad.a.grad().copy(), ad.b.grad().copy());
        let _ = ad.a.grad().zero_();
        let _ = ad.b.grad().zero_();
        (unmerged.pow_tensor_scalar(2).sum(Kind::Double)).backward();
        assert!(ga.allclose(&ad.a.grad(), 1e-10, 1e-10, false));
        assert!(gb.allclose(&ad.b.grad(), 1e-10, 1e-10, false));
        assert!(ga.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }

    #[test]
    fn fan_in_init_scales_by_fan_in_and_hf_stays_at_0_02() {
        let sc = ScratchConfig {
            vision_hidden_size: 64,
            vision_intermediate_size: 128,
            vision_layers: 1,
            vision_heads: 2,
            image_size: 32,
            patch_size: 16,
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            rope_theta: 10_000.0,
            weight_init: WeightInit::FanIn,
        };
        let cfg = LlavaOvConfig::from_json_str(&sc.config_json(500).to_string()).unwrap();
        let std_of = |init: WeightInit, name: &str| {
            let ts = init_weights_on(&cfg, 1, Device::Cpu, Kind::Float, init);
            let t = &ts.iter().find(|(n, _)| n.ends_with(name)).unwrap().1;
            t.std(true).double_value(&[])
        };
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 0.1;
        // down_proj is [hidden, intermediate]: fan-in 256; the patch conv 3·16·16 = 768.
        assert!(close(
            std_of(WeightInit::FanIn, "layers.0.mlp.down_proj.weight"),
            1.0 / 16.0
        ));
        assert!(close(
            std_of(WeightInit::FanIn, "patch_embedding.weight"),
            768f64.powf(-0.5)
        ));
        assert!(close(std_of(WeightInit::FanIn, "embed_tokens.weight"), 1.0));
        assert!(close(
            std_of(WeightInit::Hf, "layers.0.mlp.down_proj.weight"),
            0.02
        ));
        assert!(close(std_of(WeightInit::Hf, "embed_tokens.weight"), 0.02));
    }
}
