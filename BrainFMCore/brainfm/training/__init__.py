"""Training of BrainFM models: synthetic-data preparation, losses, trainer, fine-tuning.

Modules (imported lazily; nothing heavy happens on ``import brainfm.training``):

- ``config``: :class:`~brainfm.training.config.TrainConfig` (YAML + ``--set key=value`` overrides);
- ``losses`` / ``objectives``: L1 + gradient L1, soft Dice + CE, masked L2, NT-Xent, CIFL; the
  multi-task BrainFM, anatomy-only Brain-ID and contrastive objectives;
- ``optim``: AdamW with linear warm-up and step decay;
- ``checkpoint``: atomic, pickle-free training checkpoints with exact resume;
- ``data``: prepared subjects -> generator batches (``prepare`` writes the prepared subjects);
- ``trainer``: the loop (bf16 on CUDA, time box, DDP via torchrun, validation, logs);
- ``finetune`` / ``finetune_options``: head-only / frozen-encoder / full fine-tuning on real images
  (options: given > YAML > defaults);
- ``evaluate`` / ``heldout``: Dice / PSNR on held-out subjects (``brainfm evaluate``);
- ``restore`` / ``export``: the network of a training checkpoint, written as a native model.

The ``brainfm prepare``, ``train``, ``finetune`` and ``evaluate`` commands (:mod:`brainfm.cli`)
call these modules.

>>> from brainfm.training.config import TrainConfig
>>> TrainConfig().model.num_levels
5
"""
