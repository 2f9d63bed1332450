"""The files the reference LESS code (princeton-nlp/LESS) writes, read and written safely.

Gradient stores (``collect_grad_reps.collect_grads``)::

    <root>/<train_file_name>-ckpt<N>-<adam|sgd|sign>/dim<d>/
        grads-<count>.pt       raw projected rows, one chunk per 160 examples, fp16 / bf16
        all_orig.pt            every chunk, rows L2-normalised, concatenated
        all_unormalized.pt     every chunk concatenated as is

``<count>`` is how many examples (batch size 1) had been seen when the chunk was saved.
No ids, no metadata: rows follow the order of the input file. Selections
(``write_selected_data.py``): ``<output>/<task>/sorted.csv`` (``file name, index, score``,
best first) and ``top_p<p>.jsonl`` (the top input lines). Tensors are read with
``weights_only=True`` (memory-mapped where the file allows) and never unpickled.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from less_lab.core.hf_import import load_tensors
from less_lab.errors import DataError

UNNORMALIZED, NORMALIZED = "all_unormalized.pt", "all_orig.pt"
SAVE_INTERVAL = 160
"""Examples per ``grads-<count>.pt`` chunk in the reference (``save_interval``)."""
_DIR = re.compile(r"^(?P<name>.+)-ckpt(?P<ckpt>\d+)-(?P<kind>adam|sgd|sign)$")
_CHUNK = re.compile(r"^grads-(\d+)\.pt$")


@dataclass(frozen=True)
class ReferenceDir:
    """One ``<name>-ckpt<N>-<kind>/dim<d>`` folder of a reference gradient tree."""

    path: Path
    name: str
    checkpoint: int
    gradient_type: str
    dim: int


def scan_reference(root: str | Path) -> list[ReferenceDir]:
    """Every gradient folder under ``root`` (sorted by name, checkpoint, kind, dim)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (the reference's grads output)")
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _DIR.match(sub.name)
        if not m:
            continue
        for dim_dir in sorted(sub.glob("dim*")):
            if dim_dir.is_dir() and dim_dir.name[3:].isdigit():
                found.append(
                    ReferenceDir(
                        dim_dir, m["name"], int(m["ckpt"]), m["kind"], int(dim_dir.name[3:])
                    )
                )
    found.sort(key=lambda r: (r.name, r.checkpoint, r.gradient_type, r.dim))
    return found


def load_matrix(path: Path, mmap: bool = True) -> torch.Tensor:
    """A 2-D float tensor saved with ``torch.save``, loaded tensors-only (memory-mapped
    when the file is in torch's zip format)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap) if mmap else None
    except Exception:  # the legacy (non-zip) format cannot be mapped: read it whole
        data = None
    if data is None:
        data = load_tensors(path)
    if not torch.is_tensor(data) or data.ndim != 2 or not data.is_floating_point():
        what = (
            type(data).__name__
            if not torch.is_tensor(data)
            else f"{tuple(data.shape)} {data.dtype}"
        )
        raise DataError(f"holds {what}", path=path, expected="one (rows, d) float tensor")
    return data


def chunk_files(path: Path) -> list[tuple[int, Path]]:
    """``(count, file)`` of the ``grads-<count>.pt`` chunks, by count."""
    found = [(int(m[1]), p) for p in path.iterdir() if (m := _CHUNK.match(p.name))]
    return sorted(found)


def read_features(path: str | Path, prefer: str = "unnormalized") -> tuple[torch.Tensor, dict]:
    """The rows of one reference folder and how they were read.

    ``prefer="unnormalized"`` (default) reads ``all_unormalized.pt``, else the chunks
    concatenated (what ``all_unormalized.pt`` is made of), else ``all_orig.pt``
    (normalised rows: ``dot`` then equals cosine); ``"normalized"`` reads ``all_orig.pt``
    first. Returns ``(tensor, info)`` with ``info``: files read, ``normalized``, dtype."""
    path = Path(path)
    if prefer not in ("unnormalized", "normalized"):
        raise ValueError(f"prefer must be 'unnormalized' or 'normalized', not {prefer!r}")
    chunks = chunk_files(path)
    order = [UNNORMALIZED, "chunks", NORMALIZED]
    if prefer == "normalized":
        order = [NORMALIZED, UNNORMALIZED, "chunks"]
    for source in order:
        if source == "chunks" and chunks:
            return _read_chunks(path, chunks)
        if source != "chunks" and (path / source).exists():
            data = load_matrix(path / source)
            info = {"files": [source], "normalized": source == NORMALIZED}
            return data, info | {"dtype": str(data.dtype).removeprefix("torch.")}
    raise FileNotFoundError(
        f"{path}: none of {UNNORMALIZED}, {NORMALIZED} or grads-<count>.pt; "
        "is this a folder written by the reference's get_info.py?"
    )


def _read_chunks(path: Path, chunks: list[tuple[int, Path]]) -> tuple[torch.Tensor, dict]:
    """The chunks concatenated in count order; their row counts must add up to the counts
    in their names (the reference saves one row per example)."""
    parts, seen = [], 0
    for count, fpath in chunks:
        part = load_matrix(fpath, mmap=False)
        seen += len(part)
        if seen != count:
            raise DataError(
                f"chunks up to this one hold {seen} rows, the file name says {count}",
                path=fpath,
                expected="grads-<count>.pt with <count> = examples seen so far",
            )
        parts.append(part)
    dims = {p.shape[1] for p in parts}
    if len(dims) > 1:
        raise DataError(f"chunks of widths {sorted(dims)}", path=path, expected="one dim")
    data = torch.cat(parts)
    names = [f.name for _, f in chunks]
    return data, {
        "files": names,
        "normalized": False,
        "dtype": str(data.dtype).removeprefix("torch."),
    }


def write_features(
    out_dir: str | Path, rows: torch.Tensor, normalized_only: bool = False
) -> list[Path]:
    """Write ``all_orig.pt`` (rows L2-normalised in their own dtype, as the reference's
    ``merge_and_normalize_info``) and ``all_unormalized.pt`` (``rows`` as given) under
    ``out_dir``. ``normalized_only``: ``rows`` are already normalised (an import of
    ``all_orig.pt`` alone) and only ``all_orig.pt`` is written, exactly as read."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = rows.contiguous()
    if normalized_only:
        torch.save(rows.clone(), out_dir / NORMALIZED)
        return [out_dir / NORMALIZED]
    torch.save(torch.nn.functional.normalize(rows, dim=1), out_dir / NORMALIZED)
    torch.save(rows.clone(), out_dir / UNNORMALIZED)
    return [out_dir / NORMALIZED, out_dir / UNNORMALIZED]


def read_sorted_csv(path: str | Path) -> list[tuple[str, int, float]]:
    """``(file name, index, score)`` rows of a reference ``sorted.csv``, best first."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or [c.strip() for c in lines[0].split(",")] != ["file name", "index", "score"]:
        raise DataError("unexpected header", path=path, line=1, expected="file name, index, score")
    out = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = [c.strip() for c in line.rsplit(",", 2)]
        try:
            out.append((parts[0], int(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            raise DataError(
                f"bad row {line!r}", path=path, line=no, expected="name, int, float"
            ) from None
    return out


def check_top_matches_sorted(top_ids: list[str], sorted_ids: list[str], path: Path) -> None:
    """Warn when ``top_p*.jsonl`` is not the head of ``sorted.csv``: runs made before
    princeton-nlp/LESS#15 was fixed wrote wrong file names into ``sorted.csv`` (and
    possibly wrong lines) whenever several training files were used."""
    head = sorted_ids[: len(top_ids)]
    if set(head) != set(top_ids):
        shared = len(set(head) & set(top_ids))
        warnings.warn(
            f"{path}: {len(top_ids) - shared} of {len(top_ids)} selected lines are not the "
            "top of sorted.csv; a run from before princeton-nlp/LESS#15 was fixed "
            "(May 2024) wrote wrong file names when several training files were used",
            stacklevel=3,
        )
