"""The spellings of one secret: families of per-character units, each swapped to the dummy's.

A real credential can come back to a cell written many ways: raw or case-folded, JSON-escaped
(``\\/``, ``\\u0041`` for any or all of its characters, either hex case), percent-encoded (either
case, ``+`` for space, or percent-encoded twice), ``\\x41`` escapes, HTML character references,
hex, quoted-printable, UTF-16, or inside base64 / base64url at any of the three byte alignments
(with or without padding, wrapped in lines or spaced).
Listing a few fixed strings misses the mixed forms (one character escaped, the next not), so
each family is a *pattern of units*: one unit per character (or byte, or base64 digit), each
unit an alternation of that character's spellings. A match is swapped unit by unit into the
dummy spelled the same way (same escape, same hex case), so every replacement has the length of
what it replaces.

That holds because a dummy differs from its real value only at ASCII letters and digits, each
replaced within its class (``credsource.make_dummy``): every escape form of a letter or digit has
one fixed length (a decimal HTML reference keeps its digit count, see ``_text_unit``). In
base64 every bit of the secret is covered, including the edge digits it shares with its
neighbours (their other bits are kept); ``/`` written as JSON ``\\/`` inside base64 stays as it
is when the dummy's digit there is not ``/`` (at most 6 bits of the secret per
such digit), because no other spelling of two bytes exists.

``families`` builds them for one (real, dummy) pair; net/spellings.py compiles them into one
search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_URL = _STD[:62] + b"-_"
# MIME and PEM wrap base64 every 64 or 76 digits; decoders skip whitespace, and JSON holds the
# breaks escaped: any of these may sit between two digits.
_BREAK = rb"(?:[ \t\r\n]{1,2}|(?:\\r)?\\n)?"

Swap = Callable[[bytes], bytes]


def _hex_chars(nibble: int) -> bytes:
    c = b"0123456789abcdef"[nibble : nibble + 1]
    return c if c.isdigit() else c + c.upper()


def _hex_digit(nibble: int) -> bytes:
    chars = _hex_chars(nibble)
    return chars if len(chars) == 1 else b"[" + chars + b"]"


def _hex(value: int, digits: int = 2) -> bytes:
    """A pattern for ``value`` as hex digits, each letter in either case."""
    return b"".join(_hex_digit((value >> (4 * i)) & 15) for i in reversed(range(digits)))


def _hex_like(value: int, sample: bytes) -> bytes:
    """``value`` in as many hex digits as ``sample``, upper case if ``sample`` uses it."""
    text = b"%0*x" % (len(sample), value)
    return text.upper() if any(65 <= c <= 70 for c in sample) else text


Form = tuple[bytes, bytes]  # (the bytes a spelling may start with, a pattern for the rest)


def _lit(text: bytes) -> Form:
    return text[:1], re.escape(text[1:])


@dataclass(frozen=True)
class _Unit:
    forms: tuple[Form, ...]
    swap: Swap | None  # None: the dummy has the same character here, the text stays
    width: int  # the longest text the unit matches

    @property
    def pattern(self) -> bytes:
        return b"|".join(_first(firsts) + rest for firsts, rest in self.forms)


def _first(firsts: bytes) -> bytes:
    if len(firsts) == 1:
        return re.escape(firsts)
    return b"[" + b"".join(re.escape(firsts[i : i + 1]) for i in range(len(firsts))) + b"]"


@dataclass(frozen=True)
class Family:
    units: tuple[_Unit, ...]
    sep: bytes  # pattern allowed between units (kept as is)
    sep_width: int
    # base64: the leading digit the secret shares with the bytes before it (2 or 4 of its bits).
    # It matches 16 or 4 characters, which would make the search stop almost everywhere; so it
    # is not searched for but swapped by looking back from a match (``spellings.Spellings.edit``).
    lead: _Unit | None = None

    def pattern(self, capture: bool) -> bytes:
        wrap = b"(%s)" if capture else b"(?:%s)"
        return self.sep.join(wrap % u.pattern for u in self.units)

    def heads(self) -> dict[int, list[bytes]]:
        """First byte -> patterns for the rest of a match starting with it: searching one
        alternation of literal first bytes lets the regex engine skip every other byte fast."""
        tail = b"".join(self.sep + b"(?:%s)" % u.pattern for u in self.units[1:])
        found: dict[int, list[bytes]] = {}
        for firsts, rest in self.units[0].forms:
            for byte in firsts:
                found.setdefault(byte, []).append(rest + tail)
        return found

    @property
    def width(self) -> int:
        return sum(u.width for u in self.units) + self.sep_width * (len(self.units) - 1)


# -- text: raw, JSON, percent, \x, HTML, + for space, mixed per character ------------------------


def _text_unit(real: str, dummy: str) -> _Unit:
    """One character: raw or escaped, a letter in either case (header names, host names and
    case-folding systems lower-case a secret: that still spells most of it)."""
    raw = real.encode()
    forms: list[Form]
    if not real.isascii():
        forms = [_lit(raw), (b"%", b"".join(b"%" + _hex(b) for b in raw)[1:])]
        code = ord(real)
        if code < 0x10000:
            forms.append((b"\\", b"u" + _hex(code, 4)))
        else:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            forms.append((b"\\", b"u" + _hex(high, 4) + rb"\\u" + _hex(low, 4)))
        return _Unit(tuple(forms), None, max(3 * len(raw), 12))
    # Few alternatives per unit, each behind one first byte: the search stays fast and small.
    codes = sorted({ord(real), ord(real.swapcase())})
    hexes = _any(_hex(c) for c in codes)
    back = [b"(?:u00|x)" + hexes] + ([re.escape(raw)] if real in '/"\\' else [])  # JSON \/
    amp = [b"#(?:[xX]0{0,3}" + hexes + b"|0{0,3}" + _any(b"%d" % c for c in codes) + b");"]
    amp += [_ENTITIES[real] + b";"] if real in _ENTITIES else []
    forms = [
        (bytes(codes), b""),
        (b"\\", _any(back)),
        (b"%", b"(?:25)?" + hexes),
        (b"&", _any(amp)),
    ]
    forms += [(b"+", b"")] if real == " " else []
    if real == dummy:
        return _Unit(tuple(forms), None, 9)

    def swap(text: bytes) -> bytes:
        # The dummy's character is a letter or digit like the real's (make_dummy): every form
        # keeps its length, and a letter keeps the case it was written in.
        seen = _char_of(text)
        new = dummy.lower() if seen.islower() else dummy.upper() if seen.isupper() else dummy
        if text[:1] in b"\\%":
            return text[:-2] + _hex_like(ord(new), text[-2:])
        if text[:3].lower() == b"&#x":
            return text[:-3] + _hex_like(ord(new), text[-3:-1]) + b";"
        if text[:2] == b"&#":  # decimal: as many digits as written, zero-padded
            width = len(text) - 3
            if len(str(ord(new))) > width:  # 'a'-'c' written in 2 digits, a dummy 'd'-'z'
                new = next(c for c in "abc" if c != seen)  # not the dummy, never the real
            return b"&#%0*d;" % (width, ord(new))
        return new.encode()

    return _Unit(tuple(forms), swap, 9)


_ENTITIES = {
    "/": b"sol", "+": b"plus", "=": b"equals", "_": b"lowbar", ".": b"period", ":": b"colon",
    "%": b"percnt", "\\": b"bsol", '"': b"quot", "&": b"amp", "-": b"#45", "~": b"#126",
}  # fmt: skip


def _any(patterns: Iterable[bytes]) -> bytes:
    found = list(dict.fromkeys(patterns))
    return found[0] if len(found) == 1 else b"(?:" + b"|".join(found) + b")"


def _char_of(text: bytes) -> str:
    """The character one escaped unit spells."""
    if text[:1] in b"\\%":
        return chr(int(text[-2:], 16))
    if text[:3].lower() == b"&#x":
        return chr(int(text[3:-1], 16))
    if text[:2] == b"&#":
        return chr(int(text[2:-1]))
    return text.decode()


def _text(real: str, dummy: str) -> Family:
    return Family(tuple(_text_unit(r, d) for r, d in zip(real, dummy, strict=True)), b"", 0)


# -- quoted-printable (mail APIs): =XX for any byte, soft line breaks anywhere ------------------


def _qp_unit(real: str, dummy: str) -> _Unit:
    raw = real.encode()
    forms: list[Form] = [(b"=", b"=".join(_hex(b) for b in raw))]
    if real != "=":
        forms.insert(0, _lit(raw))
    if real == dummy:
        return _Unit(tuple(forms), None, 3 * len(raw))

    def swap(text: bytes) -> bytes:
        return b"=" + _hex_like(ord(dummy), text[1:]) if text[:1] == b"=" else dummy.encode()

    return _Unit(tuple(forms), swap, 3)


def _quoted_printable(real: str, dummy: str) -> Family:
    units = tuple(_qp_unit(r, d) for r, d in zip(real, dummy, strict=True))
    return Family(units, rb"(?:=\r?\n)?", 3)


# -- UTF-16, either byte order ------------------------------------------------------------------


def _utf16(real: str, dummy: str, order: str) -> Family:
    """Big-endian starts at the first character's low byte: its zero high byte is the same in
    the dummy, and a search that stopped at every zero byte would crawl through binary data."""

    def unit(r: str, d: str, first: bool) -> _Unit:
        cut = 1 if first and order == "utf-16-be" and r.isascii() else 0
        variants = dict.fromkeys((r, r.swapcase()) if r.isascii() else (r,))
        forms = tuple(_lit(v.encode(order)[cut:]) for v in variants)
        if r == d:
            return _Unit(forms, None, 4)

        def swap(text: bytes) -> bytes:
            seen = text.decode("latin-1") if cut else text.decode(order)
            new = d.lower() if seen.islower() else d.upper() if seen.isupper() else d
            return new.encode(order)[cut:]

        return _Unit(forms, swap, 2)

    units = tuple(unit(r, d, i == 0) for i, (r, d) in enumerate(zip(real, dummy, strict=True)))
    return Family(units, b"", 0)


# -- hex: each byte as two hex digits, either case -----------------------------------------------


def _hex_family(real: bytes, dummy: bytes) -> Family:
    def unit(r: int, d: int) -> _Unit:
        forms = ((_hex_chars(r >> 4), _hex_digit(r & 15)),)
        return _Unit(forms, None if r == d else (lambda text: _hex_like(d, text)), 2)

    return Family(tuple(unit(r, d) for r, d in zip(real, dummy, strict=True)), b"", 0)


# -- base64: every digit holding a bit of the secret, at one alignment ---------------------------


def _base64(real: bytes, dummy: bytes, skip: int, alphabet: bytes) -> Family:
    """The secret starting ``skip`` bytes into a 3-byte group. Each digit matches the alphabet
    characters whose bits of the secret are right; its swap sets those bits to the dummy's."""
    start, end = 8 * skip, 8 * (skip + len(real))
    real_bits = int.from_bytes(real, "big")
    dummy_bits = int.from_bytes(dummy, "big")
    units = []
    for digit in range(start // 6, -(-end // 6)):
        mask = want = new = 0
        for j in range(6):
            bit = 6 * digit + j
            if start <= bit < end:
                shift = end - 1 - bit
                mask |= 1 << (5 - j)
                want |= ((real_bits >> shift) & 1) << (5 - j)
                new |= ((dummy_bits >> shift) & 1) << (5 - j)
        chars = bytes(alphabet[i] for i in range(64) if i & mask == want)
        forms: list[Form] = [(chars, b"")]
        if b"/" in chars:
            forms.append((b"\\", b"/"))  # JSON that escapes slashes (PHP's default)
        for special in (b"+", b"/"):
            if special in chars:
                forms.append((b"%", _hex(special[0])))
        units.append(_Unit(tuple(forms), _base64_swap(alphabet, mask, new), 3))
    lead = units.pop(0) if start % 6 else None
    return Family(tuple(units), _BREAK, 4, lead)


def _base64_swap(alphabet: bytes, mask: int, new: int) -> Swap:
    def swap(text: bytes) -> bytes:
        if text.startswith(b"%"):
            char = bytes([int(text[1:], 16)])
        elif text == b"\\/":
            char = b"/"
        else:
            char = text
        out = alphabet[(alphabet.index(char) & ~mask) | new :][:1]
        if text.startswith(b"%"):
            return b"%" + _hex_like(out[0], text[1:])
        if text == b"\\/":
            return text  # no other digit has a two-byte spelling: it stays (6 bits at most)
        return out

    return swap


# -- all of them ---------------------------------------------------------------------------------


BUILDERS: tuple[Callable[[str, str], Family], ...] = (
    _text,
    lambda r, d: _hex_family(r.encode(), d.encode()),
    _quoted_printable,
    lambda r, d: _utf16(r, d, "utf-16-le"),
    lambda r, d: _utf16(r, d, "utf-16-be"),
    *(
        lambda r, d, skip=skip, alphabet=alphabet: _base64(r.encode(), d.encode(), skip, alphabet)
        for skip in range(3)
        for alphabet in (_STD, _URL)
    ),
)


def families(real: str, dummy: str) -> list[Family]:
    """Every family of spellings of ``real``, each swapping to the same spelling of ``dummy``."""
    return [build(real, dummy) for build in BUILDERS]
