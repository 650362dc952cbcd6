"""firstepoch: a local-first deep-learning workbench on PyTorch.

    from firstepoch import DataLoaders, Learner
    dls = DataLoaders.from_folder("pets/", size=64)
    learn = Learner(dls, "cnn")
    learn.fit_one_cycle(5, 3e-3)
    learn.export("pets-model")
    firstepoch.load("pets-model").predict("cat.jpg")
"""
from firstepoch.loading import load
from firstepoch.predictor import Predictor
from firstepoch.version import __version__
from firstepoch.core.callbacks import (Callback, EarlyStopping, GradientAccumulation, GradientClip, MixedPrecision,
                                       TimeBudget, TrainingInterrupted)
from firstepoch.core.learner import Learner
from firstepoch.core.runs import Run, list_runs
from firstepoch.data.loaders import DataLoaders
from firstepoch.errors import FirstEpochError
from firstepoch.retrieval import Index, embed

__all__ = ["__version__", "Callback", "DataLoaders", "EarlyStopping", "FirstEpochError", "GradientAccumulation",
           "GradientClip", "Index", "Learner", "MixedPrecision", "Predictor", "Run", "TimeBudget",
           "TrainingInterrupted", "embed", "list_runs", "load"]
