from .checkpoint_io import (
    allow_mmengine_checkpoints,
    load_checkpoint_file,
    state_dict_of,
    training_weights,
)
from .loading import load_pretrained_backbone, load_weights_strictly, recognise_arch
from .mobileone import (
    SOURCES,
    backbone_state_dict,
    convert_state_dict,
    detect_source,
    is_deploy_state_dict,
)

__all__ = [
    'SOURCES',
    'allow_mmengine_checkpoints',
    'backbone_state_dict',
    'convert_state_dict',
    'detect_source',
    'is_deploy_state_dict',
    'load_weights_strictly',
    'load_checkpoint_file',
    'load_pretrained_backbone',
    'recognise_arch',
    'state_dict_of',
    'training_weights',
]
