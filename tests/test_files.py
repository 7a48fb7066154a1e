import os
import stat

import pytest

from esd_sdk.errors import OutputExistsError
from esd_sdk.files import atomic_dir, atomic_file, write_text


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_dir_appears_whole_with_readable_modes(tmp_path, umask_022):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert not out.exists() and tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "sub").mkdir()
        secret = tmp / "sub" / "weights.bin"
        secret.write_bytes(b"x")
        secret.chmod(0o600)  # as ONNX writes its external data
        (tmp / "sub").chmod(0o700)
    assert (out / "sub" / "weights.bin").read_bytes() == b"x"
    assert _mode(out / "sub" / "weights.bin") == 0o644 and _mode(out / "sub") == 0o755 and _mode(out) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no work directory left


def test_atomic_dir_refuses_an_existing_output_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(out):
            raise AssertionError("the block must not run")


def test_a_failed_write_leaves_the_old_output_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_only_when_the_new_output_is_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # the old one is still there while the new one is written
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path, umask_022):
    path = tmp_path / "esd.json"
    write_text(path, "one")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert path.read_text() == "one" and _mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esd.json"]
    with pytest.raises(OutputExistsError):
        with atomic_file(path, overwrite=False):
            pass
