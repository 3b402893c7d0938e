"""How right are a pairs file's preferences, by the glyph world's exact evaluator?

A diagnostic for issue 6 (judge-labelled DPO rounds), not part of the product or the tests. It
lays each distinct chosen and rejected image of a `pairs` folder out as its own prompt folder in
GenEval's layout, scores them with the exact evaluator (`imgcot-train eval geneval --score
glyph`), and prints the share of pairs in the right order (chosen correct, rejected wrong),
reversed, or tied (both correct or both wrong): overall, per tag, and for pairs whose judge
scores differ by at least each margin.

  python scripts/pairs_precision.py --pairs runs/iter-parm/iter-1/pairs --out /tmp/pp

Only pairs written by pair building carry the prompt metadata the evaluator needs.
"""

import argparse
import collections
import json
import os
import shutil
import subprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True, help="a pairs folder (pairs.jsonl + images/)")
    ap.add_argument("--out", required=True, help="scratch GenEval-layout folder (replaced)")
    ap.add_argument("--bin", default="target/release/imgcot-train")
    ap.add_argument("--margins", default="0,0.4,0.5,0.6,0.7")
    args = ap.parse_args()

    with open(os.path.join(args.pairs, "pairs.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    shutil.rmtree(args.out, ignore_errors=True)
    folder = {}
    for r in recs:
        if "metadata" not in r:
            raise SystemExit(f"{args.pairs}: a pair without metadata: {r['prompt']!r}")
        for side in ("chosen", "rejected"):
            img = r[side]
            if img in folder:
                continue
            name = f"{len(folder):05d}"
            d = os.path.join(args.out, name)
            os.makedirs(os.path.join(d, "samples"))
            with open(os.path.join(d, "metadata.jsonl"), "w") as f:
                json.dump(r["metadata"], f)
            shutil.copy(os.path.join(args.pairs, img), os.path.join(d, "samples", "0000.png"))
            folder[img] = name
    subprocess.run(
        [args.bin, "eval", "geneval", "--score", "glyph", "--images", args.out, "--out", args.out],
        check=True,
        capture_output=True,
    )
    correct = {}
    with open(os.path.join(args.out, "results.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            correct[j["file"].split("/")[0]] = j["correct"]

    def order(r):
        c, x = correct[folder[r["chosen"]]], correct[folder[r["rejected"]]]
        return "right" if c and not x else "reversed" if x and not c else "tie"

    def line(label, rs):
        n = len(rs)
        if n == 0:
            return f"{label}: no pairs"
        k = collections.Counter(order(r) for r in rs)
        return (
            f"{label}: {n} pairs, right {k['right'] / n:.3f}, reversed {k['reversed'] / n:.3f}, "
            f"tie {k['tie'] / n:.3f}"
        )

    print(line("all", recs))
    for tag in sorted({r.get("tag") or "" for r in recs}):
        print("  " + line(f"tag {tag}", [r for r in recs if (r.get("tag") or "") == tag]))
    for m in (float(x) for x in args.margins.split(",")):
        sel = [r for r in recs if r["chosen_score"] - r["rejected_score"] >= m]
        print("  " + line(f"margin >= {m}", sel))


if __name__ == "__main__":
    main()
