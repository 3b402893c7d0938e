"""Reference for tests/qwen2_parity.rs: a tiny random Qwen2ForCausalLM (HF transformers, fp32, eager),
saved sharded (model.safetensors.index.json) with its config, plus input ids and logits.

Usage: python qwen2_parity.py OUT_DIR
"""
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, max_position_embeddings=512)
cfg._attn_implementation = "eager"
model = Qwen2ForCausalLM(cfg).eval()
# Random init leaves biases at zero and norms at one; perturb them so the test sees them.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "norm" in name:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(out, max_shard_size="60KB")
ids = torch.randint(0, 320, (2, 23), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, f"{out}/reference.safetensors")
print("ok", logits.shape)
