"""Datasets already in memory: arrays and tensors, Hugging Face `datasets`, torch Datasets.

Each is turned into what a file reader returns (per-image tensors, labels,
class names, ids, paths) by the same rules as the files: uint8 pixels
(integers 0..255 and floats in [0, 1] are converted), labels that are
integer classes or class-name strings, sizes checked against `max_pixels`.

* An array or tensor: `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]`
  (the npz layouts), labels from `labels=`; ids `array-<n>`.
* A Hugging Face `datasets.Dataset`: its `Image` column (or
  `image_column`), labels from its first `ClassLabel` column (or
  `label_column`, or a column named `label`) with the ClassLabel's names,
  ids from an `id` column if there is one. Images are decoded by genaug
  from their stored bytes (or files), with the same size checks as files.
* A torch `Dataset` (`__len__` and `__getitem__`): items are an image or an
  `(image, label, ...)` pair; an image is a PIL image, a numpy array (HWC
  or HW) or a tensor (CHW or HW, uint8, or float in [0, 1] as torchvision's
  `ToTensor` makes). Class names come from a `classes` attribute and ids
  from `samples` (torchvision's `ImageFolder`: each file's path relative
  to `root`, as genaug's own folder reader names them).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from genaug.errors import GenaugError, shown

# What `readers._Read` holds: tensors, labels, class names, ids, paths.


def is_hf_dataset(obj) -> bool:
    """Anything from the Hugging Face `datasets` package (told apart in `read_hf_dataset`)."""
    return type(obj).__module__.split(".")[0] == "datasets"


def is_torch_dataset(obj) -> bool:
    return isinstance(obj, torch.utils.data.Dataset) and hasattr(obj, "__len__")


def describe(obj) -> str:
    """What `obj` is, for an error message."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def read_array(x, labels, cap: int):
    """An image array or tensor (and optional labels) as a reader's result."""
    from genaug.data.readers import _channels_first, _check_x, _to_uint8

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    what = f"the {type(x).__name__} of shape {tuple(x.shape)}"
    _check_x(x.shape, x.dtype, what, cap)
    x = _channels_first(_to_uint8(x, what), what)
    n = x.shape[0]
    return list(torch.from_numpy(np.ascontiguousarray(x))), *_given_labels(labels, n), [f"array-{i:06d}" for i in range(n)], None


def _given_labels(labels, n: int) -> tuple[np.ndarray | None, list[str] | None]:
    from genaug.data.readers import _labels

    if labels is None:
        return None, None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels).reshape(-1).tolist() if not isinstance(labels, (list, tuple)) else list(labels)
    if len(values) != n:
        raise GenaugError(f"{len(values)} labels for {n} images")
    return _labels(values, "labels=", "labels")


def read_hf_dataset(ds, image_column, label_column, id_column, cap: int):
    """A Hugging Face `datasets.Dataset` as a reader's result (decoded by genaug, not by `datasets`)."""
    from genaug.data.readers import _pick_columns, read_table

    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise GenaugError(f"a {type(ds).__name__} holds splits ({', '.join(ds)}); pick one, e.g. dataset['train']")
    if not isinstance(ds, datasets.Dataset):
        raise GenaugError(
            f"cannot read a {type(ds).__name__}; give a datasets.Dataset (a streaming one in memory: "
            "datasets.Dataset.from_list(list(stream.take(n))))"
        )
    features = ds.features
    kinds = {name: type(f).__name__ for name, f in features.items()}
    image_column = image_column or next((n for n, k in kinds.items() if k == "Image"), None)
    label_column = label_column or next((n for n, k in kinds.items() if k == "ClassLabel"), None)
    where = f"the Hugging Face dataset ({ds.num_rows:,} rows; columns: {', '.join(shown(c, 40) for c in features)})"
    if ds.num_rows == 0:
        raise GenaugError(f"no images in {where}")
    table = _hf_arrow(ds, [c for c in (image_column, label_column, id_column) if c])
    image_name, label_name, id_name = _pick_columns(table.schema, image_column, label_column, id_column, where)
    names = None
    if label_name is not None and kinds.get(label_name) == "ClassLabel":
        names = [str(n) for n in features[label_name].names]
    name = getattr(getattr(ds, "info", None), "dataset_name", None) or "dataset"
    # Image files a dataset names are the user's own (its cache, or the folder it was built from).
    return read_table(table, image_name, label_name, id_name, where=where, stem=str(name), root=os.sep,
                      allow_outside=True, cap=cap, class_names=names)  # fmt: skip


def _hf_arrow(ds, columns: list[str]):
    """The dataset's rows (selections and shuffles applied) as a pyarrow table, image cells undecoded."""
    try:
        if columns:
            ds = ds.select_columns([c for c in dict.fromkeys(columns) if c in ds.column_names])
        return ds.with_format("arrow")[:]
    except (KeyError, ValueError, TypeError) as e:
        raise GenaugError(f"cannot read the Hugging Face dataset: {e}") from None


def read_torch_dataset(ds, cap: int):
    """A torch Dataset of images or (image, label) items as a reader's result."""
    n = len(ds)
    if n == 0:
        raise GenaugError(f"no images in the {describe(ds)}")
    tensors, values = [], []
    for i in range(n):
        item = ds[i]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) >= 2 else (item, None)
        tensors.append(_image_tensor(image, i, ds, cap))
        if (isinstance(label, torch.Tensor) and label.numel() == 1) or (isinstance(label, np.ndarray) and label.size == 1):
            label = label.item()  # a 0-d tensor or array: its number
        values.append(label)
    labels = names = None
    if any(v is not None for v in values):
        from genaug.data.readers import _labels

        labels, names = _labels(values, f"the {describe(ds)}", "labels")
        classes = getattr(ds, "classes", None)
        if names is None and isinstance(classes, (list, tuple)) and len(classes) > int(labels.max()):
            names = [str(c) for c in classes]
    return tensors, labels, names, _torch_ids(ds, n), _torch_paths(ds, n)


def _image_tensor(image, i: int, ds, cap: int) -> torch.Tensor:
    """One item's image as uint8 [C, H, W]."""
    from genaug.data.readers import _pil_to_uint8, _to_uint8

    where = f"item {i} of the {describe(ds)}"
    if hasattr(image, "getbands") and hasattr(image, "size"):  # a PIL image
        w, h = image.size
        if w * h > cap:
            raise GenaugError(f"{where} is {h}x{w} ({h * w:,} pixels), above the cap of {cap:,} pixels")
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(_pil_to_uint8(image), -1, 0)))
    if isinstance(image, np.ndarray):  # HWC or HW, as PIL and OpenCV give
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise GenaugError(f"{where} is an array of shape {image.shape}; expected [H, W] or [H, W, C]")
        arr = np.moveaxis(arr, -1, 0)
    elif isinstance(image, torch.Tensor):  # CHW or HW, as torchvision gives
        arr = image.detach().cpu().numpy()
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.ndim != 3 or arr.shape[0] not in (1, 3, 4):
            raise GenaugError(f"{where} is a tensor of shape {tuple(image.shape)}; expected [C, H, W] or [H, W]")
    else:
        raise GenaugError(f"{where} is a {describe(image)}; items must be PIL images, arrays or tensors")
    if arr.shape[1] * arr.shape[2] > cap:
        raise GenaugError(f"{where} is {arr.shape[1]}x{arr.shape[2]} pixels, above the cap of {cap:,} pixels")
    arr = _to_uint8(arr[:3], where)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _torch_ids(ds, n: int) -> list[str]:
    paths = _torch_paths(ds, n)
    root = getattr(ds, "root", None)
    if paths is not None and isinstance(root, (str, os.PathLike)):
        # ImageFolder's files by their path below the root: the ids genaug's folder reader gives.
        return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    return [f"item-{i:06d}" for i in range(n)]


def _torch_paths(ds, n: int) -> list[str] | None:
    samples = getattr(ds, "samples", None)
    if isinstance(samples, list) and len(samples) == n and all(isinstance(s, tuple) and s for s in samples):
        if all(isinstance(s[0], (str, os.PathLike)) for s in samples):
            return [os.fspath(s[0]) for s in samples]
    return None
