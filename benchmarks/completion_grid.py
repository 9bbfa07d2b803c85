"""A grid of image completions on the RGB emoji: original, kept top half, completions.

    python benchmarks/completion_grid.py --emoji-dir ../shared/data --family pixelcnn++ --time-limit 10
    python benchmarks/completion_grid.py --emoji-dir DIR --model-path emoji.safetensors   # a model fitted already

The family trains on a seeded 80% of `emoji-<style>-32.npz` (as
bench_families does) for `--time-limit` minutes, or is loaded from
`--model-path`; `--images` held-out emoji then keep their top `--keep-rows`
rows and get `--completions` completions each. Each row of the grid is one
emoji: the original, what the model was given (the rest grey), then the
completions, upscaled 4x. Test bits/dim is printed beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from genaug.completion import complete
from genaug.data.imageset import ImageSet
from genaug.models.registry import build_model
from genaug.models.store import load_model, save_model
from genaug.train import TrainConfig, resolve_device, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-dir", type=Path, required=True)
    parser.add_argument("--style", default="google", choices=("google", "twitter"))
    parser.add_argument("--family", default="pixelcnn++")
    parser.add_argument("--model-path", type=Path, help="a checkpoint fitted on the same style (skips training)")
    parser.add_argument("--save-model", type=Path, help="write the trained model here")
    parser.add_argument("--time-limit", type=float, default=10.0, help="training minutes")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--completions", type=int, default=3)
    parser.add_argument("--keep-rows", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "completions-emoji.png")
    args = parser.parse_args()

    with np.load(args.emoji_dir / f"emoji-{args.style}-32.npz", allow_pickle=False) as data:
        x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).contiguous()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    cut = int(0.8 * len(x))
    train_x, test_x = x[perm[:cut]], x[perm[cut:]]
    device = resolve_device(args.device)
    if args.model_path:
        model = load_model(args.model_path, device=device)
    else:
        model = build_model(args.family, tuple(train_x.shape[1:]))
        config = TrainConfig(epochs=100_000, time_limit=args.time_limit, patience=10_000, device=args.device,
                             seed=args.seed, progress=False)  # fmt: skip
        print(train(model, train_x, config=config).summary())
        if args.save_model:
            save_model(model, args.save_model)
    model.eval()
    with torch.inference_mode():
        nll = torch.cat([model.nll(test_x[i : i + 256].to(device)).cpu() for i in range(0, len(test_x), 256)])
    print(f"{model.name}: test bits/dim {float(nll.mean()) / (model.num_dims * np.log(2)):.3f}")

    chosen = test_x[torch.randperm(len(test_x), generator=torch.Generator().manual_seed(args.seed + 1))[: args.images]]
    start = time.perf_counter()
    done = complete(model, ImageSet(chosen), keep_rows=args.keep_rows, completions=args.completions, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"{len(done.data)} completions in {seconds:.1f} s ({seconds / len(done.data):.3f} s each)")
    given = chosen.clone()
    given[:, :, args.keep_rows :] = 128
    rows = []
    for i in range(len(chosen)):
        rows += [chosen[i], given[i], *done.data.images[i * args.completions : (i + 1) * args.completions]]
    grid = make_grid(torch.stack(rows).float() / 255, nrow=2 + args.completions, padding=2, pad_value=1.0)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0]
    save_image(grid, args.out)
    print(f"grid -> {args.out}")


if __name__ == "__main__":
    main()
