from ..engine.deploy_checkpoints import deploy_error
from .complexity import (
    PAPER_COMPLEXITY,
    ComplexityRow,
    measure_classifier_complexity,
    params_and_macs,
)
from .deploy_check import randomize_batch_norm

__all__ = [
    'PAPER_COMPLEXITY',
    'ComplexityRow',
    'deploy_error',
    'measure_classifier_complexity',
    'params_and_macs',
    'randomize_batch_norm',
]
