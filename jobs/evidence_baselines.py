# OMP_NUM_THREADS=1 python jobs/evidence_baselines.py            (full: 3 seeds, every method; writes the table
#                                                                into docs/baselines.md, between its markers)
# OMP_NUM_THREADS=1 python jobs/evidence_baselines.py --smoke    (seconds: 1 seed, 1 epoch, small data; prints only)
# OMP_NUM_THREADS=1 python jobs/evidence_baselines.py --optimizer adam --out /tmp/baselines_adam.md
"""Evidence for issues 4 and 18: every balancing method on the synthetic `imbalanced` preset.

For each method and seed, one run of ``mcrlab.engine.fit.fit``; reported: fused test accuracy and the linear-probe
accuracy of the weak modality's frozen encoder (the honest measure of under-training), next to the preset's
analytic ceilings (``dataset.meta``). By default every method runs with its reference optimiser (its
``Method.defaults``, e.g. SGD with momentum 0.9 for OGM-GE/AGM/PMR/MMPareto/D&R) at ``--lr`` for Adam and
``--sgd-lr`` for SGD with momentum 0.9 (the usual 10x: Adam's step does not scale with the gradient, SGD's
does; SGD with another momentum m gets the same effective step lr / (1 - m), i.e. sgd_lr * (1 - m) / 0.1); ``--optimizer``
forces one optimiser for all. Prints a Markdown table and, unless --smoke, writes it into the output file
between the lines ``<!-- evidence:begin -->`` and ``<!-- evidence:end -->`` (the whole file if it has none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from mcrlab.config import RunConfig
from mcrlab.data import load_dataset
from mcrlab.engine.fit import fit
from mcrlab.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def arms(weak: int, strong: int) -> list[tuple[str, dict]]:
    """(label, method section) for every registered method; unimodal once per modality."""
    out = [(f"unimodal (m{strong})", {"name": "unimodal", "modality": strong}),
           (f"unimodal (m{weak})", {"name": "unimodal", "modality": weak})]
    out += [(name, {"name": name}) for name in REGISTRY if name != "unimodal"]
    return out


def fmt(xs: list[float], digits: int = 3) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, 200 training samples, no file")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--optimizer", default="reference", choices=("reference", "adam", "adamw", "sgd"),
                    help="train.optimizer: reference = each method's own default (Method.defaults); else forced "
                         "for every method (Adam normalises away a constant gradient scale)")
    ap.add_argument("--lr", type=float, default=1e-3, help="train.lr of runs with Adam/AdamW")
    ap.add_argument("--sgd-lr", type=float, default=1e-2, help="train.lr of runs with SGD and momentum 0.9")
    ap.add_argument("--out", default=str(ROOT / "docs" / "baselines.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.smoke else list(range(args.seeds))
    epochs = 1 if args.smoke else args.epochs
    n_train = 200 if args.smoke else 0
    data_cfg = {"name": "synthetic:imbalanced", "seed": 0, "n_train": n_train}
    data = load_dataset(RunConfig.from_dict({"data": data_cfg}).data)
    uni = data.meta["unimodal_ceilings"]
    weak = min(range(len(data.modalities)), key=lambda m: uni[data.modalities[m]])
    strong = 1 - weak
    wname, sname = data.modalities[weak], data.modalities[strong]
    train = {"epochs": epochs, "device": "cpu", "probe_epochs": 20 if args.smoke else 100}
    if args.optimizer != "reference":
        train["optimizer"] = args.optimizer

    rows, t0 = [], time.time()
    for label, method in arms(weak, strong):
        res: dict[str, list[float]] = {"acc": [], "weak": [], "strong": [], "head": [], "epoch": []}
        opt_used = ""
        for seed in seeds:
            cfg = RunConfig.from_dict({"data": data_cfg, "method": method, "train": {**train, "seed": seed}})
            # SGD at the same effective step lr / (1 - momentum) as momentum 0.9 (Greedy's reference: lr 0.1, m 0)
            lr = args.sgd_lr * (1 - cfg.train.momentum) / 0.1 if cfg.train.optimizer == "sgd" else args.lr
            cfg = cfg.replace({"train.lr": lr})
            t = cfg.train
            opt_used = f"{t.optimizer} {t.lr:g}" + (f", m {t.momentum:g}" if t.optimizer == "sgd" else "") + \
                (f", wd {t.weight_decay:g}" if t.weight_decay else "")
            reports: list[dict] = []
            m = fit(cfg, lambda r, c, rep=reports: rep.append(dict(r)), dataset=data)
            res["acc"].append(m["test/acc"])
            res["weak"].append(m[f"test/probe/{wname}"])
            res["strong"].append(m[f"test/probe/{sname}"])
            res["head"].append(m[f"test/head/{wname}"])
            best = m["val/best_acc"]
            res["epoch"].append(float(next(r["epoch"] for r in reports if r["val/acc"] == best
                                           and _selectable(cfg, int(r["epoch"])))))
        rows.append((label, opt_used, res))
        print(f"{label:<22} acc {fmt(res['acc'])}  probe[{wname}] {fmt(res['weak'])}  "
              f"({time.time() - t0:.0f}s)", file=sys.stderr)

    c = data.meta["ceilings"]
    lines = [
        "<!-- evidence:begin -->",
        "### Measured: every method on synthetic:imbalanced",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python jobs/evidence_baselines.py` "
        f"(seeds {seeds}, {epochs} epochs, optimiser {args.optimizer}: Adam/AdamW at lr {args.lr:g}, SGD at lr "
        f"{args.sgd_lr:g} for momentum 0.9, the same lr / (1 - momentum) otherwise; default model, CPU).",
        "",
        f"Weak modality: **{wname}**, strong: **{sname}**. Analytic ceilings (Bayes accuracy of the generator): "
        f"late fusion {c['late_fusion']:.3f}, full fusion {c['full_fusion']:.3f}, "
        f"{sname} alone {uni[sname]:.3f}, {wname} alone {uni[wname]:.3f}.",
        "",
        f"| method | optimiser | fused test acc | probe {wname} (weak) | probe {sname} (strong) | head {wname} "
        "| best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {opt} | {fmt(r['acc'])} | {fmt(r['weak'])} | {fmt(r['strong'])} | {fmt(r['head'])} "
              f"| {fmt(r['epoch'], 1)} |" for label, opt, r in rows]
    lines += [f"| *ceiling* | | {c['late_fusion']:.3f} (late) / {c['full_fusion']:.3f} (full) | {uni[wname]:.3f} | "
              f"{uni[sname]:.3f} | {uni[wname]:.3f} | |", ""]
    lines += [
        "Mean ± sample standard deviation over seeds (train.seed; the data draw is fixed, data.seed=0). "
        "`probe` = linear probe on the frozen encoder's test latents, fitted on its training latents; "
        "`head` = the model's own unimodal head (untrained in methods that do not use it: joint, OGM-GE, AGM, "
        "Greedy, MMCosine, PMR, MSLR, D&R, MLA, ReconBoost, OPM, CML, AMCo, UMT, MBSD). Test metrics come from the best validation epoch "
        "(`best epoch`, 1-based; for D&R only epochs after its first re-initialisation count).",
        "<!-- evidence:end -->"]
    table = "\n".join(lines)
    print(table)
    if not args.smoke:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = out.read_text() if out.is_file() else ""
        begin, end = "<!-- evidence:begin -->", "<!-- evidence:end -->"
        if begin in text and end in text:
            text = text[:text.index(begin)] + table + text[text.index(end) + len(end):]
        else:
            text = table + "\n"
        out.write_text(text)
    return 0


def _selectable(cfg: RunConfig, epoch: int) -> bool:
    """Could 1-based ``epoch`` be the best epoch (D&R selects only after its first re-initialisation)?"""
    if cfg.method.name != "dnr" or not cfg.method.params.select_after_relearn:
        return True
    every = cfg.method.params.every(cfg.train.epochs)
    return cfg.method.params.max_reinits == 0 or epoch - 1 > every or every >= cfg.train.epochs - 1


if __name__ == "__main__":
    raise SystemExit(main())
