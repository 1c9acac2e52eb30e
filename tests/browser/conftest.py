"""The browser tests drive the session's warm embedded studio (`studio up` on SQLite), each as a user of its own:
the API/worker loop runs on both backends in tests/e2e. A module that needs a studio of its own defines `studio`."""

from collections.abc import Iterator

import pytest

from tests.support import StudioProcess


@pytest.fixture
def studio(embedded_studio: StudioProcess) -> Iterator[StudioProcess]:
    """The warm embedded studio seen by a fresh user; the user's unfinished jobs are cancelled afterwards."""
    embedded_studio.wait_healthy(timeout=10)
    view = embedded_studio.as_new_user()
    yield view
    view.settle()
