"""Range asymmetric numeral systems (rANS) in numpy, vectorised over interleaved streams.

A `Message` is a row of 64-bit heads ("lanes"), each an independent rANS state in [2^32, 2^64),
over one shared stack of 32-bit words. `push` codes one symbol per lane on the first n lanes at
once; `pop` is its exact inverse. A symbol is coded by its interval [start, start + freq) of a
total 2^prec (prec <= 32): pushing costs prec - log2(freq) bits, which the matching pop gives back.

A lane opens with one word off the stack and closes by giving it back. Pops (and openings)
before anything was pushed draw on "virtual" words below the stack's bottom: a
fixed pseudo-random sequence that both ends generate, never stored. They make the first pops
(bits-back coding's start-up) cost stored bits only once, and the decoder checks at the end that
exactly those words came back: a wrong model or a damaged message is caught there too.
"""

from __future__ import annotations

import numpy as np

HEAD_MIN = np.uint64(1 << 32)  # heads live in [2^32, 2^64)
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


class ANSError(ValueError):
    """The message is not one this sequence of pops can read (damaged, or another model)."""


def virtual_words(pos: np.ndarray) -> np.ndarray:
    """The pseudo-random word at each (negative) stack position: splitmix64, low half."""
    z = pos.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) & _LOW).astype(np.uint32)


class Message:
    """The coder's state: heads [lanes] uint64 and a stack of uint32 words (logical index 0 is
    the stored bottom; below it lie the virtual words)."""

    def __init__(self, lanes: int, words: np.ndarray | None = None, heads: np.ndarray | None = None,
                 strict: bool = False):
        self.strict = strict  # decoding: a pop below the stored bottom means the message is not ours
        self.head = np.full(lanes, HEAD_MIN, np.uint64) if heads is None else np.array(heads, np.uint64)
        self.opened = 0 if heads is None else len(self.head)  # lanes in use: the first `opened`
        words = np.zeros(0, np.uint32) if words is None else np.asarray(words, np.uint32)
        self._buf = np.empty(max(1024, 2 * len(words)), np.uint32)
        self._buf[: len(words)] = words
        self.ptr = len(words)  # logical top
        self.floor = 0  # the lowest logical position reached (< 0: virtual words were drawn)
        self._below: np.ndarray = np.zeros(0, np.uint32)  # words pushed at negative positions

    # -- the stack ---------------------------------------------------------------------------
    def _put(self, words: np.ndarray) -> None:
        k = len(words)
        lo, hi = self.ptr, self.ptr + k
        if lo < 0:  # part of these land below the stored bottom (pushed back over virtual words)
            n_neg = min(k, -lo)
            self._below[len(self._below) + lo: len(self._below) + lo + n_neg] = words[:n_neg]
            words, lo = words[n_neg:], 0
        if len(words):
            if hi > len(self._buf):
                grown = np.empty(max(2 * len(self._buf), hi), np.uint32)
                grown[:lo] = self._buf[:lo]
                self._buf = grown
            self._buf[lo:hi] = words
        self.ptr += k

    def _take(self, k: int) -> np.ndarray:
        lo, hi = self.ptr - k, self.ptr
        out = np.empty(k, np.uint32)
        if hi > 0:
            out[max(0, -lo):] = self._buf[max(lo, 0):hi]
        if lo < 0 and self.strict:  # a decoder retraces the coder's states: never below what was stored
            raise ANSError("the message ran out of stored words")
        if lo < 0:  # below the stored bottom
            n_neg = min(k, -lo)
            depth = -lo  # positions lo .. lo + n_neg - 1, all negative
            if lo < self.floor:
                fresh = np.arange(lo, min(self.floor, lo + n_neg), dtype=np.int64)
                self._below = np.concatenate([virtual_words(fresh), self._below])
                self.floor = lo
            start = len(self._below) - depth
            out[:n_neg] = self._below[start:start + n_neg]
        self.ptr = lo
        return out

    # -- lanes -------------------------------------------------------------------------------
    def open(self, n: int) -> None:
        """Bring lanes up to n into use: each new head is 2^32 plus one word off the stack (coded
        bits of earlier lanes, virtual for the very first), so a lane costs no bits of its own."""
        if n > self.opened:
            self.head[self.opened:n] = HEAD_MIN | self._take(n - self.opened).astype(np.uint64)
            self.opened = n

    def close(self, n: int) -> None:
        """The inverse of open: lanes from n on give their word back to the stack."""
        if n < self.opened:
            h = self.head[n:self.opened]
            if np.any(h >> _32 != 1):
                raise ANSError("a lane does not close where it opened")
            self._put((h & _LOW).astype(np.uint32))
            self.opened = n

    # -- coding ------------------------------------------------------------------------------
    def push(self, start: np.ndarray, freq: np.ndarray, prec: int) -> None:
        """Code one symbol on each of the first len(freq) lanes: interval [start, start+freq) of 2^prec."""
        n = len(freq)
        h = self.head[:n]
        big = h >= (freq << np.uint64(64 - prec))
        if big.any():
            self._put((h[big] & _LOW).astype(np.uint32))
            h[big] >>= _32
        q, r = np.divmod(h, freq)
        h[:] = (q << np.uint64(prec)) + r + start

    def peek(self, n: int, prec: int) -> np.ndarray:
        """The cumulative frequency each of the first n lanes points at (find the symbol from it)."""
        return self.head[:n] & np.uint64((1 << prec) - 1)

    def pop(self, cf: np.ndarray, start: np.ndarray, freq: np.ndarray, prec: int) -> None:
        """Remove the symbols found at cf (from peek) whose intervals are [start, start+freq)."""
        n = len(freq)
        h = self.head[:n]
        h[:] = freq * (h >> np.uint64(prec)) + cf - start
        small = h < HEAD_MIN
        k = int(np.count_nonzero(small))
        if k:
            h[small] = (h[small] << _32) | self._take(k).astype(np.uint64)

    # -- storage -----------------------------------------------------------------------------
    def stored_words(self) -> np.ndarray:
        """The stack as stored: everything from the lowest position reached to the top."""
        if self.ptr < 0:
            return self._below[: len(self._below) + self.ptr].copy()
        return np.concatenate([self._below, self._buf[: self.ptr]]) if len(self._below) else self._buf[: self.ptr].copy()

    def virtual_drawn(self) -> int:
        """How many virtual words the pops drew (the start-up cost, in 32-bit words)."""
        return -self.floor

    def check_start(self, virtual: int) -> None:
        """After decoding everything (every lane closed): the state must be the fresh one, with
        exactly the `virtual` words drawn given back."""
        if self.floor != 0 or self.ptr != virtual or self.opened:
            raise ANSError("the message does not decode back to its start")
        if virtual and not np.array_equal(self._buf[:virtual], virtual_words(np.arange(-virtual, 0, dtype=np.int64))):
            raise ANSError("the message does not decode back to its start")
