"""Reference for the Show-o parity test (spec-showo.md §1.3).

Builds a small random Phi with HF transformers 5.x `PhiForCausalLM(qk_layernorm=True)` — which matches
Show-o's phi.py exactly given the additive float 4D mask — saves it in Show-o's checkpoint layout
(`config.json` with Show-o's keys + `pytorch_model.safetensors` with `showo.` prefixed keys), builds
t2i-layout inputs and Show-o's omni-attention mask independently of the Rust code, and writes the
reference logits.

usage: showo_ref.py OUT_DIR [--bin]
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import PhiConfig, PhiForCausalLM

out = sys.argv[1]
as_bin = "--bin" in sys.argv
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)

LLM_VOCAB, CODEBOOK, NUM_VQ, MAX_TEXT = 100, 64, 64, 16
VOCAB = LLM_VOCAB + 10 + CODEBOOK + 1
PAD, SOI, EOI, T2I = LLM_VOCAB, LLM_VOCAB + 1, LLM_VOCAB + 2, LLM_VOCAB + 5
OFF, MASK, EOT = LLM_VOCAB + 10, VOCAB - 1, 0

cfg = PhiConfig(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.5, rope_theta=10000.0,
    layer_norm_eps=1e-5, max_position_embeddings=256, hidden_act="gelu_new", qk_layernorm=True,
    resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False,
)
cfg._attn_implementation = "sdpa"
model = PhiForCausalLM(cfg).eval()
# Random (not default-initialised) norms and biases so that every tensor matters.
with torch.no_grad():
    for name, p in model.named_parameters():
        p.copy_(torch.randn_like(p) * (0.5 if "norm" in name else 0.05) + (1.0 if name.endswith("layernorm.weight") else 0.0))

sd = {"showo." + k: v.contiguous() for k, v in model.state_dict().items()}
if as_bin:
    torch.save(sd, os.path.join(out, "pytorch_model.bin"))
else:
    save_file(sd, os.path.join(out, "pytorch_model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({
        "_class_name": "Showo", "_diffusers_version": "0.30.1", "codebook_size": CODEBOOK,
        "llm_model_path": "microsoft/phi-1_5", "llm_vocab_size": LLM_VOCAB, "mask_token_id": MASK,
        "num_vq_tokens": NUM_VQ, "vocab_size": VOCAB, "w_clip_vit": False,
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "partial_rotary_factor": 0.5, "rope_theta": 10000.0, "layer_norm_eps": 1e-5,
        "max_position_embeddings": 256, "hidden_act": "gelu_new", "max_text_len": MAX_TEXT,
    }, f, indent=2)


def text_part(tokens):
    """Show-o's t2i_gen text layout (spec §3.2)."""
    text = [T2I] + ([EOT] if not tokens or tokens[0] != EOT else []) + tokens + [EOT]
    T = MAX_TEXT + 1
    return [PAD] * (T - len(text)) + text if len(text) <= T else text[: T - 1] + [EOT]


g = torch.Generator().manual_seed(1)
rows = []
for n_tok, masked in [(5, 1.0), (0, 1.0), (30, 0.5), (12, 0.0)]:
    tokens = torch.randint(1, LLM_VOCAB, (n_tok,), generator=g).tolist()
    codes = torch.randint(0, CODEBOOK, (NUM_VQ,), generator=g) + OFF
    m = torch.rand(NUM_VQ, generator=g) < masked
    img = torch.where(m, torch.full_like(codes, MASK), codes).tolist()
    rows.append(text_part(tokens) + [SOI] + img + [EOI])
ids = torch.tensor(rows, dtype=torch.long)


def omni_mask(ids):
    """create_attention_mask_predict_next(rm_pad_in_image=True), written from the spec."""
    B, L = ids.shape
    allow = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        row = ids[b].tolist()
        pads = [i for i, t in enumerate(row) if t == PAD]
        p = pads[-1] if pads else -1
        s, e = row.index(SOI), row.index(EOI)
        for i in range(L):
            if s <= i <= e:
                for j in range(L):
                    allow[b, i, j] = row[j] != PAD
            else:
                for j in range(i + 1):
                    allow[b, i, j] = not (i > p and j <= p)
    inv = 1.0 - allow.long().float()
    return inv.masked_fill(inv.bool(), float(torch.iinfo(torch.int64).min)).unsqueeze(1)


with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=omni_mask(ids)).logits.float()
save_file({"input_ids": ids, "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"))
print("ok", tuple(logits.shape))
