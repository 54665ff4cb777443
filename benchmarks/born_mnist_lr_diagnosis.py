"""Why a wider bond trained worse: born-classify on MNIST-14 with the learning rate given as is,
divided by D / 10, divided by sqrt(D / 10), and divided by D / 10 with initial noise shrunk
with the chain (std 0.3 / sqrt(n D)); one seed, 15 epochs, one thread per run.

    python benchmarks/born_mnist_lr_diagnosis.py SPEC [SPEC ...]
    SPEC: comma-separated key=value, e.g. bond_dim=50,lr=0.001,max_iterations=15,lr_ref_D=10,lr_pow=0.5

The rule is applied here by hand on top of lr_scaling "none" (this is how it was measured,
before the trainers had it). Appends one JSON line per SPEC to $OUT/exp.jsonl (default
benchmarks/results/born_mnist_lr_diagnosis.jsonl).
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

from trainers.base import make_scheduler  # noqa: E402
from trainers.bornmachine.trainers import BornClassifyTrainer, make_adam  # noqa: E402
from trainers.context import LocalContext  # noqa: E402

BASE = dict(dataset="mnist", image_size=14, feature_dim=2, batch_size=32, schedule="cosine", metric="val_acc",
            fid_samples=10, grid_size=16, patience=0, lr_scaling="none")


def run(tag: str, extra: dict, **values) -> dict:
    config = BornClassifyTrainer.config_class(**values)
    trainer = BornClassifyTrainer(config, LocalContext("born-classify"))
    machine = trainer.machine
    bond, sites = machine.bond_dim, machine.n_features
    if "noise_scaled" in extra:
        with torch.no_grad():
            cores = torch.zeros_like(machine.cores)
            cores[:, :, 0, :] = torch.eye(bond)
            machine.cores.copy_(cores + extra["noise_scaled"] / (sites * bond) ** 0.5 * torch.randn_like(cores))
    if "lr_ref_D" in extra:
        lr = config.lr * (extra["lr_ref_D"] / bond) ** extra.get("lr_pow", 1.0)
        trainer.optimizer = make_adam(trainer.model.parameters(), lr=lr)
        trainer.scheduler = make_scheduler(trainer.optimizer, config.schedule, config.max_iterations)
    started = time.perf_counter()
    result = trainer.fit()
    return {"tag": tag, "val_acc": [round(row.get("val_acc", 0), 3) for row in trainer.history],
            "test_acc": result.final_metrics.get("test_acc"), "epoch_s": result.final_metrics.get("avg_epoch_seconds"),
            "s": round(time.perf_counter() - started, 1)}


def main() -> None:
    out = Path(os.environ["OUT"]) / "exp.jsonl" if "OUT" in os.environ else (
        ROOT / "benchmarks" / "results" / "born_mnist_lr_diagnosis.jsonl")
    for spec in sys.argv[1:]:
        pairs = dict(item.split("=") for item in spec.split(","))
        values = {k: (float(v) if "." in v or "e" in v else int(v)) for k, v in pairs.items()}
        extra = {k: values.pop(k) for k in list(values) if k in ("noise_scaled", "lr_ref_D", "lr_pow")}
        line = json.dumps(run(spec, extra, **BASE, **values))
        print(line, flush=True)
        with open(out, "a") as file:
            file.write(line + "\n")


if __name__ == "__main__":
    main()
