"""Reference for tests/llava_parity.rs (spec-judges §7): a tiny random LlavaOnevisionForConditionalGeneration
(HF transformers 5.24, fp32, eager) whose SigLIP has 3 layers and vision_feature_layer=-2 (= the seed's
tower with its last layer deleted). Writes:
  hf/        save_pretrained (HF layout + config)
  orig/      the same weights under the original LLaVA-NeXT names, sharded with model.safetensors.index.json,
             an original-style config.json, and a tiny byte-level BPE tokenizer.json
  anyres.safetensors  (c) full LlavaOnevision anyres path: raw image, crops (LLaVA-NeXT PIL preprocessing),
             packed image features, input ids, logits
  pad.safetensors     (d) the seed's "pad" path assembled from HF sub-modules: two prompts (ORM, PARM
             potential) × two non-square images; ids, pixels, visual tokens, last logits, exact and
             seed (TopK 20 → TopP 0.8) distributions
Usage: python llava_parity.py OUT_DIR
"""
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                          SiglipVisionConfig)
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

out = sys.argv[1]
torch.manual_seed(0)
S = 56
PINS = [[S * i, S * j] for i in range(1, 7) for j in range(1, 7)]
vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        image_size=S, patch_size=14, vision_use_head=False)
tc = Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
                 max_position_embeddings=2048)
cfg = LlavaOnevisionConfig(vision_config=vc, text_config=tc, image_token_index=300, vision_feature_layer=-2,
                           vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                           image_grid_pinpoints=PINS)
cfg._attn_implementation = "eager"
cfg.text_config._attn_implementation = "eager"
cfg.vision_config._attn_implementation = "eager"
model = LlavaOnevisionForConditionalGeneration(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".bias") or "norm" in name:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(f"{out}/hf")

# ---- original LLaVA-NeXT layout -------------------------------------------------------------------
V = "model.vision_tower.vision_tower.vision_model."
def orig_name(k):
    for p, q in [("model.vision_tower.", V), ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                 ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
                 ("model.language_model.", "model."), ("model.image_newline", "model.image_newline"),
                 ("lm_head.", "lm_head.")]:
        if k.startswith(p):
            return q + k[len(p):]
    raise KeyError(k)
sd = {orig_name(k): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
os.makedirs(f"{out}/orig", exist_ok=True)
names = sorted(sd)
shards = [names[0::3], names[1::3], names[2::3]]
wm = {}
for i, ks in enumerate(shards):
    fn = f"model-{i + 1:05d}-of-00003.safetensors"
    save_file({k: sd[k] for k in ks}, f"{out}/orig/{fn}", metadata={"format": "pt"})
    wm.update({k: fn for k in ks})
json.dump({"metadata": {"total_size": sum(v.numel() * 4 for v in sd.values())}, "weight_map": wm},
          open(f"{out}/orig/model.safetensors.index.json", "w"), indent=2)
ocfg = dict(model_type="llava", architectures=["LlavaQwenForCausalLM"], vocab_size=320, hidden_size=64,
            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_scaling=None, hidden_act="silu",
            max_position_embeddings=2048, mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
            mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad",
            image_aspect_ratio="anyres_max_9", image_grid_pinpoints=PINS,
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                               image_size=S, patch_size=14))
json.dump(ocfg, open(f"{out}/orig/config.json", "w"), indent=2)

# ---- tiny byte-level BPE tokenizer with the ChatML specials ---------------------------------------
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
corpus = ["yes", "no", "\nyes\n", "\nno\n", "system\nYou are a helpful assistant.", "user\n", "assistant\n",
          " This image is generated by a prompt: a red cat. Does this image accurately represent the prompt?"] * 50
trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
tok.save(f"{out}/orig/tokenizer.json")
keep = tok.get_vocab_size(with_added_tokens=True)
assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None

def tokenizer_image_token(text):
    ids = []
    for i, chunk in enumerate(text.split("<image>")):
        if i:
            ids.append(-200)
        ids.extend(tok.encode(chunk).ids)
    return ids

# ---- LLaVA-NeXT preprocessing (mm_utils.py), PIL ----------------------------------------------------
def siglip(img):
    img = img.resize((S, S), Image.BICUBIC) if img.size != (S, S) else img
    x = (np.asarray(img, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())

def select_best_resolution(size, cands):
    ow, oh = size
    best, maxe, minw = None, 0, float("inf")
    for w, h in cands:
        s = min(w / ow, h / oh)
        dw, dh = int(ow * s), int(oh * s)
        e = min(dw * dh, ow * oh)
        waste = w * h - e
        if e > maxe or (e == maxe and waste < minw):
            maxe, minw, best = e, waste, (w, h)
    return best

def anyres(img):
    bw, bh = select_best_resolution(img.size, PINS)
    ow, oh = img.size
    sw, sh = bw / ow, bh / oh
    if sw < sh:
        nw, nh = bw, min(math.ceil(oh * sw), bh)
    else:
        nh, nw = bh, min(math.ceil(ow * sh), bw)
    canvas = Image.new("RGB", (bw, bh), (0, 0, 0))
    canvas.paste(img.resize((nw, nh)), ((bw - nw) // 2, (bh - nh) // 2))
    patches = [canvas.crop((j, i, j + S, i + S)) for i in range(0, bh, S) for j in range(0, bw, S)]
    return torch.stack([siglip(p) for p in [img.resize((S, S))] + patches])

def expand2square(img):
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    r = Image.new(img.mode, (s, s), (127, 127, 127))
    r.paste(img, ((s - w) // 2, (s - h) // 2))
    return r

rng = np.random.default_rng(3)
def rand_image(w, h):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)

# ---- (c) anyres, full LlavaOnevision forward --------------------------------------------------------
W, H = 300, 110
raw = rand_image(W, H)
crops = anyres(Image.fromarray(raw))
with torch.no_grad():
    feats = model.model.get_image_features(pixel_values=crops[None], image_sizes=torch.tensor([[H, W]]),
                                           vision_feature_layer=-2, vision_feature_select_strategy="full",
                                           vision_aspect_ratio="anyres_max_9").pooler_output[0]
    n = feats.shape[0]
    pre, post = [1, 5, 9, 17], [4, 2, 8]
    ids = torch.tensor([pre + [300] * n + post])
    logits = model(input_ids=ids, pixel_values=crops[None], image_sizes=torch.tensor([[H, W]])).logits[0]
save_file({"image": torch.from_numpy(raw), "crops": crops.contiguous(), "features": feats.contiguous(),
           "input_ids": torch.tensor(pre + [-200] + post), "logits": logits.contiguous()},
          f"{out}/anyres.safetensors")

# ---- (d) pad path from HF sub-modules ---------------------------------------------------------------
sys.path.insert(0, os.path.dirname(__file__))
clarity = ("<image> \n The above image is a certain step  in the text to image generation process. This image is not "
           "the final generated one, and will keep iterating better. The image is generated by prompt '{P}.'\n"
           "        Do you think this image can be used to judge whether it has the potential to iterate to the image "
           "satisfied the prompt?(The image, which needn't to be confused  but can be clear and basically judged the "
           "object, can be used to judge the potential)\n        Answer yes or no with no explanation.(yes or no in "
           "lowercase and no full point)")
q2 = ("Do you think whether the image has the potential to iterate to the image satisfied the prompt? Please answer "
      "yes or no with no explanation.(yes or no in lowercase and no full point)")
sysp = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
P = "a red cat"
texts = [
    sysp + "<|im_start|>user\n<image> This image is generated by a prompt: " + P + ". Does this image accurately "
    "represent the prompt? Please answer yes or no without explanation.<|im_end|>\n<|im_start|>assistant\n",
    sysp + "<|im_start|>user\n" + clarity.replace("{P}", P) + "<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n"
    "<|im_start|>user\n" + q2 + "<|im_end|>\n<|im_start|>assistant\n",
]
raws = [rand_image(70, 50), rand_image(40, 64)]
vt, proj, nl = model.model.vision_tower, model.model.multi_modal_projector, model.model.image_newline
emb_layer = model.model.language_model.embed_tokens
out_d = {"keep": torch.tensor([keep]), "yes_id": torch.tensor([tok.token_to_id("yes")]),
         "no_id": torch.tensor([tok.token_to_id("no")])}
topk, topp = TopKLogitsWarper(20), TopPLogitsWarper(0.8)
for b, (text, r) in enumerate(zip(texts, raws)):
    px = siglip(expand2square(Image.fromarray(r)))[None]
    ids = tokenizer_image_token(text)
    with torch.no_grad():
        feat = proj(vt(px, output_hidden_states=True).hidden_states[-2])[0]
        vis = torch.cat([feat, nl[None]])
        k = ids.index(-200)
        emb = torch.cat([emb_layer(torch.tensor(ids[:k])), vis, emb_layer(torch.tensor(ids[k + 1:]))])
        logits = model.model.language_model(inputs_embeds=emb[None]).last_hidden_state
        logits = model.lm_head(logits)[0, -1, :keep].float()
        exact = logits.softmax(-1)
        seed = topp(None, topk(None, logits[None].clone()))[0].softmax(-1)
    out_d.update({f"image{b}": torch.from_numpy(r), f"text{b}": torch.tensor(list(text.encode()), dtype=torch.uint8),
                  f"ids{b}": torch.tensor(ids), f"pixels{b}": px[0].contiguous(), f"visual{b}": vis.contiguous(),
                  f"logits{b}": logits.contiguous(), f"exact{b}": exact.contiguous(), f"seed{b}": seed.contiguous()})
save_file(out_d, f"{out}/pad.safetensors")
print("ok", n, keep, [len(tokenizer_image_token(t)) for t in texts])
