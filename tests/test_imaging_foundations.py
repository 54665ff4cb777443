"""Foundations of the imaging family: objects, forward model, noise, patterns, coverage, metrics, config."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from trainers.config import ConfigError, build_config
from trainers.imaging import forward as fw
from trainers.imaging import metrics, sampling
from trainers.imaging.config import ImagingConfig
from trainers.imaging.objects import load_object, physical_object_size

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def moon64():
    return load_object("moon", 64)


def skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


# ---------------------------------------------------------------- metrics vs scikit-image
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_skimage_on_random_images(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((40, 50))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert metrics.ssim(tb, ta).item() == pytest.approx(skimage_ssim(a, b), abs=1e-4)
    assert metrics.psnr(tb, ta).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
    assert metrics.rmse(tb, ta).item() == pytest.approx(100 * normalized_root_mse(a, b), abs=1e-4)


def test_metrics_match_skimage_on_the_moon(moon64):
    truth = moon64.numpy().astype(np.float64)
    blurred = torch.nn.functional.avg_pool2d(moon64[None, None], 3, 1, 1)[0, 0].numpy().astype(np.float64)
    expected_ssim = skimage_ssim(truth, blurred)
    assert 0.3 < expected_ssim < 0.99  # a non-trivial pair
    result = metrics.image_metrics(torch.tensor(blurred), moon64)
    assert result["ssim"] == pytest.approx(expected_ssim, abs=1e-4)
    assert result["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, blurred, data_range=1.0), abs=1e-4)
    assert result["rmse"] == pytest.approx(100 * normalized_root_mse(truth, blurred), abs=1e-4)


def test_ssim_is_one_for_identical_and_batches():
    x = torch.rand(3, 20, 20)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3))
    y = torch.rand(3, 20, 20)
    batched = metrics.ssim(x, y)
    assert torch.allclose(batched, torch.stack([metrics.ssim(x[i], y[i]) for i in range(3)]))


def test_image_metrics_crop_to_the_object_window(moon64):
    padded = fw.pad_to_grid(moon64, 96)
    noisy = padded.clone()
    noisy[:4] = 1.0  # damage outside the object window only
    result = metrics.image_metrics(noisy, padded, obj_size=64)
    assert result["ssim"] == pytest.approx(1.0) and result["rmse"] == 0.0


# ---------------------------------------------------------------- objects
def test_load_object_moon_range_and_types():
    obj = load_object("moon", 32)
    assert obj.shape == (32, 32) and obj.dtype == torch.float32
    assert obj.min() == 0 and obj.max() == pytest.approx(1.0)
    assert load_object("moon", 32, complex_valued=True).dtype == torch.complex64
    assert load_object("hubble_deep_field", 24).shape == (24, 24)


def test_load_object_from_files(tmp_path):
    from skimage.io import imsave

    array = np.linspace(0, 1, 400).reshape(20, 20)
    np.save(tmp_path / "a.npy", array)
    imsave(tmp_path / "a.png", (array * 255).astype(np.uint8))
    from_npy, from_png = load_object(tmp_path / "a.npy", 20), load_object(tmp_path / "a.png", 20)
    assert torch.allclose(from_npy, torch.tensor(np.sqrt(array)).float(), atol=1e-6)
    assert torch.allclose(from_npy.square(), from_png.square(), atol=1 / 255)  # 8-bit quantisation


def test_load_object_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_object(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"a\.gif.*unsupported suffix"):
        load_object(tmp_path / "a.gif")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        load_object(tmp_path / "broken.png")
    np.save(tmp_path / "cube.npy", np.zeros((3, 4, 5, 6)))
    with pytest.raises(ValueError, match="cube.npy"):
        load_object(tmp_path / "cube.npy")


def test_physical_mode_gives_the_europa_catalogue_size():
    dx, size = physical_object_size(698.9e-9, 628.3e9, 3138e3, 0.01, 1024)
    assert size == 73 and dx == pytest.approx(698.9e-9 * 628.3e9 / (0.01 * 1024))
    obj = load_object("moon", wavelength=698.9e-9, distance=628.3e9, object_diameter=3138e3, dxf=0.01, grid=1024)
    assert obj.shape == (73, 73)
    with pytest.raises(ValueError, match="physical mode needs all"):
        load_object("moon", wavelength=1e-7)


# ---------------------------------------------------------------- forward model
def test_pad_and_crop_are_inverse_and_centred():
    obj = torch.rand(5, 5)
    padded = fw.pad_to_grid(obj, 16)
    assert torch.equal(fw.crop_to_object(padded, 5), obj)
    assert padded[8, 8] == obj[2, 2]  # object centre on the FFT origin N//2
    assert padded.sum().item() == pytest.approx(obj.sum().item(), rel=1e-6)


def test_full_pupil_image_is_the_object_intensity(moon64):
    padded = fw.pad_to_grid(moon64, 96)
    image = fw.intensity(fw.to_spectrum(padded))
    assert torch.allclose(image, padded.square(), atol=1e-5)


def test_intensity_is_the_modulus_squared_of_the_image(moon64):
    spectrum = fw.to_spectrum(fw.pad_to_grid(moon64, 96)) * fw.pupil_masks(torch.tensor([[3.0, -5.0]]), 15, 96)
    assert torch.allclose(fw.intensity(spectrum), fw.to_image(spectrum).abs().square(), atol=1e-7)


def test_flat_object_single_aperture_hand_computed():
    # A flat field c over the whole grid: its orthonormal spectrum is c*N at DC and zero elsewhere,
    # so an aperture holding DC images c^2 everywhere, and one missing DC images nothing.
    c, n = 0.7, 32
    spectrum = fw.to_spectrum(torch.full((n, n), c))
    assert spectrum[n // 2, n // 2].real.item() == pytest.approx(c * n, rel=1e-5)
    images = fw.measure(spectrum, torch.tensor([[0.0, 0.0], [8.0, 0.0]]), diameter=5)
    assert torch.allclose(images[0], torch.full((n, n), c * c), atol=1e-5)
    assert images[1].abs().max() < 1e-8


def test_parseval_energy_of_each_aperture(moon64):
    spectrum = fw.to_spectrum(fw.pad_to_grid(moon64, 96))
    centres = torch.tensor([[0.0, 0.0], [10.5, -7.2], [-20.0, 15.0]])
    images = fw.measure(spectrum, centres, diameter=11)
    masks = fw.pupil_masks(centres, 11, 96)
    expected = (spectrum.abs().square() * masks).sum(dim=(-2, -1))
    assert torch.allclose(images.sum(dim=(-2, -1)), expected, rtol=1e-4)
    assert masks[0].sum() == sum(1 for y in range(-6, 7) for x in range(-6, 7) if y * y + x * x <= 5.5**2)


def test_batched_measurement_equals_a_loop(moon64):
    spectrum = fw.to_spectrum(fw.pad_to_grid(moon64, 96))
    centres = sampling.fermat_pattern(9, 30)
    batched = fw.measure(spectrum, centres, 13, chunk_size=4)  # chunking must not matter
    for i, c in enumerate(centres):
        single = fw.intensity(spectrum * fw.pupil_masks(c, 13, 96))
        assert torch.allclose(batched[i], single, atol=1e-6)


def test_line_sample_is_the_incoherent_mean(moon64):
    spectrum = fw.to_spectrum(fw.pad_to_grid(moon64, 96))
    lines = sampling.lines_from_centres(torch.tensor([[0.0, 20.0]]), length=6.0)
    positions = sampling.line_positions(lines, 3)
    assert torch.allclose(positions[0], torch.tensor([[-3.0, 20.0], [0.0, 20.0], [3.0, 20.0]]), atol=1e-5)
    line = fw.measure(spectrum, positions, 9)[0]
    points = fw.measure(spectrum, positions[0], 9)
    assert torch.allclose(line, points.mean(dim=0), atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
@pytest.mark.parametrize("snr_db", [10.0, 30.0])
def test_noise_reaches_the_requested_snr(kind, snr_db, moon64):
    clean = fw.simulate(moon64, sampling.fermat_pattern(4, 20), 15, 96)
    noisy = fw.simulate(moon64, sampling.fermat_pattern(4, 20), 15, 96, snr_db=snr_db, noise=kind, seed=3)
    measured = 10 * torch.log10(clean.square().mean(dim=(-2, -1)) / (noisy - clean).square().mean(dim=(-2, -1)))
    assert torch.allclose(measured, torch.full_like(measured, snr_db), atol=0.5)
    again = fw.simulate(moon64, sampling.fermat_pattern(4, 20), 15, 96, snr_db=snr_db, noise=kind, seed=3)
    assert torch.equal(noisy, again)
    if kind == "poisson":
        assert (noisy >= 0).all()


def test_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="noise kind"):
        fw.add_noise(torch.ones(2, 4, 4), 10.0, "speckle")


# ---------------------------------------------------------------- patterns
def test_fermat_pattern():
    points = sampling.fermat_pattern(193, 100.0)
    assert points.shape == (193, 2) and torch.equal(points[0], torch.zeros(2))
    radii = points.norm(dim=1)
    assert torch.all(radii[1:] > radii[:-1]) and radii.max() < 100.0
    assert radii[-1].item() == pytest.approx(100 * math.sqrt(192 / 193), rel=1e-5)
    angle = math.degrees(math.atan2(points[1, 0].item(), points[1, 1].item())) % 360
    assert angle == pytest.approx(137.508, abs=1e-3)


def test_random_pattern_seeded_in_disc_sorted():
    a, b, c = (sampling.random_pattern(50, 40.0, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], torch.zeros(2)) and a.shape == (50, 2)
    radii = a.norm(dim=1)
    assert radii.max() <= 40.0 and torch.all(radii[1:] >= radii[:-1])


def test_grid_and_star_patterns():
    grid = sampling.grid_pattern(10.0, 5.0)
    assert grid.shape == (13, 2)  # lattice points (5i, 5j) with i^2 + j^2 <= 4
    assert torch.equal(grid[0], torch.zeros(2)) and grid.norm(dim=1).max() <= 10.0
    assert abs(len(sampling.generate_pattern("grid", 200, 50.0)) - 200) < 25
    star = sampling.star_pattern(4, 12.0, 3)
    assert star.shape == (13, 2) and torch.equal(star[0], torch.zeros(2))
    assert sorted(round(r, 4) for r in set(star.norm(dim=1).tolist())) == [0.0, 4.0, 8.0, 12.0]
    with pytest.raises(ValueError, match="unknown pattern"):
        sampling.generate_pattern("spiral", 10, 5.0)


def test_line_positions_need_an_odd_count():
    with pytest.raises(ValueError, match="odd"):
        sampling.line_positions(torch.zeros(1, 2, 2), 4)
    tangential = sampling.lines_from_centres(torch.tensor([[10.0, 0.0]]), 4.0)
    assert torch.allclose(tangential[0], torch.tensor([[10.0, 2.0], [10.0, -2.0]]), atol=1e-5)


def test_pattern_files(tmp_path):
    np.save(tmp_path / "p.npy", np.array([[0.0, 0.0], [3.0, 4.0]]))
    (tmp_path / "p.csv").write_text("y,x\n0,0\n3,4\n")
    (tmp_path / "lines.csv").write_text("0,0,0,4\n1,1,2,2\n")
    (tmp_path / "p.py").write_text("def generate_pattern(config):\n    return [[0, 0], [config, 1]]\n")
    assert torch.equal(sampling.load_pattern_file(tmp_path / "p.npy"), sampling.load_pattern_file(tmp_path / "p.csv"))
    assert sampling.load_pattern_file(tmp_path / "lines.csv").shape == (2, 2, 2)
    assert sampling.load_pattern_file(tmp_path / "p.py", 7).tolist() == [[0, 0], [7, 1]]
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        sampling.load_pattern_file(tmp_path / "nothere.npy")
    np.save(tmp_path / "bad.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"bad\.npy.*\(n, 2\)"):
        sampling.load_pattern_file(tmp_path / "bad.npy")
    (tmp_path / "nofunc.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="nofunc.py.*generate_pattern"):
        sampling.load_pattern_file(tmp_path / "nofunc.py")
    with pytest.raises(ValueError, match="outside the grid"):
        sampling.check_pattern([[0, 0], [60, 0]], grid=128, diameter=11)


# ---------------------------------------------------------------- coverage and the ceiling
def test_coverage_is_the_union_of_pupils():
    centres = torch.tensor([[0.0, 0.0], [0.0, 6.0], [-10.0, -10.0]])
    union = sampling.coverage_mask(centres, 9, 48)
    expected = fw.pupil_masks(centres, 9, 48).sum(dim=0) > 0
    assert torch.equal(union, expected)
    assert union.sum() < fw.pupil_masks(centres, 9, 48).sum()  # the first two overlap


def test_band_limited_reference_with_full_coverage_is_the_object(moon64):
    reference = sampling.band_limited_reference(moon64, torch.ones(96, 96, dtype=torch.bool))
    assert torch.allclose(reference, fw.pad_to_grid(moon64, 96), atol=1e-5)


def test_band_limited_reference_improves_with_coverage(moon64):
    def ceiling(n):
        coverage = sampling.coverage_mask(sampling.fermat_pattern(n, 30.0), 11, 128)
        reference = sampling.band_limited_reference(moon64, coverage)
        return metrics.ssim(fw.crop_to_object(reference, 64), moon64).item()

    few, many = ceiling(3), ceiling(60)
    assert few < many < 1.0 and many > 0.85


# ---------------------------------------------------------------- config
def test_config_defaults_and_ranges():
    config = ImagingConfig()
    assert config.radius_px() == 256 / 2 - 41 / 2 - 1 and config.object_size_px() == 128
    europa = ImagingConfig(wavelength=698.9e-9, distance=628.3e9, object_diameter=3138e3, dxf=0.01,
                           image_size=1024, sample_diameter=17)
    assert europa.object_size_px() == 73
    for bad, field in [({"image": "x.gif"}, "image"), ({"samples_per_line_meas": 2}, "samples_per_line_meas"),
                       ({"pattern": "spiral"}, "pattern"), ({"sample_diameter": 0}, "sample_diameter"),
                       ({"wavelength": 1e-7}, "physical mode"), ({"obj_size": 300}, "must fit"),
                       ({"pattern_radius": 120.0}, "inside the grid"), ({"bogus": 1}, "bogus")]:
        with pytest.raises(ConfigError, match=field):
            build_config(ImagingConfig, bad)


def test_config_check_files(tmp_path):
    ImagingConfig().check_files()  # built-ins need no files
    with pytest.raises(ConfigError, match=r"^image = .*missing\.png.*does not exist$"):
        ImagingConfig(image=str(tmp_path / "missing.png")).check_files()
    np.save(tmp_path / "far.npy", np.array([[0.0, 0.0], [120.0, 0.0]]))
    with pytest.raises(ConfigError, match=r"^pattern = .*outside the grid"):
        ImagingConfig(pattern=str(tmp_path / "far.npy")).check_files()
    np.save(tmp_path / "ok.npy", np.array([[0.0, 0.0], [20.0, 0.0]]))
    ImagingConfig(pattern=str(tmp_path / "ok.npy")).check_files()
