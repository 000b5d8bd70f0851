"""Segmentation label schemes: which label each output channel of a segmentation head means.

A :class:`LabelScheme` maps channel ``c`` to a *native* value (the value the training label maps
use), to a FreeSurfer label number (what BrainFM writes and Slicer shows), a name, an RGB colour,
and its left/right partner channel (the permutation applied to one-hot maps when an image is
flipped left-right).

Schemes:

- ``brainfm56``: the 56 classes of the official BrainFM model (20 neutral, 18 left, 18 right;
  ``brainseg_with_extracerebral`` values 0-56) with the FreeSurfer numbers matched by name;
- ``brainfm_left18``: the left-hemisphere-only variant (values of the 44-label ``brainseg``);
- ``fs33``: the SynthSeg 2.0 FreeSurfer list (the labels in SynthSeg's training label maps),
  the segmentation classes of our compact native model; values are FreeSurfer numbers;
- ``brainid33``: Brain-ID's ``label_list_segmentation_with_csf`` order (for Brain-ID heads).

>>> s = get_scheme("brainfm56")
>>> s.n_channels, s.values[20], s.fs_values[20], s.names[20]
(56, 1, 2, 'Left-Cerebral-White-Matter')
>>> s.names[s.lr_partner[20]]
'Right-Cerebral-White-Matter'
>>> scheme_for_channels(33).name
'fs33'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from brainfm.errors import InputError
from brainfm.labels.freesurfer import fs_color, fs_name


@dataclass(frozen=True)
class LabelScheme:
    """Channel -> label mapping of one segmentation head (all tuples have one entry per channel).

    - ``values``: native label value of each channel;
    - ``fs_values``: FreeSurfer label number of each channel (0 = background);
    - ``names``/``colors``: FreeSurfer name and RGB (0-255) of each channel;
    - ``lr_partner``: channel of the mirror structure (itself for midline/neutral classes).
    """

    name: str
    values: Tuple[int, ...]
    fs_values: Tuple[int, ...]
    names: Tuple[str, ...]
    colors: Tuple[Tuple[int, int, int], ...]
    lr_partner: Tuple[int, ...]
    description: str = ""
    #: the classes are FreeSurfer's whole-brain anatomy, which the fitted methods (labels refined to the
    #: scan, bias field and registration fitted to them, synthesis per tissue) and the volume checks read;
    #: False for a scheme of a user's own labels (:func:`custom_scheme`)
    anatomical: bool = True

    def __post_init__(self) -> None:
        n = len(self.values)
        for field_name in ("fs_values", "names", "colors", "lr_partner"):
            if len(getattr(self, field_name)) != n:
                raise ValueError(f"scheme {self.name}: {field_name} has {len(getattr(self, field_name))} "
                                 f"entries, values has {n}")
        if len(set(self.values)) != n or len(set(self.fs_values)) != n:
            raise ValueError(f"scheme {self.name}: duplicate label values")
        perm = self.lr_partner
        if sorted(perm) != list(range(n)) or any(perm[perm[c]] != c for c in range(n)):
            raise ValueError(f"scheme {self.name}: lr_partner is not an involutive permutation")

    @property
    def n_channels(self) -> int:
        """Number of channels (classes, background included)."""
        return len(self.values)

    def fs_of_channel(self, channels: np.ndarray) -> np.ndarray:
        """FreeSurfer numbers (int32) of an array of channel indices (e.g. an arg-max map).

        >>> get_scheme("brainfm56").fs_of_channel(np.array([0, 1, 20, 38])).tolist()
        [0, 14, 2, 41]
        """
        ch = np.asarray(channels)
        if ch.size and (ch.min() < 0 or ch.max() >= self.n_channels):
            raise InputError(f"channel index out of range 0..{self.n_channels - 1} for scheme {self.name}")
        return np.asarray(self.fs_values, dtype=np.int32)[ch.astype(np.int64)]

    def channel_of_fs(self, labels: np.ndarray) -> np.ndarray:
        """Channel index (int64) of each FreeSurfer number; numbers not in the scheme -> 0.

        >>> get_scheme("fs33").channel_of_fs(np.array([0, 2, 41, 999])).tolist()
        [0, 1, 19, 0]
        """
        return _lookup(np.asarray(labels), self.fs_values)

    def channel_of_value(self, labels: np.ndarray) -> np.ndarray:
        """Channel index (int64) of each native value; values not in the scheme -> 0."""
        return _lookup(np.asarray(labels), self.values)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable form (a model's ``label_scheme`` when it is not a built-in scheme);
        :func:`scheme_from_dict` reads it back.

        >>> s = custom_scheme([0, 1, 2], names={1: "Lesion", 2: "Edema"})
        >>> scheme_from_dict(s.to_dict()) == s
        True
        """
        return {"name": self.name, "values": list(self.values), "fs_values": list(self.fs_values),
                "names": list(self.names), "colors": [list(c) for c in self.colors],
                "lr_partner": list(self.lr_partner), "description": self.description,
                "anatomical": self.anatomical}

    def name_of_fs(self, value: int) -> str:
        """Name of FreeSurfer number ``value`` in this scheme (FreeSurfer LUT name otherwise)."""
        try:
            return self.names[self.fs_values.index(int(value))]
        except ValueError:
            return fs_name(value)


def _lookup(labels: np.ndarray, table: Sequence[int]) -> np.ndarray:
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise InputError("label map contains non-integer values")
    lab = labels.astype(np.int64)
    keys = np.asarray(table, dtype=np.int64)
    order = np.argsort(keys)
    sk = keys[order]
    pos = np.clip(np.searchsorted(sk, lab), 0, len(sk) - 1)
    found = sk[pos] == lab
    return np.where(found, order[pos], 0).astype(np.int64)


def _partner_by_name(names: Sequence[str]) -> Tuple[int, ...]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        if n.startswith("Left-"):
            out.append(index.get("Right-" + n[5:], i))
        elif n.startswith("Right-"):
            out.append(index.get("Left-" + n[6:], i))
        else:
            out.append(i)
    return tuple(out)


def _make(name: str, values: Sequence[int], fs_values: Sequence[int], description: str,
          lr_partner: Sequence[int] = ()) -> LabelScheme:
    names = tuple(fs_name(v) for v in fs_values)
    colors = tuple(fs_color(v)[:3] for v in fs_values)
    partner = tuple(lr_partner) if lr_partner else _partner_by_name(names)
    return LabelScheme(name, tuple(int(v) for v in values), tuple(int(v) for v in fs_values),
                       names, colors, partner, description)


# -- brainfm56 (the official BrainFM checkpoints' segmentation channels) -------------------------
_B56_VALUES = (0, 11, 12, 13, 16, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46,
               1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 47, 49, 51, 53, 55,
               18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 48, 50, 52, 54, 56)
_B56_FS = (0, 14, 15, 16, 24, 77, 85, 99, 901, 902, 906, 907, 908, 909, 911, 912, 914, 915, 916, 930,
           2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 26, 819, 821, 843, 865, 869,
           41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 820, 822, 844, 866, 870)
_B56_PARTNER = tuple(list(range(20)) + list(range(38, 56)) + list(range(20, 38)))

# -- brainfm_left18: values of the 44-label brainseg.lut ----------------------------------------
_L18_VALUES = (0, 1, 2, 3, 4, 7, 8, 9, 10, 14, 15, 17, 31, 34, 36, 38, 40, 42)
_L18_FS = (0, 2, 3, 4, 5, 10, 11, 12, 13, 17, 18, 26, 77, 819, 821, 843, 865, 869)

# -- fs33: SynthSeg 2.0 FreeSurfer list -----------------------------------------------------------
_FS33 = (0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
         41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60)

# -- brainid33: Brain-ID label_list_segmentation_with_csf ----------------------------------------
_BRAINID33 = (0, 14, 15, 16, 24, 77, 85, 2, 3, 4, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28,
              41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60)

SCHEMES: Dict[str, LabelScheme] = {
    s.name: s
    for s in (
        _make("brainfm56", _B56_VALUES, _B56_FS,
              "official BrainFM 56 classes (brainseg_with_extracerebral), FreeSurfer numbers by name",
              _B56_PARTNER),
        _make("brainfm_left18", _L18_VALUES, _L18_FS,
              "official BrainFM left-hemisphere-only variant (brainseg, 18 classes)",
              tuple(range(len(_L18_VALUES)))),
        _make("fs33", _FS33, _FS33, "SynthSeg 2.0 FreeSurfer labels (compact native model)"),
        _make("brainid33", _BRAINID33, _BRAINID33, "Brain-ID label_list_segmentation_with_csf"),
    )
}

#: default scheme for a segmentation head with that many channels
SCHEME_BY_CHANNELS: Dict[int, str] = {56: "brainfm56", 18: "brainfm_left18", 33: "fs33"}


#: colours of a user's labels that FreeSurfer does not name (cycled)
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128))


def custom_scheme(values: Iterable[int], *, names: Optional[Mapping[int, str]] = None,
                  colors: Optional[Mapping[int, Sequence[int]]] = None, name: str = "custom") -> LabelScheme:
    """A scheme of a user's own labels: one class per label value (background 0 first, added when
    missing), written as those values. Names and colours come from ``names`` / ``colors`` (a label
    table); without them, FreeSurfer's name and colour where FreeSurfer names the value, else
    ``Label N`` and a palette colour. Left/right partners pair ``Left-X`` with ``Right-X``.
    Not :attr:`~LabelScheme.anatomical`: the product's fits to FreeSurfer anatomy are not used with it.

    >>> s = custom_scheme([17, 0, 53, 5001])
    >>> s.values, s.names[1:], s.lr_partner, s.anatomical
    ((0, 17, 53, 5001), ('Left-Hippocampus', 'Right-Hippocampus', 'Label 5001'), (0, 2, 1, 3), False)
    >>> custom_scheme([0, 7], names={7: "Lesion"}).names
    ('Unknown', 'Lesion')
    >>> custom_scheme([0, 70000]).names[1]
    'Label 70000'
    """
    from brainfm.labels.freesurfer import freesurfer_lut

    lut = freesurfer_lut()
    vals = sorted({int(v) for v in values} | {0})
    if len(vals) < 2:
        raise InputError("a label scheme needs at least one label besides the background (0)")
    given_names, given_colors = dict(names or {}), dict(colors or {})
    out_names, out_colors = [], []
    for i, v in enumerate(vals):
        if v in given_names:
            out_names.append(str(given_names[v]))
        elif v in lut and not given_names:
            out_names.append(lut[v][0])
        else:
            out_names.append("Unknown" if v == 0 else f"Label {v}")
        if v in given_colors:
            out_colors.append(tuple(int(c) for c in list(given_colors[v])[:3]))
        elif v in lut and not given_colors:
            out_colors.append(tuple(int(c) for c in lut[v][1][:3]))
        else:
            out_colors.append((0, 0, 0) if v == 0 else PALETTE[(i - 1) % len(PALETTE)])
    return LabelScheme(name, tuple(vals), tuple(vals), tuple(out_names), tuple(out_colors),  # type: ignore[arg-type]
                       _partner_by_name(out_names), "a user's own labels", anatomical=False)


def scheme_text(declared: Union[None, str, Mapping[str, Any]]) -> Optional[str]:
    """How a model's ``label_scheme`` reads in a list of models: a built-in scheme's name, or the
    labels of a scheme of a user's own.

    >>> scheme_text("fs33"), scheme_text(custom_scheme([1, 7], names={1: "Lesion", 7: "Edema"}).to_dict())
    ('fs33', 'own labels: Lesion, Edema')
    """
    if not isinstance(declared, Mapping):
        return declared or None
    names = [str(n) for v, n in zip(declared.get("values") or (), declared.get("names") or ()) if int(v) != 0]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"own labels: {shown}"


def scheme_from_dict(d: Mapping[str, Any]) -> LabelScheme:
    """The scheme :meth:`LabelScheme.to_dict` wrote (:class:`~brainfm.errors.InputError` when malformed)."""
    try:
        return LabelScheme(str(d["name"]), tuple(int(v) for v in d["values"]), tuple(int(v) for v in d["fs_values"]),
                           tuple(str(n) for n in d["names"]),
                           tuple(tuple(int(c) for c in col[:3]) for col in d["colors"]),  # type: ignore[misc]
                           tuple(int(p) for p in d["lr_partner"]), str(d.get("description", "")),
                           bool(d.get("anatomical", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed label scheme description ({exc})") from None


def get_scheme(name: str) -> LabelScheme:
    """The scheme called ``name`` (``brainfm56``, ``brainfm_left18``, ``fs33``, ``brainid33``).

    >>> get_scheme("nope")
    Traceback (most recent call last):
    ...
    brainfm.errors.InputError: unknown label scheme 'nope'; known: brainfm56, brainfm_left18, fs33, brainid33
    """
    try:
        return SCHEMES[name]
    except KeyError:
        raise InputError(f"unknown label scheme {name!r}; known: {', '.join(SCHEMES)}") from None


def scheme_for_channels(n: int) -> LabelScheme:
    """Default scheme for a segmentation head with ``n`` output channels (56, 18 or 33)."""
    try:
        return SCHEMES[SCHEME_BY_CHANNELS[int(n)]]
    except KeyError:
        raise InputError(f"no label scheme has {n} channels (known: 56, 18, 33)") from None


def decide_scheme(declared: Union[None, str, LabelScheme, Mapping[str, Any]] = None, *,
                  n_channels: Optional[int] = None) -> LabelScheme:
    """The label scheme of a segmentation head: the engine's one rule (used by the predictor, the
    segmentation task, model loading and training evaluation).

    A declared scheme wins (a :class:`LabelScheme` as it is, the scheme registered under that
    name, e.g. a model's ``label_scheme``, or a scheme's :meth:`~LabelScheme.to_dict`); without
    one, the default scheme for a head with ``n_channels`` outputs (:func:`scheme_for_channels`). Raises
    :class:`~brainfm.errors.InputError` for an unknown name, or when nothing is declared and no
    scheme has ``n_channels`` channels (or ``n_channels`` is not given).

    >>> decide_scheme("brainid33", n_channels=33).name, decide_scheme(n_channels=56).name
    ('brainid33', 'brainfm56')
    >>> decide_scheme(None, n_channels=7)
    Traceback (most recent call last):
    ...
    brainfm.errors.InputError: no label scheme has 7 channels (known: 56, 18, 33)
    """
    if isinstance(declared, str) and declared:
        return get_scheme(declared)
    if isinstance(declared, Mapping):
        return scheme_from_dict(declared)
    if declared is not None and not isinstance(declared, str):
        return declared
    if n_channels is None:
        raise InputError("no label scheme declared and no segmentation head channel count to choose one by")
    return scheme_for_channels(n_channels)


def all_fs_values(schemes: Iterable[LabelScheme] = ()) -> List[int]:
    """Sorted union of the FreeSurfer numbers of ``schemes`` (all schemes when empty)."""
    chosen = list(schemes) or list(SCHEMES.values())
    return sorted({v for s in chosen for v in s.fs_values})
