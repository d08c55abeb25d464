"""A DELETE that reaches a gateway replica other than the one pumping the stream stops the
upstream all the same (its own module: the store, shared by two processes, starts empty)."""
from __future__ import annotations

import time

from tests.test_gateway_streams import chat_body, read_events, slow  # noqa: F401 - `slow` is a fixture


def test_delete_on_another_replica_stops_the_owners_upstream(slow, pg_url):
    owner = slow("gw1", database_url=pg_url)
    other = slow("gw2", database_url=pg_url)
    owner.fake.configure(token_delay=0.2)         # ~6 s of stream: time to abort it half way
    key = owner.new_key("shared")
    with owner.http(key) as c, c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
        stream_id = resp.headers["x-cogkit-stream-id"]
        read_events(resp, 2)
    deadline = time.monotonic() + 5
    while other.http(key).delete(f"/v1/streams/{stream_id}").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)                           # until the owner has flushed the stream to the store
    while owner.fake.stats()["streams_aborted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owner.fake.stats()["streams_aborted"] == 1 and owner.fake.stats()["streams_completed"] == 0
    rows = owner.usage(key, 1)
    assert len(rows) == 1 and rows[0]["status"] == "canceled"
