"""The meshbox-proxy command, arranged so the long-running process stays small.

The proxy process never imports the ``ssl`` module (see tls_stand_in; with a workload certificate,
``--cert-dir``, its TLS layer loads OpenSSL through ``_ssl`` alone) and never imports click or protobuf:
a forked child parses the command line (printing help or errors itself), loads and compiles the config
files, and sends the resolved Options, the config as a compiled Snapshot, back through a pipe; only then does
this process import the data plane and run it. Memory a Python process has touched is not given back,
so this keeps about 2 MB of option parsing and 4 MB of protobuf out of the proxy for good (admin
POST /config compiles in a child too: compile_child).
"""

from __future__ import annotations

import os
import pickle
import sys


def _parse_in_child() -> bytes:
    """Pickled Options from a child running the click command; exits with the child's status if it
    sent none (``--help``, a bad flag, a bad config file)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 1
        try:
            from meshbox.proxy.cli import main as cli_main

            def handoff(options: object) -> None:
                with os.fdopen(write_end, "wb") as out:
                    out.write(pickle.dumps(options))

            cli_main(obj=handoff)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as incoming:
        data = incoming.read()
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    if status != 0 or not data:
        sys.exit(status if status > 0 else (0 if status == 0 else 1))
    return data


def main() -> None:
    data = _parse_in_child()
    from meshbox.proxy import tls_stand_in

    tls_stand_in.install()
    from meshbox.proxy import startup_memory

    # The largest imports one at a time: the peak is then the largest stage, not their garbage added up.
    startup_memory.import_in_stages(["uvloop", "meshbox.proxy.http_proxy"])
    from meshbox.proxy.runtime import Options, run_or_explain

    options = pickle.loads(data)
    assert isinstance(options, Options)
    sys.exit(run_or_explain(options))
