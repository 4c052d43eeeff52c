"""Models: one file per family, registered by name in :mod:`lmrec.models.registry`."""

from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.registry import MODELS, load_model, model_class

__all__ = ["MODELS", "FitOptions", "ModelConfig", "Recommender", "load_model", "model_class"]
