"""The physical floor: the smallest standard-library Python process doing the sidecar's job once.

It fetches one session (``GET <URL>/v2/auth/session`` with the ``x-api-key`` header) and writes
``accessToken`` with the same atomic sequence as the sidecar: ``mkstemp`` in the target's
directory, ``fchmod 0640``, write, ``fsync``, ``rename``, ``fsync`` of the directory. No
configuration, validation, retries, logging or metrics: every benchmark compares the sidecar with
this script, run interleaved in the same session.

Usage: FORESTREET_API_KEY=k python bench/baseline_fetch.py URL TOKEN_PATH
"""

import json
import os
import sys
import tempfile
import urllib.request

SESSION_PATH = "/v2/auth/session"
USAGE = "usage: FORESTREET_API_KEY=k baseline_fetch.py URL TOKEN_PATH"


def fetch(base_url: str, key: str, timeout: float = 10.0) -> str:
    url = base_url.rstrip("/") + SESSION_PATH
    request = urllib.request.Request(url, headers={"x-api-key": key}, method="GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our URL
        token = json.load(response)["accessToken"]
    if not isinstance(token, str) or not token:
        raise ValueError("accessToken missing")
    return token


def write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))  # noqa: PTH100, PTH120 - os only, on purpose
    fd, temp = tempfile.mkstemp(prefix=".token.tmp-", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o640)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)  # noqa: PTH104
    except BaseException:
        if os.path.exists(temp):  # noqa: PTH110
            os.unlink(temp)  # noqa: PTH108
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def main() -> int:
    if len(sys.argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    key = os.environ.get("FORESTREET_API_KEY", "")
    if not key:
        print("FORESTREET_API_KEY is not set", file=sys.stderr)
        return 2
    write_atomic(sys.argv[2], fetch(sys.argv[1], key).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
