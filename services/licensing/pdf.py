"""The licence as a one-page PDF 1.4, written by hand: no PDF library is needed for text.

The file is a catalog, a page tree with one A4 page, the standard Type1 font Helvetica (every
reader has it, so nothing is embedded), a content stream with the text, and an information
dictionary; then the cross-reference table with each object's byte offset and the trailer.
Pure: the same licence and date give the same bytes.

>>> pdf = licence_pdf(LicenceText("lic-1", "C10001", "STREET_TRADING", 12_500, "pay-1",
...                               datetime.date(2024, 5, 1)))
>>> pdf[:8], pdf.rstrip().endswith(b"%%EOF")
(b'%PDF-1.4', True)
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

__all__ = ["LicenceText", "licence_pdf", "pdf_string"]

_PAGE_WIDTH, _PAGE_HEIGHT = 595, 842  # A4 in points
_LEFT_MARGIN = 72
_TOP = 760


@dataclass(frozen=True, slots=True)
class LicenceText:
    """What the licence says."""

    licence_id: str
    citizen_id: str
    licence_type: str
    fee_pence: int
    payment_id: str
    issued_on: datetime.date


def pdf_string(text: str) -> bytes:
    """`text` as a PDF literal string: `(`, `)` and `\\` escaped, and anything outside
    printable ASCII shown as `?` (Helvetica's standard encoding has no other characters that
    every reader agrees on)."""
    out = bytearray(b"(")
    for char in text:
        code = ord(char)
        if char in "()\\":
            out += b"\\" + char.encode("ascii")
        elif 0x20 <= code < 0x7F:
            out.append(code)
        else:
            out += b"?"
    out += b")"
    return bytes(out)


def _pounds(pence: int) -> str:
    pounds, rest = divmod(pence, 100)
    return f"GBP {pounds:,}.{rest:02d}"


def _content(licence: LicenceText) -> bytes:
    """The page's content stream: a title, then one line per fact."""
    lines = [
        ("Helvetica-Bold", 20, "HMS Professional Licence"),
        ("Helvetica", 12, f"Licence number: {licence.licence_id}"),
        ("Helvetica", 12, f"Licence type: {licence.licence_type}"),
        ("Helvetica", 12, f"Issued to citizen: {licence.citizen_id}"),
        ("Helvetica", 12, f"Issued on: {licence.issued_on.isoformat()}"),
        ("Helvetica", 12, f"Fee paid: {_pounds(licence.fee_pence)}"),
        ("Helvetica", 12, f"Payment reference: {licence.payment_id or 'none (no fee)'}"),
    ]
    ops = [b"BT", b"%d %d Td" % (_LEFT_MARGIN, _TOP)]
    for i, (font, size, text) in enumerate(lines):
        resource = b"/F2" if font == "Helvetica-Bold" else b"/F1"
        ops.append(resource + b" %d Tf" % size)
        if i:
            ops.append(b"0 -%d Td" % (size * 2))
        ops.append(pdf_string(text) + b" Tj")
    ops.append(b"ET")
    return b"\n".join(ops)


def licence_pdf(licence: LicenceText) -> bytes:
    """The licence as the bytes of a PDF 1.4 file."""
    content = _content(licence)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d]"
        b" /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>"
        % (_PAGE_WIDTH, _PAGE_HEIGHT),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        # The end-of-line before `endstream` is not part of the stream's /Length (PDF 7.3.8.1).
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Title " + pdf_string(f"Licence {licence.licence_id}") + b" /Producer (HMS licensing)"
        b" /CreationDate (D:" + licence.issued_on.strftime("%Y%m%d").encode() + b")"
        b" >>",
    ]
    # The second line's bytes above 127 tell transfer tools the file is binary (PDF spec 7.5.2).
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    # Each entry is exactly 20 bytes: 10-digit offset, 5-digit generation, n/f, space, newline.
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (
        len(objects) + 1,
        len(objects),
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)
