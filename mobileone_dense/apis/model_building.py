"""``build_model_from_config``, public here; it lives in the engine layer
(:mod:`mobileone_dense.engine.model_building`), where writing a deploy config needs it."""

from ..engine.model_building import build_model_from_config

__all__ = ['build_model_from_config']
