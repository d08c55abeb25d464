"""The gateway's HTTP/1.1 client (server/providers/http1.py) against real sockets: the fake OpenAI
server for a streamed answer, and for what a well-behaved server rarely does (a body split at
every byte, a keep-alive connection closed under a request, a stall, a cut, gzip, a body that
ends with the connection, TLS) a scripted upstream on 127.0.0.1 that plays it."""
from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import Awaitable, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.providers.http1 import (
    HIGH_WATER,
    BadResponse,
    ConnectFailed,
    Disconnected,
    Pool,
    TimedOut,
    Timeout,
)
from tests.fakes import start_fake
from tests.net import until_async

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
T = Timeout(connect=5, read=10, total=30)


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (by its content-length); b"" when the client closed."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


class Upstream:
    """A scripted server: `handler(reader, writer, n)` runs for the n-th connection (from 0)."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.connections = 0
        self.open_now = self.most_open = 0

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, self.connections = self.connections, self.connections + 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while await read_request(reader):
        writer.write(answer(b'{"ok": true}', "content-type: application/json"))
        await writer.drain()


def test_a_streamed_answer_from_the_fake_and_the_connection_kept():
    fake = start_fake("openai", api_key=None)
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi there"}]}'

    async def main() -> None:
        pool = Pool(4)
        texts = []
        for _ in range(3):
            async with await pool.request("POST", fake.base_url + "/chat/completions", body,
                                          {"content-type": "application/json", "authorization": "Bearer k"}, T) as resp:
                assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
                texts.append(await resp.read())
        assert texts[0].endswith(b"data: [DONE]\n\n") and texts[0].count(b"data: ") > 3
        assert sum(len(idle) for idle in pool._idle.values()) == 1    # three answers, one connection
        await pool.aclose()
    try:
        run(main())
    finally:
        fake.close()


def test_a_chunked_body_sent_a_byte_at_a_time_comes_whole():
    payload = b"data: " + b"x" * 300 + b"\n\n"
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\nx-a: 2\r\n\r\n" + chunked:
            writer.write(bytes([byte]))
            await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Upstream(handler) as up:
            async with await Pool(2).request("POST", up.url + "/v1/x?a=b", b"{}", {}, T) as resp:
                assert resp.headers["x-a"] == "1, 2"
                assert await resp.read() == payload
    run(main())


def test_a_keep_alive_connection_closed_under_the_next_request_is_retried_on_a_new_one():
    seen: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 0:
            await read_request(reader)
            writer.write(answer(b"first"))
            await writer.drain()
            await read_request(reader)      # the second request arrives on the kept connection:
            seen.append(n)
            return                          # closed without a word, as an idle timeout crossing it would
        while await read_request(reader):
            seen.append(n)
            writer.write(answer(b"again"))
            await writer.drain()

    async def main() -> None:
        async with Upstream(handler) as up:
            pool = Pool(2)
            for expected in (b"first", b"again"):
                async with await pool.request("POST", up.url, b"{}", {}, T) as resp:
                    assert await resp.read() == expected
            assert up.connections == 2 and seen == [0, 1]
    run(main())


def test_a_new_connection_closed_before_an_answer_is_an_error_not_a_retry():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async def main() -> None:
        async with Upstream(handler) as up:
            with pytest.raises(Disconnected, match="before the answer was complete"):
                await Pool(2).request("POST", up.url, b"{}", {}, T)
            assert up.connections == 1
    run(main())


def test_a_body_cut_short_is_an_error_and_the_connection_is_not_reused():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
            await writer.drain()
            return
        writer.write(answer(b"whole"))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Upstream(handler) as up:
            pool = Pool(2)
            async with await pool.request("POST", up.url, b"{}", {}, T) as resp:
                assert await resp.receive() == b"only part"
                with pytest.raises(Disconnected):
                    await resp.receive()
            async with await pool.request("POST", up.url, b"{}", {}, T) as resp:
                assert await resp.read() == b"whole"
            assert up.connections == 2
    run(main())


def test_a_stalled_answer_times_out_by_the_read_timeout_and_a_slow_one_by_the_total():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        if n == 0:
            await reader.read()             # then nothing
        for _ in range(100):                # a byte every 0.1 s: never silent for 0.5 s
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    async def main() -> None:
        async with Upstream(handler) as up:
            loop = asyncio.get_running_loop()
            resp = await Pool(2).request("POST", up.url, b"{}", {}, Timeout(connect=5, read=0.5))
            start = loop.time()
            with pytest.raises(TimedOut, match="nothing received for 0.5 s"):
                await resp.read()
            assert 0.45 <= loop.time() - start < 5
            resp.release()
            resp = await Pool(2).request("POST", up.url, b"{}", {}, Timeout(connect=5, read=0.5, total=1.5))
            with pytest.raises(TimedOut, match="within 1.5 s"):
                await resp.read()
            resp.release()
    run(main())


def test_no_server_is_a_connect_failure():
    async def main() -> None:
        async with Upstream(keep_answering) as up:
            url = up.url
        with pytest.raises(ConnectFailed, match="could not connect to 127.0.0.1"):
            await Pool(2).request("GET", url, None, {}, T)
    run(main())


def test_max_connections_queues_requests_and_bounds_the_wait_by_the_connect_timeout():
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            while await read_request(reader):
                await gate.wait()
                writer.write(answer(b"done"))
                await writer.drain()

        async with Upstream(handler) as up:
            pool = Pool(1)

            async def one() -> bytes:
                async with await pool.request("POST", up.url, b"{}", {}, T) as resp:
                    return await resp.read()
            first = asyncio.create_task(one())
            second = asyncio.create_task(one())
            await until_async(lambda: len(pool._waiting) == 1, 5, "the first holding the one slot, the second waiting")
            with pytest.raises(ConnectFailed, match="no free connection within 0.2 s"):
                await pool.request("POST", up.url, b"{}", {}, Timeout(connect=0.2))
            gate.set()
            assert await first == await second == b"done"
            assert up.most_open == 1 and up.connections == 1
    run(main())


def test_a_gzip_body_is_decompressed():
    text = b'{"error": {"message": "slow down"}}' * 20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(text), "content-encoding: gzip", status="429 Too Many Requests"))
        await writer.drain()

    async def main() -> None:
        async with Upstream(handler) as up:
            async with await Pool(2).request("POST", up.url, b"{}", {}, T) as resp:
                assert resp.status == 429 and await resp.read() == text
    run(main())


def test_a_body_without_a_length_ends_with_the_connection():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\ndata: 1\n\n")
        await writer.drain()
        writer.write(b"data: 2\n\n")

    async def main() -> None:
        async with Upstream(handler) as up:
            async with await Pool(2).request("POST", up.url, b"{}", {}, T) as resp:
                assert resp.status == 200 and "link" not in resp.headers
                assert await resp.read() == b"data: 1\n\ndata: 2\n\n"
    run(main())


def test_a_reader_behind_pauses_the_socket_and_loses_nothing():
    size = 16 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        for i in range(size // 65536):
            writer.write(bytes([i % 256]) * 65536)
            await writer.drain()

    async def main() -> None:
        async with Upstream(handler) as up:
            async with await Pool(2).request("GET", up.url, None, {}, T) as resp:
                got, most = [], 0
                await asyncio.sleep(0)
                while True:
                    await asyncio.sleep(0.01)        # a slow reader
                    most = max(most, resp._size)
                    chunk = await resp.receive()
                    if not chunk:
                        break
                    got.append(chunk)
                body = b"".join(got)
                assert len(body) == size and body[65536 * 5] == 5
                assert most <= HIGH_WATER + 512 * 1024     # paused near the mark, not the whole body held
    run(main())


def test_a_line_break_in_a_header_is_refused_before_anything_is_sent():
    async def main() -> None:
        async with Upstream(keep_answering) as up:
            with pytest.raises(ValueError, match="header 'x-evil'"):
                await Pool(2).request("POST", up.url, b"{}", {"x-evil": "a\r\nhost: elsewhere"}, T)
            assert up.connections == 0
    run(main())


def test_invalid_http_is_a_bad_response():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Upstream(handler) as up:
            with pytest.raises(BadResponse, match="invalid HTTP response"):
                await Pool(2).request("POST", up.url, b"{}", {}, T)
    run(main())


def self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_tls_with_a_trusted_certificate_and_refused_without(tmp_path):
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trusting = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

    async def main() -> None:
        async with Upstream(keep_answering, tls=server_tls) as up:
            async with await Pool(2, ssl_context=trusting).request("POST", up.url, b"{}", {}, T) as resp:
                assert await resp.read() == b'{"ok": true}'
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError"):
                await Pool(2).request("POST", up.url, b"{}", {}, T)
    run(main())


@pytest.mark.parametrize("url, origin, host, path", [
    ("https://api.openai.com/v1/chat/completions", ("https", "api.openai.com", 443), "api.openai.com",
     "/v1/chat/completions"),
    ("http://[::1]:8080/x?y=1#frag", ("http", "::1", 8080), "[::1]:8080", "/x?y=1"),
    ("HTTP://h:81", ("http", "h", 81), "h:81", "/"),
    ("http://h?x=1", ("http", "h", 80), "h", "/?x=1"),
    ("http://user:secret@h/a", ("http", "h", 80), "h", "/a"),
])
def test_urls_become_an_origin_a_host_header_and_a_request_target(url, origin, host, path):
    from server.providers.http1 import _target
    got = _target(url)
    assert (got.origin, got.host_header, got.path) == (origin, host, path)


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///x", "http://h/a b", "api.openai.com/v1"])
def test_urls_it_cannot_send_to_are_refused(url):
    from server.providers.http1 import _target
    with pytest.raises(ValueError):
        _target(url)


def test_a_reader_slower_than_the_read_timeout_is_not_a_silent_server():
    size = 4 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode() + b"z" * size)
        await writer.drain()

    async def main() -> None:
        async with Upstream(handler) as up:
            async with await Pool(2).request("GET", up.url, None, {}, Timeout(connect=5, read=0.3)) as resp:
                got = len(await resp.receive())
                await asyncio.sleep(0.8)            # the socket is paused meanwhile: nothing arrives
                assert resp._paused
                got += len(await resp.read())
                assert got == size
    run(main())
