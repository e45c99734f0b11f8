"""Tests for keras_tl.data.synthetic: determinism, index independence, balance, shapes, surveys."""

import dataclasses

import numpy as np
import pytest

from keras_tl.data import synthetic

SIZE = 32


def test_class_names_order():
    assert synthetic.CLASS_NAMES[0] == "disturbed"
    assert synthetic.CLASS_NAMES[-1] == "edge_on_with_bulge"
    assert len(synthetic.CLASS_NAMES) == len(set(synthetic.CLASS_NAMES)) == 10


def test_same_seed_same_bytes_different_seed_differs():
    a, la = synthetic.generate(range(12), seed=7, image_size=SIZE)
    b, lb = synthetic.generate(range(12), seed=7, image_size=SIZE)
    c, _ = synthetic.generate(range(12), seed=8, image_size=SIZE)
    assert a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(la, lb)
    assert all(not np.array_equal(a[k], c[k]) for k in range(12))


@pytest.mark.parametrize("output,bands", [("uint8", 3), ("float", 5)])
def test_subset_equals_slice(output, bands):
    kw = dict(seed=3, image_size=SIZE, output=output, bands=bands, survey="sdss")
    full, full_labels = synthetic.generate(range(30), **kw)
    picked = [29, 5, 17, 5]
    sub, sub_labels = synthetic.generate(picked, **kw)
    assert sub.tobytes() == full[picked].tobytes()
    np.testing.assert_array_equal(sub_labels, full_labels[picked])
    single, _ = synthetic.generate([17], **kw)
    assert single.tobytes() == full[17:18].tobytes()


def test_chunk_boundaries_do_not_matter():
    n = synthetic._CHUNK + 7
    full, _ = synthetic.generate(range(n), seed=2, image_size=16)
    tail, _ = synthetic.generate(range(n - 10, n), seed=2, image_size=16)
    assert tail.tobytes() == full[-10:].tobytes()


def test_classes_balanced_and_label_of_agrees():
    _, labels = synthetic.generate(range(40), seed=11, image_size=16)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 4))
    assert [synthetic.label_of(i, 11) for i in range(40)] == labels.tolist()
    np.testing.assert_array_equal(synthetic.labels_of(range(40), 11), labels)
    assert synthetic.labels_of(range(40), 12).tolist() != labels.tolist()
    # Labels are not simply index % 10, so strided subsets stay mixed.
    assert labels.tolist() != [i % 10 for i in range(40)]
    assert len(set(labels[::10].tolist())) > 1


@pytest.mark.parametrize(
    "kw,shape,dtype",
    [
        (dict(), (4, SIZE, SIZE, 3), np.uint8),
        (dict(output="float", bands=5), (4, SIZE, SIZE, 5), np.float32),
        (dict(output="float", bands=1), (4, SIZE, SIZE, 1), np.float32),
    ],
)
def test_shapes_and_dtypes(kw, shape, dtype):
    images, labels = synthetic.generate(range(4), seed=0, image_size=SIZE, **kw)
    assert images.shape == shape and images.dtype == dtype
    assert labels.shape == (4,) and labels.dtype == np.int32
    assert np.isfinite(images.astype(np.float64)).all()
    assert images.std() > 0


def test_images_have_a_galaxy_not_just_noise():
    images, _ = synthetic.generate(range(20), seed=1, image_size=SIZE, output="float", survey="hsc")
    centre = images[:, SIZE // 2 - 4 : SIZE // 2 + 4, SIZE // 2 - 4 : SIZE // 2 + 4].mean(axis=(1, 2, 3))
    corner = images[:, :6, :6].mean(axis=(1, 2, 3))
    assert (centre > corner + 3 * synthetic.SURVEYS["hsc"].sky_noise).all()


def test_bulges_redder_than_disks():
    images, labels = synthetic.generate(range(200), seed=4, image_size=SIZE, output="float", noise_scale=0.0)
    flux = images[:, 12:20, 12:20].sum(axis=(1, 2))
    red_minus_blue = np.log(flux[:, 2] / flux[:, 0])
    smooth = np.isin(labels, [synthetic.CLASS_NAMES.index("round_smooth")])
    loose = np.isin(labels, [synthetic.CLASS_NAMES.index("unbarred_loose_spiral")])
    assert red_minus_blue[smooth].mean() > red_minus_blue[loose].mean() + 0.3


def _high_frequency_fraction(images):
    spectrum = np.abs(np.fft.fft2(images, axes=(1, 2))) ** 2
    freq = np.abs(np.fft.fftfreq(images.shape[1]))
    high = (freq[:, None] > 0.25) | (freq[None, :] > 0.25)
    return spectrum[:, high].sum() / spectrum.sum()


def test_surveys_differ_in_blur_and_depth():
    kw = dict(seed=5, image_size=SIZE, output="float", noise_scale=0.0)
    sharp, _ = synthetic.generate(range(10), survey="hsc", **kw)
    blurry, _ = synthetic.generate(range(10), survey="sdss", **kw)
    assert _high_frequency_fraction(sharp) > 2 * _high_frequency_fraction(blurry)

    noisy = dict(seed=5, image_size=SIZE, output="float")
    deep, _ = synthetic.generate(range(10), survey="hsc", **noisy)
    shallow, _ = synthetic.generate(range(10), survey="sdss", **noisy)
    assert shallow[:, :4, :4].std() > 3 * deep[:, :4, :4].std()


def test_noise_scale_zero_removes_noise_and_scales():
    kw = dict(seed=6, image_size=SIZE, output="float")
    clean, _ = synthetic.generate(range(3), noise_scale=0.0, **kw)
    once, _ = synthetic.generate(range(3), **kw)
    twice, _ = synthetic.generate(range(3), noise_scale=2.0, **kw)
    assert np.abs(twice - clean).std() > 1.5 * np.abs(once - clean).std()


def test_custom_survey_and_band_response():
    base = dict(seed=9, image_size=SIZE, output="float", noise_scale=0.0)
    plain, _ = synthetic.generate(range(3), survey=synthetic.Survey(name="x", star_density=0.0), **base)
    gained, _ = synthetic.generate(
        range(3), survey=synthetic.Survey(name="x", star_density=0.0, band_response=(1.0, 1.0, 2.0)), **base
    )
    np.testing.assert_allclose(gained[..., 2], 2 * plain[..., 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gained[..., 0], plain[..., 0], rtol=1e-5, atol=1e-6)
    assert dataclasses.is_dataclass(synthetic.Survey) and {"decals", "hsc", "sdss"} <= set(synthetic.SURVEYS)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(output="uint8", bands=5), "bands=5"),
        (dict(output="png"), "output='png'"),
        (dict(survey="hubble"), "survey='hubble'"),
        (dict(image_size=4), "image_size=4"),
        (dict(noise_scale=-1.0), "noise_scale=-1.0"),
    ],
)
def test_bad_arguments_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        synthetic.generate(range(2), seed=0, **kw)


def test_bad_indices_and_survey_values():
    with pytest.raises(ValueError, match="non-negative"):
        synthetic.generate([-1], seed=0)
    with pytest.raises(ValueError, match="psf_fwhm"):
        synthetic.Survey(psf_fwhm=0.0)
    assert synthetic.generate([], seed=0)[0].shape == (0, 64, 64, 3)
