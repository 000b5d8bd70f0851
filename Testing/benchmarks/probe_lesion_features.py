"""What the bundled model's features hold of lesions: per-voxel classifiers fitted on them.

The data are those of ``bench_finetune.py --lesions``: training label maps 01-04 and the held-out maps
19 and 20 with PEPSI-style lesions painted into the white matter, rendered as a noisy FLAIR and
prepared as the model sees them (its 2 mm grid). The backbone's feature of every voxel is computed
once. On the four training images a per-voxel classifier (16 -> 32 -> 2, inputs standardised, Adam
1e-2, cross-entropy with the lesion class weighted ``--lesion-weight``) learns lesion against the rest;
reported is its lesion Dice on the held-out images, at 2 mm, for three inputs: the features, the
prepared image's intensity alone, and both.

    python Testing/benchmarks/probe_lesion_features.py [--steps 600] [--lesion-weight 5]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from bench_finetune import LESION_LABELS, OWN, flair, own, own_labels, with_lesions
from benchcommon import emit, parser


def dice(pred: Any, truth: Any) -> float:
    """Dice of class 1 between two flat label tensors."""
    inter = int(((pred == 1) & (truth == 1)).sum())
    return 2 * inter / max(1, int((pred == 1).sum()) + int((truth == 1).sum()))


def fit_and_score(xs: List[Any], ts: List[Any], *, steps: int, weight: float, seed: int = 0) -> Dict[str, float]:
    """Train a per-voxel classifier on the first four ``xs`` (voxels x channels), score all of them."""
    import torch

    train_x, train_t = torch.cat(xs[:4]), torch.cat(ts[:4])
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(train_x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    w = torch.tensor([1.0, float(weight)])
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        at = torch.randint(0, len(train_x), (65536,), generator=g)
        loss = torch.nn.functional.cross_entropy(net((train_x[at] - mu) / sd), train_t[at], weight=w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = [dice(net((x - mu) / sd).argmax(1), t) for x, t in zip(xs, ts)]
    return {"training_dice": round(float(np.mean(scores[:4])), 3), "heldout_dice": round(float(np.mean(scores[4:])), 3)}


def main(argv: List[str]) -> int:
    ap = parser(__doc__, out_name="lesion_features.json", repeats=1)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lesion-weight", type=float, default=5.0)
    args = ap.parse_args(argv)
    import torch

    from brainfm.evaluation import datasets
    from brainfm.io import write_volume
    from brainfm.models import load_model
    from brainfm.models.registry import resolve_model
    from brainfm.training.feature_cache import image_features
    from brainfm.training.finetune import _load_pair, fine_tuning_scheme

    torch.set_num_threads(args.threads)
    data, rng = Path(args.data), np.random.default_rng(0)
    maps = [(with_lesions(own_labels(data, n), s), n) for s, n in enumerate(OWN, start=1)]
    maps += [(with_lesions(datasets.load_labels(data, n), s), n)
             for s, n in enumerate(datasets.held_out_names(), start=100)]
    net, info = load_model(resolve_model("bundled"))
    net.eval()
    feats, images, targets = [], [], []
    with tempfile.TemporaryDirectory(prefix="brainfm-probe-") as tmp:
        table = Path(tmp) / "mine.txt"
        table.write_text("".join(f"{v} {n} 200 80 80 0\n" for v, (n, _fs) in LESION_LABELS.items()))
        for labels, name in maps:
            img, lab = Path(tmp) / f"{name}_image.nii.gz", Path(tmp) / f"{name}_labels.nii.gz"
            write_volume(flair(labels, rng), img)
            write_volume(labels.with_data(own(labels.data, LESION_LABELS)), lab)
            scheme = fine_tuning_scheme(str(table), [(img, lab)])
            x, t = _load_pair(img, lab, "seg", scheme, voxel_mm=float(info.voxel_mm), antialias=bool(info.input_antialias))
            f = image_features(net.backbone, x, device=torch.device("cpu")).float()
            feats.append(f.reshape(f.shape[0], -1).T)
            images.append(torch.from_numpy(x).reshape(-1, 1).float())
            targets.append(torch.from_numpy(t).reshape(-1))
    inputs = {"features": feats, "intensity": images,
              "features + intensity": [torch.cat([f, i], 1) for f, i in zip(feats, images)]}
    results = {name: fit_and_score(xs, targets, steps=args.steps, weight=args.lesion_weight)
               for name, xs in inputs.items()}
    emit({"steps": args.steps, "lesion_weight": args.lesion_weight, "voxel_mm": float(info.voxel_mm),
          "lesion_voxels": [int((t == 1).sum()) for t in targets], **results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
