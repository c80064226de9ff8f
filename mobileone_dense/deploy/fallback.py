"""Which layers of a quantized model to keep in float so that its accuracy stays within a budget.

Framework-neutral: layers are names (ONNX node-name prefixes, torch module names, ...) and the
caller's ``evaluate(float_layers)`` quantizes the model with those layers kept in float and
returns its metric on a selection set (higher is better). The search:

1. everything quantized; if the metric is within ``max_drop`` of ``float_metric``, nothing stays
   float (one evaluation);
2. the sensitivity of each candidate: the metric with **only that candidate quantized** (all
   other candidates float), so that a layer that breaks the model on its own shows even when
   another one breaks it too;
3. greedily keep candidates in float, the most sensitive first, until the budget holds; then try
   to quantize again each one chosen before the last (fewer float layers when an earlier choice
   turned out unnecessary);
4. with ``children``: the chosen candidates are replaced by their children (e.g. the backbone
   by its stages, a stage by its blocks) and steps 2-3 run again among those, the other
   candidates quantized, level after level; coarse groups first keep the number of evaluations
   near (#groups + #children of the chosen groups, per level) instead of #layers.

Names are hierarchical: ``evaluate`` must treat a name as covering every layer under it.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple


@dataclass
class FallbackResult:
    """What :func:`select_float_layers` chose and measured (metrics in the caller's units).

    Attributes:
        float_layers: the names to keep in float, in the order they were chosen.
        metric: the metric with ``float_layers`` kept float.
        quantized_metric: the metric with every layer quantized.
        float_metric: the reference (float model) the budget is counted from.
        max_drop: the budget.
        within_budget: ``metric >= float_metric - max_drop``.
        sensitivity: candidate -> metric with only that candidate quantized (both levels).
        evaluations: how many times ``evaluate`` ran (cached repeats not counted).
    """

    float_layers: List[str]
    metric: float
    quantized_metric: float
    float_metric: float
    max_drop: float
    within_budget: bool
    sensitivity: Dict[str, float] = field(default_factory=dict)
    evaluations: int = 0


class _Search:
    """Memoized ``evaluate`` and the budget test shared by both levels."""

    def __init__(
        self,
        evaluate: Callable[[FrozenSet[str]], float],
        target: float,
        log: Optional[Callable[[str], None]],
    ) -> None:
        self.evaluate, self.target, self.log = evaluate, target, log
        self.cache: Dict[FrozenSet[str], float] = {}

    def metric(self, float_layers: Iterable[str]) -> float:
        key = frozenset(float_layers)
        if key not in self.cache:
            self.cache[key] = float(self.evaluate(key))
        return self.cache[key]

    def holds(self, float_layers: Iterable[str]) -> bool:
        return self.metric(float_layers) >= self.target

    def level(self, candidates: Sequence[str], sensitivity: Dict[str, float]) -> List[str]:
        """Steps 2-3 among ``candidates`` (everything outside them quantized); the chosen ones
        (all of them when even that misses the budget)."""
        candidates = list(dict.fromkeys(candidates))
        for name in candidates:
            sensitivity[name] = self.metric(set(candidates) - {name})
            self.say(f'only {name} quantized: {sensitivity[name]:.2f}')
        # most harmful first; ties keep the candidates' order (graph order: inputs first)
        order = sorted(candidates, key=lambda name: sensitivity[name])
        chosen: List[str] = []
        for name in order:
            chosen.append(name)
            self.say(f'+ {name} float: {self.metric(chosen):.2f}')
            if self.holds(chosen):
                break
        for name in list(reversed(chosen[:-1])):
            if self.holds(set(chosen) - {name}):
                chosen.remove(name)
                self.say(f'- {name} quantized again: {self.metric(chosen):.2f}')
        return chosen

    def say(self, line: str) -> None:
        if self.log:
            self.log(f'  {line}')


def select_float_layers(
    candidates: Sequence[str],
    evaluate: Callable[[FrozenSet[str]], float],
    float_metric: float,
    max_drop: float = 1.0,
    children: Optional[Callable[[str], Sequence[str]]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> FallbackResult:
    """The candidates (or their children) to keep in float so that the quantized model's metric
    is at least ``float_metric - max_drop``.

    Args:
        candidates: names of layer groups that may stay float, covering every quantized layer
            (e.g. stages), in graph order.
        evaluate: ``evaluate(float_layers) -> metric`` of the model quantized with the layers
            under those names kept float, on the selection set (never the set the result is
            reported on). Called with frozensets; each distinct set once.
        float_metric: the float model's metric on the same set.
        max_drop: the budget, in the metric's units.
        children: finer names under a candidate (``[]``: none), searched in the next level
            among the candidates chosen by this one.
        log: called with one line per evaluation (progress).
    """
    search = _Search(evaluate, float_metric - max_drop, log)
    quantized = search.metric(())
    search.say(f'all quantized: {quantized:.2f} (float {float_metric:.2f}, budget {max_drop})')
    sensitivity: Dict[str, float] = {}
    chosen: List[str] = []
    if quantized < search.target:
        chosen = search.level(candidates, sensitivity)
        while children and any(children(name) for name in chosen):
            # a chosen group without children stays a candidate of the next level as it is
            chosen = search.level(
                [child for name in chosen for child in (children(name) or [name])], sensitivity
            )
    metric = search.metric(chosen)
    return FallbackResult(
        float_layers=chosen,
        metric=metric,
        quantized_metric=quantized,
        float_metric=float_metric,
        max_drop=max_drop,
        within_budget=metric >= search.target,
        sensitivity=sensitivity,
        evaluations=len(search.cache),
    )


def candidate_hierarchy(
    layer_prefixes: Iterable[Sequence[str]],
) -> Tuple[List[str], Dict[str, List[str]]]:
    """The candidates of :func:`select_float_layers` from each layer's enclosing groups, coarse
    to fine (e.g. ``['backbone', 'backbone.stages', 'backbone.stages.0']``): the top-level
    groups in first-seen order, and ``children`` (group -> its sub-groups, first-seen order)
    for the groups with more than one sub-group (a group of one is not split)."""
    roots: List[str] = []
    children: Dict[str, List[str]] = {}
    for prefixes in layer_prefixes:
        if prefixes[0] not in roots:
            roots.append(prefixes[0])
        for parent, child in zip(prefixes, prefixes[1:]):
            siblings = children.setdefault(parent, [])
            if child not in siblings:
                siblings.append(child)
    return roots, {group: subs for group, subs in children.items() if len(subs) > 1}
