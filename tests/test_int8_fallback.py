"""The float-fallback search of INT8 quantization (``deploy/fallback.py``) on models made of
numbers: each test's ``evaluate`` says what a model quantized with some layers kept float would
score, so the search's choices can be checked exactly, in milliseconds. Also the ONNX candidate
groups (``deploy/quantization_fallback.py``) and the disjoint selection / report images."""

import onnx
from onnx import TensorProto, helper

from mobileone_dense.deploy.fallback import select_float_layers
from mobileone_dense.deploy.onnx_data import disjoint_indices
from mobileone_dense.deploy.quantization_fallback import candidate_groups

STAGES = ['stem/', 'stages.0/', 'stages.1/', 'head/']
BLOCKS = {
    'stages.0/': ['stages.0/b0/', 'stages.0/b1/', 'stages.0/b2/'],
    'stages.1/': ['stages.1/b0/'],
}


def model_with(costs, calls=None):
    """``evaluate`` of a model scoring 100 minus the cost of each quantized layer (a layer is
    quantized unless a name kept float covers it: names are prefixes)."""

    def evaluate(float_layers):
        if calls is not None:
            calls.append(float_layers)
        return 100.0 - sum(
            cost
            for layer, cost in costs.items()
            if not any(layer.startswith(name) for name in float_layers)
        )

    return evaluate


def children(name):
    return BLOCKS.get(name, [])


def test_nothing_stays_float_when_all_int8_is_within_the_budget():
    calls = []
    costs = {'stem/': 0.3, 'stages.0/b1/': 0.5}
    result = select_float_layers(STAGES, model_with(costs, calls), 100.0, 1.0, children)
    assert result.float_layers == [] and result.within_budget
    assert result.metric == result.quantized_metric == 99.2
    assert len(calls) == 1


def test_the_breaking_block_stays_float_not_its_stage():
    costs = {'stem/': 0.2, 'stages.0/b1/': 70.0, 'stages.1/b0/': 0.3}
    result = select_float_layers(STAGES, model_with(costs), 100.0, 1.0, children)
    assert result.float_layers == ['stages.0/b1/']
    assert result.quantized_metric == 29.5 and result.metric == 99.5 and result.within_budget
    # only b1 quantized among stage 0's blocks; the stages not chosen are quantized then
    assert result.sensitivity['stages.0/'] == 30.0 and result.sensitivity['stages.0/b1/'] == 29.5


def test_layers_that_each_break_the_model_alone_are_all_found():
    # quantizing either one alone gives chance: keeping only one float recovers nothing
    def evaluate(float_layers):
        broken = [
            n for n in ('stem/', 'stages.0/b0/') if not any(n.startswith(f) for f in float_layers)
        ]
        return 25.0 if broken else 100.0

    result = select_float_layers(STAGES, evaluate, 100.0, 1.0, children)
    assert sorted(result.float_layers) == ['stages.0/b0/', 'stem/'] and result.metric == 100.0


def test_a_choice_made_unnecessary_by_a_later_one_is_quantized_again():
    # A harms only while C is float (their errors cancel when both are quantized): alone it
    # looks the worst, so the greedy pass takes it first, then B closes the budget without it
    def evaluate(float_layers):
        quantized = {n for n in ('a/', 'b/', 'c/') if n not in float_layers}
        return (
            100.0
            - 5.0 * ({'a/'} <= quantized and 'c/' not in quantized)
            - 2.0 * ('b/' in quantized)
            - 0.8 * ('c/' in quantized)
        )

    result = select_float_layers(['a/', 'b/', 'c/'], evaluate, 100.0, 1.0)
    assert result.float_layers == ['b/'] and result.metric == 99.2


def test_an_unreachable_budget_is_reported():
    result = select_float_layers(['a/', 'b/'], lambda float_layers: 90.0, 100.0, 1.0)
    assert not result.within_budget and result.float_layers == ['a/', 'b/']


def test_candidate_groups_of_an_exported_graph():
    def node(op, name, inputs, output):
        return helper.make_node(op, inputs, [output], name=name)

    names = [
        ('Conv', '/model/backbone/stem/reparam_conv/Conv'),
        ('Relu', '/model/backbone/stem/act/Relu'),
        ('Conv', '/model/backbone/stages.0/stages.0.0/reparam_conv/Conv'),
        ('Relu', '/model/backbone/stages.0/stages.0.0/act/Relu'),
        ('Conv', '/model/backbone/stages.0/stages.0.1/reparam_conv/Conv'),
        ('GlobalAveragePool', '/model/neck/gap/GlobalAveragePool'),
        ('Flatten', '/model/neck/Flatten'),  # not quantized: no candidate of its own
        ('Gemm', '/model/head/fc/Gemm'),
        ('Softmax', '/Softmax'),  # outside the network
    ]
    nodes, tensor = [], 'input'
    for i, (op, name) in enumerate(names):
        inputs = [tensor] + ([f'w{i}'] if op in ('Conv', 'Gemm') else [])
        nodes.append(node(op, name, inputs, f't{i}'))
        tensor = f't{i}'
    graph = helper.make_graph(
        nodes,
        'g',
        [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None)],
    )
    import tempfile

    with tempfile.NamedTemporaryFile(suffix='.onnx') as f:
        onnx.save(helper.make_model(graph), f.name)
        coarse, finer = candidate_groups(f.name)
    assert coarse == ['/model/backbone/', '/model/neck/', '/model/head/']
    assert finer == {  # neck and head: one sub-module each, not split
        '/model/backbone/': ['/model/backbone/stem/', '/model/backbone/stages.0/'],
        '/model/backbone/stem/': [
            '/model/backbone/stem/reparam_conv/',
            '/model/backbone/stem/act/',
        ],
        '/model/backbone/stages.0/': [
            '/model/backbone/stages.0/stages.0.0/',
            '/model/backbone/stages.0/stages.0.1/',
        ],
    }


def test_levels_go_down_until_the_groups_have_no_children():
    tree = {
        'net/': ['net/backbone/', 'net/head/'],
        'net/backbone/': ['net/backbone/s0/', 'net/backbone/s1/'],
        'net/backbone/s0/': ['net/backbone/s0/b0/', 'net/backbone/s0/b1/'],
    }
    costs = {'net/backbone/s0/b1/': 50.0, 'net/head/': 0.4}
    result = select_float_layers(['net/'], model_with(costs), 100.0, 1.0, lambda g: tree.get(g, []))
    assert result.float_layers == ['net/backbone/s0/b1/'] and result.metric == 99.6


def test_selection_and_report_images_are_disjoint():
    selection, evaluation = disjoint_indices(300, 100)
    assert len(selection) == 100 and len(evaluation) == 200
    assert not set(selection) & set(evaluation) and set(selection) | set(evaluation) == set(
        range(300)
    )
    selection, evaluation = disjoint_indices(8, 100, 3)  # at most half for the selection
    assert len(selection) == 4 and len(evaluation) == 3 and not set(selection) & set(evaluation)
    assert disjoint_indices(5, 0) == ([], [0, 1, 2, 3, 4])
