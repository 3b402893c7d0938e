"""Mirror of GenEval's summary_scores.py arithmetic with the standard library only.

Usage: geneval_summary_mirror.py RESULTS_JSONL OUT_JSON
Prints the same text as summary_scores.py and writes the numbers to OUT_JSON.
pandas' per-column mean is sum/count; np.mean over the (at most six) task scores sums them
left to right, as sum() does, and divides by their count.
"""
import json
import sys

rows = []
with open(sys.argv[1]) as f:
    for line in f:
        if line.strip():
            rows.append(json.loads(line))

prompt_any = {}
for r in rows:
    prompt_any[r["metadata"]] = prompt_any.get(r["metadata"], False) or bool(r["correct"])

tags = {}
for r in rows:  # dict keeps first-appearance order, like groupby(sort=False)
    tags.setdefault(r["tag"], []).append(bool(r["correct"]))

correct_images = sum(r["correct"] for r in rows) / len(rows)
correct_prompts = sum(prompt_any.values()) / len(prompt_any)
print("Summary")
print("=======")
print(f"Total images: {len(rows)}")
print(f"Total prompts: {len(prompt_any)}")
print(f"% correct images: {correct_images:.2%}")
print(f"% correct prompts: {correct_prompts:.2%}")
print()
print("Task breakdown")
print("==============")
task_scores = []
for tag, vals in tags.items():
    acc = sum(vals) / len(vals)
    task_scores.append(acc)
    print(f"{tag:<16} = {acc:.2%} ({sum(vals)} / {len(vals)})")
print()
overall = sum(task_scores) / len(task_scores)
print(f"Overall score (avg. over tasks): {overall:.5f}")

out = {tag: sum(v) / len(v) for tag, v in tags.items()}
out.update(
    overall=overall,
    correct_images=correct_images,
    correct_prompts=correct_prompts,
    images=len(rows),
    prompts=len(prompt_any),
    denominators={tag: len(v) for tag, v in tags.items()},
)
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
