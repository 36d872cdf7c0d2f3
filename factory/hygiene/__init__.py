"""Data hygiene: exact and near-duplicate removal (MinHash LSH), decontamination against
evaluation sets by word n-gram overlap, and quality filters for model answers. Pure functions over
lists of strings; the only I/O is the eval-set loader."""

from factory.hygiene.decontam import Decontaminator, read_eval_texts
from factory.hygiene.dedup import NearDedup, exact_duplicates, normalise_text, words
from factory.hygiene.filters import FILTERS, QualityConfig, check

__all__ = ["FILTERS", "Decontaminator", "NearDedup", "QualityConfig", "check", "exact_duplicates",
           "normalise_text", "read_eval_texts", "words"]
