"""Cross-layer equalization (``deploy/equalization.py``): the equalized float model computes
what the original computes (float64), the ranges of each pair end up equal, and the places
where rescaling is not exact (ReLU6, a ReLU read twice, a graph output, grouped convs, shared
tensors) are left alone. Seconds: a random deploy S0 at 32x32 and hand-built graphs."""

import os.path as osp

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from apple_reference import REPO, randomized
from mmengine.config import Config
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mobileone_dense import reparameterize
from mobileone_dense.apis.model_building import build_model_from_config
from mobileone_dense.deploy.equalization import (
    ConvWeights,
    equalize_convs,
    equalize_onnx,
    find_pairs,
    input_channel_ranges,
    output_channel_ranges,
)
from mobileone_dense.deploy.onnx_export import export_onnx, onnx_session
from mobileone_dense.deploy.quantization import Calibration


def to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float64: float initializers, constants, inputs and
    outputs made double (our exports hold no other float tensors)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph

    def double(tensor):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

    for tensor in graph.initializer:
        double(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                double(attribute.t)
            elif node.op_type == 'Cast' and attribute.name == 'to':
                attribute.i = (
                    TensorProto.DOUBLE if attribute.i == TensorProto.FLOAT else attribute.i
                )
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    return model


@torch.no_grad()
def random_deploy_s0(path: str) -> None:
    """A random deploy MobileOne-S0 classifier (10 classes) exported at 1x3x32x32, with a few
    stage-0 BN channels of near-zero variance: folded kernels in the thousands, as in the
    trained models that collapse in INT8."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mobileone_s0_imagenet.py'))
    cfg.model.head.num_classes = 10
    model = randomized(build_model_from_config(cfg))
    for bn in model.backbone.stages[0][0].modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_var[[3, 17]] = 0.0  # gamma / sqrt(eps): about 3e3
            bn.weight[[3, 17]] = 10.0
    reparameterize(model)
    export_onnx(model, path, (1, 3, 32, 32))


def chain_graph(weights, groups, activations=('Relu', 'Relu'), extra_outputs=()):
    """A hand-built graph ``input (1, C, 6, 6) -> Conv -> act -> Conv -> act -> Conv ->
    output`` (3x3 convs, padding 1, with biases); tensors ``c0, a0, c1, a1, c2``."""
    rng = np.random.default_rng(0)
    nodes, inits, tensor = [], [], 'input'
    for i, (weight, group) in enumerate(zip(weights, groups)):
        inits += [
            numpy_helper.from_array(weight, f'w{i}'),
            numpy_helper.from_array(rng.normal(size=weight.shape[0]).astype(weight.dtype), f'b{i}'),
        ]
        nodes.append(
            helper.make_node(
                'Conv', [tensor, f'w{i}', f'b{i}'], [f'c{i}'], f'conv{i}', group=group, pads=[1] * 4
            )
        )
        tensor = f'c{i}'
        if i < len(activations):
            act = activations[i]
            inputs = [tensor, 'lo', 'hi'] if act == 'Clip' else [tensor]
            nodes.append(helper.make_node(act, inputs, [f'a{i}'], f'act{i}'))
            tensor = f'a{i}'
    inits += [
        numpy_helper.from_array(np.array(v, weights[0].dtype), n) for n, v in (('lo', 0), ('hi', 6))
    ]
    elem = helper.np_dtype_to_tensor_dtype(weights[0].dtype)
    graph = helper.make_graph(
        nodes,
        'chain',
        [helper.make_tensor_value_info('input', elem, [1, weights[0].shape[1] * groups[0], 6, 6])],
        [
            helper.make_tensor_value_info(name, elem, None)
            for name in (tensor,) + tuple(extra_outputs)
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])


def chain_weights(dtype=np.float64):
    """conv0 3 -> 8 (output channel 2 planted a thousandfold), depthwise conv1 8 -> 8, conv2
    8 -> 4."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(8, 3, 3, 3))
    w0[2] *= 1e3
    return [
        w.astype(dtype) for w in (w0, rng.normal(size=(8, 1, 3, 3)), rng.normal(size=(4, 8, 3, 3)))
    ]


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_equalized_model_computes_the_same_function_in_float64(tmp_path):
    path, equalized = str(tmp_path / 's0.onnx'), str(tmp_path / 's0_eq.onnx')
    random_deploy_s0(path)
    onnx.save(to_double(onnx.load(path)), str(tmp_path / 's0_f64.onnx'))
    report = equalize_onnx(str(tmp_path / 's0_f64.onnx'), equalized)
    # every conv -> ReLU -> conv of the backbone: 43 re-parameterized convs in one chain (the
    # last one's ReLU feeds the pooling, not a conv)
    assert len(report.pairs) == 42 and report.max_weight_before > 1e3
    assert report.max_weight_after < report.max_weight_before / 100
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32))
    (before,) = ReferenceEvaluator(str(tmp_path / 's0_f64.onnx')).run(None, {'input': x})
    (after,) = ReferenceEvaluator(equalized).run(None, {'input': x})
    assert before.dtype == after.dtype == np.float64
    difference = np.abs(after - before).max() / np.abs(before).max()
    assert difference < 1e-12, difference
    # float32 (what quantize_onnx.py calibrates): rounding of the rescaled weights only
    float32 = str(tmp_path / 's0_eq32.onnx')
    equalize_onnx(path, float32)
    x32 = x.astype(np.float32)
    (before32,) = onnx_session(path, 1).run(None, {'input': x32})
    (after32,) = onnx_session(float32, 1).run(None, {'input': x32})
    print(f'float32 (onnxruntime): {np.abs(after32 - before32).max() / np.abs(before32).max():.2e}')
    onnx.checker.check_model(onnx.load(float32), full_check=True)


def test_the_ranges_of_each_pair_are_equal_after(tmp_path):
    weights = chain_weights()
    path, out = str(tmp_path / 'chain.onnx'), str(tmp_path / 'chain_eq.onnx')
    onnx.save(chain_graph(weights, (1, 8, 1)), path)
    report = equalize_onnx(path, out, max_sweeps=1000, tolerance=1e-12)
    assert report.pairs == [('conv0', 'conv1'), ('conv1', 'conv2')] and report.converged
    new = initializers(onnx.load(out))
    convs = [ConvWeights(new[f'w{i}.equalized'], new[f'b{i}.equalized'], i == 1) for i in range(3)]
    for producer, consumer in zip(convs, convs[1:]):
        r1, r2 = output_channel_ranges(producer), input_channel_ranges(consumer)
        np.testing.assert_allclose(r1, r2, rtol=1e-6)
    # the planted channel: sqrt(r1 * r2) after one pair; its weights came down by far
    assert np.abs(convs[0].weight).max() < np.abs(weights[0]).max() / 10
    x = np.random.default_rng(2).normal(size=(1, 3, 6, 6))
    np.testing.assert_allclose(
        ReferenceEvaluator(out).run(None, {'input': x})[0],
        ReferenceEvaluator(path).run(None, {'input': x})[0],
        rtol=1e-12,
        atol=1e-12 * np.abs(ReferenceEvaluator(path).run(None, {'input': x})[0]).max(),
    )


def test_zero_ranges_keep_the_scale_at_one():
    convs = dict(
        a=ConvWeights(np.array([[1.0, 0.0], [0.0, 0.0], [4.0, 1.0]])),
        b=ConvWeights(np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])),
    )
    equalize_convs(convs, [('a', 'b')], tolerance=1e-12)
    # channel 0: sqrt(1 / 1) = 1; channel 1 (producer range 0) and 2 (consumer range 0): 1
    np.testing.assert_array_equal(convs['a'].weight, [[1.0, 0.0], [0.0, 0.0], [4.0, 1.0]])


@pytest.mark.parametrize(
    'case',
    [
        'relu6',
        'relu_read_twice',
        'relu_is_an_output',
        'conv_read_twice',
        'conv_is_an_output',
        'grouped',
    ],
)
def test_places_where_rescaling_is_not_exact_are_left_alone(tmp_path, case):
    weights = chain_weights(np.float32)
    groups, activations, outputs = (1, 8, 1), ('Relu', 'Relu'), ()
    if case == 'relu6':  # clip at 6 does not commute with a scale
        activations = ('Clip', 'Relu')
    elif case == 'relu_is_an_output':
        outputs = ('a0',)
    elif case == 'conv_is_an_output':  # the pre-activation
        outputs = ('c0',)
    elif case == 'grouped':  # 2 groups of 4 channels: not depthwise
        weights[1] = np.ones((8, 4, 3, 3), np.float32)
        groups = (1, 2, 1)
    model = chain_graph(weights, groups, activations, outputs)
    if case in ('relu_read_twice', 'conv_read_twice'):
        read = 'a0' if case == 'relu_read_twice' else 'c0'
        model.graph.node.append(helper.make_node('Neg', [read], ['extra'], 'extra'))
        model.graph.output.append(helper.make_tensor_value_info('extra', TensorProto.FLOAT, None))
    path, out = str(tmp_path / 'chain.onnx'), str(tmp_path / 'chain_eq.onnx')
    onnx.save(model, path)
    report = equalize_onnx(path, out)
    assert report.pairs == [('conv1', 'conv2')]  # only the second pair is exact
    old, new = initializers(onnx.load(path)), initializers(onnx.load(out))
    np.testing.assert_array_equal(new['w0'], old['w0'])
    np.testing.assert_array_equal(new['b0'], old['b0'])
    assert 'w0.equalized' not in new and 'w1.equalized' in new


def test_a_tensor_shared_with_other_nodes_is_changed_for_the_pair_only(tmp_path):
    # the TorchScript exporter shares equal tensors, through Identity nodes: conv0's bias is
    # also the bias of a conv outside the pair
    model = chain_graph(chain_weights(np.float32), (1, 8, 1))
    graph = model.graph
    graph.node.insert(0, helper.make_node('Identity', ['b0'], ['b0_shared'], 'share'))
    graph.node[1].input[2] = 'b0_shared'
    graph.initializer.append(numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), 'w_side'))
    graph.node.append(helper.make_node('Conv', ['input', 'w_side', 'b0_shared'], ['side'], 'side'))
    graph.output.append(helper.make_tensor_value_info('side', TensorProto.FLOAT, None))
    path, out = str(tmp_path / 'chain.onnx'), str(tmp_path / 'chain_eq.onnx')
    onnx.save(model, path)
    assert len(equalize_onnx(path, out).pairs) == 2
    equalized = onnx.load(out)
    side = next(n for n in equalized.graph.node if n.name == 'side')
    np.testing.assert_array_equal(
        ReferenceEvaluator(equalized).run(['side'], {'input': np.ones((1, 3, 6, 6), np.float32)}),
        ReferenceEvaluator(model).run(['side'], {'input': np.ones((1, 3, 6, 6), np.float32)}),
    )
    assert side.input[2] == 'b0_shared' and any(n.name == 'share' for n in equalized.graph.node)


def test_find_pairs_of_an_exported_backbone(tmp_path):
    path = str(tmp_path / 's0.onnx')
    random_deploy_s0(path)
    pairs = find_pairs(onnx.load(path).graph)
    names = [(p.name, c.name) for p, c in pairs]
    assert names[0] == (
        '/model/backbone/stem/reparam_conv/Conv',
        '/model/backbone/stages.0/stages.0.0/reparam_conv/Conv',
    )
    assert all(p.op_type == c.op_type == 'Conv' for p, c in pairs)
    assert names[-1][1] == '/model/backbone/stages.3/stages.3.1/reparam_conv/Conv'


def test_calibration_quantizes_the_equalized_model(tmp_path):
    # quantize_onnx.py --equalize: what is calibrated and quantized is the equalized graph
    path = str(tmp_path / 's0.onnx')
    random_deploy_s0(path)
    feeds = [
        {'input': np.random.default_rng(i).normal(size=(1, 3, 32, 32)).astype(np.float32)}
        for i in range(2)
    ]

    def largest_conv_weight(prepared):
        model = onnx.load(prepared)
        values = initializers(model)
        return max(
            float(np.abs(values[n.input[1]]).max()) for n in model.graph.node if n.op_type == 'Conv'
        )

    with Calibration(path, feeds, str(tmp_path)) as plain:
        assert plain.equalization is None and largest_conv_weight(plain.prepared) > 1e3
    with Calibration(path, feeds, str(tmp_path), equalize=True) as equalized:
        assert len(equalized.equalization.pairs) == 42
        assert largest_conv_weight(equalized.prepared) < 100
        equalized.write(str(tmp_path / 'int8.onnx'))
    assert onnx_session(str(tmp_path / 'int8.onnx'), 1).run(None, feeds[0])[0].shape == (1, 10)
