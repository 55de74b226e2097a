"""Matching a user's config pattern in a helper process that is killed at a deadline.

A catastrophic regular expression such as ``(a|aa)+$`` must not stall the server: the
pattern runs in one of a few idle helper processes (``python -c _WORKER_CODE``), and a
helper that overruns is killed and replaced. No web framework here: the API calls
``match_configs`` and the app factory calls ``warm``.
"""

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from .configs import compile_pattern
from .errors import SlotrunError

log = logging.getLogger(__name__)


def match_configs(workspace, pattern, configs_dir, max_length, timeout):
    """Return the configs a user's pattern matches, within ``timeout`` seconds or a 400.

    The pattern runs in a helper process that is killed at the deadline: the regex
    package's own timeout is checked too rarely to bound a catastrophic pattern (0.5 s
    asked, 0.8 to 4.8 s spent on this project's machines), and a thread cannot be stopped.
    """
    compile_pattern(pattern, max_length)  # invalid or too long: 400 right here
    return _MATCHER.match({"workspace": workspace, "pattern": pattern,
                           "configs_dir": configs_dir, "max_length": max_length,
                           "timeout": timeout}, timeout + PATTERN_GRACE)


PATTERN_GRACE = 0.2  # seconds on top of regex_timeout before the helper process is killed

# The helper: one request per line on stdin, one JSON answer per line on stdout.
_WORKER_CODE = r"""
import json, sys
from app.configs import match_configs
from app.errors import SlotrunError
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    try:
        out = {"configs": match_configs(req["workspace"], req["pattern"], req["configs_dir"],
                                        max_length=req["max_length"], timeout=req["timeout"])}
    except SlotrunError as e:
        out = {"error": e.message, "status": e.status}
    except Exception:
        out = {"error": "internal error: matching the pattern failed", "status": 500}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class _Overrun(Exception):
    """The helper did not answer in time."""


class _PatternWorker:
    """One helper process that matches config patterns."""

    def __init__(self):
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        # Started from the package's folder, so a workspace's own files can never shadow it.
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], cwd=package_root,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._buffer = b""
        if self._line(time.monotonic() + 30) != b"ready":
            self.kill()
            raise OSError("the pattern helper did not start")

    def ask(self, request, deadline):
        """Send one request; return its answer, or raise _Overrun at ``deadline``."""
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        return json.loads(self._line(deadline))

    def _line(self, deadline):
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select(): a busy server's descriptors may exceed 1024
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Overrun()
            if poller.poll(max(1, int(left * 1000))):
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise OSError("the pattern helper exited")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def alive(self):
        """Return True while the process runs."""
        return self.proc.poll() is None

    def kill(self):
        """Stop the process at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class _PatternMatcher:
    """A few helper processes; one is killed (and replaced) when a pattern overruns.

    At most ``MAX_WORKERS`` helpers match at once: a burst of submits waits for a helper to
    be free instead of starting a process each (a process start costs more than a match).
    """

    MAX_IDLE = 4
    MAX_WORKERS = 4
    WAIT_MAX = 10.0  # seconds a request may wait for a free helper before it is refused

    def __init__(self):
        self._idle = []
        self._out = 0  # helpers matching, or starting
        self._cond = threading.Condition()

    def match(self, request, seconds):
        """Return the matching configs, or raise the error the helper reported."""
        worker = self._take()
        try:
            answer = worker.ask(request, time.monotonic() + seconds)
        except _Overrun:
            self._drop(worker)
            self.warm()  # the next preview should not pay for a new process
            raise SlotrunError(
                f"pattern {request['pattern']!r} took longer than {request['timeout']:g} s to "
                "match the config names; simplify it (avoid nested repetition such as "
                "(a|aa)+)") from None
        except (OSError, ValueError):
            self._drop(worker)
            log.exception("the pattern helper failed")
            raise SlotrunError("internal error: matching the pattern failed; the details are "
                               "in the server's log", status=500) from None
        self._give_back(worker)
        if "error" in answer:
            raise SlotrunError(answer["error"], status=answer.get("status", 400))
        return answer["configs"]

    def warm(self):
        """Start an idle helper in the background (if none is waiting)."""
        with self._cond:
            if self._idle or self._out >= self.MAX_WORKERS:
                return
            self._out += 1

        def start():
            """Start one helper and keep it idle."""
            try:
                worker = _PatternWorker()
            except OSError:
                self._drop(None)
                log.exception("starting the pattern helper failed")
                return
            self._give_back(worker)

        threading.Thread(target=start, name="slotrun-pattern-helper", daemon=True).start()

    def _take(self):
        deadline = time.monotonic() + self.WAIT_MAX
        with self._cond:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        self._out += 1
                        return worker
                    worker.kill()
                if self._out < self.MAX_WORKERS:
                    self._out += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlotrunError(
                        f"the server is busy matching {self._out} other patterns; try again "
                        "in a moment", status=503)
                self._cond.wait(left)
        try:
            return _PatternWorker()
        except BaseException:
            self._drop(None)
            raise

    def _give_back(self, worker):
        with self._cond:
            self._out -= 1
            if worker.alive() and len(self._idle) < self.MAX_WORKERS \
                    and (len(self._idle) < self.MAX_IDLE or self._out > 0):
                # Kept while others are matching: a request may be waiting for it.
                self._idle.append(worker)
                self._cond.notify()
                return
            self._cond.notify()
        worker.kill()

    def _drop(self, worker):
        """Forget a helper that failed or overran (killed here), or never started."""
        if worker is not None:
            worker.kill()
        with self._cond:
            self._out -= 1
            self._cond.notify()

    def close(self):
        """Stop every idle helper."""
        with self._cond:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_MATCHER = _PatternMatcher()
atexit.register(_MATCHER.close)


def warm():
    """Start the pattern helper process ahead of the first pattern (in the background)."""
    _MATCHER.warm()
