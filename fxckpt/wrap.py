"""`ModelWrapper`: a module that *is* the model it wraps, state-wise."""

from __future__ import annotations

import torch


class ModelWrapper(torch.nn.Module):
    """Shares the model's submodules, parameters and buffers (the same dictionaries, so the same
    objects and `state_dict()` keys, and `.to()` moves both) and its train/eval mode. Subclasses
    change only how forward runs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "_model", model)
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self._non_persistent_buffers_set = model._non_persistent_buffers_set
        self._version = type(model)._version
        self.training = model.training

    def train(self, mode: bool = True):
        super().train(mode)
        self._model.train(mode)
        return self
