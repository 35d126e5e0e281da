"""WebSocket frames from a server to a credentialed cell, scrubbed like any response body.

After a 101 the connection carries frames, not HTTP; relaying them as raw bytes would hand the
cell whatever real value a server echoes. The server's frames are parsed here (RFC 6455 5.2):
the payloads of one message (a text or binary frame and its continuations) are one stream
through the response scrubber, so a secret split across fragments is still found; control
frames (close, ping, pong) are scrubbed whole. Every frame keeps its header and length (the
scrubber keeps lengths), so frames are passed on as they were, in order. A frame that is held
back waits for the next fragment of its message, never past the message's end.

Compression (permessage-deflate) is never offered for a credentialed cell (net/forward.py strips
``Sec-WebSocket-Extensions``), so any reserved bit, a masked server frame, an unknown opcode or
a malformed control frame ends the connection: fail closed. A secret split across two separate
*messages* is not joined: each message is scrubbed on its own (see docs/security.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from nixcell.net.stream import Stream

_CONTROL = {8, 9, 10}  # close, ping, pong
_DATA = {1, 2}  # text, binary; 0 continues one


class BadFrame(Exception):
    """The server's frames break the protocol (or use an extension nixcell did not offer)."""


@dataclass
class _Frame:
    header: bytes
    need: int  # payload bytes still to come out of the scrubber
    parts: list[bytes] = field(default_factory=list)


class FrameScrubber:
    """Bytes of server frames in, the same frames scrubbed out; pure (no I/O)."""

    def __init__(self, creds: object) -> None:
        self._creds = creds
        self._buf = b""
        self._left = 0  # payload bytes of the current frame still to read
        self._frame: _Frame | None = None
        self._control: bytearray | None = None  # payload of a control frame being read
        self._fin = False
        self._rewriter: object | None = None  # the current data message's scrubber
        self._queue: list[_Frame] = []

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        while self._buf:
            if self._frame is None and not self._start_frame():
                break
            self._payload()
        return self._emit()

    def end(self) -> bytes:
        """The server closed: flush the current message, pass on what there is."""
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
        masked, length = buf[1] & 0x80, buf[1] & 0x7F
        size = 2 + {126: 2, 127: 8}.get(length, 0)
        if len(buf) < size:
            return False
        if length >= 126:
            length = int.from_bytes(buf[2:size], "big")
        if rsv:
            raise BadFrame("reserved bits set: a WebSocket extension nixcell cannot inspect")
        if masked:
            raise BadFrame("a masked frame from the server")
        if opcode in _CONTROL:
            if not fin or length > 125:
                raise BadFrame("a fragmented or oversized control frame")
            self._control = bytearray()
        elif opcode in _DATA:
            if self._rewriter is not None:
                raise BadFrame("a new message inside a fragmented one")
            self._rewriter = self._creds.response_scrubber()  # type: ignore[attr-defined]
        elif opcode != 0 or self._rewriter is None:
            raise BadFrame(f"unexpected opcode {opcode}")
        self._frame = _Frame(buf[:size], 0 if opcode in _CONTROL else length)
        self._queue.append(self._frame)
        self._fin = bool(fin)
        self._left = length
        self._buf = buf[size:]
        return True

    def _payload(self) -> None:
        frame = self._frame
        assert frame is not None
        take, self._buf = self._buf[: self._left], self._buf[self._left :]
        self._left -= len(take)
        if self._control is not None:
            self._control += take
        elif take:
            self._fill(self._rewriter.feed(take))  # type: ignore[union-attr]
        if self._left:
            return
        if self._control is not None:  # small and whole: scrubbed at once
            frame.parts.append(self._creds.scrub(bytes(self._control)))  # type: ignore[attr-defined]
            self._control = None
        elif self._fin:  # the message ends: nothing is held back past it
            self._fill(self._rewriter.flush())  # type: ignore[union-attr]
            self._rewriter = None
        self._frame = None

    def _fill(self, data: bytes) -> None:
        """Scrubbed payload bytes go to the data frames waiting for them, oldest first."""
        for frame in self._queue:
            if not data:
                return
            if frame.need:
                piece, data = data[: frame.need], data[frame.need :]
                frame.parts.append(piece)
                frame.need -= len(piece)
        assert not data, "the scrubber gave back more than it was fed"

    def _emit(self) -> bytes:
        out = []
        # A frame goes out once its payload is complete (the one being read is not).
        while self._queue and self._queue[0].need == 0 and self._queue[0] is not self._frame:
            frame = self._queue.pop(0)
            out += [frame.header, *frame.parts]
        return b"".join(out)


async def scrub_frames(src: Stream, dst: Stream, creds: object, first: bytes = b"") -> None:
    """Relay the server's frames to the cell, scrubbed, until either end closes; a protocol
    break closes both (the cell sees the connection end, never the unread frame)."""
    scrubber = FrameScrubber(creds)
    try:
        data = first
        while True:
            out = scrubber.feed(data) if data else b""
            if out:
                dst.write(out)
                await dst.drain()
            data = bytes(await src.read())
            if not data:
                break
        out = scrubber.end()
        if out:
            dst.write(out)
            await dst.drain()
    except BadFrame:
        src.close()
        dst.close()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await dst.write_eof()
