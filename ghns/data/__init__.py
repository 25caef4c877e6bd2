"""Dataset readers and the catalog. Importing this package registers every reader."""

from ghns.data import aircraft, cars, cub, deepfashion, imagefolder, synthetic  # noqa: F401
from ghns.data.catalog import SPLITS, Catalog, make_catalog, stratified_holdout
from ghns.data.registry import READERS, build_catalog, get_reader

__all__ = ["SPLITS", "Catalog", "READERS", "build_catalog", "get_reader", "make_catalog",
           "stratified_holdout"]
