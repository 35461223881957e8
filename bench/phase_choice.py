# make bench: needs arguments (a run folder, or rows and seeds): see the docstring
"""Would a noise-aware rule choose better between the linear probe and fine-tuning? (issue 15, Dec 4 2026)

`retreino train` lets a fine-tuning epoch replace the recipe's linear probe when it is better on validation in
accuracy and not worse in loss. On 300 validation photos a few photos decide that. The candidate rule: fine-tuning
replaces the probe only when its paired per-image validation log-loss gain is at least z standard errors.

Per row and fresh draw (bench/accuracy.py's `resplit`, same seeds, same sizes), this trains the defaults and, when
they chose fine-tuning, a probe-only run (`--epochs 1 --lr 1e-12`: one fine-tuning epoch that cannot win), scores
both on the validation and test splits as `retreino evaluate` would (the model's TTA and temperature applied), and
then picks with each rule. The z statistic comes from those final models' validation losses, an approximation of a
rule that would run inside training.

    .venv/bin/python bench/phase_choice.py water_bottles:cats_vs_dogs 6,7,8,9 /tmp/sel.jsonl   # train and record
    .venv/bin/python bench/phase_choice.py --table /tmp/sel.jsonl                                # the rules compared
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RETREINO_QUIET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402  (bench/accuracy.py: backbones, datasets, resplit)
import numpy as np  # noqa: E402

RULES = (("the defaults' rule", None), ("z >= 1", 1.0), ("z >= 1.645", 1.645))


def per_image(run_dir, split):
    from retreino import evaluate

    with tempfile.TemporaryDirectory() as d:
        r = evaluate(run=run_dir, split=split, out=d, progress=False, report=False)
    p = np.clip(r.probs[np.arange(len(r.y_true)), r.y_true], 1e-15, 1)
    return {"loss": (-np.log(p)).tolist(), "correct": (r.probs.argmax(1) == r.y_true).astype(int).tolist(),
            "accuracy": r.metrics["accuracy"], "mean_loss": r.metrics["loss"]}


def record(rows, seeds, out: Path):
    from retreino import train

    work = Path(tempfile.mkdtemp(prefix="phase-choice-"))
    for bb, dname in rows:
        for seed in seeds:
            data = A.resplit(A.DATASETS[dname], seed, work / "data")
            rec = {"row": f"{bb}:{dname}", "seed": seed}
            for kind, over in (("defaults", {}), ("probe", {"epochs": 1, "learning_rate": 1e-12})):
                if kind == "probe" and rec["defaults"]["phase"] == "linear-probe":
                    rec["probe"] = dict(rec["defaults"], same=True)
                    continue
                t0 = time.time()
                run = train(model=A.BACKBONES[bb]["model"], weights=A.BACKBONES[bb].get("weights"), data=data,
                            runs_dir=str(work / "runs"), name=f"{bb}-{dname}-{seed}-{kind}", printer=None, **over)
                best = run.history[run.best_epoch - 1]
                rec[kind] = {"phase": best["phase"], "best_epoch": run.best_epoch, "train_s": time.time() - t0,
                             "val": per_image(run.dir, "validation"), "test": per_image(run.dir, "test")}
                print(bb, dname, seed, kind, rec[kind]["phase"], rec[kind]["val"]["accuracy"],
                      rec[kind]["val"]["mean_loss"], rec[kind]["test"]["accuracy"], rec[kind]["test"]["mean_loss"],
                      flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


def z_of(rec) -> float:
    """Paired gain of fine-tuning over the probe in validation log loss, in standard errors."""
    if rec["probe"].get("same"):
        return float("nan")
    diff = np.array(rec["probe"]["val"]["loss"]) - np.array(rec["defaults"]["val"]["loss"])
    return float(diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))))


def table(path: Path) -> str:
    recs = [json.loads(line) for line in open(path)]
    lines = ["| row | draw | defaults chose | z | test acc / loss: defaults | recipe's probe |", "|---|---|---|---|---|---|"]
    picks: dict = {}
    for r in recs:
        d, p, z = r["defaults"], r["probe"], z_of(r)
        lines.append(f"| {r['row']} | {r['seed']} | {d['phase']} | {z:.2f} | {d['test']['accuracy']:.4f} / "
                     f"{d['test']['mean_loss']:.4f} | {p['test']['accuracy']:.4f} / {p['test']['mean_loss']:.4f} |")
        for name, bar in RULES + (("always the probe", float("inf")),):
            pick = d if (bar is None or p.get("same") or z >= bar) else p
            picks.setdefault((r["row"], name), []).append((pick["test"]["accuracy"], pick["test"]["mean_loss"]))
    lines += ["", "| row | rule | draws | mean test accuracy | mean test loss |", "|---|---|---|---|---|"]
    for (row, name), v in picks.items():
        v = np.array(v)
        lines.append(f"| {row} | {name} | {len(v)} | {v[:, 0].mean():.4f} | {v[:, 1].mean():.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        print(table(Path(sys.argv[2])))
    else:
        record([r.split(":") for r in sys.argv[1].split(",")], [int(s) for s in sys.argv[2].split(",")], Path(sys.argv[3]))
