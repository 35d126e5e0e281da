"""WebSocket frames of a credentialed cell, rewritten like any message body, both ways.

After a 101 the connection carries frames, not HTTP; relaying them as raw bytes would hand the
cell whatever real value a server echoes. Frames are parsed here (RFC 6455 5.2): the payloads of
one message (a text or binary frame and its continuations) are one stream through a same-length
rewriter, so a value split across fragments is still found; control frames (close, ping, pong)
are rewritten whole. Every frame keeps its header, mask key and length, so frames are passed on
as they were, in order. A frame whose end the rewriter holds back waits for the next fragment of
its message, never past the message's end.

- Server to cell: every spelling of every real value is scrubbed to its dummy's.
- Cell to server (masked frames): dummies of ``body = true`` credentials are swapped for the
  real values toward the credential's hosts only, as in request bodies (over ``ws://`` only with
  ``allow_plaintext``, else the connection is closed). Toward other hosts frames go as sent.

Compression (permessage-deflate) is never offered for a credentialed cell (net/forward.py strips
``Sec-WebSocket-Extensions``), so any reserved bit, a frame masked the wrong way, an unknown
opcode or a malformed control frame ends the connection: fail closed. A secret split across two
separate *messages* is not joined: each message is rewritten on its own (docs/security.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from nixcell.errors import CredentialError
from nixcell.net.stream import Stream

_CONTROL = {8, 9, 10}  # close, ping, pong
_DATA = {1, 2}  # text, binary; 0 continues one


class BadFrame(Exception):
    """The frames break the protocol (or use an extension nixcell did not offer)."""


@dataclass
class _Frame:
    header: bytes  # as received, mask key included
    length: int
    need: int  # payload bytes still to come out of the rewriter
    mask: bytes = b""
    control: bool = False  # rewritten whole when complete, never filled from a message
    done: int = 0  # payload bytes already passed on (the mask's phase)
    parts: list[bytes] = field(default_factory=list)

    def add(self, plain: bytes) -> None:
        self.parts.append(_masked(plain, self.mask, self.done))
        self.done += len(plain)
        self.need -= len(plain)


def _masked(data: bytes, mask: bytes, offset: int) -> bytes:
    """XOR with the frame's key at the payload ``offset`` (masking and unmasking alike)."""
    if not mask or not data:
        return data
    key = (mask[offset % 4 :] + mask[: offset % 4]) * (len(data) // 4 + 1)
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(key[:n], "big")).to_bytes(n, "big")


class FrameRewriter:
    """Bytes of one direction's frames in, the same frames rewritten out; pure (no I/O).

    ``message`` makes the streaming rewriter of one data message, ``control`` rewrites a
    control frame's payload whole; ``masked`` is whether this side's frames must be masked
    (the cell's) or must not be (the server's)."""

    def __init__(
        self, message: Callable[[], object], control: Callable[[bytes], bytes], *, masked: bool
    ) -> None:
        self._message = message
        self._control_rewrite = control
        self._masked = masked
        self._buf = b""
        self._left = 0  # payload bytes of the current frame still to read
        self._frame: _Frame | None = None
        self._control: bytearray | None = None  # payload of a control frame being read
        self._fin = False
        self._rewriter: object | None = None  # the current data message's
        self._queue: list[_Frame] = []

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        while self._buf:
            if self._frame is None and not self._start_frame():
                break
            self._payload()
        return self._emit()

    def end(self) -> bytes:
        """The sender closed: flush the current message, pass on what there is."""
        if self._rewriter is not None:
            self._fill(self._rewriter.flush())  # type: ignore[attr-defined]
            self._rewriter = None
        out = self._emit()
        rest = b"".join(f.header + b"".join(f.parts) for f in self._queue)
        self._queue.clear()
        return out + rest

    def _start_frame(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        fin, rsv, opcode = buf[0] & 0x80, buf[0] & 0x70, buf[0] & 0x0F
        masked, length = bool(buf[1] & 0x80), buf[1] & 0x7F
        size = 2 + {126: 2, 127: 8}.get(length, 0)
        key_at, size = size, size + (4 if masked else 0)
        if len(buf) < size:
            return False
        if length >= 126:
            length = int.from_bytes(buf[2:key_at], "big")
        if rsv:
            raise BadFrame("reserved bits set: a WebSocket extension nixcell cannot inspect")
        if masked != self._masked:
            raise BadFrame("a frame masked the wrong way for its direction")
        if opcode in _CONTROL:
            if not fin or length > 125:
                raise BadFrame("a fragmented or oversized control frame")
            self._control = bytearray()
        elif opcode in _DATA:
            if self._rewriter is not None:
                raise BadFrame("a new message inside a fragmented one")
            self._rewriter = self._message()
        elif opcode != 0 or self._rewriter is None:
            raise BadFrame(f"unexpected opcode {opcode}")
        control = opcode in _CONTROL
        self._frame = _Frame(buf[:size], length, length, buf[key_at:size], control)
        self._queue.append(self._frame)
        self._fin = bool(fin)
        self._left = length
        self._buf = buf[size:]
        return True

    def _payload(self) -> None:
        frame = self._frame
        assert frame is not None
        take, self._buf = self._buf[: self._left], self._buf[self._left :]
        plain = _masked(take, frame.mask, frame.length - self._left)  # unmasked at its phase
        self._left -= len(take)
        if self._control is not None:
            self._control += plain
        elif plain:
            self._fill(self._rewriter.feed(plain))  # type: ignore[union-attr]
        if self._left:
            return
        if self._control is not None:  # small and whole: rewritten at once
            frame.add(self._control_rewrite(bytes(self._control)))
            self._control = None
        elif self._fin:  # the message ends: nothing is held back past it
            self._fill(self._rewriter.flush())  # type: ignore[union-attr]
            self._rewriter = None
        self._frame = None

    def _fill(self, data: bytes) -> None:
        """Rewritten payload bytes go to the data frames waiting for them, oldest first."""
        for frame in self._queue:
            if not data:
                return
            if frame.need and not frame.control:
                piece, data = data[: frame.need], data[frame.need :]
                frame.add(piece)
        assert not data, "the rewriter gave back more than it was fed"

    def _emit(self) -> bytes:
        # A frame goes out once its payload is complete (the one being read is not).
        out = []
        while self._queue and self._queue[0].need == 0 and self._queue[0] is not self._frame:
            frame = self._queue.pop(0)
            out += [frame.header, *frame.parts]
        return b"".join(out)


def server_frames(creds: object) -> FrameRewriter:
    """The server's frames, scrubbed of every spelling of every real value."""
    scrub = creds.scrub  # type: ignore[attr-defined]
    return FrameRewriter(creds.response_scrubber, scrub, masked=False)  # type: ignore[attr-defined]


def cell_frames(creds: object, scheme: str, host: str) -> FrameRewriter | None:
    """The cell's frames toward ``host``: dummies swapped as in request bodies; None when no
    credential's dummy may be swapped there (the frames then go as sent)."""
    plain = scheme == "http"

    def message() -> object:
        return creds.request_body_rewriter(host, plain=plain)  # type: ignore[attr-defined]

    if message() is None:
        return None

    def control(payload: bytes) -> bytes:
        rewriter = message()
        return rewriter.feed(payload) + rewriter.flush()  # type: ignore[attr-defined]

    return FrameRewriter(message, control, masked=True)


async def relay_frames(src: Stream, dst: Stream, frames: FrameRewriter, first: bytes = b"") -> None:
    """Relay one direction's frames, rewritten, until the sender closes; a protocol break (or
    a real value that may not go over cleartext) closes both ends, never passing the frame."""
    try:
        data = first
        while True:
            out = frames.feed(data) if data else b""
            if out:
                dst.write(out)
                await dst.drain()
            data = bytes(await src.read())
            if not data:
                break
        out = frames.end()
        if out:
            dst.write(out)
            await dst.drain()
    except (BadFrame, CredentialError):
        src.close()
        dst.close()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await dst.write_eof()
