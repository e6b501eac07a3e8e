"""Readiness across a refresh: never "a token this process did not write" for our own file.

The token file is renamed into place before the refresher names the new token; a probe in
that moment must still recognise the file as ours (``Refresher.writing``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from random import Random

from sidecar import config as config_module
from sidecar import logs
from sidecar.api import ApiClient
from sidecar.fake_api import FakeApi
from sidecar.outputs import Issued, Output
from sidecar.probes import Probes
from sidecar.refresher import Refresher
from sidecar.schedule import Schedule
from tests.conftest import base_env, write_config


@dataclass
class LingeringAfterWrite:
    """An output whose write returns late: the file is in place, the call not yet over."""

    output: Output
    written: threading.Event
    resume: threading.Event

    def write(self, issued: Issued) -> None:
        self.output.write(issued)
        self.written.set()
        assert self.resume.wait(5)


def test_a_probe_between_the_rename_and_the_refreshers_record_sees_our_token(
    tmp_path: Path, fake_api: FakeApi
) -> None:
    environ = base_env()
    config = config_module.load(write_config(tmp_path, fake_api.url), environ, {})
    client = ApiClient(config.api)
    refresher = Refresher(config, client, None, logs.get(), rng=Random(1), environ=environ)
    probes = Probes(config, refresher, Schedule(lambda: None))
    try:
        assert refresher.attempt().ok
        assert probes.readiness()[0]
        first = config.token.path.read_text()

        written, resume = threading.Event(), threading.Event()
        token_output = refresher.outputs[-1]  # the token file is written last
        assert token_output.path == config.token.path
        lingering = LingeringAfterWrite(token_output, written, resume)
        refresher.outputs = (*refresher.outputs[:-1], lingering)  # type: ignore[arg-type]
        second = threading.Thread(target=refresher.attempt)
        second.start()
        try:
            assert written.wait(5)
            assert config.token.path.read_text() != first, "the new token is in place"
            ready, detail = probes.readiness()
        finally:
            resume.set()
            second.join(10)
        assert ready, detail
        assert probes.readiness()[0]
    finally:
        client.close()
