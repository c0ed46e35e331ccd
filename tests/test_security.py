"""The job secret and CurveZMQ (ringcomm.security): members connect, anyone else is
refused and cannot inject data; the launcher makes a secret per job."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

import ringcomm
from ringcomm.errors import RendezvousError
from ringcomm.rendezvous.store import StoreClient, StoreServer
from ringcomm.run import free_port
from ringcomm.security import Security
from ringcomm.transport.base import HEADER, KIND_COLLECTIVE, MAGIC, VERSION
from runners import run_threads


def _zmq_pair(config: ringcomm.Config, fn) -> list:
    """``fn(comm)`` on two rank threads over ZeroMQ sockets with ``config``."""
    return run_threads(2, fn, config=config, transport="zmq", timeout=60)


def _intrude(comm: ringcomm.Communicator, credentials: Security | None) -> bool:
    """Rank 0 gets, from a socket of its own, a well-formed message for the next operation
    as if from rank 1; return whether that all_reduce still came out right."""
    comm.all_reduce(np.ones(1000, np.float32))  # operation #1
    if comm.rank == 0:
        endpoint = comm._transport._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        intruder = zmq.Context.instance().socket(zmq.PUSH)
        intruder.setsockopt(zmq.LINGER, 2000)  # close() delivers what is queued
        # A refused PUSH may have no connection to queue on: its send would block for ever.
        intruder.setsockopt(zmq.SNDTIMEO, 1000)
        if credentials is not None:
            credentials.join(intruder)
        intruder.connect(endpoint)
        for step in range(4):  # whichever step the algorithm receives on first
            header = HEADER.pack(
                MAGIC, VERSION, KIND_COLLECTIVE, comm._transport.comm_id, 3, step, 0, 4000, 1
            )
            with contextlib.suppress(zmq.Again):  # not even queued: refused
                intruder.send(header + np.full(1000, 1e6, np.float32).tobytes())
        time.sleep(0.5)
        intruder.close()  # waits up to 2 s for the messages to leave (or the refusal)
    comm.barrier()  # operation #2
    if comm.rank == 1:
        time.sleep(0.5)  # rank 0 waits on #3 first: whatever reached its socket is taken
    x = np.full(1000, comm.rank + 1.0, np.float32)
    comm.all_reduce(x)  # operation #3, the one the intruder aimed at
    return bool((x == 3.0).all())


def test_without_a_secret_an_intruder_can_inject_data() -> None:
    """The control: what the secret prevents does happen without it."""
    results = _zmq_pair(ringcomm.Config(timeout_seconds=20), lambda c: _intrude(c, None))
    assert results[0] is False, results


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "curve"])
@pytest.mark.parametrize(
    "intruder",
    [None, Security("not the secret"), Security("not the secret", encrypt=True)],
    ids=["no-credentials", "wrong-password", "wrong-keys"],
)
def test_a_process_without_the_secret_is_refused(encrypt: bool, intruder, caplog) -> None:
    config = ringcomm.Config(secret="the job secret", encrypt=encrypt, timeout_seconds=20)
    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        results = _zmq_pair(config, lambda c: _intrude(c, intruder))
    assert results == [True, True]
    refused = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]


def test_members_connect_with_the_secret_over_every_transport_path() -> None:
    for encrypt in (False, True):
        config = ringcomm.Config(secret="s", encrypt=encrypt, timeout_seconds=20)

        def body(comm: ringcomm.Communicator) -> float:
            x = np.full(1 << 18, comm.rank + 1.0, np.float32)  # zero-copy sends too
            comm.all_reduce(x)
            sub = comm.split(color=0)  # new sockets, same secret
            y = np.ones(10)
            sub.all_reduce(y)
            sub.close()
            return float(x[0] + y[0])

        assert _zmq_pair(config, body) == [5.0, 5.0]


def test_the_store_refuses_a_client_without_the_secret() -> None:
    port = free_port()
    server = StoreServer("127.0.0.1", port, Security("s"))
    try:
        good = StoreClient("127.0.0.1", port, 0, 5.0, Security("s"))
        good.set("k", b"v")
        assert good.get("k", 5.0) == b"v"
        for wrong in (None, Security("t")):
            bad = StoreClient("127.0.0.1", port, 1, 1.0, wrong)
            with pytest.raises(RendezvousError, match="no answer"):
                bad.get("k", 1.0)
            bad.close()
        good.close()
    finally:
        server.close()


def test_encryption_needs_a_secret_and_the_secret_stays_out_of_reprs() -> None:
    with pytest.raises(ValueError, match="RINGCOMM_SECRET"):
        ringcomm.Config(encrypt=True)
    assert "hunter2" not in repr(ringcomm.Config(secret="hunter2"))
    cfg = ringcomm.Config.from_env({"RINGCOMM_SECRET": "x", "RINGCOMM_ENCRYPT": "1"})
    assert cfg.secret == "x" and cfg.encrypt


def test_the_launcher_gives_each_job_its_own_secret() -> None:
    code = "import os; print('SECRET', os.environ['RINGCOMM_SECRET'])"
    secrets = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "ringcomm.run", "-n", "2", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        found = {line.split()[-1] for line in out.stdout.splitlines() if "SECRET" in line}
        assert len(found) == 1, out.stdout  # both ranks of a job share it
        secrets.append(found.pop())
    assert len(secrets[0]) == 32 and secrets[0] != secrets[1]


@pytest.mark.parametrize("secret", [None, "s"])
def test_a_world_across_hosts_without_a_secret_is_warned_about(
    secret: str | None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One WARNING naming the risk and the fix when peers are on other hosts and there is no
    secret; none with a secret (nor on one host: every other test here)."""
    import json
    import logging

    from ringcomm.transport import zmq as zmq_transport

    monkeypatch.setattr(zmq_transport, "_warned_without_secret", False)
    config = ringcomm.Config(secret=secret, zmq_protocol="tcp", timeout_seconds=5)
    endpoint = zmq_transport.ZmqEndpoint("127.0.0.1", config)
    elsewhere = json.dumps({"host": "another-host/boot", "tcp": "tcp://127.0.0.1:9"}).encode()
    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        transport = endpoint.connect(0, [endpoint.address, elsewhere], 1)
    transport.close()
    warned = [r.getMessage() for r in caplog.records if "no job secret" in r.getMessage()]
    if secret is None:
        assert len(warned) == 1 and "RINGCOMM_SECRET" in warned[0] and "[1]" in warned[0]
    else:
        assert not warned
