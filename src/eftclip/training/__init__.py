"""Training: contrastive pre-training, CleanCLIP fine-tuning, RoCLIP, under torchrun too.

Public API::

    from eftclip.training import TrainConfig, FinetuneConfig, train, finetune
    summary = train(TrainConfig(data="pairs.csv", model="eftclip-tiny-vit", epochs=2, batch_size=32,
                                lr=5e-4, warmup=10, out="runs/tiny"))

Modules: ``config`` (the frozen configs, composed from shared pieces),
``objectives`` (the Objective seam: contrastive, CleanCLIP, RoCLIP, the
clean-feature anchor, in a registry), ``losses`` (open_clip's ClipLoss,
CleanCLIP), ``augment`` (AutoAugment and EDA with explicit generators),
``data`` (deterministic batches, in-memory image cache), ``feed`` (batches as
device tensors), ``schedule`` (cosine with warm-up), ``distributed``
(torchrun/SLURM setup), ``roclip`` (RoCLIP's caption pool), ``run_files``
(checkpoints, summary, resume), ``loop`` (the loop).
"""

from eftclip.training.config import FinetuneConfig, TrainConfig
from eftclip.training.loop import finetune, load_pairs, train

__all__ = ["FinetuneConfig", "TrainConfig", "finetune", "load_pairs", "train"]
