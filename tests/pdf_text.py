"""The text of each page of a PDF: poppler's pdftotext when installed (./run test installs it as root), else
pypdf (a dev dependency)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def pdf_pages(pdf: bytes) -> list[str]:
    if shutil.which("pdftotext"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "report.pdf"
            path.write_bytes(pdf)
            text = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", str(path), "-"], capture_output=True,
                                  check=True, timeout=120).stdout.decode("utf-8")
        return text.split("\f")[:-1] if text.endswith("\f") else text.split("\f")
    try:
        import io

        from pypdf import PdfReader
    except ImportError:
        pytest.skip("no PDF text extractor: install poppler-utils (pdftotext) or pypdf")
    return [page.extract_text() or "" for page in PdfReader(io.BytesIO(pdf)).pages]
