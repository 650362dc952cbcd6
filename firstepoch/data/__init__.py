"""Data: DataLoaders for images, tabular CSV files and plain tensors, plus bundled sample data."""
from firstepoch.data.core import EpochSampler
from firstepoch.data.loaders import DataLoaders, from_tensors

__all__ = ["DataLoaders", "EpochSampler", "from_tensors"]
