"""Reference for tests/train_adamw_torch.rs: runs torch.optim.AdamW on the same tiny model.

Usage: train_adamw_torch.py <workdir>
Reads <workdir>/init.safetensors (params + "input.x") and <workdir>/config.json, writes
<workdir>/torch_out.safetensors with the final params ("param.<name>"), and the optimizer moments
("exp_avg.<name>", "exp_avg_sq.<name>"). With config["bf16"], the model params are bf16 and the
optimizer steps fp32 master copies (grads cast to fp32, results copied back), which is what
imgcot's AdamW does internally.
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file


def loss_fn(p, x):
    # Same op order as the Rust side.
    h = x * p["norm.weight"]
    y = h @ p["proj.weight"].t() + p["proj.bias"] + x @ p["vision.weight"].t()
    return (y * y).sum()


def main():
    wd = sys.argv[1]
    cfg = json.load(open(f"{wd}/config.json"))
    init = load_file(f"{wd}/init.safetensors")
    x = init.pop("input.x")
    dtype = torch.bfloat16 if cfg["bf16"] else torch.float32
    names = sorted(init)
    model = {n: init[n].to(dtype).clone().requires_grad_(True) for n in names}
    x = x.to(dtype)
    if cfg["bf16"]:
        master = {n: model[n].detach().float().clone().requires_grad_(True) for n in names}
    else:
        master = model
    groups = []
    for n in names:
        groups.append({
            "params": [master[n]],
            "weight_decay": 0.0 if n in cfg["no_decay"] else cfg["weight_decay"],
            "lr_mult": cfg["lr_mults"].get(n, 1.0),
            "name": n,
        })
    opt = torch.optim.AdamW(groups, lr=cfg["lrs"][0], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                            foreach=False, fused=False)
    for lr in cfg["lrs"]:
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        for t in model.values():
            t.grad = None
        for t in master.values():
            t.grad = None
        loss_fn(model, x).backward()
        if cfg["bf16"]:
            for n in names:
                if model[n].grad is not None:
                    master[n].grad = model[n].grad.float()
        opt.step()
        if cfg["bf16"]:
            with torch.no_grad():
                for n in names:
                    model[n].copy_(master[n])
    out = {}
    for n in names:
        out[f"param.{n}"] = model[n].detach().contiguous()
        st = opt.state.get(master[n])
        if st:
            # imgcot keeps a master copy only once a parameter has stepped.
            if cfg["bf16"]:
                out[f"master.{n}"] = master[n].detach().contiguous()
            out[f"exp_avg.{n}"] = st["exp_avg"].contiguous()
            out[f"exp_avg_sq.{n}"] = st["exp_avg_sq"].contiguous()
    save_file(out, f"{wd}/torch_out.safetensors")


if __name__ == "__main__":
    main()
