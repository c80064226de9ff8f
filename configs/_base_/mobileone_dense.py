# Shared by every mobileone_dense config: registers the `mobileone_dense` scope (backbone, hook)
# before anything is built. Inherit it from your own configs as
#   _base_ = ['mobileone_dense::configs/_base_/mobileone_dense.py']
custom_imports = dict(imports=['mobileone_dense'], allow_failed_imports=False)
# mmengine's Runner with checkpoint loading that works on torch >= 2.6 (scoped weights_only
# allowlist for mmengine's own checkpoints); our tools/train.py and tools/test.py use it anyway.
runner_type = 'mobileone_dense.Runner'
