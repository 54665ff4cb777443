"""Measured data in: a PtyLab FPM HDF5 file written from our simulation is read by PtyLab's own
loader (same frames, same window positions), reconstructs through run.py, and a malformed or
mismatched file exits 2 naming the dataset, before Ray starts."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import run
from trainers.imaging.measured import write_simulation
from trainers.imaging.metrics import image_metrics
from trainers.imaging.mopie_config import MopieConfig

# moon 64 px in a 128 grid, 61 apertures of 21 px
SMALL = dict(obj_size=64, image_size=128, n_samples=61, sample_diameter=21.0)
SETS = [f"--set={key}={value}" for key, value in SMALL.items()]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    path = tmp_path_factory.mktemp("measured") / "moon.hdf5"
    return write_simulation(path, MopieConfig(**SMALL))


def test_ptylab_reads_our_file(measured):
    from PtyLab import ExperimentalData, Params, Reconstruction

    path, _ = measured
    data = ExperimentalData(operationMode="FPM")
    data.loadData(str(path))
    assert data.ptychogram.shape == (61, 44, 44)
    reconstruction = Reconstruction(data, Params())
    reconstruction.No = 128 + 44
    from trainers.imaging.experiment import sample_positions

    centres = sample_positions(MopieConfig(**SMALL), 1)[:, 0].round().long().numpy()
    assert np.array_equal(reconstruction.positions, centres + reconstruction.No // 2 - 44 // 2)


@pytest.mark.long
@pytest.mark.ray
def test_run_reconstructs_a_measured_file(ray_session, measured, tmp_path):
    path, truth = measured
    code = run.main(["--algorithm", "mopie", "--storage", str(tmp_path), "--name", "measured", *SETS,
                     f"--set=measurements={path}", "--set=max_iterations=6", "--set=image=/nonexistent.png"])
    assert code == 0
    folder = tmp_path / "measured" / "reconstruction"
    reconstruction = torch.from_numpy(np.load(folder / "reconstruction.npy"))
    assert image_metrics(reconstruction, truth, 64)["ssim"] > 0.9
    header = (folder / "quality.csv").read_text().splitlines()[0]
    assert "residual" in header and "test_ssim" not in header  # no truth in a measured file


def _corrupt(source, target, change):
    with h5py.File(source, "r") as original, h5py.File(target, "w") as copy:
        for key in original:
            copy[key] = original[key][()]
        change(copy)


def _drop(key):
    return lambda f: f.__delitem__(key)


def _set(key, make):
    def change(f):
        old = f[key][()]
        del f[key]
        f[key] = make(old)
    return change


def _smaller_frames(f):
    """40 px frames of the same 21 px pupil (NA scaled with the frame): below 2d + 1 = 43."""
    _set("ptychogram", lambda p: p[:, 2:-2, 2:-2])(f)
    _set("NA", lambda na: na * 44 / 40)(f)


@pytest.mark.parametrize("change, dataset", [
    (_drop("zled"), "zled"),
    (_drop("ptychogram"), "ptychogram"),
    (_set("encoder", lambda e: e * 40), "encoder"),                                   # outside the grid
    (_set("ptychogram", lambda p: np.where(np.arange(p.size).reshape(p.shape) == 7, np.nan, p)), "ptychogram"),
    (_set("ptychogram", lambda p: p[:, :40, :]), "ptychogram"),                       # not square
    (_set("encoder", lambda e: e[:-1]), "encoder"),                                   # one position short
    (_smaller_frames, "ptychogram"),                                                  # too small for 2d + 1
    (_set("NA", lambda na: na * 2), "NA"),                                            # another pupil
])
def test_a_malformed_file_exits_2_naming_the_dataset(measured, tmp_path, capsys, change, dataset):
    path, _ = measured
    bad = tmp_path / "bad.hdf5"
    _corrupt(path, bad, change)
    code = run.main(["--algorithm", "prism", "--storage", str(tmp_path), *SETS, f"--set=measurements={bad}"])
    err = capsys.readouterr().err
    assert code == 2 and "measurements" in err and f"'{dataset}'" in err, err
