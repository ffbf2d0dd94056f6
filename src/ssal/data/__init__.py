"""Data: datasets by name, decoded once into cached uint8 tensors; splits,
class caps, and the oracle that alone holds pool labels."""

from .datasets import DATASET_NAMES, load_dataset
from .oracle import ActivePool, GroundTruthOracle
from .splits import apply_class_caps, imbalanced_caps, split_validation
from .types import ImageData

__all__ = [
    "DATASET_NAMES",
    "load_dataset",
    "ImageData",
    "ActivePool",
    "GroundTruthOracle",
    "apply_class_caps",
    "imbalanced_caps",
    "split_validation",
]
