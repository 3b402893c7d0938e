"""How fast can a from-scratch glyph judge learn the functions its labels need?

A diagnostic for issue 5, not part of the product or the tests. It strips the glyph judge to its
reasoning part: the image enters as its 64 exact glyph codes (a perfect vision tower: one
embedding per code plus a learned position, one bidirectional layer), followed by the question
words, in a causal RoPE transformer of the glyph judge's size (hidden 128, 3 layers, 4 heads).
A yes/no head reads the last position. Scenes are cluttered like the glyph generator's images:
2-10 glyphs whose shapes and colors mostly repeat the two named ones.

Tasks (labels by the glyph world's rules; "first" = first in row-major order, as GenEval ranks
detections by score):
  shape       "is there a {shape}?"
  exists      "is there a {color} {shape}?" (any glyph)
  first       "a {color} {shape}" about a shape present: its first glyph has that color
  first_hard  the same, a false color taken from a later glyph of that shape where there is one
  color_attr  "a {c1} {s1} and a {c2} {s2}": the first s1 is c1 and the first s2 is c2
About half the questions are built to be true.

  python scripts/judge_learnability.py --task shape --lr 3e-4 --steps 750
prints held-out accuracy (1000 fixed questions) every 250 steps of batch 32.

--aux N adds, at every step, N "first-of-class captions" (the `caption_style: first` records of
`judge-data`): after the image, each shape present followed by the color of its first glyph; the
loss is the mean CE of those color tokens, added with weight 1 to the yes/no loss. --pad N puts N
filler tokens between the question and the answer position, as the ORM prompt's template does.
--bare-share F writes that share of the training questions with the filler before the question
words instead of after them (the words next to the answer position); held-out questions always
have it after, as the ORM template does. --additive gives each cell the sum of a shape and a color
embedding instead of one embedding per (shape, color) code.
--dense draws scenes like the glyph generator's images: 6-10 glyphs, all of the two named shapes.
--no-vision drops the bidirectional layer over the cells (they enter the causal judge as embedded).
--init fan_in draws the weights as the scratch judges' `weight_init: fan_in` does.
"""

import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES, COLORS = 6, 6
COLOR_TOK, SHAPE_TOK, SEP, ASK, FILL, VOCAB = 37, 43, 50, 51, 52, 72
PAD = 0


DENSE = False
NO_VISION = False


def scene(rng):
    s1, s2 = rng.sample(range(SHAPES), 2)
    c1, c2 = rng.randrange(COLORS), rng.randrange(COLORS)
    codes = [0] * 64
    if DENSE:
        # Like the glyph generator's images: 6-10 glyphs, all of the two named shapes.
        for k in rng.sample(range(64), rng.randint(6, 10)):
            sh = rng.choice([s1, s2])
            co = rng.choice([c1, c2, rng.randrange(COLORS), rng.randrange(COLORS)])
            codes[k] = 1 + 6 * sh + co
        return codes, (s1, c1, s2, c2)
    for k in rng.sample(range(64), rng.randint(2, 10)):
        sh = rng.choice([s1, s2, s1, s2, rng.randrange(SHAPES)])
        co = rng.choice([c1, c2, c1, c2, rng.randrange(COLORS)])
        codes[k] = 1 + 6 * sh + co
    return codes, (s1, c1, s2, c2)


def first_color(codes, shape):
    for x in codes:
        if x and (x - 1) // 6 == shape:
            return (x - 1) % 6
    return None


def question(rng, task, codes, own):
    present = [x for x in codes if x]
    if task == "shape":
        s = (rng.choice(present) - 1) // 6 if rng.random() < 0.5 else rng.randrange(SHAPES)
        return [SHAPE_TOK + s], int(first_color(codes, s) is not None)
    if task == "exists":
        if rng.random() < 0.5:
            x = rng.choice(present) - 1
            s, c = x // 6, x % 6
        else:
            s, c = rng.randrange(SHAPES), rng.randrange(COLORS)
        return [COLOR_TOK + c, SHAPE_TOK + s], int(1 + 6 * s + c in codes)
    if task in ("first", "first_hard"):
        # One colored object whose shape is present: true iff its first glyph has that color.
        s = (rng.choice(present) - 1) // 6
        c = first_color(codes, s)
        if rng.random() < 0.5:
            later = {(x - 1) % 6 for x in present if (x - 1) // 6 == s} - {c}
            if task == "first_hard" and later:
                # A color some later glyph of the shape has: "is there a red circle?" says yes.
                c = rng.choice(sorted(later))
            else:
                c = rng.choice([k for k in range(COLORS) if k != c])
        return [COLOR_TOK + c, SHAPE_TOK + s], int(first_color(codes, s) == c)
    shapes = sorted({(x - 1) // 6 for x in present})
    if rng.random() < 0.5 and len(shapes) >= 2:
        s1, s2 = rng.sample(shapes, 2)
        c1, c2 = first_color(codes, s1), first_color(codes, s2)
        if rng.random() < 0.5:
            c1 = rng.randrange(COLORS)
    elif rng.random() < 0.5:
        s1, c1, s2, c2 = own
    else:
        s1, s2 = rng.sample(range(SHAPES), 2)
        c1, c2 = rng.randrange(COLORS), rng.randrange(COLORS)
    y = int(first_color(codes, s1) == c1 and first_color(codes, s2) == c2)
    return [COLOR_TOK + c1, SHAPE_TOK + s1, COLOR_TOK + c2, SHAPE_TOK + s2], y


def caption_batch(rng, n):
    """First-of-class captions: shape, then (target) the color of its first glyph."""
    xs, targets = [], []
    for _ in range(n):
        codes, _ = scene(rng)
        shapes = sorted({(x - 1) // 6 for x in codes if x})
        rng.shuffle(shapes)
        seq = codes + [SEP]
        tgt = [-100] * len(seq)
        for s in shapes[:4]:
            seq += [SHAPE_TOK + s, COLOR_TOK + first_color(codes, s)]
            tgt += [COLOR_TOK + first_color(codes, s), -100]
        while len(seq) < 64 + 1 + 8:
            seq.append(SEP)
            tgt.append(-100)
        xs.append(seq)
        targets.append(tgt)
    return torch.tensor(xs), torch.tensor(targets)


def batch(rng, task, n, bare_share=0.0):
    xs, ys = [], []
    for _ in range(n):
        codes, own = scene(rng)
        q, y = question(rng, task, codes, own)
        fill = [FILL + i % 20 for i in range(PAD)]
        # Draw only when asked, so the default question stream stays as it was.
        if bare_share and rng.random() < bare_share:
            # Same length, the filler moved before the question: its words sit next to the answer.
            xs.append(codes + [SEP] + fill + q + [ASK])
        else:
            xs.append(codes + [SEP] + q + fill + [ASK])
        ys.append(y)
    return torch.tensor(xs), torch.tensor(ys)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.n1, self.n2, self.heads = nn.RMSNorm(d), nn.RMSNorm(d), heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, 3 * d, bias=False), nn.SiLU(), nn.Linear(3 * d, d, bias=False)
        )

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)

        def rope(z):
            z1, z2 = z.chunk(2, -1)
            return torch.cat([z1 * cos - z2 * sin, z2 * cos + z1 * sin], -1)

        a = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.n2(x))


class Judge(nn.Module):
    def __init__(self, d, layers, heads, additive=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        # Additive glyph input: a cell's vector is shape + color (+ empty), so "red circle" is not
        # its own key and the vision layer must build the conjunction, as a pixel tower must.
        self.additive = additive
        if additive:  # only then, so the default model's initialisation stays as it was
            self.cell_shape, self.cell_color = nn.Embedding(7, d), nn.Embedding(7, d)
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)
        self.vision = nn.TransformerEncoderLayer(d, heads, 2 * d, 0.0, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d), nn.Linear(d, 2)
        self.lm = nn.Linear(d, VOCAB)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2) / hd))
        ang = torch.arange(256)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())

    def forward(self, x, all_positions=False):
        e = self.emb(x)
        img = e[:, :64]
        if self.additive:
            c = x[:, :64]
            glyph = c > 0
            shape = torch.where(glyph, (c - 1) // 6, 6)
            color = torch.where(glyph, (c - 1) % 6, 6)
            img = self.cell_shape(shape) + self.cell_color(color)
        img = img + self.pos
        if not NO_VISION:
            img = self.vision(img)
        h = torch.cat([img, e[:, 64:]], 1)
        t = h.shape[1]
        for blk in self.blocks:
            h = blk(h, self.cos[:t], self.sin[:t])
        if all_positions:
            return self.lm(self.norm(h))
        return self.head(self.norm(h[:, -1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["shape", "exists", "first", "first_hard", "color_attr"], required=True)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aux", type=int, default=0)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--bare-share", type=float, default=0.0)
    ap.add_argument("--additive", action="store_true")
    ap.add_argument("--init", choices=["torch", "fan_in"], default="torch")
    ap.add_argument(
        "--no-vision", action="store_true",
        help="no bidirectional layer over the cells: they enter the causal judge as embedded",
    )
    a = ap.parse_args()
    global PAD, DENSE, NO_VISION
    PAD, DENSE, NO_VISION = a.pad, a.dense, a.no_vision
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    model = Judge(a.hidden, a.layers, a.heads, a.additive)
    if a.init == "fan_in":
        # The scratch judges' `weight_init: fan_in`: N(0, 1/fan_in) matrices, zero biases,
        # N(0, 1) embeddings and positions (PyTorch's default Linear is uniform, std 1/√(3·fan_in)).
        with torch.no_grad():
            for name, w in model.named_parameters():
                if name.endswith("bias"):
                    w.zero_()
                elif "norm" in name:
                    w.fill_(1.0)
                elif w.dim() == 2 and ("emb" in name or name.startswith("cell_") or name == "pos"):
                    w.normal_(0, 1.0)
                elif w.dim() == 2:
                    w.normal_(0, w.shape[1] ** -0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    xt, yt = batch(random.Random(1_000_003), a.task, 1000)
    print(f"task {a.task}: held-out yes rate {yt.float().mean():.3f}", flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        x, y = batch(rng, a.task, 32, a.bare_share)
        loss = F.cross_entropy(model(x), y)
        if a.aux:
            cx, ct = caption_batch(rng, a.aux)
            logits = model(cx, all_positions=True).reshape(-1, VOCAB)
            loss = loss + F.cross_entropy(logits, ct.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0:
            with torch.no_grad():
                acc = (model(xt).argmax(-1) == yt).float().mean().item()
            print(f"step {step} held-out acc {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
