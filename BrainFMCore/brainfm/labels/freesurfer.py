"""FreeSurferColorLUT subset: every label number used by the BrainFM label schemes.

Names and colours are those of the public ``FreeSurferColorLUT.txt`` (aseg 0-85, 99, the
SAMSEG-CHARM head labels 901-930). Two groups are *not* taken from that file:

- the sclimbic labels 819-870 (``Left-HypoThal-noMB`` ...): the names are FreeSurfer's, the
  colours were chosen here to be distinct (not verified against a FreeSurfer release);
- the SynthSeg extra-cerebral training labels 136, 137, 163, 164, 502-530: in the SynthSeg
  training label maps these numbers do **not** mean what FreeSurferColorLUT says (e.g. 502 is
  ``right_CA1`` there), so they get generic names ``extra-cerebral-<n>`` and grey-ish colours.

RGBA alpha here is an *opacity* (0 for ``Unknown``, 255 otherwise); FreeSurfer's own files
write 0 in that column, and :func:`brainfm.labels.write_freesurfer_lut` does too.

>>> lut = freesurfer_lut()
>>> lut[17]
('Left-Hippocampus', (220, 216, 20, 255))
>>> lut[0][1][3], len(lut) > 100
(0, True)
"""
from __future__ import annotations

from typing import Dict, Tuple

RGBA = Tuple[int, int, int, int]

# number, name, R, G, B  (FreeSurferColorLUT.txt)
_ASEG = """
0 Unknown 0 0 0
1 Left-Cerebral-Exterior 70 130 180
2 Left-Cerebral-White-Matter 245 245 245
3 Left-Cerebral-Cortex 205 62 78
4 Left-Lateral-Ventricle 120 18 134
5 Left-Inf-Lat-Vent 196 58 250
6 Left-Cerebellum-Exterior 0 148 0
7 Left-Cerebellum-White-Matter 220 248 164
8 Left-Cerebellum-Cortex 230 148 34
9 Left-Thalamus-unused 0 118 14
10 Left-Thalamus 0 118 14
11 Left-Caudate 122 186 220
12 Left-Putamen 236 13 176
13 Left-Pallidum 12 48 255
14 3rd-Ventricle 204 182 142
15 4th-Ventricle 42 204 164
16 Brain-Stem 119 159 176
17 Left-Hippocampus 220 216 20
18 Left-Amygdala 103 255 255
19 Left-Insula 80 196 98
20 Left-Operculum 60 58 210
21 Line-1 60 58 210
22 Line-2 60 58 210
23 Line-3 60 58 210
24 CSF 60 60 60
25 Left-Lesion 255 165 0
26 Left-Accumbens-area 255 165 0
27 Left-Substancia-Nigra 0 255 127
28 Left-VentralDC 165 42 42
29 Left-undetermined 135 206 235
30 Left-vessel 160 32 240
31 Left-choroid-plexus 0 200 200
32 Left-F3orb 100 50 100
33 Left-aOg 122 135 50
34 Left-WMCrowns 123 135 50
35 Left-mOg 51 50 135
36 Left-pOg 74 155 60
37 Left-Stellate 120 62 43
38 Left-Porg 74 155 60
39 Left-Aorg 122 135 50
40 Right-Cerebral-Exterior 70 130 180
41 Right-Cerebral-White-Matter 245 245 245
42 Right-Cerebral-Cortex 205 62 78
43 Right-Lateral-Ventricle 120 18 134
44 Right-Inf-Lat-Vent 196 58 250
45 Right-Cerebellum-Exterior 0 148 0
46 Right-Cerebellum-White-Matter 220 248 164
47 Right-Cerebellum-Cortex 230 148 34
48 Right-Thalamus-unused 0 118 14
49 Right-Thalamus 0 118 14
50 Right-Caudate 122 186 220
51 Right-Putamen 236 13 176
52 Right-Pallidum 13 48 255
53 Right-Hippocampus 220 216 20
54 Right-Amygdala 103 255 255
55 Right-Insula 80 196 98
56 Right-Operculum 60 58 210
57 Right-Lesion 255 165 0
58 Right-Accumbens-area 255 165 0
59 Right-Substancia-Nigra 0 255 127
60 Right-VentralDC 165 42 42
61 Right-undetermined 135 206 235
62 Right-vessel 160 32 240
63 Right-choroid-plexus 0 200 221
64 Right-F3orb 100 50 100
65 Right-lOg 135 50 74
66 Right-WMCrowns 122 135 50
67 Right-mOg 51 50 135
68 Right-pOg 74 155 60
69 Right-Stellate 120 62 43
70 Right-Porg 74 155 60
71 Right-Aorg 122 135 50
72 5th-Ventricle 120 190 150
73 Left-Interior 122 135 50
74 Right-Interior 122 135 50
75 Left-Locus-Coeruleus 91 97 255
76 Right-Locus-Coeruleus 0 7 218
77 WM-hypointensities 200 70 255
78 Left-WM-hypointensities 255 148 10
79 Right-WM-hypointensities 255 148 10
80 non-WM-hypointensities 164 108 226
81 Left-non-WM-hypointensities 164 108 226
82 Right-non-WM-hypointensities 164 108 226
83 Left-F1 255 218 185
84 Right-F1 255 218 185
85 Optic-Chiasm 234 169 30
99 Lesion 255 165 0
901 Air-Internal 0 170 0
902 Artery 204 0 0
906 EyeBalls 230 189 66
907 Other-Tissues 85 85 0
908 Rectus-Muscles 190 50 73
909 Mucosa 255 160 188
911 Skin 85 85 85
912 Charm-Spinal-Cord 0 187 169
914 Vein 0 84 255
915 Bone-Cortical 0 85 0
916 Bone-Cancellous 190 156 120
917 Charm-Background 0 168 255
920 Cortical-CSF 120 133 217
930 Optic-Nerve 0 191 122
"""

# sclimbic names (FreeSurfer); colours chosen here (left/right share a colour, like aseg)
_SCLIMBIC = """
819 Left-HypoThal-noMB 0 170 127
820 Right-HypoThal-noMB 0 170 127
821 Left-Fornix 255 85 0
822 Right-Fornix 255 85 0
843 Left-MammillaryBody 170 0 255
844 Right-MammillaryBody 170 0 255
853 Mid-AntCom 255 255 127
865 Left-Basal-Forebrain 85 170 255
866 Right-Basal-Forebrain 85 170 255
869 Left-SeptalNuc 255 0 127
870 Right-SeptalNuc 255 0 127
"""

#: SynthSeg training-map values outside the brain (meaning not documented): generic names.
SYNTHSEG_EXTRA_CEREBRAL = (136, 137, 163, 164) + tuple(range(502, 531))


def _parse(block: str) -> Dict[int, Tuple[str, RGBA]]:
    out: Dict[int, Tuple[str, RGBA]] = {}
    for line in block.strip().splitlines():
        num, name, r, g, b = line.split()
        n = int(num)
        out[n] = (name, (int(r), int(g), int(b), 0 if n == 0 else 255))
    return out


def _extra_cerebral() -> Dict[int, Tuple[str, RGBA]]:
    out: Dict[int, Tuple[str, RGBA]] = {}
    for i, n in enumerate(SYNTHSEG_EXTRA_CEREBRAL):
        shade = 110 + (i * 37) % 120  # distinct, muted greys/browns
        out[n] = (f"extra-cerebral-{n}", (shade, max(60, shade - 30), max(40, shade - 60), 255))
    return out


_LUT: Dict[int, Tuple[str, RGBA]] = {**_parse(_ASEG), **_parse(_SCLIMBIC), **_extra_cerebral()}


def freesurfer_lut() -> Dict[int, Tuple[str, RGBA]]:
    """FreeSurfer label number -> ``(name, (r, g, b, a))`` for every number the project uses.

    Returns a new dict each call (callers may modify it).
    """
    return dict(_LUT)


def fs_name(value: int) -> str:
    """Name of FreeSurfer label ``value`` (``label-<n>`` when the number is not in the table).

    >>> fs_name(53), fs_name(12345)
    ('Right-Hippocampus', 'label-12345')
    """
    entry = _LUT.get(int(value))
    return entry[0] if entry else f"label-{int(value)}"


def fs_color(value: int) -> RGBA:
    """RGBA of FreeSurfer label ``value``; a deterministic colour for unknown numbers.

    >>> fs_color(2)
    (245, 245, 245, 255)
    """
    entry = _LUT.get(int(value))
    if entry:
        return entry[1]
    v = int(value)
    return ((v * 67) % 200 + 55, (v * 131) % 200 + 55, (v * 197) % 200 + 55, 255)
