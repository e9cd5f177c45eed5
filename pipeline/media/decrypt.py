"""Parts of a listing encrypted whole with AES-128 in CBC mode and PKCS#7 padding (HLS's
``METHOD=AES-128``, RFC 8216 4.3.2.4), decrypted as they are joined."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from carn_stream.pipeline.media.listing import ListingError

#: An AES-128 key and a CBC initialization vector are 16 bytes each.
KEY_BYTES = 16
#: The most bytes read from a key's URL (a key is 16; more means it is not a key).
MAX_KEY_BYTES = 1024
#: How much of a part is decrypted at a time.
CHUNK_BYTES = 1 << 20


def check_key(data: bytes, uri: str) -> bytes:
    """``data`` read from ``uri`` as an AES-128 key (exactly 16 bytes, as players take it)."""
    if len(data) != KEY_BYTES:
        raise ListingError(f"the key at {uri} is {len(data)} bytes; an AES-128 key is "
                           f"{KEY_BYTES}")  # fmt: skip
    return data


def decrypt_part(source: Path, key: bytes, iv: bytes, out: BinaryIO, name: str) -> None:
    """``source`` (the part listed as ``name``) decrypted with ``key`` and ``iv``, appended to
    ``out``; a part that does not decrypt (the wrong key, or not encrypted this way) is a
    :class:`ListingError`."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(8 * KEY_BYTES).unpadder()
    with open(source, "rb") as data:
        while chunk := data.read(CHUNK_BYTES):
            out.write(unpadder.update(decryptor.update(chunk)))
    try:
        out.write(unpadder.update(decryptor.finalize()) + unpadder.finalize())
    except ValueError:  # (not whole blocks, or the padding is not PKCS#7's)
        raise ListingError(f"{name} does not decrypt with its key (AES-128): the wrong key, or "
                           "not encrypted as its playlist says") from None  # fmt: skip
