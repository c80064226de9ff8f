"""Registries of the ``mobileone_dense`` scope.

Children of mmengine's root registries, so that mmdet, mmseg and mmpretrain configs reach our
modules as ``type='mobileone_dense.MobileOne'`` (and mmengine imports this module when a config
switches to the ``mobileone_dense`` scope). mmpretrain's own ``MobileOne`` lives in the
``mmpretrain`` scope and is not shadowed.
"""

from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='mobileone_dense', locations=['mobileone_dense.models']
)
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mobileone_dense', locations=['mobileone_dense.engine']
)
RUNNERS = Registry(
    'runner', parent=MMENGINE_RUNNERS, scope='mobileone_dense', locations=['mobileone_dense.engine']
)
DATASETS = Registry(
    'dataset',
    parent=MMENGINE_DATASETS,
    scope='mobileone_dense',
    locations=['mobileone_dense.datasets'],
)
TRANSFORMS = Registry(
    'transform',
    parent=MMENGINE_TRANSFORMS,
    scope='mobileone_dense',
    locations=['mobileone_dense.datasets'],
)
# Functions that load pretrained weights into our models. The converters package (checkpoint
# reading, conversion of public weights) registers them; the models, a layer below it, look
# them up here instead of importing it (``MobileOne.init_weights``).
WEIGHT_LOADERS = Registry(
    'weight loader', scope='mobileone_dense', locations=['mobileone_dense.converters']
)
