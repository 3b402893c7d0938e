"""Independent PyTorch reference for MAGVIT-v2 as used by Show-o (tests/magvit2_parity.rs).

Written from shared/design/spec-showo.md §2.4 and §6 (not copied from the original repo):
GroupNorm(32, eps 1e-6) + swish, ResnetBlock without time embedding, single-head AttnBlock in
the mid sections only, asymmetric-pad Downsample, nearest×2 Upsample, encoder ends in quant_conv,
decoder starts with post_quant_conv, 13-bit LFQ with channel 0 = MSB and exact 0 → −1.

Usage: magvit2_ref.py OUT_DIR [--config full|small] [--res R] [--batch B] [--decode-batch B]
                     [--seed S] [--no-buffers] [--skip-encode] [--skip-decode]
Writes OUT_DIR/pytorch_model.safetensors (original key layout, metadata {"format": "pt"}),
OUT_DIR/config.json and OUT_DIR/ref.safetensors with
  images [B,3,R,R] f32, z [B,D,R/f,R/f] f32 (pre-quantization), codes [B,N] i64,
  dec_codes [B',N] i64, decoded [B',3,R,R] f32.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

FULL = dict(
    ch=128,
    z_channels=13,
    resolution=256,
    encoder_ch_mult=[1, 2, 2, 4, 4],
    encoder_num_res_blocks=[4, 3, 4, 3, 4],
    decoder_ch_mult=[1, 1, 2, 2, 4],
    decoder_num_res_blocks=[4, 4, 3, 4, 3],
    codebook_dim=13,
)
# Small but structurally complete: 5 levels (factor 16, so 512² → 32×32 codes like the real model),
# a channel change in both networks, unequal block counts, a 6-bit codebook.
SMALL = dict(
    ch=32,
    z_channels=6,
    resolution=512,
    encoder_ch_mult=[1, 1, 2, 2, 4],
    encoder_num_res_blocks=[1, 2, 1, 1, 1],
    decoder_ch_mult=[1, 2, 2, 4, 4],
    decoder_num_res_blocks=[1, 1, 2, 1, 2],
    codebook_dim=6,
)


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return s + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w)
        k = self.k(hn).reshape(b, c, h * w)
        v = self.v(hn).reshape(b, c, h * w)
        # Explicit matmul form (the Rust port uses SDPA): w[i, j] = softmax_j(q_i · k_j / sqrt(C)).
        wts = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (c ** -0.5), dim=2)
        out = torch.bmm(v, wts.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1 = ResBlock(c, c)
        self.attn_1 = Attn(c)
        self.block_2 = ResBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, mult, nrb = cfg["ch"], cfg["encoder_ch_mult"], cfg["encoder_num_res_blocks"]
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block = nn.ModuleList([ResBlock(cin if j == 0 else ch * m, ch * m) for j in range(nrb[i])])
            cin = ch * m
            if i != len(mult) - 1:
                level.downsample = Down(cin)
            self.down.append(level)
        self.mid = Mid(cin)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg["z_channels"], 3, 1, 1)
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["z_channels"], 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, mult, nrb, z = cfg["ch"], cfg["decoder_ch_mult"], cfg["decoder_num_res_blocks"], cfg["z_channels"]
        cin = ch * mult[-1]
        self.post_quant_conv = nn.Conv2d(z, z, 1)
        self.conv_in = nn.Conv2d(z, cin, 3, 1, 1)
        self.mid = Mid(cin)
        levels = [None] * len(mult)
        for i in reversed(range(len(mult))):
            level = nn.Module()
            cout = ch * mult[i]
            level.block = nn.ModuleList([ResBlock(cin if j == 0 else cout, cout) for j in range(nrb[i])])
            cin = cout
            if i != 0:
                level.upsample = Up(cin)
            levels[i] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LFQ(nn.Module):
    def __init__(self, d):
        super().__init__()
        power = torch.tensor([2 ** (d - 1 - c) for c in range(d)], dtype=torch.int64)
        ids = torch.arange(2 ** d, dtype=torch.int64)
        bits = (ids[:, None] // power[None, :]) % 2  # channel 0 = most significant bit
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", power)

    def codes(self, z):
        b, d, h, w = z.shape
        bits = (z > 0).long()  # exact 0 -> bit 0 -> -1
        return (bits * self.power_vals.view(1, d, 1, 1)).sum(1).reshape(b, h * w)

    def lookup(self, codes):
        b, n = codes.shape
        g = int(round(n ** 0.5))
        return self.embedding[codes].reshape(b, g, g, -1).permute(0, 3, 1, 2)


class MAGVITv2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = LFQ(cfg["codebook_dim"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--config", choices=["full", "small"], default="full")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode-batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-buffers", action="store_true")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(a.seed)
    cfg = FULL if a.config == "full" else SMALL
    model = MAGVITv2(cfg).eval()
    with torch.no_grad():
        # Non-trivial affine GroupNorm parameters, so that a swapped weight/bias would show.
        for mod in model.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
    os.makedirs(a.out, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if a.no_buffers:
        sd = {k: v for k, v in sd.items() if not k.startswith("quantize.")}
    save_file(sd, os.path.join(a.out, "pytorch_model.safetensors"), metadata={"format": "pt"})
    meta = {"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        # The released config holds metadata only; small configs spell out the architecture.
        json.dump(meta if a.config == "full" else {**meta, **cfg}, f, indent=2, sort_keys=True)
        f.write("\n")

    f = 2 ** (len(cfg["encoder_ch_mult"]) - 1)
    g = a.res // f
    gen = torch.Generator().manual_seed(a.seed + 1)
    out = {}
    with torch.no_grad():
        if not a.skip_encode:
            images = torch.rand(a.batch, 3, a.res, a.res, generator=gen) * 2 - 1
            t0 = time.time()
            z = model.encoder(images)
            out.update(images=images, z=z.contiguous(), codes=model.quantize.codes(z))
            absz = z.abs()
            print(f"encode {tuple(images.shape)}: {time.time() - t0:.2f}s; min|z| {absz.min().item():.3e}, "
                  f"#|z|<1e-4 {(absz < 1e-4).sum().item()}, max|z| {absz.max().item():.3e}", file=sys.stderr)
        if not a.skip_decode:
            dec_codes = torch.randint(0, 2 ** cfg["codebook_dim"], (a.decode_batch, g * g), generator=gen)
            t0 = time.time()
            decoded = model.decoder(model.quantize.lookup(dec_codes))
            out.update(dec_codes=dec_codes, decoded=decoded.contiguous())
            print(f"decode {tuple(decoded.shape)}: {time.time() - t0:.2f}s; max|x| {decoded.abs().max().item():.3e}",
                  file=sys.stderr)
    save_file(out, os.path.join(a.out, "ref.safetensors"))


if __name__ == "__main__":
    main()
