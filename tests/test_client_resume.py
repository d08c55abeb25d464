"""cogkit.client's resume state machine on its own: no server, no I/O (the sync and async clients
are thin loops around it; tests/test_gateway_streams.py drives them against a real gateway)."""
from __future__ import annotations

import httpx
import pytest

from cogkit.client import GatewayError, RunStream

START = (b': stream strm_1\nevent: start\nid: 0\ndata: {"id": "req_1", "model": "m", '
         b'"cogkit_stream_id": "strm_1"}\n\n')
OUT1 = b'event: output\nid: 1\ndata: "Hel"\n\n'
OUT2 = b'event: output\nid: 2\ndata: "lo"\n\n'
DONE = b'event: completed\nid: 3\ndata: {"output": "Hello"}\n\n'


def run() -> RunStream:
    return RunStream("m", {"prompt": "hi"}, {"app": "t"}, max_resumes=2, resume_delay=0.5)


def test_first_request_then_a_resume_from_the_events_it_has() -> None:
    r = run()
    first = r.request()
    assert (first.method, first.path, first.json) == ("POST", "/ai/run/m",
                                                      {"input": {"prompt": "hi"}, "metadata": {"app": "t"},
                                                       "stream": True})
    r.opened(200, None)                       # a proxy dropped x-cogkit-stream-id: the first event has it
    events = r.feed(START + OUT1[:20])        # the connection breaks inside an event
    assert [(e.event, e.index) for e in events] == [("start", 0)] and r.stream_id == "strm_1"
    assert r.ended(httpx.ReadError("cut")) == 0.5
    again = r.request()
    assert (again.method, again.path, again.params) == ("GET", "/v1/streams/strm_1", {"from": 1})
    r.opened(200, "strm_1")
    events = r.feed(OUT1 + OUT2 + DONE + b'event: output\nid: 4\ndata: "late"\n\n')
    assert [(e.event, e.data, e.index) for e in events] == [("output", "Hel", 1), ("output", "lo", 2),
                                                           ("completed", {"output": "Hello"}, 3)]
    assert r.done
    r.finish()                                # ended well: nothing raised


def test_split_anywhere_gives_the_same_events() -> None:
    whole = START + OUT1 + OUT2 + DONE
    for cut in range(1, len(whole)):
        r = run()
        r.opened(200, "strm_1")
        got = r.feed(whole[:cut]) + r.feed(whole[cut:])
        assert [e.index for e in got] == [0, 1, 2, 3], cut


def test_in_band_error_comes_after_the_events_before_it() -> None:
    r = run()
    r.opened(200, "strm_1")
    events = r.feed(START + OUT1 + b'event: error\nid: 2\ndata: {"message": "upstream broke"}\n\n')
    assert [e.event for e in events] == ["start", "output"] and r.done
    with pytest.raises(GatewayError, match="upstream broke"):
        r.finish()


def test_no_resume_without_a_stream_id_or_past_the_limit() -> None:
    r = run()
    r.opened(200, None)
    with pytest.raises(httpx.ReadError):
        r.ended(httpx.ReadError("cut before any event"))
    r = run()
    r.opened(200, "strm_1")
    assert r.ended() == 0.5 and r.ended() == 1.0        # the wait grows with each resume
    with pytest.raises(GatewayError, match="ended before it completed"):
        r.ended()
    with pytest.raises(GatewayError) as e:
        r.opened(404, None, b'{"error": {"message": "no stream \'strm_1\'"}}')
    assert e.value.status == 404 and "no stream" in str(e.value)
