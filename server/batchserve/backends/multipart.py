"""The files of a ``multipart/form-data`` body, parsed with python-multipart (Starlette's parser)."""

from __future__ import annotations

from batchserve.errors import InvalidInput

MAX_PARTS = 256


def files_from_multipart(content_type: str, body: bytes) -> list[bytes]:
    """Every part's content, in order; each part must be a file (have a filename)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data body without a boundary")
    parts: list[bytes] = []
    chunks: list[bytes] = []
    header_name = b""
    dispositions: list[bytes] = []

    def on_part_begin() -> None:
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        nonlocal header_name
        header_name = data[start:end].lower()

    def on_header_value(data: bytes, start: int, end: int) -> None:
        if header_name == b"content-disposition":
            dispositions.append(data[start:end])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        if len(parts) >= MAX_PARTS:
            raise InvalidInput(f"more than {MAX_PARTS} parts")
        parts.append(b"".join(chunks))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from None
    for index, disposition in enumerate(dispositions):
        _, params = parse_options_header(disposition)
        if b"filename" not in params:
            name = params.get(b"name", b"?").decode("latin-1")
            raise InvalidInput(f"multipart part {index} ({name!r}) is not a file; send parameters "
                               "in the query string")
    if not parts:
        raise InvalidInput("multipart body holds no files")
    return parts
