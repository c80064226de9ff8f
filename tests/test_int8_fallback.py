"""The float-fallback search of INT8 quantization (``deploy/fallback.py``) on models made of
numbers: each test's ``evaluate`` says what a model quantized with some layers kept float would
score, so the search's choices can be checked exactly, in milliseconds. Also the ONNX candidate
groups (``deploy/quantization_fallback.py``), the disjoint selection / report images, and the
collapse case on a real network: near-zero BN variances that break INT8 without the fallback."""

import os.path as osp

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from apple_reference import REPO, AppleMobileOne, MobileOneBlock, randomized
from mmengine.config import Config
from onnx import TensorProto, helper

from mobileone_dense import reparameterize
from mobileone_dense.apis.model_building import build_model_from_config
from mobileone_dense.converters import convert_state_dict, load_weights_strictly
from mobileone_dense.deploy.fallback import select_float_layers
from mobileone_dense.deploy.onnx_data import disjoint_indices
from mobileone_dense.deploy.onnx_evaluation import agreement, top1_labels
from mobileone_dense.deploy.onnx_export import export_onnx, onnx_session
from mobileone_dense.deploy.onnx_metadata import read_metadata
from mobileone_dense.deploy.quantization import Calibration
from mobileone_dense.deploy.quantization_fallback import candidate_groups, search_float_layers

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


# --- the collapse case, built on the mechanism -------------------------------------------------
# Apple-layout S0 weights (tests/apple_reference.py) whose BN statistics are those of the data,
# as training leaves them, except that a few stem channels are dead (constant): the stage-0 block
# reading them sees zero variance there, so its branches' BN folds a kernel of gamma / sqrt(eps)
# into the re-parameterized conv. In float the channel is exactly its running mean and the
# kernel does nothing; in INT8 the rounding of the constant input (range / 255) is multiplied by
# it. The other blocks are near-identity (small conv branches beside the BN skip) so that INT8
# rounding elsewhere costs nothing: the collapse is the mechanism's alone.

COLLAPSE_SIZE = 64
DEAD_STEM_CHANNELS = torch.arange(6) * 5 + 1
COLOURS = np.array([[1.5, -1, -1], [-1, 1.5, -1], [-1, -1, 1.5], [0.3, 0.3, 0.3]], np.float32)


def colour_images(rng, num):
    """``num`` normalized images ``(num, 3, S, S)`` of 4 colour classes (labels ``i % 4``), with
    a per-image colour jitter and pixel noise."""
    labels = np.arange(num) % 4
    images = (
        COLOURS[labels][:, :, None, None]
        + rng.normal(0, 0.05, (num, 3, 1, 1))
        + rng.normal(0, 0.02, (num, 3, COLLAPSE_SIZE, COLLAPSE_SIZE))
    )
    return torch.from_numpy(images.astype(np.float32)), labels


@torch.no_grad()
def apple_s0_with_dead_channels(train, dead=True):
    """The Apple-layout S0 (4 classes) described above, its BN statistics measured on ``train``
    (dead stem channels and gamma 10 in the next block's branches unless ``dead`` is False)."""
    apple = randomized(AppleMobileOne('s0', num_classes=4))
    for block in apple.modules():
        if isinstance(block, MobileOneBlock) and block.rbr_skip is not None:
            block.rbr_skip.weight.fill_(1.0)
            block.rbr_skip.bias.zero_()
            for branch in list(block.rbr_conv) + [b for b in [block.rbr_scale] if b is not None]:
                branch.bn.weight.mul_(0.1)
    if dead:
        idx = DEAD_STEM_CHANNELS
        stem, block = apple.stage0, apple.stage1[0]
        for k, branch in enumerate(list(stem.rbr_conv) + [stem.rbr_scale]):
            branch.conv.weight[idx] = 0  # constant, positive output: relu(sum of BN biases)
            branch.bn.bias[idx] = torch.linspace(0.05, 0.13, len(idx)) * (1 + 0.1 * k)
        for branch in block.rbr_conv:  # centre taps only: the constant input, borders included
            centre = branch.conv.weight[idx, :, 1, 1].clone()
            branch.conv.weight[idx] = 0
            branch.conv.weight[idx, :, 1, 1] = centre
        for branch in list(block.rbr_conv) + [block.rbr_scale]:
            branch.bn.weight[idx] = 10.0
    for bn in apple.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # the cumulative average: the statistics of this batch
    apple.train()(train)
    return apple.eval()


@torch.no_grad()
def deploy_classifier(apple, train, labels):
    """Our deploy classifier of ``apple`` (converted, re-parameterized), its linear head refit by
    ridge regression on the penultimate features of ``train`` so that it classifies the colours
    with clear margins."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'mobileone_s0_imagenet.py'))
    cfg.model.head.num_classes = 4
    model = build_model_from_config(cfg).eval()
    load_weights_strictly(model, convert_state_dict(apple.state_dict()))
    reparameterize(model)
    feats = model.extract_feat(train)[-1].double()
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    design = torch.cat([(feats - mean) / std, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
    targets = F.one_hot(torch.from_numpy(labels), 4).double() * 2 - 1
    eye = torch.eye(design.shape[1], dtype=design.dtype)
    solution = torch.linalg.solve(design.T @ design + eye, design.T @ targets)
    model.head.fc.weight.copy_((solution[:-1] / std[:, None]).T.float())
    model.head.fc.bias.copy_((solution[-1] - (mean / std) @ solution[:-1]).float())
    return model


def collapse_case(tmp_path, dead=True):
    """(kept float, selection agreement all INT8, held-out agreement: all INT8 / with the
    fallback, in images of 40, largest folded stage-0 kernel) of the model above, quantized with
    the tool's defaults (MinMax, per channel, 32 calibration images, budget 1 point)."""
    rng = np.random.default_rng(0)
    train, train_labels = colour_images(rng, 32)
    val, _ = colour_images(rng, 160)
    model = deploy_classifier(apple_s0_with_dead_channels(train, dead), train, train_labels)
    kernel = float(model.backbone.stages[0][0].reparam_conv.weight.detach().abs().max())
    path = str(tmp_path / 'cls.onnx')
    export_onnx(model, path, (1, 3, COLLAPSE_SIZE, COLLAPSE_SIZE))
    meta, session = read_metadata(path), onnx_session(path, 1)
    feeds = [{'input': image[None].numpy()} for image in val]
    logits = np.concatenate([session.run(None, feed)[0] for feed in feeds])
    top2 = np.sort(logits, 1)[:, -2:]
    # the images the float model classifies with the largest margins: INT8 rounding of a sound
    # model does not flip them, the mechanism does
    keep = np.sort(np.argsort(top2[:, 0] - top2[:, 1])[:80])
    feeds = [feeds[i] for i in keep]
    selection, held_out = feeds[::2], feeds[1::2]
    reference = top1_labels(session, meta, held_out)
    selection_reference = top1_labels(session, meta, selection)
    train_feeds = [{'input': image[None].numpy()} for image in train]

    def agree(path_, feeds_, reference_):
        return int(np.sum(top1_labels(onnx_session(path_, 1), meta, feeds_) == reference_))

    with Calibration(path, train_feeds, str(tmp_path)) as calibration:
        quantized = str(tmp_path / 'all_int8.onnx')
        calibration.write(quantized)
        all_int8 = agree(quantized, held_out, reference)
        search = search_float_layers(
            calibration,
            lambda s: agreement(top1_labels(s, meta, selection), selection_reference),
            100.0,
            1.0,
            num_threads=1,
        )
        calibration.write(quantized, search.float_layers)
        with_fallback = agree(quantized, held_out, reference)
    return search, all_int8, with_fallback, kernel


def test_near_zero_bn_variances_collapse_int8_without_the_fallback_and_hold_with_it(tmp_path):
    search, all_int8, with_fallback, kernel = collapse_case(tmp_path)
    assert kernel > 1e3  # gamma / sqrt(eps) folded: the mechanism is there
    # without the fallback (every layer INT8): far from the float model, on both image sets
    assert all_int8 <= 30, f'all INT8 agrees on {all_int8} of 40 held-out images'
    assert search.quantized_metric <= 75.0
    # with it: within the budget on the selection images, and on the 40 others
    assert search.within_budget and search.metric >= 99.0
    assert with_fallback >= 39, f'the fallback agrees on {with_fallback} of 40'
    # what stays float is where the huge kernels are (the stem and stage 0), not the rest
    assert search.float_layers and all(
        name.startswith(('/model/backbone/stem/', '/model/backbone/stages.0/'))
        for name in search.float_layers
    ), search.float_layers


def test_without_near_zero_variances_the_same_model_holds_in_int8(tmp_path):
    # the control: the collapse above is the dead channels' doing, not INT8 on this network
    search, all_int8, _, kernel = collapse_case(tmp_path, dead=False)
    assert kernel < 100
    assert all_int8 >= 39 and search.float_layers == [] and search.quantized_metric >= 99.0
