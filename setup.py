"""Install mobileone_dense; ships configs/ as package data under mobileone_dense/.mim/configs so
that mmengine's ``mobileone_dense::folder/file.py`` config inheritance finds them."""

import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
MIM_DIR = osp.join(ROOT, 'mobileone_dense', '.mim')
# Run at interpreter start-up by Python's site module: lets mmengine resolve
# ``mobileone_dense::`` config bases in processes that have not imported us (mmdet's/mmseg's own
# tools, mim). See mobileone_dense_mmengine_scope.py.
SCOPE_PTH = 'mobileone_dense_mmengine_scope.pth'


class BuildPyWithScopeHook(build_py):
    """build_py that also puts ``SCOPE_PTH`` at the root of the build (site-packages once
    installed, beside the module it imports), so wheels and editable installs both carry it."""

    def run(self) -> None:
        ship_configs()  # before build_py collects package data (.mim/ must exist by then)
        super().run()
        target = self.build_lib
        if getattr(self, 'editable_mode', False):
            # setuptools' editable_wheel ignores build_lib; the files of the editable wheel are
            # those written where `install` points (setuptools >= 64)
            target = self.get_finalized_command('install').install_lib
        self.copy_file(osp.join(ROOT, SCOPE_PTH), osp.join(target, SCOPE_PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return super().get_outputs(include_bytecode) + [osp.join(self.build_lib, SCOPE_PTH)]


def ship_configs() -> None:
    """Expose configs/ to mmengine's ``mobileone_dense::configs/<file>.py`` inheritance.

    mmengine looks for ``<package dir>/.mim/configs/<path after ::>`` (and first reads
    ``.mim/model-index.yml``). The path after ``::`` must contain a folder, so our flat
    ``configs/*.py`` are exposed as ``.mim/configs/configs/`` (users write the repo path): a
    symlink, live in editable installs and followed (copied) when a wheel is built.
    """
    os.makedirs(osp.join(MIM_DIR, 'configs'), exist_ok=True)
    with open(osp.join(MIM_DIR, 'model-index.yml'), 'w') as f:
        f.write('Import: []\n')  # no metafiles: mmengine falls back to .mim/configs/<path>
    link = osp.join(MIM_DIR, 'configs', 'configs')
    if osp.islink(link) and os.readlink(link) == osp.join('..', '..', '..', 'configs'):
        return
    if osp.islink(link) or osp.isfile(link):
        os.remove(link)
    elif osp.isdir(link):
        shutil.rmtree(link)
    os.symlink(osp.join('..', '..', '..', 'configs'), link)


def config_files() -> list:
    files = ['.mim/model-index.yml']
    for dirpath, _, filenames in os.walk(osp.join(ROOT, 'configs')):
        rel = osp.relpath(dirpath, osp.join(ROOT, 'configs'))
        files += [
            osp.normpath(osp.join('.mim', 'configs', 'configs', rel, f))
            for f in filenames
            if f.endswith('.py')
        ]
    return files


setup(
    name='mobileone_dense',
    version='0.1.0',
    description='MobileOne backbones for detection, segmentation and classification in OpenMMLab',
    packages=find_packages(include=['mobileone_dense', 'mobileone_dense.*']),
    py_modules=['mobileone_dense_mmengine_scope'],
    cmdclass={'build_py': BuildPyWithScopeHook},
    package_data={'mobileone_dense': config_files()},
    include_package_data=False,
    python_requires='>=3.9',
    install_requires=[
        'torch',
        'mmengine>=0.10.0',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.0.0',
        'mmsegmentation>=1.0.0',
        'mmpretrain>=1.0.0',
        'pycocotools',
        'opencv-python',
    ],
    extras_require={
        'deploy': ['onnx', 'onnxruntime', 'onnxscript'],
        # ExecuTorch export (requirements-mobile.txt)
        'mobile': ['executorch==1.5.1'],
        'tests': ['pytest', 'timm'],
    },
    zip_safe=False,
)
