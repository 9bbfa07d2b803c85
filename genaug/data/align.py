"""Per-image results matched to another dataset by id, not by position.

genaug's results are in the order genaug read the images. A training loop
often reads the same images through another dataset object (torchvision's
`ImageFolder`, a Hugging Face dataset) whose order or set of files may
differ; matching by position then weights or drops the wrong rows without
an error. `aligned` matches by id instead and refuses what does not match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from genaug.errors import GenaugError, shown


def dataset_ids(dataset) -> list[str]:
    """The ids of `dataset`'s rows, as genaug names the same images.

    An ImageSet's ids; a torchvision `ImageFolder` (any dataset with `root`
    and `samples`): each file's path relative to the root, '/'-separated,
    as genaug's folder reader names it; a Hugging Face dataset with an `id`
    column: that column; a sequence of strings: itself.
    """
    ids = getattr(dataset, "ids", None)
    if isinstance(ids, list):
        return [str(i) for i in ids]
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if isinstance(samples, list) and isinstance(root, (str, os.PathLike)):
        return [os.path.relpath(os.fspath(s[0]), root).replace(os.sep, "/") for s in samples]
    if type(dataset).__module__.split(".")[0] == "datasets" and "id" in getattr(dataset, "column_names", ()):
        return [str(i) for i in dataset["id"]]
    if isinstance(dataset, Sequence) and not isinstance(dataset, str) and all(isinstance(i, str) for i in dataset):
        return list(dataset)
    raise GenaugError(
        f"cannot tell the ids of a {type(dataset).__name__}; pass the ids (a list of strings in its order), "
        "an ImageSet, an ImageFolder or a Hugging Face dataset with an 'id' column"
    )


def aligned(values, ids: Sequence[str], to) -> np.ndarray:
    """`values` (one per id of `ids`) in the row order of `to` (a dataset or its ids, see `dataset_ids`).

    Every row of `to` must have its id among `ids`; ids may come in any order,
    and ids `to` lacks are left out.
    """
    values = np.asarray(values)
    if len(values) != len(ids):
        raise GenaugError(f"{len(values)} values for {len(ids)} ids")
    where = {i: k for k, i in enumerate(ids)}
    if len(where) != len(ids):
        raise GenaugError("the result's ids repeat; ids must be unique to align by them")
    target = dataset_ids(to)
    missing = [i for i in target if i not in where]
    if missing:
        raise GenaugError(
            f"{len(missing):,} of {len(target):,} rows have no result (e.g. {shown(missing[0], 80)}); "
            "was the result computed on other images, or are they named differently?"
        )
    return values[np.array([where[i] for i in target], dtype=np.int64)]
