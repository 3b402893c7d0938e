"""Reference for tests/siglip_parity.rs: a tiny random 3-layer SiglipVisionModel (fp32, eager) and its
penultimate hidden states (= what LLaVA-OneVision's truncated tower outputs: layer 2 of 3, no post-LN).

Usage: python siglip_parity.py OUT_DIR
"""
import sys

import torch
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

out = sys.argv[1]
torch.manual_seed(0)
cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         image_size=60, patch_size=14, vision_use_head=False)  # 60/14 → 4x4, 4 px unused
cfg._attn_implementation = "eager"
model = SiglipVisionModel(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "norm" in name:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(out)
px = torch.rand(2, 3, 60, 60, generator=torch.Generator().manual_seed(1)) * 2 - 1
with torch.no_grad():
    o = model(pixel_values=px, output_hidden_states=True)
save_file({"pixel_values": px.contiguous(), "penultimate": o.hidden_states[-2].contiguous(),
           "last_no_post_ln": o.hidden_states[-1].contiguous()}, f"{out}/reference.safetensors")
print("ok", o.hidden_states[-2].shape)
