"""Let mmengine resolve ``mobileone_dense::`` config bases in any Python process.

mmengine reads a config's ``_base_`` before its ``custom_imports`` and accepts ``pkg::path`` bases
only for the packages in ``mmengine.config.utils.MODULE2PACKAGE``, so a config of yours with
``_base_ = ['mobileone_dense::configs/...']`` fails in mmdet's / mmseg's own ``tools/train.py``
(and ``mim train``) unless something adds us to that table before the config is read.

Installed beside ``mobileone_dense`` with ``mobileone_dense_mmengine_scope.pth``, which Python's
``site`` runs at start-up: :func:`install` puts a finder first on ``sys.meta_path`` that does
nothing until ``mmengine.config.utils`` is imported, then adds ``'mobileone_dense'`` to the
table right after that module has run, and removes itself. A process that never imports
mmengine pays one string comparison per import (no mmengine, no mobileone_dense import). After
``pip uninstall mobileone_dense`` both files are gone; the ``.pth`` line also ignores a missing
module, so Python starts normally in any case.
"""

# Only ``sys``: this runs at every Python start-up, and ``importlib.abc`` alone would pull in
# pathlib, tempfile and typing.
import sys

TARGET = 'mmengine.config.utils'
PACKAGE = 'mobileone_dense'


class _RegisterScope:
    """One-shot ``sys.meta_path`` finder (the protocol needs only ``find_spec``): wraps the
    loader of ``mmengine.config.utils`` to extend its table."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:  # the spec the other finders give, loaded as usual
            spec = (
                finder.find_spec(fullname, path, target) if hasattr(finder, 'find_spec') else None
            )
            if spec is not None and spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader:
    """Runs the real loader, then adds our package to ``MODULE2PACKAGE``."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        table = getattr(module, 'MODULE2PACKAGE', None)
        if isinstance(table, dict):
            table.setdefault(PACKAGE, PACKAGE)

    def __getattr__(self, name):  # get_source, is_package, ... as the real loader
        return getattr(self.loader, name)


def install() -> None:
    """Register the finder (once), unless mmengine's table is already loaded: then extend it."""
    module = sys.modules.get(TARGET)
    if module is not None:
        getattr(module, 'MODULE2PACKAGE', {}).setdefault(PACKAGE, PACKAGE)
    elif not any(isinstance(f, _RegisterScope) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterScope())
