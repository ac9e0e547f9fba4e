"""What Metaflow's Deployer starts in place of ``python FLOW.py ...``: the command, run by the
compile server in a forked child that has Metaflow imported already.

    python -I -S fork_launcher.py SOCKET FLOW.py [options...]

It sends its command line, working directory and environment to the server at SOCKET, with its
stdin, stdout and stderr, waits for the child and exits as it exited, so that the Deployer sees
the process it expects: the same output, the same attribute file, the same exit status. Where
the server refuses the command (other Metaflow settings) or cannot be reached, it becomes the
plain ``python FLOW.py ...``. Standard library only: it runs without site-packages.
"""

import json
import os
import socket
import sys


def main(argv: list[str]) -> int:
    path, *command = argv
    request = {"argv": command, "cwd": os.getcwd(), "env": dict(os.environ)}
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    except OSError:
        answer = {"refused": "the compile server is not there"}
    else:
        line = connection.makefile("rb").readline()
        answer = json.loads(line) if line else None
    if answer is None:  # it may have run part of the command: running it again could repeat it
        print("error: the compile server went away while running the command", file=sys.stderr)
        return 1
    if "refused" in answer:
        connection.close()
        print(f"note: running as a fresh Python: {answer['refused']}", file=sys.stderr)
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *command])
    status = answer["status"]
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
