"""Batch-process a folder of brain scans with a BrainFM module, without the GUI.

Run it with Slicer's own Python (the BrainFM extension installed)::

    Slicer --no-splash --no-main-window --python-script BrainFMSlicer/batch_example.py \\
        --input-dir /data/scans --output-dir /data/brainfm --task segmentation --device cpu

For every image in ``--input-dir`` (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mgz``, ``.mha``...) it loads
the scan, runs ``BrainFM<Task>Logic().process(...)`` (blocking) and saves each output node as
``<output-dir>/<scan>_<output>.<ext>`` (volumes ``.nii.gz``, segmentations ``.seg.nrrd``, tables
``.csv``, transforms ``.h5``). Inputs are never modified; every file is written under a temporary
name in the output folder and renamed when complete. A failed scan is reported and skipped.
Exit code: 0 when every scan succeeded, 1 when some failed, 2 for bad arguments.
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

TASKS = {"segmentation": "BrainFMSegmentation", "synthesis": "BrainFMSynthesis",
         "biasfield": "BrainFMBiasField", "registration": "BrainFMRegistration"}
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mgz", ".mgh", ".mha", ".mhd")
EXTENSIONS = {"vtkMRMLSegmentationNode": ".seg.nrrd", "vtkMRMLTableNode": ".csv",
              "vtkMRMLTransformNode": ".h5", "vtkMRMLVolumeNode": ".nii.gz"}


def parseArguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_example.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-dir", required=True, type=Path, help="folder of input scans")
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for the results (created)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="which BrainFM module to run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quality", default="full", choices=("full", "fast"))
    parser.add_argument("--model", default="default", help="'default' (the best available model), a model name from 'brainfm models list', or a weights file")
    parser.add_argument("--contrast", default="T1w", help="synthesis only: T1w, T2w, FLAIR or CT")
    parser.add_argument("--atlas", default=None, help="registration only: atlas image file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files")
    return parser.parse_args(argv)


def scanStem(path: Path) -> Optional[str]:
    """File name without its image suffix (``a.nii.gz`` -> ``a``); None if not an image."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def outputExtension(node) -> str:
    for cls, ext in EXTENSIONS.items():
        if node.IsA(cls):
            return ext
    raise ValueError(f"do not know how to save a {node.GetClassName()}")


def saveAtomically(node, target: Path) -> None:
    """Write ``node`` to ``target`` through a temporary name in the same folder, then rename.

    A detached storage node (``CreateDefaultStorageNode``) does the writing, so the node itself
    and the scene are not changed.
    """
    storage = node.CreateDefaultStorageNode()
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    try:
        storage.SetFileName(str(tmp))
        if hasattr(storage, "SetUseCompression"):
            storage.SetUseCompression(1)
        if not storage.WriteData(node) or not tmp.is_file():
            raise RuntimeError(f"Slicer could not write {target}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def processScan(logic, path: Path, args: argparse.Namespace) -> Dict[str, Path]:
    """Load one scan, run the module logic and save its outputs; returns role -> file."""
    import slicer

    slicer.mrmlScene.Clear()
    volume = slicer.util.loadVolume(str(path))
    options = {"device": args.device, "quality": args.quality, "model": args.model}
    if args.task == "synthesis":
        options["contrast"] = args.contrast
    if args.task == "registration":
        options["atlasPath"] = args.atlas
    run = logic.process(volume, waitForCompletion=True, **options)
    saved = {}
    for role, node in run.outputs.items():
        target = args.output_dir / f"{scanStem(path)}_{role}{outputExtension(node)}"
        saveAtomically(node, target)
        saved[role] = target
    return saved


def main(argv: List[str]) -> int:
    try:
        args = parseArguments(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    try:
        import slicer

        slicer.app  # noqa: B018 - only inside the Slicer application
    except (ImportError, AttributeError):
        print("Run this script with Slicer: Slicer --no-main-window --python-script batch_example.py ...")
        return 2
    scans = []
    if args.input_dir.is_dir():
        scans = sorted(p for p in args.input_dir.iterdir() if p.is_file() and scanStem(p))
    if not scans:
        print(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {args.input_dir}")
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    module = __import__(TASKS[args.task])
    logic = getattr(module, TASKS[args.task] + "Logic")()
    logic.logCallback = lambda text: print("   ", text)
    logic.setupPythonRequirements(interactive=False)
    failed = 0
    for index, path in enumerate(scans, 1):
        if not args.overwrite and any(args.output_dir.glob(f"{scanStem(path)}_output*")):
            print(f"[{index}/{len(scans)}] {path.name}: results exist, skipped (use --overwrite)")
            continue
        start = time.monotonic()
        try:
            saved = processScan(logic, path, args)
            print(f"[{index}/{len(scans)}] {path.name}: {len(saved)} outputs in {time.monotonic() - start:.1f} s")
        except Exception as e:  # noqa: BLE001 - report and continue with the next scan
            failed += 1
            print(f"[{index}/{len(scans)}] {path.name}: FAILED: {type(e).__name__}: {e}")
    print(f"Done: {len(scans) - failed} of {len(scans)} scans processed, results in {args.output_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
