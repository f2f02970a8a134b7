"""Does a gRPC client index the bearer token in HPACK? A plaintext HTTP/2 listener that prints
the length of each HEADERS frame it receives (it never answers), called four times by Python
grpcio with the same token: if the client indexed `authorization`, the later HEADERS blocks would
be ~200 bytes shorter than the first. BENCHMARKS.md, session 17.

    .venv/bin/python benches/hpack_sniff.py "$(target/release/jisu token issue --sub x --scope users:read)"
"""
import socket
import struct
import sys
import threading
import time

import grpc

CALLS = 4


def listen(sock, lengths, done):
    conn, _ = sock.accept()
    buf = b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            data = conn.recv(65536)
            if not data:
                raise EOFError
            buf += data

    need(24)  # the client preface
    buf = buf[24:]
    conn.sendall(struct.pack(">I", 0)[1:] + bytes([4, 0]) + struct.pack(">I", 0))  # SETTINGS
    while len(lengths) < CALLS:
        need(9)
        length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        need(9 + length)
        buf = buf[9 + length:]
        if kind == 4 and not flags & 1:
            conn.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))  # SETTINGS ack
        if kind == 1:
            lengths.append(length)
    done.set()


def main():
    token = sys.argv[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    lengths, done = [], threading.Event()
    threading.Thread(target=listen, args=(sock, lengths, done), daemon=True).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{sock.getsockname()[1]}")
    call = channel.unary_unary("/jisucloud.v1.UserService/GetUser",
                               request_serializer=lambda x: x, response_deserializer=lambda x: x)
    pending = []
    for _ in range(CALLS):
        pending.append(call.future(b"", metadata=[("authorization", "Bearer " + token)], timeout=2))
        time.sleep(0.2)  # one HEADERS frame at a time, in order
    done.wait(5)
    print(f"grpcio {grpc.__version__}, a {len(token)}-character token: HEADERS of "
          + ", ".join(str(n) for n in lengths) + " bytes")
    for p in pending:
        p.cancel()


main()
