"""How right is PARM's "hopeless" call, by the glyph world's exact evaluator?

A diagnostic for issue 6 (PARM best-of-N against ORM best-of-N), not part of the product or the
tests. It joins three outputs made with the same sampling seeds, so that candidate k of prompt i
is the same image in all three:

  - an `eval` folder of the base with 8 images per prompt (every candidate, scored exactly);
  - `sample --verify parm --n 8` with `iterate.parm.no_prune: true` in the recipe (every
    candidate's potential and outcome answers, in `NNNNN.trajectory.json`);
  - `sample --verify orm --n 8` (every candidate's ORM score).

and prints (1) how often candidates end correct by PARM's potential P(yes), overall and per tag,
and (2) best-of-8 accuracy on these candidates for the ORM, for PARM without pruning, for
PARM pruning at each potential threshold (prune when P(yes) <= t; best outcome among the
survivors; when none survive, the lowest potential P(no), decoded to the end as `verify` does),
and for the paper's rule capped to keep at least m survivors (m = 0 … 8).

  python scripts/parm_calibration.py --eval E --parm P --orm O

E: `imgcot-train eval --ckpt ckpts/glyphs/base --images-per-prompt 8 --out E`
P: `imgcot-train sample --recipe R --model ckpts/glyphs/base --prompts F --n 8 --seed 1234
    --verify parm --judge ckpts/glyphs/parm --out P` (R: recipes/glyphs.yaml with `no_prune:
    true` under `iterate.parm`; F: the eval prompts, one per line, in metadata order)
O: the same with `--verify orm --judge ckpts/glyphs/orm --out O` and the plain recipe.
"""

import argparse
import collections
import json
import os

TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]


def load(args):
    correct = {}
    tag_of = {}
    with open(os.path.join(args.eval, "results.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            prompt_dir, _, png = r["file"].split("/")
            i, k = int(prompt_dir), int(png.split(".")[0])
            correct[(i, k)] = bool(r["correct"])
            tag_of[i] = r["tag"]
    rows = []
    i = 0
    while os.path.exists(os.path.join(args.parm, f"{i:05}.trajectory.json")):
        with open(os.path.join(args.parm, f"{i:05}.trajectory.json")) as f:
            parm = json.load(f)
        with open(os.path.join(args.orm, f"{i:05}.trajectory.json")) as f:
            orm = json.load(f)
        assert parm["seeds"] == orm["seeds"], f"prompt {i}: other seeds"
        for p in parm["paths"]:
            assert p["pruned_at"] is None, "the PARM run must not prune (no_prune: true)"
        rows.append(
            {
                "tag": tag_of[i],
                "correct": [correct[(i, k)] for k in range(len(parm["paths"]))],
                "potential": [p["potential"] for p in parm["paths"]],
                "outcome": [p["outcome"] for p in parm["paths"]],
                "orm": [p["outcome"] for p in orm["paths"]],
                "orm_chosen": orm["chosen"],
                "parm_chosen": parm["chosen"],
            }
        )
        i += 1
    return rows


def argmax(xs):
    return max(range(len(xs)), key=lambda k: (xs[k], -k))


def parm_pick(r, t):
    alive = [k for k, (y, _) in enumerate(r["potential"]) if y > t]
    if not alive:
        return min(range(len(r["potential"])), key=lambda k: (r["potential"][k][1], k))
    return max(alive, key=lambda k: (r["outcome"][k], -k))


def parm_pick_keep(r, m):
    """The paper's rule (prune when P(yes) <= P(no)) but at most len - m paths, the lowest
    potential P(yes) first; the fallback as in `parm_pick`."""
    pot = r["potential"]
    hopeless = sorted((k for k, (y, no) in enumerate(pot) if y <= no), key=lambda k: (pot[k][0], k))
    pruned = set(hopeless[: max(len(pot) - m, 0)])
    alive = [k for k in range(len(pot)) if k not in pruned]
    if not alive:
        return min(range(len(pot)), key=lambda k: (pot[k][1], k))
    return max(alive, key=lambda k: (r["outcome"][k], -k))


def accuracy(rows, pick):
    by_tag = collections.defaultdict(list)
    for r in rows:
        by_tag[r["tag"]].append(r["correct"][pick(r)])
    per = {t: sum(v) / len(v) for t, v in by_tag.items()}
    return sum(per.values()) / len(per), per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", required=True)
    ap.add_argument("--parm", required=True)
    ap.add_argument("--orm", required=True)
    ap.add_argument("--thresholds", default="0.001,0.01,0.05,0.2,0.5,0.8")
    args = ap.parse_args()
    rows = load(args)
    n = sum(len(r["correct"]) for r in rows)
    print(f"{len(rows)} prompts, {n} candidates, {sum(sum(r['correct']) for r in rows)} correct")

    bins = [(0.0, 0.001), (0.001, 0.05), (0.05, 0.5), (0.5, 0.95), (0.95, 1.0001)]
    print("\npotential P(yes) bin: candidates, share correct at the end (overall; per tag n/correct)")
    for lo, hi in bins:
        cell = collections.defaultdict(lambda: [0, 0])
        for r in rows:
            for (y, _), c in zip(r["potential"], r["correct"]):
                if lo <= y < hi:
                    cell[r["tag"]][0] += 1
                    cell[r["tag"]][1] += c
                    cell["all"][0] += 1
                    cell["all"][1] += c
        tot, ok = cell["all"]
        per = ", ".join(f"{t} {cell[t][0]}/{cell[t][1]}" for t in TAGS if cell[t][0])
        share = ok / tot if tot else float("nan")
        print(f"  [{lo:g}, {min(hi, 1):g}): {tot:4d}, {share:.3f}  ({per})")

    # Candidates a pruning threshold removes although they end correct, and the ORM's picks
    # among them.
    print("\nbest-of-8 on these candidates (overall; per tag)")

    def show(name, pick):
        o, per = accuracy(rows, pick)
        print(f"  {name:28s} {o:.3f}  " + " ".join(f"{t[:6]} {per.get(t, 0):.2f}" for t in TAGS))

    show("ORM", lambda r: argmax(r["orm"]))
    show("PARM, no pruning", lambda r: argmax(r["outcome"]))
    for t in [float(x) for x in args.thresholds.split(",")]:
        pruned = sum(1 for r in rows for (y, _) in r["potential"] if y <= t)
        lost = sum(
            1 for r in rows for (y, _), c in zip(r["potential"], r["correct"]) if y <= t and c
        )
        orm_lost = sum(
            1
            for r in rows
            if r["potential"][argmax(r["orm"])][0] <= t and r["correct"][argmax(r["orm"])]
        )
        show(f"PARM, prune P(yes) <= {t:g}", lambda r, t=t: parm_pick(r, t))
        print(
            f"    pruned {pruned} of {n}; {lost} of them end correct; "
            f"{orm_lost} are the ORM's (correct) pick"
        )
    # A cap on pruning: how many survivors PARM must keep before it reaches the ORM.
    for m in range(len(rows[0]["potential"]) + 1):
        show(f"PARM, keep at least {m}", lambda r, m=m: parm_pick_keep(r, m))
    agree = sum(1 for r in rows if r["parm_chosen"] == argmax(r["outcome"]))
    print(f"\n(check: the PARM run's own picks match this script's no-pruning pick in {agree} of {len(rows)})")


if __name__ == "__main__":
    main()
