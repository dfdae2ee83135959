"""Reading the start form as it streams: its small fields, and at most one file written
straight into the job's upload inbox, with the size limit enforced while it arrives.

Nothing is spooled to a temporary folder first: a file over the limit stops being read
at the limit (413), and the part that had arrived is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from paceline.upload import (
    Receiver,
    Upload,
    UploadedFile,
    UploadRejected,
    UploadTooLarge,
    size_text,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["StartForm", "read_start_form"]

MAX_FIELDS = 20
MAX_FIELD_BYTES = 4096
#: Room for the form's own bytes (boundaries, part headers, small fields) beyond the file.
FORM_OVERHEAD = 1 << 20


@dataclass(slots=True)
class StartForm:
    """The fields of a start request, and the file it brought, received but not kept
    until :meth:`keep` (so a request refused for its fields leaves nothing behind)."""

    fields: dict[str, str] = field(default_factory=dict)
    receiver: Receiver | None = None

    def keep(self) -> tuple[UploadedFile, bool] | None:
        """Keep the file in the job's inbox: its entry, and whether it is new."""
        return None if self.receiver is None else self.receiver.finish()

    def discard(self) -> None:
        if self.receiver is not None:
            self.receiver.abort()


class _Parts:
    """python-multipart callbacks: fields into a dict, the file into a :class:`Receiver`."""

    def __init__(self, upload: Upload | None, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.form = StartForm()
        self.receiver: Receiver | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._name = b""
        self._value = b""
        self._field: str | None = None
        self._data = bytearray()
        self._to_file = False
        self._skip = False
        self._fields = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._headers, self._data = [], bytearray()
        self._field, self._to_file, self._skip = None, False, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((self._name.lower(), self._value))
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise UploadRejected("too many form fields")
            self._field = name
            return
        if name != "file":
            raise UploadRejected(f"unexpected file field {name!r}: send the file as 'file'")
        if not filename:
            self._skip = True  # a file input left empty
            return
        if self.upload is None:
            raise UploadRejected("this job reads its own source: it takes no upload")
        if self.receiver is not None:
            raise UploadRejected("send one file at a time")
        label = filename.decode("utf-8", "replace")
        self.receiver = self.upload.receive(label, max_bytes=self.max_bytes)
        self._to_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._skip:
            return
        if self._to_file:
            assert self.receiver is not None
            self.receiver.write(data[start:end])
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise UploadRejected(f"form field {self._field!r} is too long")

    def on_part_end(self) -> None:
        if self._field is not None:
            self.form.fields[self._field] = self._data.decode("utf-8", "replace")
        self._field = None


async def read_start_form(request: Request, upload: Upload | None, max_bytes: int) -> StartForm:
    """The start form (multipart, urlencoded, or nothing at all), its file received into
    the job's inbox (not kept yet). Raises :class:`UploadTooLarge` (413) or
    :class:`UploadRejected` (422)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise UploadTooLarge(f"the file is larger than the limit of {size_text(max_bytes)}")
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise UploadRejected("a multipart form without a boundary")
        return await _multipart(request, boundary, upload, max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FIELDS * MAX_FIELD_BYTES:
            raise UploadRejected("the form is too long (send files as multipart/form-data)")
    if not body.strip():
        return StartForm()
    if content_type != b"application/x-www-form-urlencoded":
        raise UploadRejected("send the start request as a form (multipart/form-data)")
    return StartForm(fields=dict(parse_qsl(body.decode("utf-8", "replace"))))


async def _multipart(
    request: Request, boundary: bytes, upload: Upload | None, max_bytes: int
) -> StartForm:
    parts = _Parts(upload, max_bytes)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        parts.form.receiver = parts.receiver
    except FormParserError:
        if parts.receiver is not None:
            parts.receiver.abort()
        raise UploadRejected("the multipart form could not be read") from None
    except BaseException:
        if parts.receiver is not None:
            parts.receiver.abort()
        raise
    return parts.form
