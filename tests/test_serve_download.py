"""DNS rebinding and ``http(s)://`` video URLs (issue 25): a hop connects to the very address its check passed.

The resolver is monkeypatched so that a name answers a public address first and 127.0.0.1 after (what a rebinding
DNS server does), and ``socket.create_connection`` (what httpx's sync transport connects with) so that no traffic
leaves the machine: a connection to a "public" address is recorded and in fact made to a web server on 127.0.0.1;
a connection by name resolves through the patched resolver, as the real one does. Had the download resolved the
name again to connect, it would have connected to 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from flashvid_cli.serve.download import download, pinned  # noqa: E402
from flashvid_cli.serve.errors import APIError  # noqa: E402

PUBLIC = {"a.test": "8.8.8.8", "b.test": "1.1.1.1"}  # first answers; never connected to (see the module docstring)
BODY = b"not really a video, but bytes to keep"


def _handler(seen: list[tuple[str, str]]) -> type:
    """/clip the body, /hop a redirect to b.test, /again a redirect to a.test; each request's path and Host kept."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Host"]))
            port = self.server.server_address[1]
            target = {"/hop": f"http://b.test:{port}/clip", "/again": f"http://a.test:{port}/clip"}.get(self.path)
            if target:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    return Handler


def _serve(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def web():
    """A plain web server on 127.0.0.1 (:func:`_handler`); yields its port and the requests it saw."""
    seen: list[tuple[str, str]] = []
    server = _serve(ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen)))
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.fixture()
def rebinding(monkeypatch):
    """Patch the resolver (public first, 127.0.0.1 after, per name) and the connection; yield the addresses
    connected to, in order."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection
    answers: dict[str, int] = {}
    connected: list[str] = []

    def getaddrinfo(host, service, *args, **kwargs):
        if host not in PUBLIC:
            return real_getaddrinfo(host, service, *args, **kwargs)
        answers[host] = answers.get(host, 0) + 1
        address = PUBLIC[host] if answers[host] == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(service)))]

    def create_connection(address, *args, **kwargs):
        host, service = address[0], address[1]
        host = socket.getaddrinfo(host, service, type=socket.SOCK_STREAM)[0][4][0]  # a name resolves, as for real
        connected.append(host)
        if host in PUBLIC.values():  # stands for a public server: served by the one on 127.0.0.1 at that port
            return real_connect(("127.0.0.1", service), *args, **kwargs)
        if host == "127.0.0.1":
            return real_connect((host, service), *args, **kwargs)
        raise ConnectionRefusedError(f"the test connects to no address but 127.0.0.1 (asked {host})")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return connected


def test_every_hop_connects_to_the_address_its_check_passed(rebinding, web, tmp_path):
    port, seen = web
    got = download(f"http://a.test:{port}/hop", tmp_path, max_bytes=1000, timeout_s=10, allow_private=False)
    assert got.read_bytes() == BODY
    # Each name was resolved once (its public answer) and connected to by that address, never by name again
    # (which would have answered 127.0.0.1); the server saw each hop's name in Host.
    assert rebinding == ["8.8.8.8", "1.1.1.1"]
    assert seen == [("/hop", f"a.test:{port}"), ("/clip", f"b.test:{port}")]


def test_a_redirect_to_a_name_that_now_answers_loopback_is_refused(rebinding, web, tmp_path):
    port, seen = web
    with pytest.raises(APIError) as refused:
        download(f"http://a.test:{port}/again", tmp_path, max_bytes=1000, timeout_s=10, allow_private=False)
    assert (refused.value.status, refused.value.code) == (400, "private_address")
    assert "127.0.0.1" in refused.value.message
    assert rebinding == ["8.8.8.8"]  # the second hop was checked, refused, and never connected
    assert seen == [("/again", f"a.test:{port}")]
    assert not list(tmp_path.iterdir())  # nothing kept


def _certificate(folder, name: str):
    """A self-signed certificate for DNS name ``name`` and its key, as PEM files in ``folder``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = folder / f"{name}.pem", folder / f"{name}.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


@pytest.mark.parametrize("served_name", ["a.test", "other.test"])
def test_https_to_the_pinned_address_sends_and_verifies_the_name(rebinding, tmp_path, monkeypatch, served_name):
    """The web server speaks TLS with a certificate for ``served_name``, trusted as the only CA: the download of
    https://a.test connects to the pinned address, sends SNI a.test and checks the certificate against a.test
    (a certificate for another name is refused), never against the address."""
    pytest.importorskip("cryptography")
    import ssl

    import certifi

    cert, key = _certificate(tmp_path, served_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    seen: list[tuple[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(seen))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = _serve(server).server_address[1]
    monkeypatch.setattr(certifi, "where", lambda: str(cert))  # httpx's default trust: this certificate only
    folder = tmp_path / "got"
    folder.mkdir()
    try:
        if served_name == "a.test":
            got = download(f"https://a.test:{port}/clip", folder, max_bytes=1000, timeout_s=10, allow_private=False)
            assert got.read_bytes() == BODY
            assert seen == [("/clip", f"a.test:{port}")]
        else:
            with pytest.raises(APIError) as refused:
                download(f"https://a.test:{port}/clip", folder, max_bytes=1000, timeout_s=10, allow_private=False)
            assert refused.value.code == "download_failed" and "CERTIFICATE" in refused.value.message.upper()
            assert seen == []
    finally:
        server.shutdown()
        server.server_close()
    assert rebinding == ["8.8.8.8"] and names == ["a.test"]


def test_pinned_keeps_the_name_for_host_sni_and_the_certificate():
    url, headers, extensions = pinned("https://user@b\u00fccher.example:8443/v.mp4?x=1", "2001:4860::8888")
    assert url == "https://user@[2001:4860::8888]:8443/v.mp4?x=1"
    assert headers == {"Host": "xn--bcher-kva.example:8443"}
    assert extensions == {"sni_hostname": "xn--bcher-kva.example"}
    url, headers, extensions = pinned("http://a.test/v.mp4", "8.8.8.8")
    assert (url, headers, extensions) == ("http://8.8.8.8/v.mp4", {"Host": "a.test"}, {})
    assert pinned("http://a.test/v.mp4", None) == ("http://a.test/v.mp4", {}, {})  # --allow-private-urls
