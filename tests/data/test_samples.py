from firstepoch.data import DataLoaders, samples


def test_digits_are_written_once_as_a_real_image_folder(tmp_path):
    path = samples.digits(tmp_path / "digits")
    files = sorted(path.rglob("*.png"))
    assert len(files) == 1797
    assert len(list((path / "test").rglob("*.png"))) == 360
    assert sorted(d.name for d in (path / "train").iterdir()) == [str(i) for i in range(10)]
    stamp = files[0].stat().st_mtime_ns
    assert samples.digits(tmp_path / "digits") == path and files[0].stat().st_mtime_ns == stamp
    dls = DataLoaders.from_folder(path / "train", size=16, flip=False)
    assert dls.classes == [str(i) for i in range(10)] and dls.input_shape == [1, 16, 16]


def test_digits_default_to_the_firstepoch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_HOME", str(tmp_path / "home"))
    assert samples.digits() == tmp_path / "home" / "samples" / "digits"
