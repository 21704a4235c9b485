"""Writes Testing/data/ct_jpeg_lossless/ and ct_jpeg2000/: the synthetic series of test_dicom.write_series,
transcoded by GDCM to JPEG Lossless, Non-Hierarchical, First-Order Prediction (1.2.840.10008.1.2.4.70, the
syntax PACS exports use most) and to JPEG 2000 lossless (1.2.840.10008.1.2.4.90). pydicom has no encoder
for the first and needs an extra package for the second, so the tests read committed files. Run once
from the repository root and commit the result:

    python Testing/data/make_compressed_series.py
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import gdcm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "LiverTumorRefine"))

from test_dicom import write_series  # noqa: E402

OUT = {"ct_jpeg_lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1, "ct_jpeg2000": gdcm.TransferSyntax.JPEG2000Lossless}


def transcode(source: Path, target: Path, syntax: int) -> None:
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise SystemExit(f"{source}: GDCM cannot read it")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise SystemExit(f"{source}: GDCM cannot transcode it")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise SystemExit(f"{target}: GDCM cannot write it")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_series(Path(tmp))
        for name, syntax in OUT.items():
            out = HERE / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for path in sorted(Path(tmp).iterdir()):
                transcode(path, out / path.name, syntax)
            print(f"wrote {len(list(out.iterdir()))} slices to {out}")


if __name__ == "__main__":
    main()
