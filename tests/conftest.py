import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_shop(tmp_path_factory) -> Path:
    """The synth `tiny` shop, generated once per test session (read-only: copy before mutating)."""
    from gclcore.synth import generate

    return generate(tmp_path_factory.mktemp("shop") / "tiny", "tiny", seed=0, progress=False)


@pytest.fixture
def quirks(tmp_path) -> Path:
    """A writable copy of the hand-written fixture dataset (tests/fixtures/gs_quirks)."""
    return Path(shutil.copytree(FIXTURES / "gs_quirks", tmp_path / "gs_quirks"))
