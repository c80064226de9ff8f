"""Whether a config's ``type=`` names are registered, asked of the registries themselves, and
the closest registered names when one is not (a typo).

mmengine raises a bare ``KeyError`` for an unknown type, deep inside the build; here the
registries answer "is this name registered in this scope?" (``Registry.get`` in the scope
``switch_scope_and_registry`` selects, parents and other scopes' children included), and the
config being built says which of its names is the missing one.
"""

import difflib
from typing import Any, Iterator, List, Optional, Tuple

import mmengine.registry as mmengine_registry
from mmengine.config import Config
from mmengine.registry import Registry

from ...errors import UnknownTypeError


def root_registries() -> List[Registry]:
    """mmengine's root registries (``MODELS``, ``DATASETS``, ``TRANSFORMS``, ``HOOKS``, ...):
    every package's registries are their children."""
    return [
        r for r in vars(mmengine_registry).values() if isinstance(r, Registry) and r.parent is None
    ]


def registry_class(root: Registry, type_: Any, scope: str) -> Any:
    """The class a ``type=`` names in ``scope`` of ``root``'s tree (None if not registered);
    a class or function given as the type is returned as it is."""
    if not isinstance(type_, str):
        return type_
    with root.switch_scope_and_registry(scope) as scoped:
        return scoped.get(type_)


def all_names(registry: Registry) -> List[str]:
    """Every name a ``type=`` may take in ``registry``'s scope: its own, its ancestors', and
    ``scope.Name`` for the other scopes under the root."""
    names = set(registry.module_dict)
    root = registry
    while root.parent is not None:
        root = root.parent
        names |= set(root.module_dict)
    stack = list(root.children.values())
    while stack:
        child = stack.pop()
        names |= {f'{child.scope}.{name}' for name in child.module_dict}
        stack.extend(child.children.values())
    return sorted(names)


def suggest_types(name: str, registry: Registry) -> List[str]:
    """The registered names closest to ``name`` (difflib, case-insensitive), best first."""
    names = all_names(registry)
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    if not close and '.' in name:  # 'mobileone_dense.MobilOne': compare the bare names too
        bare = {n.split('.')[-1].lower(): n for n in names}
        close = difflib.get_close_matches(name.split('.')[-1].lower(), list(bare), n=3, cutoff=0.6)
        return [bare[c] for c in close]
    return [by_lower[c] for c in close]


def unknown_type_error(name: str, registry: Registry, context: str = '') -> UnknownTypeError:
    """``UnknownTypeError`` naming the type, the registry and scope, and the closest names."""
    suggestions = suggest_types(name, registry)
    hint = (
        f'did you mean {" or ".join(repr(s) for s in suggestions)}?'
        if suggestions
        else 'no registered name is close to it'
    )
    return UnknownTypeError(
        f'unknown type {name!r}{context}: not in the {registry.scope}::{registry.name} registry '
        f'({registry.name}s registered in scope {registry.scope!r} and its parent); {hint} Fix the '
        'type= in the config; a type of another package needs its scope prefix (e.g. '
        "'mmdet.SSDHead') and that package in custom_imports"
    )


def check_type(root: Registry, type_: Any, scope: str, context: str) -> None:
    """Raise :func:`unknown_type_error` if ``type_`` is a name that ``root``'s tree does not
    hold in ``scope``."""
    if not isinstance(type_, str) or registry_class(root, type_, scope) is not None:
        return
    with root.switch_scope_and_registry(scope) as registry:
        raise unknown_type_error(type_, registry, context)


def scoped_registries(scope: str) -> List[Registry]:
    """The registry of each root that a build in ``scope`` uses (the scope's child, or the
    root where the scope has none)."""
    registries = []
    for root in root_registries():
        with root.switch_scope_and_registry(scope) as registry:
            registries.append(registry)
    return registries


def unregistered_types(node: Any, scope: str, key: str = '') -> Iterator[Tuple[str, str, str]]:
    """``(config key, name, scope)`` of every ``type=`` name under ``node`` (a config, dict or
    list) that no registry holds in its scope (``_scope_`` of a dict applies to its contents, as
    in mmengine's builders). Also yields names that are not built through a registry at all
    (e.g. mmcv's ``nms`` op in ``test_cfg``)."""
    registries = {}  # scope -> its registries, looked up once

    def walk(node: Any, scope: str, key: str) -> Iterator[Tuple[str, str, str]]:
        if isinstance(node, (dict, Config)):
            scope = node.get('_scope_') or scope
            type_ = node.get('type')
            if isinstance(type_, str):
                if scope not in registries:
                    registries[scope] = scoped_registries(scope)
                if all(registry.get(type_) is None for registry in registries[scope]):
                    yield f'{key}.type' if key else 'type', type_, scope
            for name, value in node.items():
                yield from walk(value, scope, f'{key}.{name}' if key else str(name))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                yield from walk(value, scope, f'{key}.{i}')

    return walk(node, scope, key)


def closest_registry(name: str, scope: str) -> Registry:
    """Of the registries of ``scope`` (one per root), the one holding the name most similar to
    ``name``: the registry a misspelt ``type=`` was meant for."""

    def similarity(registry: Registry) -> float:
        bare = name.split('.')[-1].lower()
        return max(
            (
                difflib.SequenceMatcher(None, bare, n.split('.')[-1].lower()).ratio()
                for n in all_names(registry)
            ),
            default=0.0,
        )

    return max(scoped_registries(scope), key=similarity)


def explain_registry_error(
    error: KeyError, cfg: Any, scope: Optional[str], key: str = ''
) -> Optional[UnknownTypeError]:
    """An ``UnknownTypeError`` for a ``KeyError`` raised while building ``cfg`` (a model config,
    or a whole runner config; ``key``: its config key, e.g. ``'model'``) in ``scope``, when a
    ``type=`` of ``cfg`` is not registered; else None (other ``KeyError``\\ s are not touched).

    The missing name comes from ``cfg`` (:func:`unregistered_types`), not from mmengine's
    message; the message only picks, among several such names, the one the build stopped at
    (mmengine names it, in whichever words).
    """
    words = {word.strip('`\'"\\.,:;()[]{}') for word in str(error).split()}
    for type_key, name, type_scope in unregistered_types(cfg, scope or 'mmengine', key):
        if name in words:
            return unknown_type_error(name, closest_registry(name, type_scope), f' at {type_key}')
    return None
