"""A replica for the fail-over tests: a TCP front that relays each connection to a real server, except that it
holds the ``n``-th ``POST …/completions`` — the request goes through to the server, its answer never comes back.

    python tests/holding_proxy.py UPSTREAM_PORT N

It prints ``PORT <port>`` once it listens and ``HOLDING`` once the ``n``-th request has reached the server, so a
test can SIGKILL it exactly while that request is in flight (the client's connection dies mid-answer) or leave it
holding (the client times out mid-answer). Every other connection is relayed byte for byte both ways.
"""

from __future__ import annotations

import socket
import sys
import threading

COMPLETIONS = b"/completions"


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(client: socket.socket, upstream_port: int, hold_at: int, counter: list, lock: threading.Lock) -> None:
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    head = client.recv(65536)
    upstream.sendall(head)
    if head.startswith(b"POST") and COMPLETIONS in head.split(b"\r\n", 1)[0]:
        with lock:
            counter[0] += 1
            hold = counter[0] == hold_at
    else:
        hold = False
    if hold:
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()  # the rest of the body
        print("HOLDING", flush=True)
        threading.Event().wait()  # the answer stays with us: SIGKILL, or the client's timeout, ends this
    threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
    _pipe(upstream, client)


def main() -> None:
    """``holding_proxy.py UPSTREAM_PORT N``: print ``PORT p``, then relay connections to the upstream port, holding
    the N-th completion after it reached the upstream (printing ``HOLDING``) until the process is killed."""
    upstream_port, hold_at = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    counter, lock = [0], threading.Lock()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, upstream_port, hold_at, counter, lock), daemon=True).start()


if __name__ == "__main__":
    main()
