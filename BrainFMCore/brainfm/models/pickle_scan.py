"""Name the Python objects a ``torch.save`` file would import, without unpickling anything.

``torch.load(weights_only=True)`` refuses a checkpoint that references functions or classes
outside its allow-list. To tell the user *which* objects (``os.system``, a custom class...), the
pickle inside the file is disassembled with :mod:`pickletools` (a static read: nothing is
imported or run) and every ``GLOBAL`` / ``STACK_GLOBAL`` reference is listed. This does not
depend on the wording of torch's error messages.

>>> import io, os, pickle
>>> class Evil:
...     def __reduce__(self):
...         return (os.system, ("true",))
>>> buf = io.BytesIO(); pickle.dump({"w": 1, "x": Evil()}, buf, protocol=4)
>>> [executable_name(g) for g in pickle_globals(buf.getvalue())]
['os.system']
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile
from pathlib import Path
from typing import Iterable, List, Optional, Set, Union

PathLike = Union[str, "os.PathLike[str]"]

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
               "STRING"}
_PUT_OPS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GET_OPS = {"BINGET", "LONG_BINGET", "GET"}
#: modules that hold the os functions under another name
_OS_ALIASES = {"posix": "os", "nt": "os"}
#: legacy (non-zip) ``torch.save`` files: magic number, protocol, system info, then the object
_LEGACY_PICKLES = 4


def pickle_globals(data: bytes) -> List[str]:
    """``module.name`` of every global the pickle ``data`` references (in order, no repeats).

    Raises ``ValueError`` when ``data`` is not a complete pickle (truncated or corrupt).
    """
    return _globals_in(io.BytesIO(data), 1)


def _globals_in(stream: io.BytesIO, n_pickles: int) -> List[str]:
    found: List[str] = []
    for _ in range(n_pickles):
        if stream.tell() >= len(stream.getbuffer()):
            break
        strings: List[Optional[str]] = []
        memo = {}
        last_string: Optional[str] = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name in _STRING_OPS:
                    last_string = arg if isinstance(arg, str) else str(arg)
                    strings.append(last_string)
                    continue
                if name in _PUT_OPS or name == "MEMOIZE":
                    memo[arg if name != "MEMOIZE" else len(memo)] = last_string
                elif name in _GET_OPS:
                    strings.append(memo.get(arg))
                    last_string = memo.get(arg)
                    continue
                elif name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2 and None not in strings[-2:]:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                last_string = None
        except (ValueError, EOFError, UnicodeDecodeError) as e:  # truncated or not a pickle
            raise ValueError(f"not a complete pickle: {e}") from None
    seen: Set[str] = set()
    return [g for g in found if not (g in seen or seen.add(g))]


def checkpoint_globals(path: PathLike) -> List[str]:
    """Globals referenced by a ``torch.save`` file (zip or legacy format). ``ValueError`` when the
    file's pickle cannot be read (truncated, corrupt, not a checkpoint)."""
    p = Path(path)
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                members = [m for m in z.namelist() if m.endswith("data.pkl")]
                if not members:
                    raise ValueError("no data.pkl in the archive")
                return pickle_globals(z.read(members[0]))
        except (zipfile.BadZipFile, OSError, KeyError) as e:
            raise ValueError(f"unreadable archive: {e}") from None
    return _globals_in(io.BytesIO(p.read_bytes()), _LEGACY_PICKLES)


def executable_name(name: str) -> str:
    """``posix.system`` -> ``os.system``: the name users know."""
    module, _, attr = name.rpartition(".")
    return f"{_OS_ALIASES.get(module, module)}.{attr}" if module else name


def refused_globals(path: PathLike, allowed: Iterable[str]) -> Optional[List[str]]:
    """The globals of ``path`` outside ``allowed`` (user-known names), or None when the file's
    pickle cannot be read at all."""
    try:
        names = checkpoint_globals(path)
    except ValueError:
        return None
    ok = set(allowed)
    return [executable_name(g) for g in names if g not in ok]
