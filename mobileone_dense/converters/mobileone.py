"""Public MobileOne weights (Apple, timm, mmpretrain) into our classifier layout.

Our layout: ``backbone.stem.*``, ``backbone.stages.<s>.<i>.*`` (dw at even, pw at odd ``i``) with
``conv_branches.<k>.{conv,bn}``, ``scale_branch.{conv,bn}``, ``identity_branch``,
``se.{reduce,expand}``, ``reparam_conv`` (deploy form), and the linear layer as ``head.fc.*``.
All three sources share the block order, so conversion is a renaming of keys.
"""

import re
from typing import Dict, List, Optional, Tuple

import torch

SOURCES = ('apple', 'timm', 'mmpretrain', 'mobileone_dense')

# (pattern, replacement) applied in order to each key; the first match wins.
_Rules = List[Tuple[str, str]]

_APPLE_BLOCK = [
    (r'rbr_conv\.(\d+)\.(conv|bn)\.', r'conv_branches.\1.\2.'),
    (r'rbr_scale\.(conv|bn)\.', r'scale_branch.\1.'),
    (r'rbr_skip\.', 'identity_branch.'),
    (r'reparam_conv\.', 'reparam_conv.'),
    (r'se\.(reduce|expand)\.', r'se.\1.'),
]
_TIMM_BLOCK = [
    (r'conv_kxk\.(\d+)\.(conv|bn)\.', r'conv_branches.\1.\2.'),
    (r'conv_scale\.(conv|bn)\.', r'scale_branch.\1.'),
    (r'identity\.', 'identity_branch.'),
    (r'reparam_conv\.', 'reparam_conv.'),
    (r'attn\.fc1\.', 'se.reduce.'),
    (r'attn\.fc2\.', 'se.expand.'),
]
_MMPRETRAIN_BLOCK = [
    (r'branch_conv_list\.(\d+)\.conv\.', r'conv_branches.\1.conv.'),
    (r'branch_conv_list\.(\d+)\.norm\.', r'conv_branches.\1.bn.'),
    (r'branch_scale\.conv\.', 'scale_branch.conv.'),
    (r'branch_scale\.norm\.', 'scale_branch.bn.'),
    (r'branch_norm\.', 'identity_branch.'),
    (r'branch_reparam\.', 'reparam_conv.'),
    (r'se\.conv1\.conv\.', 'se.reduce.'),
    (r'se\.conv2\.conv\.', 'se.expand.'),
]
# Module prefixes of each source: (pattern, our prefix) -> block rules apply to the rest.
_PREFIXES: Dict[str, _Rules] = {
    'apple': [
        (r'stage0\.', 'backbone.stem.'),
        (r'stage([1-4])\.(\d+)\.', lambda m: f'backbone.stages.{int(m[1]) - 1}.{m[2]}.'),
    ],
    'timm': [(r'stem\.', 'backbone.stem.'), (r'stages\.(\d)\.(\d+)\.', r'backbone.stages.\1.\2.')],
    'mmpretrain': [
        (r'(?:backbone\.)?stage0\.', 'backbone.stem.'),
        (
            r'(?:backbone\.)?stage([1-4])\.(\d+)\.',
            lambda m: f'backbone.stages.{int(m[1]) - 1}.{m[2]}.',
        ),
    ],
}
_HEADS = {
    'apple': r'linear\.(weight|bias)$',
    'timm': r'head\.fc\.(weight|bias)$',
    'mmpretrain': r'head\.fc\.(weight|bias)$',
}
_BLOCK_RULES = {'apple': _APPLE_BLOCK, 'timm': _TIMM_BLOCK, 'mmpretrain': _MMPRETRAIN_BLOCK}


def detect_source(state_dict: Dict[str, torch.Tensor]) -> str:
    """Which implementation a MobileOne state dict comes from (see ``SOURCES``)."""
    keys = list(state_dict)
    ours = (
        r'(backbone\.)?(stem|stages\.\d+\.\d+)\.(conv_branches|scale_branch|identity_branch|se)\.'
    )
    if any(k.startswith('backbone.stages.') or re.match(ours, k) for k in keys):
        return 'mobileone_dense'
    if any('branch_conv_list' in k or 'branch_reparam' in k for k in keys):
        return 'mmpretrain'
    if any(re.match(r'stage\d\.', k) for k in keys):
        return 'apple'
    if any(k.startswith('stem.') and ('conv_kxk' in k or 'reparam_conv' in k) for k in keys):
        return 'timm'
    raise ValueError(
        'cannot tell where this MobileOne state dict comes from (expected Apple '
        "keys like 'stage0.rbr_conv.0.conv.weight', timm keys like "
        "'stem.conv_kxk.0.conv.weight', or mmpretrain keys like "
        f"'backbone.stem.branch_conv_list.0.conv.weight'); first keys: {keys[:5]}"
    )


def _rename(key: str, source: str) -> Optional[str]:
    if re.search(_HEADS[source], key):
        return 'head.fc.' + key.rsplit('.', 1)[1]
    for pattern, prefix in _PREFIXES[source]:
        match = re.match(pattern, key)
        if match is None:
            continue
        new_prefix = prefix(match) if callable(prefix) else match.expand(prefix)
        rest = key[match.end() :]
        for block_pattern, replacement in _BLOCK_RULES[source]:
            block_match = re.match(block_pattern, rest)
            if block_match is not None:
                return new_prefix + block_match.expand(replacement) + rest[block_match.end() :]
        return None
    return None


def _strip_wrappers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop DataParallel ``module.`` prefixes."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.') :]: v for k, v in state_dict.items()}
    return state_dict


def convert_state_dict(
    state_dict: Dict[str, torch.Tensor], source: str = 'auto', strict: bool = True
) -> Dict[str, torch.Tensor]:
    """Convert an Apple/timm/mmpretrain MobileOne state dict to our classifier layout.

    Backbone weights come out under ``backbone.`` (deploy form or not, as the source was) and the
    1000-class linear layer as ``head.fc.weight``/``head.fc.bias``. BN ``num_batches_tracked``
    counters are kept. With ``strict`` (default) any key that cannot be mapped raises a
    ``KeyError`` listing them all; otherwise they are dropped.
    """
    state_dict = _strip_wrappers(dict(state_dict))
    if source == 'auto':
        source = detect_source(state_dict)
    if source not in SOURCES:
        raise ValueError(f'unknown source {source!r}; choose one of {SOURCES} or "auto"')
    if source == 'mobileone_dense':  # ours already; a bare backbone gets its prefix
        return {
            (f'backbone.{k}' if k.startswith(('stem.', 'stages.')) else k): v
            for k, v in state_dict.items()
        }
    converted, unmapped = {}, []
    for key, value in state_dict.items():
        new_key = _rename(key, source)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = value
    if unmapped and strict:
        raise KeyError(
            f'{len(unmapped)} keys of the {source} state dict could not be mapped to '
            f'mobileone_dense: {unmapped}'
        )
    return converted


def is_deploy_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether a (converted) state dict holds deploy-form (re-parameterized) MobileOne
    weights."""
    return any('reparam_conv.' in k for k in state_dict)


def backbone_state_dict(
    state_dict: Dict[str, torch.Tensor], prefix: str = 'backbone.'
) -> Dict[str, torch.Tensor]:
    """Keys under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
