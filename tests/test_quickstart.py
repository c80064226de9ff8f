"""The README's first command (demo/quickstart.py) runs end to end; a 2-iteration smoke run."""
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_quickstart_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'demo', 'quickstart.py'), '--work-dir', str(tmp_path),
         '--iters', '2'], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert 'bbox mAP@0.5 =' in out
    for name in ('iter_2.pth', 'iter_2_deploy.pth', 'ssdlite_mobileone_s0_coco_deploy.py',
                 'demo_detections.png', 'data/coco/annotations/instances_val2017.json'):
        assert osp.isfile(osp.join(str(tmp_path), name)), name
    assert str(tmp_path / 'demo_detections.png') in out
