"""aam_runtime: the AAM training engine (data, model, trainer). Importing it does not import torch."""

__version__ = "0.1.0"
