"""The rendezvous store answers every request, however malformed, and keeps serving:
a bad request must not leave every rank waiting its whole timeout for "no answer"."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringcomm.errors import RendezvousError
from ringcomm.rendezvous.store import StoreClient, StoreServer
from ringcomm.run import free_port


@pytest.fixture(scope="module")
def server() -> Iterator[StoreServer]:
    for attempt in range(3):  # a free port can be taken before we bind it: try another
        try:
            s = StoreServer("127.0.0.1", free_port())
            break
        except RendezvousError:
            if attempt == 2:
                raise
    yield s
    s.close()


def _client(server: StoreServer) -> StoreClient:
    port = int(server.url.rsplit(":", 1)[1])
    return StoreClient("127.0.0.1", port, rank=0, timeout=5)


def _still_serves(server: StoreServer, tag: str) -> None:
    tag = f"{tag}/{uuid.uuid4().hex}"
    client = _client(server)
    try:
        client.set(f"k/{tag}", b"v")
        assert client.get(f"k/{tag}", 5) == b"v"
        assert client.add(f"n/{tag}", 2) == 2
        assert client.add(f"n/{tag}", 3) == 5
    finally:
        client.close()


def test_an_add_of_a_non_integer_is_an_error_and_the_store_keeps_serving(
    server: StoreServer,
) -> None:
    client = _client(server)
    try:
        client.set("text", b"not a number")
        with pytest.raises(RendezvousError, match="not an integer"):
            client.add("text", 1)  # the stored value is not a counter
        with pytest.raises(RendezvousError, match="not an integer"):
            client._request(b"add", "counter", b"seven", 5)  # nor is the amount
        with pytest.raises(RendezvousError, match="unknown op"):
            client._request(b"delete", "counter", b"", 5)
    finally:
        client.close()
    _still_serves(server, "after-errors")


_frames = st.lists(st.binary(max_size=24), min_size=0, max_size=6)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(_frames, min_size=1, max_size=5))
def test_random_requests_never_stop_the_store(server: StoreServer, requests: list) -> None:
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.url)
    try:
        for frames in requests:
            if frames:
                raw.send_multipart(frames)
            # A request with an id is answered (an error, or an answer to a valid one);
            # a "get" of a missing key waits, as it should.
            if len(frames) >= 1 and not (len(frames) == 4 and frames[1] == b"get"):
                assert raw.poll(5000), f"no answer to {frames!r}"
                raw.recv_multipart()
    finally:
        raw.close()
    _still_serves(server, "fuzz")
