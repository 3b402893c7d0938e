"""A PyTorch replica of the scratch glyph judge, built from HF modules, on `judge-data` records.

A diagnostic for issue 5, not part of the product or the tests. It asks whether the Rust judge's
learning curves are the architecture's or a bug of ours: the same small LLaVA-OneVision
(`recipes/judges-glyphs-presence.yaml`'s sizes: HF `SiglipVisionModel` with 2 layers and no
post-LayerNorm, the `mlp2x_gelu` projector, `image_newline`, HF `Qwen2ForCausalLM` with 3 layers,
GQA 4/2, the glyph tokenizer), N(0, 1/fan_in) weights (`--init hf`: HF's 0.02), AdamW with
warmup + cosine, clipping at 1. It differs from `reward-ft` in one way: the loss is the answer
token's alone (reward-ft also supervises the template's closing tokens, which are constant).

Layouts of a record, as `reward-ft` builds them:
  chat  the qwen_1_5 template around the record's question (the paper's; held-out always uses it)
  bare  the image, the generation prompt (`meta.prompt`), the answer (`layout: bare`)
--bare-share F writes that share of the training examples in the bare layout; --bare-held
scores the held-out records in the bare layout instead.

--aux FILE pools further chat records with any answer (e.g. `caption_style: first` captions) into
the training set; every answer token is supervised, at weight --aux-weight in the token mean.
--codes replaces the vision tower by exact cell codes (each 16-pixel cell's shape and color, read
from the renderer's pixels) entering as shape + color + position embeddings, and --codes-vision N
adds N bidirectional pre-LN layers over them: a perfect perception, so what is left to learn is
the reasoning, in the same Qwen2 and template.

  D=runs/judges-glyphs-presence/data
  python scripts/judge_replica.py --train $D/orm_presence_train.jsonl \
      --held $D/orm_presence_heldout.jsonl --bare-share 0.5
prints the held-out accuracy (800 records) every 100 steps of batch 32.
"""

import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tokenizers import Tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

H = 128
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CODES = None  # {"shape": {mask bytes: id}, "color": {rgb: id}} when --codes


def cell_codes(px):
    """uint8 [N, 128, 128, 3] → int64 [N, 64, 2]: each 16-pixel cell's (shape id, color id), ids
    assigned in order of first appearance (0 = empty), from the exact renderer's pixels."""
    n = len(px)
    cells = px.reshape(n, 8, 16, 8, 16, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n * 64, 256, 3)
    painted = (cells != 255).any(-1)
    out = np.zeros((n * 64, 2), dtype=np.int64)
    for i in np.nonzero(painted.any(1))[0]:
        m = painted[i]
        sk = np.packbits(m).tobytes()
        ck = tuple(cells[i][m][0])
        out[i, 0] = CODES["shape"].setdefault(sk, len(CODES["shape"]) + 1)
        out[i, 1] = CODES["color"].setdefault(ck, len(CODES["color"]) + 1)
    return out.reshape(n, 64, 2)


def load(path, n):
    """Pixels (uint8, scaled to SigLIP's [-1, 1] when used), (question, prompt, answer) triples and yes/no
    labels (-1 for an answer that is neither, e.g. a caption)."""
    base = os.path.dirname(os.path.abspath(path))
    recs = [json.loads(line) for line in open(path)][:n]
    px = np.stack(
        [np.asarray(Image.open(os.path.join(base, r["image"])).convert("RGB")) for r in recs]
    )
    if CODES is not None:
        px = torch.tensor(cell_codes(px))
    else:
        # uint8 until a batch needs it: 46,000 images as floats would take 9 GB.
        px = torch.tensor(px).permute(0, 3, 1, 2)
    texts = [
        (
            r["conversations"][0]["value"].replace("<image>", "").strip(),
            r["meta"]["prompt"],
            r["conversations"][1]["value"],
        )
        for r in recs
    ]
    ys = torch.tensor(
        [{"yes": 1, "no": 0}.get(r["conversations"][1]["value"], -1) for r in recs]
    )
    return px, texts, ys


def init_(modules, kind):
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                nn.init.normal_(m.weight, 0, fan_in**-0.5 if kind == "fan_in" else 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0, 1.0 if kind == "fan_in" else 0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--held", required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bare-share", type=float, default=0.0)
    ap.add_argument("--bare-held", action="store_true")
    ap.add_argument("--init", choices=["fan_in", "hf"], default="fan_in")
    ap.add_argument("--ntrain", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--aux", help="extra chat records with any answer (e.g. captions), pooled")
    ap.add_argument("--aux-weight", type=float, default=1.0, help="their tokens' loss weight")
    ap.add_argument("--naux", type=int, default=16000)
    ap.add_argument(
        "--codes", action="store_true",
        help="no vision tower: each cell enters as shape + color + position embeddings",
    )
    ap.add_argument(
        "--codes-vision", type=int, default=0,
        help="with --codes: this many bidirectional pre-LN layers over the cells",
    )
    ap.add_argument(
        "--tower-pretrain", type=int, default=0,
        help="first train the pixel tower alone this many steps to classify each cell's shape "
        "and color (linear heads on its features, then dropped)",
    )
    ap.add_argument("--tower-lr", type=float, default=1e-3)
    a = ap.parse_args()
    global CODES
    if a.codes:
        CODES = {"shape": {}, "color": {}}
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(os.path.join(ROOT, "data/glyphs/tokenizer.json"))
    xtr, ttr, ytr = load(a.train, a.ntrain)
    if a.aux:
        xa, ta, ya = load(a.aux, a.naux)
        xtr, ttr, ytr = torch.cat([xtr, xa]), ttr + ta, torch.cat([ytr, ya])
    xte, tte, yte = load(a.held, 800)
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=H, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            image_size=128, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        )
    )
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=tok.get_vocab_size(), hidden_size=H, intermediate_size=3 * H,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        )
    )
    proj = nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, H))
    if a.codes:
        print(f"{len(CODES['shape'])} shapes, {len(CODES['color'])} colors", flush=True)
        # Replaces the tower: additive embeddings, N(0, 1) as fan_in's embeddings.
        vision = nn.ModuleDict(
            {
                "shape": nn.Embedding(len(CODES["shape"]) + 1, H),
                "color": nn.Embedding(len(CODES["color"]) + 1, H),
                "pos": nn.Embedding(64, H),
                "layers": nn.ModuleList(
                    nn.TransformerEncoderLayer(H, 4, 2 * H, 0.0, batch_first=True, norm_first=True)
                    for _ in range(a.codes_vision)
                ),
            }
        )
    newline = nn.Parameter(torch.randn(H) / H**0.5)
    init_([vision, lm, proj], a.init)
    params = [p for m in (vision, lm, proj) for p in m.parameters()] + [newline]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    emb = lm.get_input_embeddings()
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    head = tok.encode(system + "<|im_start|>user\n").ids
    yes, no = tok.encode("yes").ids[0], tok.encode("no").ids[0]
    rng = random.Random(a.seed)

    if a.tower_pretrain:
        # Per-cell labels from the renderer's pixels (the codes' ids), for the training images.
        CODES = {"shape": {}, "color": {}}
        cells = torch.tensor(cell_codes(xtr.permute(0, 2, 3, 1).numpy()))
        CODES = None
        heads = nn.ModuleList(
            nn.Linear(H, int(cells[..., k].max()) + 1) for k in range(2)
        )
        tparams = list(vision.parameters()) + list(heads.parameters())
        topt = torch.optim.AdamW(tparams, lr=a.tower_lr, weight_decay=0.0)
        t0 = time.time()
        for step in range(1, a.tower_pretrain + 1):
            for g in topt.param_groups:
                g["lr"] = a.tower_lr * min(1.0, step / 20) * 0.5 * (
                    1 + np.cos(np.pi * step / a.tower_pretrain)
                )
            idx = torch.tensor([rng.randrange(len(ttr)) for _ in range(a.batch)])
            px = xtr[idx].float() / 255 * 2 - 1
            f = vision(pixel_values=px, output_hidden_states=True).hidden_states[-1]
            loss = sum(
                nn.functional.cross_entropy(heads[k](f).flatten(0, 1), cells[idx][..., k].flatten())
                for k in range(2)
            )
            topt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tparams, 1.0)
            topt.step()
            if step % 50 == 0 or step == a.tower_pretrain:
                with torch.no_grad():
                    acc = [
                        (heads[k](f).argmax(-1) == cells[idx][..., k]).float().mean().item()
                        for k in range(2)
                    ]
                print(
                    f"tower step {step} loss {loss.item():.4f} cell acc shape {acc[0]:.3f} "
                    f"color {acc[1]:.3f} ({time.time() - t0:.0f} s)",
                    flush=True,
                )

    def logits(px, texts, train):
        """Logits at the answer position (held-out), or, when training, (logits, targets,
        record index) at every position predicting an answer token (teacher-forced)."""
        # All layers run, no post-LayerNorm: the Rust judge's 2 layers of a 3-layer config at -2.
        if a.codes:
            feats = vision["shape"](px[..., 0]) + vision["color"](px[..., 1])
            feats = feats + vision["pos"].weight[None]
            for layer in vision["layers"]:
                feats = layer(feats)
        else:
            px = px.float() / 255 * 2 - 1
            feats = vision(pixel_values=px, output_hidden_states=True).hidden_states[-1]
        feats = proj(feats)
        seqs, answers = [], []
        for f, (question, prompt, answer) in zip(feats, texts):
            bare = a.bare_held if not train else a.bare_share and rng.random() < a.bare_share
            bare = bare and bool(prompt)
            if bare:
                seq = [f, newline[None], emb(torch.tensor(tok.encode(prompt).ids))]
            else:
                tail = tok.encode("\n" + question + "<|im_end|>\n<|im_start|>assistant\n").ids
                seq = [emb(torch.tensor(head)), f, newline[None], emb(torch.tensor(tail))]
            ans = tok.encode(answer).ids if train else []
            if len(ans) > 1:
                seq.append(emb(torch.tensor(ans[:-1])))
            seqs.append(torch.cat(seq))
            answers.append(ans)
        n = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), n, H)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)], mask[i, : len(s)] = s, 1
        out = lm(inputs_embeds=x, attention_mask=mask).logits
        if not train:
            return out[torch.arange(len(seqs)), mask.sum(1) - 1]
        rows, cols, tgts = [], [], []
        for i, ans in enumerate(answers):
            start = len(seqs[i]) - len(ans)
            for j, t in enumerate(ans):
                rows.append(i)
                cols.append(start + j)
                tgts.append(t)
        rows = torch.tensor(rows)
        return out[rows, torch.tensor(cols)], torch.tensor(tgts), rows

    print(f"{len(ttr)} train, {len(tte)} held-out (yes rate {yte.float().mean():.3f})", flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        warm = min(1.0, step / max(1, round(0.03 * a.steps)))
        for g in opt.param_groups:
            g["lr"] = a.lr * warm * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / a.steps)))
        idx = [rng.randrange(len(ttr)) for _ in range(a.batch)]
        out, tgt, rec = logits(xtr[idx], [ttr[i] for i in idx], True)
        # yes/no records (label ≥ 0) weigh 1, --aux records (label −1) --aux-weight.
        w = torch.where(ytr[idx] >= 0, 1.0, a.aux_weight)[rec]
        nll = nn.functional.cross_entropy(out, tgt, reduction="none")
        loss = (nll * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % a.every == 0:
            with torch.no_grad():
                right = 0
                for i in range(0, len(tte), 100):
                    o = logits(xte[i : i + 100], tte[i : i + 100], False)
                    right += ((o[:, yes] > o[:, no]).long() == yte[i : i + 100]).sum().item()
            acc = right / len(tte)
            print(f"step {step} held-out acc {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
