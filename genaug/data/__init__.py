"""Datasets in and Parquet out."""

from genaug.data.imageset import ImageSet
from genaug.data.parquet import encode_png, write_image_table
from genaug.data.readers import BUILTIN_DATASETS, load_images

__all__ = ["BUILTIN_DATASETS", "ImageSet", "encode_png", "load_images", "write_image_table"]
