"""Parameter and multiply-accumulate counts of deploy MobileOne classifiers (paper Tables 9, 13)."""

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count

from ..models.mobileone import MobileOne
from ..models.reparameterize import reparameterize

# (params in millions, MACs in millions) at 224x224, as printed in the paper (fvcore counts one
# multiply-accumulate as one "FLOP", which is what mmengine's FlopAnalyzer reports too).
PAPER_COMPLEXITY: Dict[str, Tuple[float, float]] = {
    's0': (2.1, 275),
    's1': (4.8, 825),
    's2': (7.8, 1299),
    's3': (10.1, 1896),
    's4': (14.8, 2978),
    'mu0': (0.57, 68),
    'mu1': (0.98, 139),
    'mu2': (1.3, 214),
}


@dataclass
class ComplexityRow:
    arch: str
    params_m: float
    macs_m: float
    paper_params_m: float
    paper_macs_m: float

    @property
    def params_delta(self) -> float:
        """Relative difference to the paper's parameter count."""
        return self.params_m / self.paper_params_m - 1

    @property
    def macs_delta(self) -> float:
        """Relative difference to the paper's MAC count."""
        return self.macs_m / self.paper_macs_m - 1


class _Classifier(nn.Module):
    """Backbone + global average pool + linear head, the model the paper's tables count."""

    def __init__(self, backbone: MobileOne, num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


@torch.no_grad()
def params_and_macs(model: nn.Module, inputs: torch.Tensor) -> Tuple[float, float]:
    """(parameters, multiply-accumulates) in millions of ``model(inputs)``, fvcore-style."""
    analyzer = FlopAnalyzer(model.eval(), inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return parameter_count(model)[''] / 1e6, analyzer.total() / 1e6


def measure_classifier_complexity(arch: str, input_size: int = 224) -> ComplexityRow:
    """Deploy-form params and MACs of backbone + GAP + 1000-class linear head at ``input_size``."""
    model = reparameterize(_Classifier(MobileOne(arch, out_indices=(3,))))
    params, macs = params_and_macs(model, torch.zeros(1, 3, input_size, input_size))
    paper_params, paper_macs = PAPER_COMPLEXITY[arch]
    return ComplexityRow(arch, params, macs, paper_params, paper_macs)
