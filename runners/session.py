"""Long-lived exec sessions: many commands in a container, one exec each.

An exec costs about 60 ms here (create, start, and the inspect that
reads its status), which is most of what a katas-data-container run
spends outside the kata's own script. A `Session` pays it once: one
exec runs a small Perl server (`SERVER`) that takes requests on its
stdin, each a shell script plus a framed input stream, runs each in
`sh -c` with that input on its stdin, and answers on its stdout with
framed output and the script's exit status.

The protocol, all on the exec's stdin and stdout (the engine gives no
order between an exec's stdout and stderr, so those are never mixed)::

    request:   "R <length>\\n" script
               then input frames "<length>\\n" bytes, and "0\\n" to end
    response:  frames "O <length>\\n" bytes (stdout) and
               "E <length>\\n" bytes (stderr), then "X <status>\\n"

The server discards what a script leaves unread, so a script that stops
early (`exit 75`) leaves the session at a clean boundary. A reader that
stops before the end of a request's output (a tar reader stops at the
end-of-archive blocks, before tar's padding) has the rest drained when
it is little and soon over, keeping the session; otherwise the session
is closed, and the server, seeing its stdin end, lets the script's
input end too, as the exec's own socket closing would. A `SessionPool` keeps a few idle
sessions, opened on demand and closed with the pool; a session found
dead (the container stopped) is dropped, never reused.

The container needs Perl (any Debian image has it: perl-base is an
essential package).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Final

import docker

from .container import (
    _STDERR,
    _STDERR_CAP,
    _Capped,
    _DeadlinePassed,
    _ExecEnded,
    _frames,
    _start_exec,
)
from .errors import ContainerError

__all__ = ["SERVER", "Session", "SessionPool"]

log = logging.getLogger(__name__)

# Input frames are coalesced up to this size before they are sent.
_FRAME: Final = 256 * 1024
# A response header ("O 262144") is short; more is a broken stream.
_HEADER_CAP: Final = 64
# What a request whose reader stopped early may still send, and how long
# it may take to, for the session to be kept: GNU tar pads its output to
# a 10 KiB record after the end-of-archive blocks a reader stops at.
_DRAIN_BYTES: Final = 256 * 1024
_DRAIN_SECONDS: Final = 2.0

SERVER: Final = r"""
use strict; use warnings; use POSIX (); use Fcntl;
$SIG{PIPE} = 'IGNORE';
my $CHUNK = 65536; my $writable = 1;
sub get_line {
  my $line = '';
  while (1) {
    my $got = sysread(STDIN, my $c, 1);
    return undef unless $got;
    return $line if $c eq "\n";
    $line .= $c;
    return undef if length($line) > 32;
  }
}
sub get_bytes {
  my ($n) = @_; my $data = '';
  while (length($data) < $n) {
    my $got = sysread(STDIN, $data, $n - length($data), length($data));
    return undef unless $got;
  }
  return $data;
}
sub put {
  my ($data) = @_;
  while ($writable && length $data) {
    my $wrote = syswrite(STDOUT, $data);
    if (defined $wrote) { substr($data, 0, $wrote) = ''; next }
    $writable = 0 unless $!{EINTR};
  }
}
while (defined(my $head = get_line())) {
  my ($length) = $head =~ /^R (\d+)$/ or die "tarpipe session: bad request\n";
  my $script = get_bytes($length);
  last unless defined $script;
  pipe(my $in_r, my $in_w) or die "pipe: $!";
  pipe(my $out_r, my $out_w) or die "pipe: $!";
  pipe(my $err_r, my $err_w) or die "pipe: $!";
  my $pid = fork();
  die "fork: $!" unless defined $pid;
  if (!$pid) {
    $SIG{PIPE} = 'DEFAULT';
    POSIX::dup2(fileno $in_r, 0); POSIX::dup2(fileno $out_w, 1);
    POSIX::dup2(fileno $err_w, 2);
    exec('/bin/sh', '-c', $script) or POSIX::_exit(127);
  }
  close $in_r; close $out_w; close $err_w;
  fcntl($in_w, F_SETFL, fcntl($in_w, F_GETFL, 0) | O_NONBLOCK);
  my %outputs = (fileno($out_r) => ['O', $out_r], fileno($err_r) => ['E', $err_r]);
  my ($pending, $left, $input_open, $child_reads, $gone) = ('', 0, 1, 1, 0);
  while (%outputs || $input_open) {
    my ($want_read, $want_write) = ('', '');
    vec($want_read, fileno STDIN, 1) = 1 if $input_open && length($pending) < $CHUNK;
    vec($want_read, $_, 1) = 1 for keys %outputs;
    vec($want_write, fileno $in_w, 1) = 1 if $child_reads && length $pending;
    my ($can_read, $can_write) = ($want_read, $want_write);
    my $ready = select($can_read, $can_write, undef, undef);
    if ($ready < 0) { next if $!{EINTR}; die "select: $!" }
    for my $fd (keys %outputs) {
      next unless vec($can_read, $fd, 1);
      my ($tag, $handle) = @{$outputs{$fd}};
      my $got = sysread($handle, my $data, $CHUNK);
      if ($got) { put("$tag " . length($data) . "\n" . $data); next }
      next if !defined $got && $!{EINTR};
      close $handle; delete $outputs{$fd};
    }
    if ($child_reads && length $pending && vec($can_write, fileno $in_w, 1)) {
      my $wrote = syswrite($in_w, $pending);
      if (defined $wrote) { substr($pending, 0, $wrote) = '' }
      elsif (!$!{EAGAIN} && !$!{EINTR}) { $child_reads = 0 }
    }
    if ($input_open && vec($can_read, fileno STDIN, 1)) {
      if ($left == 0) {
        my $frame = get_line();
        if (!defined $frame || $frame !~ /^\d+$/) { $input_open = 0; $gone = 1 }
        elsif ($frame == 0) { $input_open = 0 }
        else { $left = $frame }
      } else {
        my $got = sysread(STDIN, my $data, $left < $CHUNK ? $left : $CHUNK);
        if ($got) { $left -= $got; $pending .= $data if $child_reads }
        else { $input_open = 0; $gone = 1 }
      }
    }
    $pending = '' unless $child_reads;
    if ($child_reads && !$input_open && !length $pending) {
      close $in_w; $child_reads = 0;
    }
    if (!$writable) { close $_->[1] for values %outputs; %outputs = () }
  }
  close $in_w if $child_reads;
  waitpid($pid, 0);
  my $status = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
  put("X $status\n");
  last if $gone || !$writable;
}
"""


class _InputBroke(Exception):
    """The input of a request raised `error`; the request was ended."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Session:
    """One exec of `SERVER` in a running container; one request at a time.

    `call(script, chunks)` runs `script` in `sh -c` with `chunks` as its
    stdin and yields its stdout; a non-zero status raises ContainerError
    with the status and the script's stderr. `io_timeout` bounds, in
    seconds, each wait for the container. After a request that did not
    run to its end (an error, an iterator closed early) the session is
    closed: `usable` tells whether it may take another.
    """

    def __init__(self, client: docker.DockerClient, container_id: str, *,
                 io_timeout: float = 60.0) -> None:
        self.container_id = container_id
        self.io_timeout = io_timeout
        self._exec_id, self._conn = _start_exec(
            client, container_id, ["perl", "-e", SERVER], stdin=True)
        # No read waits past this (monotonic) time: set while draining.
        self._until = float("inf")
        self._frames = _frames(self._recv)
        # The frame being answered, and how much of it is still to come.
        self._tag, self._left = b"", 0
        self._buffer = bytearray()
        self._errors = _Capped(_STDERR_CAP)  # the server's own, if any
        self._open = True
        self._busy = False

    @property
    def usable(self) -> bool:
        """Open, at a request boundary, and its exec not known to be gone."""
        if not self._open or self._busy:
            return False
        # At a boundary the server says nothing: a readable socket means
        # it has ended (the container stopped, say).
        if not self._buffer and self._conn.quiet():
            return True
        log.debug("session %s has ended", self._exec_id[:12])
        self.close()
        return False

    def close(self) -> None:
        """Close the socket; the server then ends, and its exec with it."""
        if self._open:
            self._open = False
            self._conn.close()

    def call(self, script: str, chunks: Iterable[bytes] = ()
             ) -> Generator[bytes, None, None]:
        """Run `script` with `chunks` on its stdin; yield its stdout."""
        if not self.usable:
            raise ContainerError("the session is closed or busy")
        self._busy = True
        stderr = _Capped(_STDERR_CAP)
        try:
            self._send(script, chunks)
            status = yield from self._answer(stderr)
        except _InputBroke as broke:
            # The session is at a boundary: still usable.
            raise broke.error from None
        except GeneratorExit:
            self._drain()
            raise
        except BaseException:
            self.close()
            raise
        finally:
            self._busy = False
        if status != 0:
            raise ContainerError(
                f"session script ended with status {status}: "
                f"{script[:200]!r}", bytes(stderr.data), status=status)

    # -- one request -----------------------------------------------------

    def _send(self, script: str, chunks: Iterable[bytes]) -> None:
        body = script.encode()
        frames = _coalesced(chunks, _FRAME)
        try:
            self._conn.send(b"R %d\n%s" % (len(body), body), self.io_timeout)
            while True:
                try:
                    frame = next(frames, b"")
                except Exception as error:
                    self._abandon_input()
                    raise _InputBroke(error) from error
                self._conn.send(b"%d\n" % len(frame), self.io_timeout)
                if not frame:
                    return
                self._conn.send(frame, self.io_timeout)
        except _ExecEnded:
            raise self._ended("while its input was sent") from None
        except _DeadlinePassed:
            raise ContainerError(f"the session took no input for "
                                 f"{self.io_timeout} s") from None

    def _abandon_input(self) -> None:
        """End the input where it broke off, and wait for the script.

        Its input then ends early, as if cut: a script must not act on
        input that did not reach its end (the data container's scripts
        check for a last member). Waiting keeps the next request from
        overlapping this one's last steps.
        """
        self._conn.send(b"0\n", self.io_timeout)
        for _ in self._answer(_Capped(0)):
            pass

    def _answer(self, stderr: _Capped) -> Generator[bytes, None, int]:
        """Yield the O frames, keep the E frames; return the status.

        Picks up inside a frame where an earlier reader stopped.
        """
        while True:
            if not self._left:
                tag, number = self._header()
                if tag == b"X":
                    return number
                self._tag, self._left = tag, number
            piece = self._read(self._left)
            self._left -= len(piece)
            if self._tag == b"O":
                yield piece
            else:
                stderr.add(piece)

    def _drain(self) -> None:
        """Read what is left of an answer nobody reads any more.

        The session is kept if the answer ends within _DRAIN_BYTES and
        _DRAIN_SECONDS; else it is closed, which ends the script's input
        and stops the server.
        """
        left = _DRAIN_BYTES
        self._until = time.monotonic() + _DRAIN_SECONDS
        try:
            for piece in self._answer(_Capped(0)):
                left -= len(piece)
                if left < 0:
                    break
            else:
                log.debug("session %s: drained an answer read in part",
                          self._exec_id[:12])
                return
        except ContainerError:
            pass
        finally:
            self._until = float("inf")
        self.close()

    def _recv(self, size: int) -> bytes:
        """Up to `size` bytes of the exec's output; b"" at its end."""
        deadline = min(time.monotonic() + self.io_timeout, self._until)
        try:
            return self._conn.read(size, deadline)
        except _DeadlinePassed:
            raise ContainerError(
                f"the session wrote nothing for {self.io_timeout} s"
                if deadline < self._until else
                "the session's answer did not end in time") from None

    def _header(self) -> tuple[bytes, int]:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _HEADER_CAP:
                raise ContainerError("the session's output is not framed: "
                                     f"{bytes(self._buffer[:80])!r}")
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        tag, _, number = line.partition(b" ")
        if tag not in (b"O", b"E", b"X") or not number.isdigit():
            raise ContainerError(f"the session sent a bad frame: {line!r}")
        return tag, int(number)

    def _read(self, most: int) -> bytes:
        if not self._buffer:
            self._fill()
        piece = bytes(self._buffer[:most])
        del self._buffer[:most]
        return piece

    def _fill(self) -> None:
        """Append the next piece of the server's stdout to the buffer."""
        for stream, piece in self._frames:
            if stream == _STDERR:
                self._errors.add(piece)
                continue
            self._buffer += piece
            return
        raise self._ended("while answering")

    def _ended(self, when: str) -> ContainerError:
        self.close()
        said = bytes(self._errors.data)
        return ContainerError(
            f"the session in container {self.container_id[:12]} ended "
            f"{when}", said)


class SessionPool:
    """Sessions in one container, opened on demand, a few kept idle.

    `container` gives the container's id; `revive`, called when a session
    cannot be opened there, may bring the container back (start it) and
    give its id, for one more try. Thread-safe; `close` closes the idle
    sessions, and a busy one when it is given back.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        container: Callable[[], str],
        *,
        revive: Callable[[], str] | None = None,
        keep: int = 4,
        io_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.keep = keep
        self.io_timeout = io_timeout
        self._container = container
        self._revive = revive
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(self, script: str,
             chunks: Iterable[bytes] = ()) -> Iterator[bytes]:
        """`Session.call` in a session of the pool; starts when iterated."""
        session = self._take()
        try:
            yield from session.call(script, chunks)
        finally:
            self._give_back(session)

    def run(self, script: str, chunks: Iterable[bytes] = ()) -> bytes:
        """Run `script` to its end; its stdout, joined."""
        return b"".join(self.call(script, chunks))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()

    def _take(self) -> Session:
        with self._lock:
            if self._closed:
                raise ContainerError("the session pool is closed")
            while self._idle:
                session = self._idle.pop()
                if session.usable:
                    return session
        return self._open()

    def _open(self) -> Session:
        try:
            return Session(self.client, self._container(),
                           io_timeout=self.io_timeout)
        except ContainerError:
            if self._revive is None:
                raise
        log.warning("cannot open a session in the container: reviving it")
        return Session(self.client, self._revive(), io_timeout=self.io_timeout)

    def _give_back(self, session: Session) -> None:
        with self._lock:
            if session.usable and not self._closed \
                    and len(self._idle) < self.keep:
                self._idle.append(session)
                return
        session.close()


def _coalesced(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks' bytes in pieces of about `size`; never an empty one."""
    gathered = bytearray()
    try:
        for chunk in chunks:
            gathered += chunk
            if len(gathered) >= size:
                yield bytes(gathered)
                gathered.clear()
    except Exception:
        # What came before a failure still goes, as it would unjoined.
        if gathered:
            yield bytes(gathered)
        raise
    if gathered:
        yield bytes(gathered)
