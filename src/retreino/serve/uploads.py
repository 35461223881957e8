"""Reading uploaded files from a request without trusting its size.

Starlette's form parser spools every file to disk whatever its size before the endpoint sees
it, so a 1 GB upload would be read in full just to be refused. Here the multipart body is
parsed as it streams in, and the request is refused the moment a file passes the limit or one
file too many starts. A raw body (`Content-Type: image/jpeg`, curl's `--data-binary`) is
accepted too, as a single file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

# Room for the multipart boundary and part headers around each file.
PART_OVERHEAD = 16 * 1024
# Text fields carry nothing we use; a little is tolerated so that HTML forms with extra fields work.
MAX_FIELD_BYTES = 64 * 1024
# After refusing a body, read (and drop) at most this much more of it, so the client, which is
# usually still sending, gets to read our answer instead of a connection reset.
DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


class UploadError(Exception):
    """A request the server refuses: HTTP status, a stable code for scripts, a message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


async def read_uploads(request, max_file_bytes: int, max_files: int) -> list[Upload]:
    """All files of a multipart (or raw image) request, enforcing the limits as bytes arrive."""
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    kind = kind.decode("latin-1").lower()
    declared = request.headers.get("content-length")
    declared = int(declared) if declared and declared.isdigit() else None
    chunks = _slow_body_timeout(request.stream().__aiter__(), BODY_TIMEOUT_S)

    if kind == "multipart/form-data":
        if declared is not None and declared > max_files * (max_file_bytes + PART_OVERHEAD):
            raise UploadError(
                413,
                "request_too_large",
                f"the request is {megabytes(declared)}: at most {max_files} files of {megabytes(max_file_bytes)} each are accepted",
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "bad_multipart", "multipart/form-data request without a boundary")
        collector = _MultipartCollector(boundary, max_file_bytes, max_files)
        try:
            async for chunk in chunks:
                collector.write(chunk)
            collector.finish()
        except UploadError:
            await _drain(chunks)
            raise
        except MultipartParseError as exc:
            raise UploadError(400, "bad_multipart", f"malformed multipart body ({exc})") from exc
        uploads = collector.uploads
    elif kind.startswith("image/") or kind == "application/octet-stream":
        if declared is not None and declared > max_file_bytes:
            raise _too_large("upload", declared, max_file_bytes)
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > max_file_bytes:
                await _drain(chunks)
                raise _too_large("upload", None, max_file_bytes)
        name = request.headers.get("x-filename") or "upload"
        uploads = [Upload(name, kind, bytes(body))]
    else:
        raise UploadError(
            415,
            "unsupported_content_type",
            f"got {kind or 'a request without Content-Type'}: send images as multipart/form-data (curl -F files=@cat.jpg) or as a raw image/* body",
        )
    if not uploads:
        raise UploadError(400, "no_files", "the request has no files: send one or more images as multipart form fields")
    return uploads


def _too_large(filename: str, size: int | None, limit: int) -> UploadError:
    size_text = f"{megabytes(size)}, " if size is not None else ""
    return UploadError(413, "file_too_large", f"{filename}: {size_text}over the {megabytes(limit)} limit per file")


async def _drain(chunks) -> None:
    read = 0
    try:
        async for chunk in chunks:
            read += len(chunk)
            if read > DRAIN_LIMIT:
                break
    except Exception:  # the client hung up: nothing left to be polite to
        pass


class _MultipartCollector:
    """python-multipart callbacks that keep file parts in memory, within limits."""

    def __init__(self, boundary: bytes, max_file_bytes: int, max_files: int):
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.uploads: list[Upload] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()
        self._filename: str | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def finish(self) -> None:
        self._parser.finalize()

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()
        self._filename = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"filename" in options:
            self._filename = options[b"filename"].decode("utf-8", "replace") or "upload"
            if len(self.uploads) + 1 > self.max_files:
                raise UploadError(400, "too_many_files", f"too many files in one request: at most {self.max_files} are accepted")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        limit = self.max_file_bytes if self._filename is not None else MAX_FIELD_BYTES
        if len(self._data) > limit:
            if self._filename is None:
                raise UploadError(413, "field_too_large", f"a form field is over {megabytes(MAX_FIELD_BYTES)}: send images as files")
            raise _too_large(self._filename, None, self.max_file_bytes)

    def _part_end(self) -> None:
        if self._filename is not None:
            content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            self.uploads.append(Upload(self._filename, content_type, bytes(self._data)))
        self._data = bytearray()


# Decoding costs CPU by the pixel: 16 small PNGs of 88 Mpx each cost 26 s. One request may decode
# at most this many pixels in all, judged on the image headers before anything is decoded.
MAX_REQUEST_PIXELS = int(os.environ.get("RETREINO_MAX_REQUEST_PIXELS", "100000000"))


def check_request_pixels(uploads: list[Upload], limit: int = MAX_REQUEST_PIXELS) -> None:
    """413 when the images of one request declare more than `limit` pixels together."""
    import io
    import warnings

    from PIL import Image

    total = 0
    for u in uploads:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(io.BytesIO(u.data)) as im:  # reads the header only
                    total += im.width * im.height
        except Exception:  # not an image: the decoder says so with its own 4xx
            continue
        if total > limit:
            raise UploadError(413, "too_many_pixels",
                              f"the images of this request hold over {limit:,} pixels together ({u.filename} "
                              f"reaches {total:,}): send fewer or smaller images")


# A client that stops sending mid-body (slowloris) would hold its connection and buffers forever.
BODY_TIMEOUT_S = float(os.environ.get("RETREINO_BODY_TIMEOUT_S", "30"))


async def _slow_body_timeout(chunks, seconds: float):
    """The request body's chunks; 408 when the client sends nothing for `seconds`."""
    import asyncio

    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), seconds)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadError(408, "request_timeout", f"the upload sent nothing for {seconds:g} s: too slow") from None
        yield chunk
