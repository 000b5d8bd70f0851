"""The generator: one subject -> an intra-subject batch of N synthetic samples with targets.

Flow per call: per-subject random settings (deformation, flip, resolution, pathology) ->
deform the label map once (nearest) -> optional flip with left/right label swap -> lesions ->
N contrasts (GMM / physics / CT, or a real image) -> gamma, bias, resolution, noise (first half of
the batch with the mild set, second half severe) -> normalisation. Random scalars come from a
CPU ``torch.Generator`` (seeded per call); voxel noise from a generator on the target device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from brainfm.errors import InputError
from brainfm.generator import ct as ct_mod
from brainfm.generator import physics
from brainfm.generator.config import GeneratorConfig
from brainfm.generator.contrast_gmm import gmm_contrast, lesion_contrast, paint
from brainfm.generator.corrupt import degrade, gamma, sample_resolution
from brainfm.generator.deform import random_affine, random_svf, sampling_coords, svf_to_displacement
from brainfm.generator.interp import grid_shape, sample_voxels, to_device, upsample_noise
from brainfm.generator.labels import (ALL_LABELS, LESION_LABEL, brain_mask_compact,
                                      compact_flip_perm, compact_mask, to_compact, wm_mask_compact)
from brainfm.generator.pathology import lesion_mask
from brainfm.generator import targets as tg

_LESION = ALL_LABELS.index(LESION_LABEL)
REAL_MODALITIES = ("T1", "T2", "FLAIR", "CT")


@dataclass
class SubjectData:
    """One training subject on a 1 mm RAS grid (all tensors on one device).

    ``labels`` (X, Y, Z) FreeSurfer numbers; ``images`` optional real images (X, Y, Z) keyed by
    ``T1``/``T2``/``FLAIR``/``CT`` (CT in HU); ``atlas_coords`` optional (3, X, Y, Z) atlas RAS mm
    of every voxel; ``distance`` optional (4, X, Y, Z) signed mm (lp, lw, rp, rw).
    """

    labels: torch.Tensor
    images: Dict[str, torch.Tensor] = field(default_factory=dict)
    atlas_coords: Optional[torch.Tensor] = None
    distance: Optional[torch.Tensor] = None
    affine: Optional[Any] = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.labels.dim() != 3:
            raise InputError(f"SubjectData.labels must be 3D (X, Y, Z), got shape {tuple(self.labels.shape)}")
        shp = tuple(self.labels.shape)
        for key, im in self.images.items():
            if key not in REAL_MODALITIES:
                raise InputError(f"unknown image key {key!r}; use one of {REAL_MODALITIES}")
            if tuple(im.shape) != shp:
                raise InputError(f"image {key} has shape {tuple(im.shape)}, labels {shp}: not aligned")
        for key, t, c in (("atlas_coords", self.atlas_coords, 3), ("distance", self.distance, 4)):
            if t is not None and tuple(t.shape) != (c,) + shp:
                raise InputError(f"{key} must have shape {(c,) + shp}, got {tuple(t.shape)}")


@dataclass
class Batch:
    """``inputs`` (N, 1, S...) in [0, 1]; ``targets``: subject-level tensors with a leading
    batch axis of 1 (broadcast over N): ``T1``, ``T2``, ``FLAIR``, ``CT`` (1, 1, S...),
    ``segmentation`` (1, S...) int64 fs33 classes or (1, 33, S...) one-hot, ``distance``
    (1, 4, S...), ``registration`` (1, 3, S...), ``brain_mask``/``head_mask``/``pathology``
    (1, 1, S...) bool; per-sample ``bias_field_log`` and ``high_res_residual`` (N, 1, S...).
    ``params`` records the random settings (Python values) of the subject and each sample."""

    inputs: torch.Tensor
    targets: Dict[str, torch.Tensor]
    params: Dict[str, Any]


def _subvoxel_labels(src: torch.Tensor, coords: torch.Tensor, affine: torch.Tensor, voxel_mm: float,
                     per_axis: int) -> Optional[torch.Tensor]:
    """Compact labels (M, 1, S...) at ``per_axis``**3 points spread evenly inside each output voxel
    (the voxel's sub-voxel centres), or None for ``per_axis`` 1. ``src`` is the compact label map as
    float (1, 1, X, Y, Z); ``coords`` are the source coordinates of the voxel centres; the
    displacement is taken as constant inside a voxel."""
    if per_axis <= 1:
        return None
    steps = [(k + 0.5) / per_axis - 0.5 for k in range(per_axis)]
    a = to_device(affine.to(torch.float32), coords.device)
    out = []
    for dx in steps:
        for dy in steps:
            for dz in steps:
                d = a @ (float(voxel_mm) * torch.tensor([dx, dy, dz], device=coords.device))
                out.append(sample_voxels(src, coords + d.view(1, 3, 1, 1, 1), mode="nearest"))
    return torch.cat(out, 0).round().long()


def brain_surface_mask(lab: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean mask (same shape as the compact label map ``lab`` (1, 1, S...)) of the brain without
    its CSF, closed with a cube of ``radius`` voxels: what a brain extraction that hugs the cortex
    keeps (sulci narrower than the closing stay inside)."""
    csf = to_device(compact_mask((24,)), lab.device)[lab]
    brain = (to_device(brain_mask_compact(), lab.device)[lab] & ~csf).float()
    if radius <= 0:
        return brain > 0
    r = int(radius)
    # the anatomy continues past the window's faces the way it meets them (replicate, 2r for the two passes)
    padded = F.pad(brain, (2 * r,) * 6, mode="replicate")
    grown = F.max_pool3d(padded, 2 * r + 1, stride=1, padding=r)
    closed = -F.max_pool3d(-grown, 2 * r + 1, stride=1, padding=r)
    return closed[..., 2 * r:-2 * r, 2 * r:-2 * r, 2 * r:-2 * r] > 0


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    """Centroid (3,) in voxels of a boolean (X, Y, Z) mask (volume centre if empty), no sync."""
    m = mask.float()
    tot = m.sum()
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        marg = m.sum(other)
        pos = torch.arange(m.shape[ax], device=m.device, dtype=torch.float32)
        c = (marg * pos).sum() / tot.clamp_min(1.0)
        out.append(torch.where(tot > 0, c, (m.shape[ax] - 1) / 2.0))
    return torch.stack(out)


class Generator:
    """Synthetic training data generator (see the module docstring).

    >>> import torch
    >>> from brainfm.generator import Generator, SubjectData
    >>> lab = torch.zeros(24, 24, 24, dtype=torch.long); lab[4:20, 4:20, 4:20] = 2
    >>> b = Generator().sample(SubjectData(lab), n_samples=2, size=(16, 16, 16), seed=0)
    >>> tuple(b.inputs.shape), float(b.inputs.max()) <= 1.0
    ((2, 1, 16, 16, 16), True)
    """

    def __init__(self, config: Optional[GeneratorConfig] = None) -> None:
        self.config = config or GeneratorConfig()

    # ------------------------------------------------------------------ helpers
    def _u(self, g: torch.Generator, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    def _contrasts(self, g: torch.Generator, n: int, subject_params: torch.Tensor,
                   strip: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[dict]]:
        cfg = self.config
        p = torch.tensor([cfg.p_gmm, cfg.p_physics, cfg.p_ct])
        modes = torch.multinomial(p / p.sum(), n, replacement=True, generator=g)
        mu, sd = gmm_contrast(g, batch=n, mu=cfg.gmm_mu, sigma=cfg.gmm_sigma,
                              p_black=cfg.p_black_background)
        info: List[dict] = []
        hu = ct_mod.random_hu(g, batch=n)
        lo, hi = ct_mod.window(hu, g, batch=n)
        for i in range(n):
            m = int(modes[i])
            if m == 0:
                info.append({"contrast": "gmm"})
            elif m == 1:
                proto = physics.sample_protocol(g)
                sig = physics.render(subject_params, proto)
                sig = 255.0 * sig / sig.max().clamp_min(1e-12)
                mu[i] = sig
                sd[i] = sig * self._u(g, 0.01, 0.05) + self._u(g, 0.5, 2.0)
                info.append({"contrast": "physics", **proto})
            else:
                w = hi[i] - lo[i]
                mu[i] = 255.0 * (hu[i].clamp(lo[i], hi[i]) - lo[i]) / w
                sd[i] = torch.full_like(mu[i], 255.0 * self._u(g, 2.0, 8.0) / float(w))
                info.append({"contrast": "ct", "window": (float(lo[i]), float(hi[i]))})
        # physics/CT lesions follow their tissue parameters; GMM lesions follow the PEPSI rule
        mu_l, sd_l = lesion_contrast(mu, sd, g)
        gmm = modes == 0
        mu[gmm], sd[gmm] = mu_l[gmm], sd_l[gmm]
        nonbrain = ~brain_mask_compact()
        sel = strip.view(-1, 1) & nonbrain.view(1, -1)
        mu = torch.where(sel, mu[:, :1].expand_as(mu), mu)
        sd = torch.where(sel, sd[:, :1].expand_as(sd), sd)
        for i in range(n):
            info[i]["skull_stripped"] = bool(strip[i])
        return mu, sd, info

    # ------------------------------------------------------------------ main entry
    def sample(self, subject: SubjectData, *, n_samples: int = 4,
               size: Union[int, Sequence[int]] = (160, 160, 160), generator: Optional[torch.Generator] = None,
               seed: Optional[int] = None, device: Union[str, torch.device, None] = None,
               one_hot: bool = False, voxel_mm: float = 1.0) -> Batch:
        """Draw ``n_samples`` samples of ``subject`` on an output grid of ``size`` voxels of
        ``voxel_mm`` mm (the subject is on a 1 mm grid; ``voxel_mm=2`` gives a 2 mm window covering
        8x the volume for the same number of voxels).

        ``generator`` (a CPU ``torch.Generator``) or ``seed`` makes the call reproducible;
        ``device`` defaults to the device of ``subject.labels``. Samples 0 .. n/2-1 use the mild
        corruption set, the rest the severe set.
        """
        cfg = self.config
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        size = (int(size),) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 3 or min(size) < 4:
            raise InputError(f"size must be 3 integers >= 4, got {size}")
        vox = float(voxel_mm)
        if not 0.25 <= vox <= 8.0:
            raise InputError(f"voxel_mm must be in [0.25, 8] mm, got {voxel_mm}")
        dev = torch.device(device) if device is not None else subject.labels.device
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed) if seed is not None
                                                      else int(torch.randint(0, 2**62, ())))
        g = generator
        gd = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
        n = n_samples

        # ---- per-subject settings
        A, dscale = random_affine(g, rotation_deg=cfg.rotation_deg, shear=cfg.shear,
                                  scaling=cfg.scaling)
        v = random_svf(size, g, scale=self._u(g, *cfg.svf_scale), std=self._u(g, *cfg.svf_std) / vox,
                       device=dev)
        disp = svf_to_displacement(v, steps=cfg.svf_steps, downsample=cfg.svf_downsample)
        flip = float(torch.rand((), generator=g)) < cfg.p_flip
        spacing, thickness, res_kind = sample_resolution(g, cfg=cfg)
        # the acquisition in output voxels: nothing finer than the output grid itself
        spacing_vox = tuple(max(1.0, s / vox) for s in spacing)
        thickness_vox = tuple(max(1.0, t / vox) if t > 1.0 else 1.0 for t in thickness)
        rician = float(torch.rand((), generator=g)) < cfg.p_rician
        pathology = float(torch.rand((), generator=g)) < cfg.p_pathology
        les_scale, les_thr = self._u(g, *cfg.lesion_scale), self._u(g, *cfg.lesion_threshold)
        subject_params = physics.jittered_params(g, jitter=cfg.physics_jitter)[0]

        # ---- deform labels (nearest) and continuous maps (trilinear)
        lab = to_compact(subject.labels.to(dev))
        centre = _centroid(to_device(brain_mask_compact(), dev)[lab])
        if cfg.shift_mm > 0:  # drawn only when asked, so that other settings keep their random stream
            shift = (torch.rand(3, generator=g) * 2.0 - 1.0) * float(cfg.shift_mm)
            centre = centre + shift.to(centre.device)
        coords = sampling_coords(size, A, disp, centre, voxel_mm=vox)
        src = lab[None, None].float()
        sub = _subvoxel_labels(src, coords, A, vox, cfg.pv_subsamples)
        lab = sample_voxels(src, coords, mode="nearest").round().long()
        real = {k: sample_voxels(im.to(dev, torch.float32)[None, None], coords)
                for k, im in subject.images.items()}
        dist = reg = None
        if subject.distance is not None:
            dist = sample_voxels(subject.distance.to(dev, torch.float32)[None], coords, padding="border")
        if subject.atlas_coords is not None:
            reg = sample_voxels(subject.atlas_coords.to(dev, torch.float32)[None], coords)
        if flip:
            perm = to_device(compact_flip_perm(), dev)
            lab = perm[lab.flip(2)]
            sub = perm[sub.flip(2)] if sub is not None else None
            real = {k: im.flip(2) for k, im in real.items()}
            dist = tg.flip_distance(dist) if dist is not None else None
            reg = tg.flip_registration(reg) if reg is not None else None

        # ---- pathology
        les = torch.zeros_like(lab, dtype=torch.bool)
        if pathology:
            les = lesion_mask(to_device(wm_mask_compact(), dev)[lab], gd, scale=les_scale, threshold=les_thr)
        gen_lab = torch.where(les, torch.full_like(lab, _LESION), lab)
        paint_lab = gen_lab if sub is None else torch.where(les, torch.full_like(sub, _LESION), sub)

        # ---- brain extraction at the cortex (drawn only when asked, so other settings keep their stream)
        surface = None
        if cfg.p_tight_strip > 0 and float(torch.rand((), generator=g)) < cfg.p_tight_strip:
            surface = brain_surface_mask(lab, max(0, int(round(self._u(g, *cfg.tight_strip_mm) / vox))))

        # ---- targets (shared by the samples)
        t: Dict[str, torch.Tensor] = tg.render_image_targets(gen_lab)
        for k, im in real.items():
            t[k] = im / 1000.0 if k == "CT" else tg.minmax(im)
        seg = tg.segmentation_fs33(lab[:, 0])
        if surface is not None:  # what the extraction removed is background
            seg = torch.where(surface[:, 0], seg, torch.zeros_like(seg))
        t["segmentation"] = tg.one_hot_fs33(seg) if one_hot else seg
        if dist is not None:
            t["distance"] = tg.distance_target(dist, scale=dscale, max_distance=cfg.max_distance)
        if reg is not None:
            t["registration"] = reg / 100.0
        t["brain_mask"] = to_device(brain_mask_compact(), dev)[lab]
        t["head_mask"] = lab > 0
        t["pathology"] = les

        # ---- contrasts
        strip = torch.rand(n, generator=g) < cfg.p_skull_strip
        if surface is not None:
            strip = torch.ones_like(strip)
        mu, sd, info = self._contrasts(g, n, subject_params, strip)
        pv = torch.tensor([self._u(g, *cfg.pv_sigma) for _ in range(n)])
        img = paint(paint_lab, mu, sd, pv_sigma=pv, generator=gd, max_pv=cfg.pv_sigma[1])
        mri_real = [k for k in real if k != "CT"]
        for i in range(n):
            if mri_real and float(torch.rand((), generator=g)) < cfg.p_real_input:
                k = mri_real[int(torch.randint(0, len(mri_real), (), generator=g))]
                img[i] = 255.0 * t[k][0]
                info[i]["contrast"] = f"real_{k}"
            elif mri_real and float(torch.rand((), generator=g)) < cfg.p_mix_real:
                w = torch.rand(1 + len(mri_real), generator=g)
                w = (w / w.sum()).tolist()
                mix = w[0] * 255.0 * tg.minmax(img[i:i + 1])[0]  # same [0, 255] scale (fixes the reference)
                for wk, k in zip(w[1:], mri_real):
                    mix = mix + wk * 255.0 * t[k][0]
                img[i] = mix
                info[i]["mixed_real"] = dict(zip(["synthetic"] + mri_real, w))

        if surface is not None:  # outside the extracted brain: the background's mean
            img = torch.where(surface, img, mu[:, :1].to(img.device).view(-1, 1, 1, 1, 1))

        # ---- corruption: mild samples first, then severe (half each by default)
        if cfg.severe_fraction == 0.5:
            n_mild = n // 2
        else:  # n * severe_fraction severe samples on average
            n_severe = int(n * cfg.severe_fraction + float(torch.rand((), generator=g)))
            n_mild = n - min(n, n_severe)
        sets = [cfg.mild if i < n_mild else cfg.severe for i in range(n)]
        gam = torch.tensor([float(torch.exp(s.gamma_std * torch.randn((), generator=g))) for s in sets])
        img = gamma(img, gam)
        bf = []
        for i, s in enumerate(sets):
            shape = grid_shape(self._u(g, *s.bias_scale), size)
            std = torch.tensor([self._u(g, *s.bias_std)])
            bfi = upsample_noise(shape, size, batch=1, generator=gd, device=dev, std=std)
            bf.append(bfi)
            info[i].update(gamma=float(gam[i]), bias_std=float(std), severity="mild" if i < n_mild else "severe")
        bf_log = torch.cat(bf, 0)
        high = img * torch.exp(bf_log)
        noise_frac = torch.tensor([self._u(g, *s.noise_std) for s in sets])
        blur_u = torch.rand(n, generator=g)
        mx_high = high.flatten(1).amax(1)
        x = degrade(high, spacing=spacing_vox, thickness=thickness_vox, blur_u=blur_u,
                    noise_std=to_device(noise_frac, dev) * mx_high, rician=rician, generator=gd)
        mx = x.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
        x = (x / mx).clamp(0, 1)
        for i in range(n):
            info[i]["noise_std"] = float(noise_frac[i])
        return Batch(inputs=x, targets={**t, "bias_field_log": bf_log,
                                        "high_res_residual": high / mx - x},
                     params={"flip": flip, "affine": A.tolist(), "distance_scale": dscale,
                             "spacing": spacing, "thickness": thickness, "resolution": res_kind,
                             "voxel_mm": vox, "brain_surface_strip": surface is not None,
                             "rician": rician, "pathology": pathology, "samples": info})
