"""From a raw image folder to a training loop: audit, clean, rebalance, augment.

    python examples/clean_rebalance_train.py            # on the built-in digits
    python examples/clean_rebalance_train.py photos/    # on your own folder / .parquet / .npz

Every step is also a CLI command (`genaug detect-outliers`, `genaug
rebalance`, `genaug augment`); this shows the same through the Python API,
without touching files until the end.
"""

import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import genaug


def main(source: str = "digits") -> None:
    data = genaug.load_images(source)
    print(f"{len(data)} images {data.shape} from {data.source}")

    # 1. Self-audit: which images look foreign or corrupt? (out-of-fold, BH at 5% FDR)
    audit = genaug.detect_outliers(data)
    print(f"flagged {audit.n_flagged} images; most anomalous: {[data.ids[i] for i in audit.top(5)]}")
    audit.write("outliers.parquet")
    clean = data.subset(~audit.is_outlier)

    # 2. Rebalance what is left: rare regions of the latent space get drawn more often.
    balanced = genaug.rebalance(clean, synthesize=100)
    print(balanced.summary)
    labels = torch.from_numpy(clean.labels) if clean.labels is not None else torch.zeros(len(clean), dtype=torch.long)
    loader = DataLoader(
        TensorDataset(clean.images.float() / 255.0, labels), batch_size=64, sampler=balanced.sampler(seed=0)
    )
    x, y = next(iter(loader))
    print(f"a rebalanced batch: {tuple(x.shape)}")

    # 3. Augment for training, reproducibly.
    augmented = genaug.augment(clean, "light", copies=2, seed=0)
    print(f"{len(augmented.data)} augmented images, e.g. {augmented.data.ids[0]}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
