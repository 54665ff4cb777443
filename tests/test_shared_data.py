"""Data built once per search: the trainer seam in-process (an offer with the config's
fingerprint is read, any other is ignored), then a real Tune search on the session's Ray, where
every trial reads the driver's one object, and a search whose space varies a data key, where
each trial builds its own."""
from __future__ import annotations

import pandas as pd
import pytest

import tune
from trainers.base import SharedData
from trainers.context import LocalContext
from trainers.imaging.mopie import MopieTrainer
from trainers.imaging.mopie_config import MopieConfig

SMALL = dict(obj_size=32, image_size=64, n_samples=12, sample_diameter=11.0, max_iterations=2, patience=0)
SMALL_SETS = [f"--set={key}={value}" for key, value in SMALL.items()]


class OfferingContext(LocalContext):
    """LocalContext with an offer of shared data, counting how often it is read."""

    def __init__(self, fingerprint, data):
        super().__init__("mopie")
        self.loads = 0

        def load():
            self.loads += 1
            return data

        self.shared_data = SharedData(fingerprint, load, "object test")


def test_an_offer_built_from_the_same_config_is_read_and_any_other_is_ignored(one_thread):
    config = MopieConfig(**SMALL)
    data = MopieTrainer.build_shared_data(config)
    built = MopieTrainer(config, LocalContext("mopie"))
    assert built.shared_data_source == "built"

    offered = OfferingContext(MopieTrainer.shared_data_fingerprint(config), data)
    reader = MopieTrainer(config, offered)
    assert offered.loads == 1 and reader.shared_data_source == "object test"
    # the same measurements, read instead of simulated: the same run, and the shared copy untouched
    frames = data.frames.clone()
    assert reader.fit().history[-1]["residual"] == pytest.approx(built.fit().history[-1]["residual"], rel=1e-6)
    assert data.experiment.images is None and data.frames.equal(frames)
    result = offered.reports[-1]
    assert result["shared_data"] == "object test" and result["shared_data_seconds"] >= 0

    # another noise seed is other measurements: an offer made for the first config is not read
    other = MopieConfig(**SMALL, snr=30.0, noise_seed=1)
    stale = OfferingContext(MopieTrainer.shared_data_fingerprint(MopieConfig(**SMALL, snr=30.0)), data)
    assert MopieTrainer(other, stale).shared_data_source == "built" and stale.loads == 0


@pytest.mark.ray
def test_every_trial_of_a_search_reads_the_one_object_the_driver_built(ray_session, tmp_path, capsys):
    code = tune.main(["--algorithm", "mopie", "--num-samples", "2", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "shared", *SMALL_SETS])
    assert code == 0
    assert "data built once for every trial" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "shared" / "trials.csv")
    assert len(table) == 2 and (table["status"] == "TERMINATED").all()
    # one object, read by both trials: neither built its own
    assert table["shared_data"].nunique() == 1 and table["shared_data"].iloc[0].startswith("object ")


@pytest.mark.ray
def test_a_trial_whose_space_varies_a_data_key_builds_its_own(ray_session, tmp_path, capsys):
    code = tune.main(["--algorithm", "mopie", "--num-samples", "1", "--scheduler", "fifo",
                      "--storage", str(tmp_path), "--name", "own", *SMALL_SETS, "--set", "snr=30",
                      "--grid", "noise_seed=[0, 1]"])
    assert code == 0
    assert "each trial builds its own data (the space varies noise_seed)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "own" / "trials.csv")
    assert len(table) == 2 and list(table["shared_data"]) == ["built", "built"]
    # other noise, other measurements: the two trials did not fit the same data
    assert table["residual"].nunique() == 2
