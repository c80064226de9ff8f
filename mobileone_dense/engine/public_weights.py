"""Testing public MobileOne classifiers (Apple's release, timm, mmpretrain) with our configs.

``tools/test.py configs/mobileone_s0_imagenet.py mobileone_s0.pth.tar`` takes Apple's files as
they are: a URL is downloaded once into torch's hub cache (as the configs' ImageNet
initialization does), the weights are converted to our layout when the run reads its
checkpoint, and deploy-form weights build the backbone with ``deploy=True``.
"""

from typing import Any, Dict, Tuple

from mmengine.config import Config
from mmengine.logging import print_log

from ..converters import (
    backbone_state_dict,
    convert_state_dict,
    detect_source,
    is_deploy_state_dict,
    state_dict_of,
)
from ..converters.download import cached_download, is_url
from ..errors import CheckpointError
from .deploy_checkpoints import is_deploy_checkpoint

# What tools/test.py can do when a checkpoint URL can be neither downloaded nor found cached.
LOCAL_COPY = 'give tools/test.py the path of a local copy of the file instead of its URL'

SOURCE_NAMES = {'apple': "Apple's", 'timm': "timm's", 'mmpretrain': "mmpretrain's"}


def local_checkpoint(checkpoint: str) -> str:
    """The local path of a checkpoint given as a path or an ``http(s)://`` URL (downloaded once
    into ``torch.hub.get_dir()/checkpoints``; ``DownloadError`` when offline and not cached)."""
    return cached_download(checkpoint, alternative=LOCAL_COPY) if is_url(checkpoint) else checkpoint


def adopt_public_weights(
    cfg: Config, path: str, checkpoint: dict, mode: str
) -> Tuple[Tuple[str, dict], Dict[str, Any]]:
    """``((path, checkpoint), settings)``: the checkpoint in our layout, for the run's checks and
    our Runner's load, and the config settings (``merge_from_dict`` keys) it needs.

    A checkpoint of Apple's, timm's or mmpretrain's MobileOne (``detect_source``) is converted to
    our classifier layout (``backbone.*``, ``head.fc.*``) under ``state_dict``; ours is returned
    unchanged. For testing (``mode == 'test'``), deploy-form backbone weights (Apple's
    ``mobileone_s0.pth.tar``, or a converted or extracted deploy backbone) that are no
    whole-model deploy checkpoint (those re-parameterize the built model: our Runner) need
    ``model.backbone.deploy=True``, and the log says so. ``cfg`` is only read, as by the other
    checks; the caller applies ``settings`` before building the model.
    """
    weights = state_dict_of(checkpoint)
    try:
        source = detect_source(weights)
    except ValueError:  # no MobileOne weights at all: the fit check names what they look like
        return (path, checkpoint), {}
    if source != 'mobileone_dense':
        try:
            weights = convert_state_dict(weights, source)
        except KeyError as error:
            raise CheckpointError(
                f'checkpoint {path!r} looks like {SOURCE_NAMES[source]} MobileOne weights but '
                f'{error.args[0]}: give the file of a MobileOne classifier'
            ) from None
        print_log(
            f'checkpoint {path!r}: {SOURCE_NAMES[source]} MobileOne weights, converted to '
            "this config's layout",
            logger='current',
        )
        checkpoint = dict(meta=dict(source=source), state_dict=weights)
    backbone_cfg = cfg.model.get('backbone') or {}
    if (
        mode == 'test'
        and 'MobileOne' in str(backbone_cfg.get('type', ''))
        and not backbone_cfg.get('deploy', False)
        and not is_deploy_checkpoint(checkpoint)
        and is_deploy_state_dict(backbone_state_dict(weights))
    ):
        print_log(
            f'checkpoint {path!r} holds deploy-form (re-parameterized) MobileOne weights: '
            'testing with the backbone built in deploy form (model.backbone.deploy=True)',
            logger='current',
        )
        return (path, checkpoint), {'model.backbone.deploy': True}
    return (path, checkpoint), {}
