//! Show-o's t2i token layouts (spec-showo.md §3.2–3.3) and its omni-attention mask (§3.4).
//!
//! ```text
//! text = [<|t2i|>, bos, tok_1..tok_n, eos]      (bos prepended only if missing)
//! len ≤ T: left-padded with [PAD] to T;  len > T: text[..T-1] ++ [eos]        (T = max_text_len + 1)
//! seq  = text ++ [<|soi|>] ++ image ids (N) ++ [<|eoi|>]
//! ```
use super::config::{Config, Specials};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The prompt tokenizer (Phi-1.5's `tokenizer.json`, or the glyph world's word-level one) plus the
/// ids the layout needs.
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    pub bos: i64,
    pub eos: i64,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            anyhow::bail!("tokenizer file {} not found", path.display());
        }
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        let eot = tok.token_to_id("<|endoftext|>").ok_or_else(|| {
            anyhow!(
                "{}: no <|endoftext|> token (used as bos/eos)",
                path.display()
            )
        })?;
        Ok(Self {
            tok,
            bos: eot as i64,
            eos: eot as i64,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing '{text}': {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tok
    }
}

/// Builds token id sequences for one model configuration.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub sp: Specials,
    /// Text part length T (129 for Show-o).
    pub text_len: i64,
    pub num_vq_tokens: i64,
    pub mask_id: i64,
    pub bos: i64,
    pub eos: i64,
}

impl Layout {
    pub fn new(cfg: &Config, tok: &TextTokenizer) -> Self {
        Self::with_ids(cfg, tok.bos, tok.eos)
    }

    pub fn with_ids(cfg: &Config, bos: i64, eos: i64) -> Self {
        Self {
            sp: cfg.specials(),
            text_len: cfg.text_len(),
            num_vq_tokens: cfg.num_vq_tokens,
            mask_id: cfg.mask_id(),
            bos,
            eos,
        }
    }

    /// Sequence length of the t2i layouts.
    pub fn seq_len(&self) -> i64 {
        self.text_len + self.num_vq_tokens + 2
    }

    /// The text part (length T) for already-tokenized prompt ids; `&[]` gives the unconditional row.
    pub fn text_ids(&self, tokens: &[i64]) -> Vec<i64> {
        let t = self.text_len as usize;
        let mut text = Vec::with_capacity(tokens.len() + 3);
        text.push(self.sp.t2i);
        if tokens.first() != Some(&self.bos) {
            text.push(self.bos);
        }
        text.extend_from_slice(tokens);
        text.push(self.eos);
        if text.len() <= t {
            let mut out = vec![self.sp.pad; t - text.len()];
            out.extend(text);
            out
        } else {
            text.truncate(t - 1);
            text.push(self.eos);
            text
        }
    }

    /// Text parts of several prompts as an int64 tensor [B, T].
    pub fn text_batch(
        &self,
        tok: &TextTokenizer,
        prompts: &[String],
        device: Device,
    ) -> Result<Tensor> {
        // Text ids live below the first special id (`llm_vocab_size`); a tokenizer that does not
        // belong to the model would index past its embedding table.
        let vocab = self.sp.pad;
        ensure!(
            (0..vocab).contains(&self.bos) && (0..vocab).contains(&self.eos),
            "the tokenizer's bos/eos ids {}/{} are outside the model's text vocabulary 0..{vocab}: tokenizer and checkpoint do not match",
            self.bos,
            self.eos
        );
        let mut rows = Vec::with_capacity(prompts.len() * self.text_len as usize);
        for p in prompts {
            let ids = tok.encode(p).with_context(|| format!("prompt '{p}'"))?;
            if let Some(bad) = ids.iter().find(|&&i| !(0..vocab).contains(&i)) {
                bail!("prompt '{p}': token id {bad} is outside the model's text vocabulary 0..{vocab}: tokenizer and checkpoint do not match");
            }
            rows.extend(self.text_ids(&ids));
        }
        Ok(Tensor::from_slice(&rows)
            .view([prompts.len() as i64, self.text_len])
            .to_device(device))
    }

    /// The unconditional text part [1, T].
    pub fn uncond_text(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.text_ids(&[]))
            .view([1, self.text_len])
            .to_device(device)
    }

    /// Full sequence: text [B, T] ++ soi ++ image ids [B, N] ++ eoi.
    pub fn sequence(&self, text: &Tensor, image_ids: &Tensor) -> Tensor {
        let b = text.size()[0];
        let dev = text.device();
        let soi = Tensor::full([b, 1], self.sp.soi, (Kind::Int64, dev));
        let eoi = Tensor::full([b, 1], self.sp.eoi, (Kind::Int64, dev));
        Tensor::cat(&[text, &soi, image_ids, &eoi], 1)
    }

    /// The generation layout: every image token is `[MASK]`.
    pub fn generation_ids(&self, text: &Tensor) -> Tensor {
        let b = text.size()[0];
        let img = Tensor::full(
            [b, self.num_vq_tokens],
            self.mask_id,
            (Kind::Int64, text.device()),
        );
        self.sequence(text, &img)
    }

    /// Image codes (0..codebook) → vocabulary ids.
    pub fn code_to_id(&self, codes: &Tensor) -> Tensor {
        codes + self.sp.image_offset
    }

    /// The training layout (§3.3/§5): `mask` (bool [B, N]) marks the masked image positions.
    /// Returns (input ids, labels) with labels −100 at pads and unmasked image positions.
    pub fn training_ids(&self, text: &Tensor, codes: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        let img = self.code_to_id(codes);
        let inp = img.where_self(
            &mask.logical_not(),
            &Tensor::from(self.mask_id).to_device(img.device()),
        );
        let ids = self.sequence(text, &inp);
        let neg = Tensor::from(-100i64).to_device(img.device());
        let img_labels = img.where_self(mask, &neg);
        let text_labels = text.where_self(&text.ne(self.sp.pad), &neg);
        let labels = self.sequence(&text_labels, &img_labels);
        (ids, labels)
    }
}

/// Show-o's omni-attention mask (`create_attention_mask_predict_next`, `rm_pad_in_image=True`) as a
/// bool tensor [B, 1, L, L], true = may attend.
/// Text queries: causal, and after the last `[PAD]` they cannot see the pads. Image-segment queries
/// (soi..eoi): every non-pad key of the sequence.
pub fn omni_attention_mask(ids: &Tensor, sp: &Specials) -> Tensor {
    let (b, l) = ids.size2().expect("ids must be [B, L]");
    let dev = ids.device();
    let soi = ids.eq(sp.soi);
    let eoi = ids.eq(sp.eoi);
    let is_img = soi
        .cumsum(1, Kind::Int64)
        .gt_tensor(&eoi.cumsum(1, Kind::Int64))
        .logical_or(&soi)
        .logical_or(&eoi); // [B, L]
    let is_pad = ids.eq(sp.pad);
    let pos = Tensor::arange(l, (Kind::Int64, dev));
    // Last pad index per row (−1 when there is none).
    let last_pad = pos
        .unsqueeze(0)
        .expand([b, l], false)
        .where_self(&is_pad, &Tensor::from(-1i64).to_device(dev))
        .amax([1], true); // [B, 1]
    let qi = pos.view([1, l, 1]);
    let kj = pos.view([1, 1, l]);
    let causal = kj.le_tensor(&qi); // [1, L, L]
    let lp = last_pad.view([b, 1, 1]);
    let hide_pads = qi.gt_tensor(&lp).logical_and(&kj.le_tensor(&lp)); // [B, L, L]
    let text_rule = causal.logical_and(&hide_pads.logical_not());
    let img_rule = is_pad
        .logical_not()
        .view([b, 1, l])
        .expand([b, l, l], false);
    let q_img = is_img.view([b, l, 1]);
    img_rule.where_self(&q_img, &text_rule).unsqueeze(1)
}

/// The additive float form Show-o passes to its layers: 0 = attend, `i64::MIN as f32` = blocked.
pub fn additive_mask(mask: &Tensor, kind: Kind) -> Tensor {
    let blocked = Tensor::from(i64::MIN as f64)
        .to_kind(Kind::Float)
        .to_device(mask.device());
    Tensor::zeros_like(&blocked)
        .where_self(mask, &blocked)
        .to_kind(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let cfg = Config::default();
        Layout::with_ids(&cfg, 50256, 50256)
    }

    #[test]
    fn a_tokenizer_the_model_cannot_embed_is_an_error() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/glyphs/tokenizer.json");
        let tok = TextTokenizer::from_file(&path).unwrap();
        let prompts = vec!["a photo of a red circle".to_string()];
        let fits = Layout::new(&Config::default(), &tok);
        assert!(fits.text_batch(&tok, &prompts, Device::Cpu).is_ok());
        let cfg = Config {
            llm_vocab_size: 4,
            ..Config::default()
        };
        let e = Layout::new(&cfg, &tok)
            .text_batch(&tok, &prompts, Device::Cpu)
            .unwrap_err();
        assert!(format!("{e:#}").contains("do not match"), "{e:#}");
    }

    #[test]
    fn uncond_row_matches_show_o() {
        let l = layout();
        let t = l.text_ids(&[]);
        assert_eq!(t.len(), 129);
        assert!(t[..126].iter().all(|&x| x == 50295));
        assert_eq!(&t[126..], &[50300, 50256, 50256]);
    }

    #[test]
    fn truncation_forces_eos() {
        let l = layout();
        let toks: Vec<i64> = (1..=200).collect();
        let t = l.text_ids(&toks);
        assert_eq!(t.len(), 129);
        assert_eq!(&t[..3], &[50300, 50256, 1]);
        assert_eq!(t[128], 50256);
        assert_eq!(t[127], 126);
        // bos not duplicated when present
        let t = l.text_ids(&[50256, 7]);
        assert_eq!(&t[125..], &[50300, 50256, 7, 50256]);
    }

    #[test]
    fn omni_mask_pattern() {
        // [P,P,t2i,bos,x,eos,soi,M,M,M,eoi] as in the spec's example.
        let sp = Specials::new(50295);
        let ids = Tensor::from_slice(&[
            50295i64, 50295, 50300, 50256, 9, 50256, 50296, 58497, 58497, 58497, 50297,
        ])
        .view([1, 11]);
        let m = omni_attention_mask(&ids, &sp).squeeze();
        let row =
            |i: i64| -> Vec<i64> { Vec::<i64>::try_from(m.get(i).to_kind(Kind::Int64)).unwrap() };
        assert_eq!(row(0), vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(1), vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(2), vec![0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(5), vec![0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
        for i in 6..11 {
            assert_eq!(row(i), vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        }
        let add = additive_mask(&m, Kind::Float);
        assert_eq!(add.double_value(&[0, 1]), i64::MIN as f32 as f64);
        assert_eq!(add.double_value(&[0, 0]), 0.0);
    }
}
