"""What the bearer token's HPACK form costs the server: GetUser at a fixed rate (open loop) over
one mTLS HTTP/2 connection, the `authorization` header sent either as grpc-go and grpc-java send
it (a literal with incremental indexing: from the second call on, one byte that names the
server's dynamic-table entry) or as h2, tonic, grpcio and grpc-js send it (never indexed: the
~290-byte Huffman-coded literal on every call, decoded by the server each time). Prints the
server's CPU per call over the measured window (the scheduler's count, in ns), so the two forms can be
compared against the same server, and a bare one without a token. BENCHMARKS.md, session 18.

    .venv/bin/python benches/token_index.py --port P --certs DIR --server-pid PID \
        [--token T --form indexed|never] [--insecure] [--rate 4000] [--seconds 5] [--warmup 1]

Needs the `h2` package (hyper-h2, pure Python). Every answer's `grpc-status` is checked: a run
with a failed call exits non-zero (a refused call would cost less and flatter the figure).
"""
import argparse
import json
import os
import selectors
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple

# Below the server's concurrent-stream limit (256 for hyper-h2's view of the default).
MAX_IN_FLIGHT = 200


def cpu_ns(pid):
    """The process's CPU time in ns: the scheduler's own sum over its threads
    (/proc/PID/task/*/schedstat), not the 10 ms ticks of /proc/PID/stat, which at 4,000/s
    over 5 s resolve ~0.5 µs per call."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


class WithLiteral(hpack.Encoder):
    """An HPACK encoder that appends one never-indexed field, coded once, to every block
    (never-indexed fields leave the dynamic table alone, so the rest stays in step)."""

    def __init__(self, field):
        super().__init__()
        self.literal = hpack.Encoder().encode([field])

    def encode(self, headers, huffman=True):
        return super().encode(headers, huffman) + self.literal


def get_user(n):
    user_id = f"USER{n % 100 + 1:04}".encode()
    message = b"\x0a" + bytes([len(user_id)]) + user_id  # GetUserRequest.user_id = 1
    return b"\x00" + len(message).to_bytes(4, "big") + message


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--token")
    p.add_argument("--form", choices=["indexed", "never"], default="indexed")
    p.add_argument("--insecure", action="store_true", help="plaintext HTTP/2 (the bare target)")
    p.add_argument("--rate", type=float, default=4000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--warmup", type=float, default=1)
    a = p.parse_args()

    sock = socket.create_connection(("127.0.0.1", a.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not a.insecure:
        ctx = ssl.create_default_context(cafile=os.path.join(a.certs, "ca.pem"))
        ctx.load_cert_chain(os.path.join(a.certs, "client.pem"), os.path.join(a.certs, "client.key"))
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", "the server did not choose h2"
    # normalize_outbound_headers off: hyper-h2 would otherwise make `authorization`
    # never-indexed itself (nghttp2's and Firefox's rule); the form is chosen here.
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, normalize_outbound_headers=False)
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(4 * 1024 * 1024)
    sock.sendall(conn.data_to_send())
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)

    scheme = b"http" if a.insecure else b"https"
    base = [
        (b":method", b"POST"),
        (b":scheme", scheme),
        (b":path", b"/jisucloud.v1.UserService/GetUser"),
        (b":authority", f"localhost:{a.port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", b"jisu-token-index/1"),
        (b"grpc-timeout", b"10000m"),
    ]
    headers = [HeaderTuple(k, v) for k, v in base]
    if a.token:
        value = b"Bearer " + a.token.encode()
        if a.form == "indexed":
            headers.append(HeaderTuple(b"authorization", value))
        else:
            # Huffman-coded once here and appended to every block: coding ~290 bytes in
            # pure Python at each call made this client late and its sends bunched, which
            # the server then served more cheaply (fewer wake-ups per call).
            conn.encoder = WithLiteral(NeverIndexedHeaderTuple(b"authorization", value))

    start = time.monotonic()
    measure_from = start + a.warmup
    end = measure_from + a.seconds
    sent = done = 0
    bad = {}
    header_bytes = []
    status = {}
    cpu0 = None
    buf_out = b""

    def flush():
        nonlocal buf_out
        buf_out += conn.data_to_send()
        while buf_out:
            try:
                n = sock.send(buf_out)
            except (ssl.SSLWantWriteError, BlockingIOError):
                return
            buf_out = buf_out[n:]

    while True:
        now = time.monotonic()
        if cpu0 is None and now >= measure_from:
            cpu0, measured0 = cpu_ns(a.server_pid), done
        due = start + sent / a.rate
        # A call due is sent (late ones too, none skipped), then whatever has arrived is
        # read without waiting, so answers are taken between sends even when behind.
        sending = due <= now and due < end and sent - done < MAX_IN_FLIGHT
        if sending:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers)
            block = conn.data_to_send()
            header_bytes.append(len(block))
            buf_out += block
            conn.send_data(sid, get_user(sent), end_stream=True)
            flush()
            sent += 1
        elif due >= end and done >= sent:
            break
        timeout = 0.0 if sending else (max(0.0, due - now) if due < end else 0.05)
        for _key, _ in sel.select(timeout):
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            if not data:
                sys.exit("the server closed the connection")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.TrailersReceived) or (
                    isinstance(ev, h2.events.ResponseReceived)
                    and any(k == b"grpc-status" for k, _ in ev.headers)
                ):
                    code = dict(ev.headers).get(b"grpc-status", b"?").decode()
                    status[code] = status.get(code, 0) + 1
                    if code != "0":
                        bad.setdefault(code, dict(ev.headers).get(b"grpc-message", b"").decode())
                elif isinstance(ev, h2.events.StreamEnded):
                    done += 1
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            flush()
    cpu1 = cpu_ns(a.server_pid)
    measured = done - measured0
    out = {
        "form": ("bare" if not a.token else a.form),
        "rate": a.rate,
        "calls": measured,
        "server_cpu_us_per_call": round((cpu1 - cpu0) / 1e3 / measured, 2),
        "request_headers_bytes": header_bytes[:3] + [header_bytes[-1]],
        "status": status,
    }
    print(json.dumps(out))
    if bad:
        sys.exit(f"failed calls: {bad}")


if __name__ == "__main__":
    main()
