"""Datasets as ``Record`` lists: the record type, loading and splitting (``datasets``), the raw file
formats (``sources``; ToxiGen's in ``toxigen``), the BIG-bench fetcher (``bigbench``), the hub readers
(``hub``), and every prompt of the study (``prompts``)."""

from hpr.data.datasets import (
    SCHEMES,
    SOURCES,
    SPLITS,
    cap_records,
    dataset_info,
    load_dataset,
    load_split,
    load_splits,
    strata,
)
from hpr.data.records import DATASETS, Record, check_dataset

__all__ = [
    "DATASETS",
    "SCHEMES",
    "SOURCES",
    "SPLITS",
    "Record",
    "cap_records",
    "check_dataset",
    "dataset_info",
    "load_dataset",
    "load_split",
    "load_splits",
    "strata",
]
