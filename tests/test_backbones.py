"""The backbone registry: TF-free import, names, stages that cover every layer exactly once."""

import re
import subprocess
import sys

import pytest

from keras_tl import backbones


def test_import_does_not_load_tensorflow():
    code = "import sys, keras_tl.backbones as b; b.get('resnet101'); b.stage_of('resnet101', 'conv4_block1_out'); print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError) as e:
        backbones.get("resnet102")
    msg = e.value.args[0]
    assert msg.startswith("unknown backbone 'resnet102'; valid: ")
    for name in backbones.names():
        assert name in msg


def test_required_entries_and_preprocessing_modes():
    expected = {
        "resnet50": "caffe", "resnet101": "caffe", "resnet152": "caffe",
        "resnet50v2": "tf", "resnet101v2": "tf",
        "efficientnetb0": "none", "mobilenetv3small": "none", "convnext_tiny": "none",
        "densenet121": "torch",
    }
    for name, mode in expected.items():
        assert backbones.get(name).preprocess == mode, name
    assert backbones.get("resnet101").stages == ("conv1", "conv2", "conv3", "conv4", "conv5")
    assert backbones.get("resnet101").weights_file == "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert backbones.get("efficientnetb0").stages == ("stem",) + tuple(f"block{i}" for i in range(1, 8)) + ("top",)


def test_stage_of_by_name():
    assert backbones.stage_of("resnet101", "pool1_pool") == "conv1"
    assert backbones.stage_of("resnet101", "conv4_block23_out") == "conv4"
    assert backbones.stage_of("resnet50v2", "post_bn") == "conv5"
    assert backbones.stage_of("resnet50", "post_bn") is None
    assert backbones.stage_of("mobilenetv3small", "expanded_conv_10_add") == "block4"
    assert backbones.stage_of("mobilenetv3small", "expanded_conv_1_project") == "block2"
    with pytest.raises(KeyError):
        backbones.stage_output_layer("resnet50", "stage9")


@pytest.mark.parametrize("name", backbones.names())
def test_builds_and_every_layer_in_exactly_one_stage(name):
    entry = backbones.get(name)
    model = backbones.build_backbone(entry, (32, 32, 3))
    assert model.output.shape[-1] == entry.feature_width
    compiled = [(s, re.compile(p)) for s, p in entry.stage_patterns]
    assert [s for s, _ in compiled] == list(entry.stages)
    last = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        hits = [s for s, p in compiled if p.fullmatch(layer.name)]
        assert len(hits) == 1, f"{name}: layer {layer.name} matches stages {hits}"
        last[hits[0]] = layer.name
    # Every stage is non-empty, appears in order, and its declared output is its last layer.
    order = [backbones.stage_of(entry, l.name) for l in model.layers if type(l).__name__ != "InputLayer"]
    firsts = [order.index(s) for s in entry.stages]
    assert firsts == sorted(firsts)
    for stage in entry.stages:
        assert backbones.stage_output_layer(entry, stage) == last[stage], (name, stage)
    # Stable names: no Keras counter-named layers survive (they differ between processes).
    assert not any(re.fullmatch(r"(re_lu|activation|rescaling|normalization|layer_normalization|zero_padding2d)(_\d+)?", l.name) for l in model.layers)



def test_study_cost_comes_from_the_record():
    from keras_tl import recipe as recipe_lib
    from keras_tl.study import plan as plan_lib

    def spi(backbone, size):
        return plan_lib.default_seconds_per_image(recipe_lib.from_dict(
            {"data": {"image_size": [size, size]}, "model": {"backbone": backbone, "weights": "none"}}))

    assert spi("efficientnet_lite0", 64) == backbones.get("efficientnet_lite0").seconds_per_image_64px == 0.0100
    assert spi("efficientnet_lite0", 128) == pytest.approx(4 * 0.0100)
    assert spi("efficientnet_lite0", 32) == 0.0100  # below 64 px not proportionally cheaper
    assert backbones.get("convnext_tiny").seconds_per_image_64px is None
    assert spi("convnext_tiny", 64) == backbones.DEFAULT_SECONDS_PER_IMAGE
