"""Data: DataLoaders for images, tabular CSV files and plain tensors, plus bundled sample data."""
from firstepoch.data.loaders import DataLoaders, EpochSampler, from_tensors

__all__ = ["DataLoaders", "EpochSampler", "from_tensors"]
