"""The model list of the web page, taken from the extension library's model registry.

:func:`model_options` is the only place that asks for the list: it calls
``BrainFMSceneLib.registry.list_models()`` (the same choices as the Slicer modules: the best available
model, the models of the local model store with their quality mark, the bundled model) and appends the
weights files the server was started with (``brainfm-web --model FILE``).

>>> import tempfile, pathlib
>>> weights = pathlib.Path(tempfile.mkdtemp()) / "tiny.safetensors"; _ = weights.write_bytes(b"0")
>>> [o["title"] for o in model_options([weights]) if o["value"] == str(weights.resolve())]
['tiny.safetensors (file)']
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from BrainFMSceneLib.registry import list_models

PathLike = Union[str, "os.PathLike[str]"]
#: weights files ``brainfm run --model`` reads (native models come as ``.safetensors`` + ``.json``)
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".json")


def model_options(extra_paths: Iterable[PathLike] = ()) -> List[Dict[str, Any]]:
    """``[{value, title, available, message, description}]`` for the model selector.

    ``value`` is what goes to ``brainfm run --model``; unavailable entries keep the registry's
    message (e.g. where to download the official weights) so the page can say why.
    """
    options: List[Dict[str, Any]] = []
    for choice in list_models():
        options.append({"value": choice.spec, "title": choice.title, "available": bool(choice.available),
                        "message": choice.message, "description": choice.description})
    for raw in extra_paths:
        path = Path(raw).expanduser().resolve()
        options.append({"value": str(path), "title": f"{path.name} (file)", "available": path.is_file(),
                        "message": "" if path.is_file() else f"File not found: {path}", "description": ""})
    return options
