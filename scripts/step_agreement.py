"""How early does a glyph-world sampling path show its final verdict?

A diagnostic for issue 6 (PARM against the ORM), not part of the product or the tests. It takes a
`judge-data` folder whose paths saved their clear-step images (`potential_per_path` at least the
number of clear steps, e.g. 5 of 12 steps), scores every saved step image of every path with the
exact evaluator (`imgcot-train eval geneval --score glyph`), and prints, per step, how often the
step's image gets the same verdict as the path's final image, with the recall and precision of
"the step's image is correct" as a predictor of "the final image is correct". It also writes the
held-out potential records of one step to their own file, to score a PARM on that step alone.

  python scripts/step_agreement.py --data runs/x-pot5/data --out /tmp/step-agreement \
      --potential-step 8

The evaluator on the step image stands for a potential judge that reads the image perfectly but
does not predict the decoding still to come.
"""

import argparse
import collections
import json
import os
import shutil
import subprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a judge-data output folder")
    ap.add_argument("--out", required=True, help="scratch GenEval-layout folder (replaced)")
    ap.add_argument("--prompts", default="data/glyphs/train_prompts.jsonl")
    ap.add_argument("--bin", default="target/release/imgcot-train")
    ap.add_argument("--potential-step", type=int, default=8)
    a = ap.parse_args()

    metas = [json.loads(line) for line in open(a.prompts)]
    shutil.rmtree(a.out, ignore_errors=True)
    paths = []
    for split in ("train", "heldout"):
        for line in open(os.path.join(a.data, f"orm_{split}.jsonl")):
            paths.append(json.loads(line))
    steps_total = None
    for k, rec in enumerate(paths):
        m = rec["meta"]
        meta = metas[m["prompt_index"]]
        if meta["prompt"] != m["prompt"]:
            raise SystemExit(f"{rec['id']}: prompt index {m['prompt_index']} is not its prompt")
        steps_total = m["steps"]
        d = os.path.join(a.out, f"{k:05d}")
        os.makedirs(os.path.join(d, "samples"))
        with open(os.path.join(d, "metadata.jsonl"), "w") as f:
            f.write(json.dumps(meta) + "\n")
        stem = rec["image"].rsplit("-s", 1)[0]
        for s in range(1, m["steps"] + 1):
            src = os.path.join(a.data, f"{stem}-s{s:02d}.png")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(d, "samples", f"{s:04d}.png"))
    subprocess.run(
        [a.bin, "eval", "geneval", "--score", "glyph", "--images", a.out],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    verdicts = collections.defaultdict(dict)
    for line in open(os.path.join(a.out, "scores-glyph", "results.jsonl")):
        r = json.loads(line)
        folder, _, name = r["file"].split("/")
        verdicts[folder][int(name[:4])] = r["correct"]
    finals = [v[steps_total] for v in verdicts.values()]
    print(f"{len(finals)} paths of {steps_total} steps; final yes-rate {sum(finals) / len(finals):.3f}")
    print("step  paths  agree  recall  precision")
    for s in range(1, steps_total + 1):
        pairs = [(v[s], v[steps_total]) for v in verdicts.values() if s in v]
        if len(pairs) < len(verdicts):
            continue  # only the steps every path saved
        tp = sum(x and y for x, y in pairs)
        fn = sum(y and not x for x, y in pairs)
        fp = sum(x and not y for x, y in pairs)
        agree = sum(x == y for x, y in pairs) / len(pairs)
        print(
            f"{s:4d}  {len(pairs):5d}  {agree:.3f}  {tp / max(1, tp + fn):.3f}"
            f"   {tp / max(1, tp + fp):.3f}"
        )
    held = [json.loads(line) for line in open(os.path.join(a.data, "parm_heldout.jsonl"))]
    pick = [
        r for r in held
        if r["meta"]["kind"] == "potential" and r["meta"]["step"] == a.potential_step
    ]
    dest = os.path.join(a.data, f"potential_s{a.potential_step:02d}_heldout.jsonl")
    with open(dest, "w") as f:
        for r in pick:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {dest}: {len(pick)} records, {sum(r['meta']['label'] for r in pick)} yes")


if __name__ == "__main__":
    main()
