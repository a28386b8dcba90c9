"""The model package: a directory an edge box runs without torch (numpy + json only).

``fineparser-export`` writes it, ``fineparser-calibrate`` adds precision variants to it, the
runtime and the C++ demo read it.  Layout (see docs/export.md)::

    manifest.json        what everything is: config, input spec, graphs, bank summary, hashes
    encoder.onnx         uint8 frames [1, 96, 112, 112, 3] -> QueryFeatures
    encoder_masks.onnx   the same plus mask logits (overlays only; optional)
    pair_head.onnx       query features x K exemplars -> delta [K], step_deltas [K, 3]
    bank.npz / bank.bin  the exemplars' encoder outputs, scores, dive numbers (optional)
    engines/             TensorRT engines, a per-GPU cache (not hashed in the manifest)

Every file listed in ``manifest["files"]`` carries its sha256 and size; :func:`load_package`
refuses a package whose files do not match.  A later tool adds files with :func:`add_variant`
(or edits the manifest and calls :func:`write_manifest` with the new files), which re-hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fineparser.scoring import EdgeOffsets
from fineparser.spec import canonical_dive_number

PACKAGE_FORMAT = "fineparser-package"
PACKAGE_FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
ENCODER_MASKS_FILE = "encoder_masks.onnx"
PAIR_HEAD_FILE = "pair_head.onnx"
BANK_NPZ_FILE = "bank.npz"
BANK_BIN_FILE = "bank.bin"
ENGINES_DIR = "engines"

ENCODER_INPUT = "frames"
ENCODER_OUTPUTS = ("window_features", "transitions", "transition_probs", "static_tokens")
MASK_OUTPUT = "mask_logits"
PAIR_HEAD_INPUTS = ("query_window_features", "query_transitions", "query_static_tokens",
                    "exemplar_window_features", "exemplar_transitions", "exemplar_static_tokens")
PAIR_HEAD_OUTPUTS = ("delta", "step_deltas")
EXEMPLAR_DIM = "K"
"""The only dynamic dimension of any graph: the number of exemplars fed to the pair head."""

BANK_ARRAYS = ("window_features", "transitions", "static_tokens", "final_score", "difficulty")
"""Numeric arrays of a bank, in bank.npz and bank.bin."""
BANK_STRINGS = ("dive_number", "clip_id")
"""String arrays of a bank (bank.bin keeps them in its JSON header)."""
BANK_BIN_MAGIC = b"FPBANK01"
BANK_BIN_FORMAT = "fineparser-bank"
BANK_BIN_FORMAT_VERSION = 1
"""The newest bank.bin header version this reader knows (the C++ reader's kBankFormatVersion)."""
BANK_BIN_ALIGN = 64
"""Every raw array in bank.bin starts at a multiple of this many bytes (SIMD/mmap friendly)."""

FALLBACK_ORDER = ("same dive number", "same group (first digit) and position letter", "any dive")
"""Where exemplars come from when a dive number has none in the bank, in this order."""


class PackageError(ValueError):
    """A model package that is missing, foreign, corrupted or inconsistent."""


# --------------------------------------------------------------------------- hashing, manifest


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(package_dir: str | os.PathLike, relative: str) -> dict[str, Any]:
    """The manifest entry of one package file: sha256 and size in bytes."""
    path = Path(package_dir) / relative
    if not path.is_file():
        raise PackageError(f"{path}: cannot hash a file that does not exist")
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def _atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file next to `path`, fsync, rename (readers never see half a file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the manifest from the box's service user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(package_dir: str | os.PathLike, manifest: Mapping[str, Any],
                   files: Iterable[str] | None = None) -> dict[str, Any]:
    """Hash `files` (default: those already listed) into manifest["files"] and write manifest.json.

    Entries of files already listed are re-hashed too, so a tool that rewrote one (a calibrated
    variant, a rebuilt bank) only has to name new files.
    """
    root = Path(package_dir)
    out = dict(manifest)
    out.setdefault("format", PACKAGE_FORMAT)
    out.setdefault("format_version", PACKAGE_FORMAT_VERSION)
    names = list(dict.fromkeys([*dict(out.get("files") or {}), *(files or [])]))
    for name in names:
        if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST_FILE:
            raise PackageError(f"manifest file entries are paths inside the package, got {name!r}")
    out["files"] = {name: file_entry(root, name) for name in sorted(names)}
    _atomic_write_text(root / MANIFEST_FILE, json.dumps(out, indent=2, sort_keys=False) + "\n")
    return out


def add_variant(package_dir: str | os.PathLike, variant: Mapping[str, Any], files: Iterable[str]) -> dict[str, Any]:
    """Record a precision variant (e.g. fp16 / int8 ONNX written by calibration) and hash its files.

    Every other listed file is verified first; `files` are the variant's new bytes (a re-calibration
    replaces the files of an earlier variant of the same name), so they are hashed, not checked.
    """
    files = list(files)
    manifest = read_manifest(package_dir)
    others = {name: entry for name, entry in manifest.get("files", {}).items() if name not in files}
    verify_files(package_dir, {**manifest, "files": others})
    manifest = dict(manifest)
    name = variant.get("name")
    if not name:
        raise PackageError("a variant needs a 'name' (e.g. 'fp16')")
    manifest["variants"] = [v for v in manifest.get("variants", []) if v.get("name") != name] + [dict(variant)]
    return write_manifest(package_dir, manifest, files)


# --------------------------------------------------------------------------- package


@dataclass
class ModelPackage:
    """A verified package directory and its manifest."""

    root: Path
    manifest: dict[str, Any]

    def path(self, relative: str) -> Path:
        """Absolute path of a package file (whether or not it exists)."""
        return self.root / relative

    def has(self, relative: str) -> bool:
        """Whether the manifest lists this file."""
        return relative in self.manifest.get("files", {})

    @property
    def config(self) -> dict[str, Any]:
        """The model config (FineParserConfig.to_dict()) the graphs were exported from."""
        return self.manifest["model"]["config"]

    @property
    def encoder_path(self) -> Path:
        """encoder.onnx (fp32)."""
        return self.path(ENCODER_FILE)

    @property
    def encoder_masks_path(self) -> Path | None:
        """encoder_masks.onnx, or None when the package was exported without it."""
        return self.path(ENCODER_MASKS_FILE) if self.has(ENCODER_MASKS_FILE) else None

    @property
    def pair_head_path(self) -> Path:
        """pair_head.onnx (fp32)."""
        return self.path(PAIR_HEAD_FILE)

    @property
    def has_bank(self) -> bool:
        """Whether the package carries an exemplar bank."""
        return self.has(BANK_NPZ_FILE)

    @property
    def variants(self) -> list[dict[str, Any]]:
        """Precision variants (fp32 always; fp16/int8 once calibration added them)."""
        return list(self.manifest.get("variants", []))

    def variant_files(self, precision: str) -> dict[str, Path]:
        """Graph name -> file of a precision variant ('fp32' always exists; fp16/int8 after calibration)."""
        if precision == "fp32":
            return {"encoder": self.encoder_path, "pair_head": self.pair_head_path}
        for variant in self.variants:
            if variant.get("name") == precision:
                return {graph: self.path(name) for graph, name in variant.get("files", {}).items()}
        known = ", ".join(["fp32", *[str(v.get("name")) for v in self.variants if v.get("name") != "fp32"]])
        raise PackageError(f"{self.root} has no {precision} variant (it has: {known}); "
                           f"make one with `fineparser-calibrate {self.root} --data-root DIR`")

    def bank(self) -> ExemplarBank:
        """Load the exemplar bank; a package without one is a PackageError saying how to add it."""
        if not self.has_bank:
            raise PackageError(f"{self.root} has no exemplar bank: re-export with "
                               "`fineparser-export CKPT --data-root DIR` to build one from the training split")
        return ExemplarBank.from_npz(self.path(BANK_NPZ_FILE))

    def edge_offsets(self) -> EdgeOffsets:
        """How a dive's boundaries are moved to average its score (manifest ``scoring.edge_offsets_s``; a package
        without it scores the one segment as found); a malformed entry is a PackageError naming the manifest."""
        try:
            return EdgeOffsets.from_scoring(self.manifest.get("scoring"))
        except ValueError as exc:
            raise PackageError(f"{self.root / MANIFEST_FILE}: {exc}") from None

    @property
    def recommended_precision(self) -> str:
        """The precision calibration measured best (fineparser.precision.recommended_precision)."""
        from fineparser.precision import recommended_precision

        return recommended_precision(self.manifest)

    def engine_records(self, precision: str | None = None) -> list[dict[str, Any]]:
        """TensorRT engine records of manifest["engines"], of one precision when given.

        Records written before engines were built per precision carry none: they are fp32.
        """
        records = [dict(r) for r in self.manifest.get("engines", []) or [] if isinstance(r, Mapping)]
        for record in records:
            record.setdefault("precision", "fp32")
        return [r for r in records if precision is None or r["precision"] == precision]

    def engine_problem(self, record: Mapping[str, Any], device: tuple[str, str, str] | None = None) -> str | None:
        """Why an engine record cannot be used here (None: it can); see :func:`engine_record_problem`."""
        return engine_record_problem(self.root, self.manifest, record, device)


# --------------------------------------------------------------------------- engine records


def device_key(gpu_name: str, compute_capability: str, tensorrt_version: str) -> str:
    """What a TensorRT engine or timing cache is only valid for: <gpu>_<sm>_trt<version>."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return f"{gpu}_{compute_capability}_trt{tensorrt_version}"


def engine_key(gpu_name: str, compute_capability: str, tensorrt_version: str, onnx_sha256: str) -> str:
    """Cache key of an engine: <gpu>_<sm>_trt<version>_<first 12 hex of the ONNX sha256>."""
    return f"{device_key(gpu_name, compute_capability, tensorrt_version)}_{onnx_sha256[:12]}"


def onnx_sha256(manifest: Mapping[str, Any], relative: str) -> str | None:
    """The sha256 the manifest records for a package file (the spotter's section for spotter.onnx); None if none."""
    entry = (manifest.get("files") or {}).get(relative)
    if isinstance(entry, Mapping) and entry.get("sha256"):
        return str(entry["sha256"])
    spotter = manifest.get("spotter")
    if isinstance(spotter, Mapping) and spotter.get("file") == relative and spotter.get("sha256"):
        return str(spotter["sha256"])
    return None


def engine_record_problem(package_dir: str | os.PathLike, manifest: Mapping[str, Any], record: Mapping[str, Any],
                          device: tuple[str, str, str] | None = None) -> str | None:
    """Why a manifest engine record is stale or foreign (None: usable), as one line naming the engine.

    Checked: the engine file exists; the ONNX it was built from still has the sha256 the package
    records (a re-calibrated variant changes it); its cache key is the one its fields give; with
    `device` = (GPU name, compute capability, TensorRT version), that it was built for this compute
    capability and TensorRT version (an engine runs on neither another).
    """
    what = f"{record.get('engine')} ({record.get('precision', 'fp32')} {record.get('graph')})"
    engine = record.get("engine")
    if not engine or not (Path(package_dir) / str(engine)).is_file():
        return f"engine {what} is missing from the package"
    built_from, current = record.get("onnx_sha256"), onnx_sha256(manifest, str(record.get("onnx")))
    if current is not None and built_from != current:
        return (f"engine {what} is stale: built from {record.get('onnx')} sha256 {str(built_from)[:12]}, "
                f"the package's {record.get('onnx')} is now {current[:12]}")
    fields = (record.get("gpu"), record.get("compute_capability"), record.get("tensorrt"), built_from)
    expected = engine_key(*map(str, fields)) if all(fields) else None
    if record.get("key") and expected and record["key"] != expected:
        return f"engine {what} is stale: its key {record['key']} no longer matches its record ({expected})"
    if device is not None:
        gpu, capability, version = device
        if record.get("compute_capability") != capability or record.get("tensorrt") != version:
            return (f"engine {what} was built for {record.get('gpu')} {record.get('compute_capability')} with "
                    f"TensorRT {record.get('tensorrt')}; this is {gpu} {capability} with TensorRT {version}")
    return None


def read_manifest(package_dir: str | os.PathLike) -> dict[str, Any]:
    """manifest.json of a package, checked for format and version (files not verified)."""
    root = Path(package_dir)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise PackageError(f"{root}: no such package directory")
    if not path.is_file():
        raise PackageError(f"{root} is not a model package (no {MANIFEST_FILE}); make one with fineparser-export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path}: cannot be read as JSON ({exc}); re-export the package") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path} is not a FineParser package manifest (format != {PACKAGE_FORMAT!r})")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > PACKAGE_FORMAT_VERSION:
        raise PackageError(f"{path} has package format version {version}, this toolkit reads up to "
                           f"{PACKAGE_FORMAT_VERSION}: upgrade fineparser")
    return manifest


def verify_files(package_dir: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Check size and sha256 of every file the manifest lists; the first mismatch is a PackageError."""
    root = Path(package_dir)
    for name, entry in dict(manifest.get("files", {})).items():
        path = root / name
        if not path.is_file():
            raise PackageError(f"{path}: listed in the manifest but missing; restore it or re-export the package")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise PackageError(f"{path}: size {size} bytes, the manifest says {entry.get('size')}: the file is "
                               "truncated or was replaced; restore it or re-export the package")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise PackageError(f"{path}: sha256 {digest[:12]}... does not match the manifest "
                               f"({str(entry.get('sha256'))[:12]}...): the file is corrupted or was modified; "
                               "restore it or re-export the package")


def load_package(path: str | os.PathLike, verify: bool = True) -> ModelPackage:
    """Open a package directory; with `verify`, every listed file's size and sha256 must match."""
    root = Path(path)
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    return ModelPackage(root=root, manifest=manifest)


# --------------------------------------------------------------------------- exemplar bank


def spread_indices(scores: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Positions of `k` items whose scores spread over the range (evenly spaced ranks, lowest and highest kept)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(scores, kind="stable")
    ranks = np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))
    return np.sort(order[ranks])


def dive_group(dive_number: str) -> str:
    """The dive's group: its first digit (1 forward, 2 back, 3 reverse, 4 inward, 5 twisting, 6 armstand)."""
    text = str(dive_number).strip()
    return text[:1] if text[:1].isdigit() else ""


def dive_position(dive_number: str) -> str:
    """The position letter (A straight, B pike, C tuck, D free), '' when the number has none."""
    text = str(dive_number).strip().upper()
    return text[-1] if text[-1:].isalpha() else ""


@dataclass
class ExemplarBank:
    """Encoder outputs of the training exemplars with their official scores and dive numbers."""

    window_features: np.ndarray  # float32 [N, 9, D]
    transitions: np.ndarray  # int64 [N, 2]
    static_tokens: np.ndarray  # float32 [N, 12, T]
    final_score: np.ndarray  # float32 [N]
    difficulty: np.ndarray  # float32 [N]
    dive_number: np.ndarray  # str [N]
    clip_id: np.ndarray  # str [N] "competition/clip"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window_features = np.ascontiguousarray(self.window_features, dtype=np.float32)
        self.transitions = np.ascontiguousarray(self.transitions, dtype=np.int64)
        self.static_tokens = np.ascontiguousarray(self.static_tokens, dtype=np.float32)
        self.final_score = np.ascontiguousarray(self.final_score, dtype=np.float32).reshape(-1)
        self.difficulty = np.ascontiguousarray(self.difficulty, dtype=np.float32).reshape(-1)
        self.dive_number = np.asarray(self.dive_number, dtype=str).reshape(-1)
        self.clip_id = np.asarray(self.clip_id, dtype=str).reshape(-1)
        n = len(self.final_score)
        shapes = {"window_features": (self.window_features.ndim == 3, self.window_features.shape),
                  "transitions": (self.transitions.shape[1:] == (2,), self.transitions.shape),
                  "static_tokens": (self.static_tokens.ndim == 3, self.static_tokens.shape)}
        for name, (ok, shape) in shapes.items():
            if not ok or shape[0] != n:
                raise PackageError(f"exemplar bank: {name} has shape {list(shape)}, expected {n} rows")
        for name in ("difficulty", "dive_number", "clip_id"):
            if len(getattr(self, name)) != n:
                raise PackageError(f"exemplar bank: {name} has {len(getattr(self, name))} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.final_score)

    # ------------------------------------------------------------------ queries

    def dive_counts(self) -> dict[str, int]:
        """Exemplars per dive number, sorted by dive number."""
        numbers, counts = np.unique(self.dive_number, return_counts=True)
        return {str(n): int(c) for n, c in zip(numbers, counts)}

    def summary(self) -> dict[str, Any]:
        """The manifest's description of this bank."""
        return {"exemplars": len(self), "dive_numbers": self.dive_counts(),
                "feature_dim": int(self.window_features.shape[-1]), "token_dim": int(self.static_tokens.shape[-1]),
                **self.metadata}

    def select(self, dive_number: str, k: int | None = None) -> tuple[np.ndarray, str | None]:
        """Exemplar indices for a dive number, and a note saying which fallback was used (None: none).

        Order: the same dive number; else the same group (first digit) and position letter; else
        any dive.  With `k`, at most k of them, chosen to spread over their scores.  Dive numbers
        are compared in their canonical form (spec.canonical_dive_number: '407C' selects '407c').
        """
        if len(self) == 0:
            raise PackageError("the exemplar bank is empty: no exemplar can be selected")
        dive_number = canonical_dive_number(dive_number)
        bank_numbers = np.array([canonical_dive_number(d) for d in self.dive_number], dtype=str)
        note = None
        chosen = np.flatnonzero(bank_numbers == dive_number)
        if chosen.size == 0:
            group, position = dive_group(dive_number), dive_position(dive_number)
            groups = np.array([dive_group(d) for d in bank_numbers])
            positions = np.array([dive_position(d) for d in bank_numbers])
            chosen = np.flatnonzero((groups == group) & (positions == position)) if group and position else chosen
            if chosen.size:
                used = sorted(set(bank_numbers[chosen].tolist()))
                note = (f"no exemplar of dive {dive_number} in the bank: using group {group} position {position} "
                        f"({', '.join(used)})")
            else:
                chosen = np.arange(len(self))
                note = (f"no exemplar of dive {dive_number} nor of its group and position in the bank: "
                        "using exemplars of any dive")
        if k is not None:
            chosen = chosen[spread_indices(self.final_score[chosen], k)]
        return chosen.astype(np.int64), note

    def subset(self, indices: Sequence[int] | np.ndarray) -> ExemplarBank:
        """The bank restricted to `indices` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ExemplarBank(self.window_features[idx], self.transitions[idx], self.static_tokens[idx],
                            self.final_score[idx], self.difficulty[idx], self.dive_number[idx], self.clip_id[idx],
                            dict(self.metadata))

    def pair_head_inputs(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The exemplar_* feeds of pair_head.onnx for these exemplars."""
        idx = np.asarray(indices, dtype=np.int64)
        return {"exemplar_window_features": self.window_features[idx],
                "exemplar_transitions": self.transitions[idx],
                "exemplar_static_tokens": self.static_tokens[idx]}

    # ------------------------------------------------------------------ npz

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (*BANK_ARRAYS, *BANK_STRINGS)}

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write bank.npz (no pickled objects: strings are fixed-width unicode arrays)."""
        path = Path(path)
        with open(path, "wb") as handle:
            np.savez(handle, **self._arrays(), metadata=np.asarray(json.dumps(self.metadata)))
        return path

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> ExemplarBank:
        """Read bank.npz; a file without the bank's arrays is a PackageError naming what is missing."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in (*BANK_ARRAYS, *BANK_STRINGS) if name not in data.files]
                if missing:
                    raise PackageError(f"{path}: not an exemplar bank (missing {', '.join(missing)})")
                arrays = {name: data[name] for name in (*BANK_ARRAYS, *BANK_STRINGS)}
                metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
        except PackageError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise PackageError(f"{path}: cannot be read as an exemplar bank ({exc})") from exc
        return cls(**arrays, metadata=metadata)

    # ------------------------------------------------------------------ bank.bin (C++)

    def save_bin(self, path: str | os.PathLike) -> Path:
        """Write bank.bin: magic, u64 LE header length, JSON header, 64-byte aligned raw LE arrays."""
        return write_bank_bin(path, {name: getattr(self, name) for name in BANK_ARRAYS},
                              {name: getattr(self, name).tolist() for name in BANK_STRINGS}, self.metadata)

    @classmethod
    def from_bin(cls, path: str | os.PathLike) -> ExemplarBank:
        """Read bank.bin (the C++ side's format) back into a bank."""
        arrays, strings, metadata = read_bank_bin(path)
        return cls(**arrays, **{name: strings[name] for name in BANK_STRINGS}, metadata=metadata)


def _aligned(offset: int) -> int:
    return -(-offset // BANK_BIN_ALIGN) * BANK_BIN_ALIGN


def write_bank_bin(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                   strings: Mapping[str, list[str]], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write numeric arrays (float32/int64, C order, little-endian) and string lists as bank.bin."""
    path = Path(path)
    entries, blobs = [], []
    # The header's length depends on the offsets it lists; offsets are relative to the data section,
    # which starts at the first aligned byte after the header, so the header can be serialised once.
    offset = 0
    for name, array in arrays.items():
        array = np.asarray(array)
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64"}.get(array.dtype)
        if dtype is None:
            raise PackageError(f"bank.bin stores float32 and int64 arrays, {name} is {array.dtype}")
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        offset = _aligned(offset)
        entries.append({"name": name, "dtype": dtype, "shape": list(array.shape), "offset": offset,
                        "nbytes": len(raw)})
        blobs.append((offset, raw))
        offset += len(raw)
    header = {"format": BANK_BIN_FORMAT, "format_version": BANK_BIN_FORMAT_VERSION, "byte_order": "little",
              "alignment": BANK_BIN_ALIGN, "offsets": "relative to data_start", "arrays": entries,
              "strings": {name: [str(s) for s in values] for name, values in strings.items()},
              "metadata": dict(metadata or {})}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    data_start = _aligned(len(BANK_BIN_MAGIC) + 8 + len(header_bytes))
    with open(path, "wb") as handle:
        handle.write(BANK_BIN_MAGIC)
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        handle.write(b"\0" * (data_start - handle.tell()))
        for start, raw in blobs:
            handle.write(b"\0" * (data_start + start - handle.tell()))
            handle.write(raw)
    return path


def read_bank_bin(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
    """Read bank.bin: (numeric arrays, string lists, metadata); a malformed file is a PackageError.

    Checks what the C++ reader (cpp_demo/src/package.cpp) checks, in the same order: magic, header
    length, JSON header, format, format version, byte order, each array's dtype, size and extent.
    """
    path = Path(path)
    data = path.read_bytes()
    redo = "re-export the package"  # the words of the C++ reader and of verify_files
    prefix = len(BANK_BIN_MAGIC) + 8
    if len(data) < prefix or data[:len(BANK_BIN_MAGIC)] != BANK_BIN_MAGIC:
        raise PackageError(f"{path}: not a bank.bin file (bad magic); {redo}")
    (header_len,) = struct.unpack("<Q", data[len(BANK_BIN_MAGIC):prefix])
    if header_len > len(data) - prefix:
        raise PackageError(f"{path}: bank.bin header runs past the end of the file (truncated?); {redo}")
    try:
        header = json.loads(data[prefix:prefix + header_len].decode("utf-8"))
    except ValueError as exc:
        raise PackageError(f"{path}: bank.bin header is not JSON ({exc}); {redo}") from exc
    if not isinstance(header, dict) or header.get("format") != BANK_BIN_FORMAT:
        raise PackageError(f"{path}: header format is not {BANK_BIN_FORMAT!r}; {redo}")
    version = header.get("format_version", 0)
    if not isinstance(version, int) or version > BANK_BIN_FORMAT_VERSION:
        raise PackageError(f"{path}: bank format version {version!r}, this reader knows up to "
                           f"{BANK_BIN_FORMAT_VERSION}: upgrade fineparser, or {redo} with this version")
    if header.get("byte_order", "little") != "little":
        raise PackageError(f"{path}: byte order {header['byte_order']!r} is not supported (little only); {redo}")
    data_start = _aligned(prefix + header_len)
    arrays = {}
    try:
        for entry in header.get("arrays", []):
            name, dtype_name, shape = entry["name"], entry["dtype"], [int(n) for n in entry["shape"]]
            offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
            if dtype_name not in ("float32", "int64"):
                raise PackageError(f"{path}: array {name} has dtype {dtype_name}, bank.bin stores float32 and "
                                   f"int64; {redo}")
            dtype = np.dtype(dtype_name).newbyteorder("<")
            if min(shape, default=0) < 0 or int(np.prod(shape)) * dtype.itemsize != nbytes:
                raise PackageError(f"{path}: array {name} of shape {shape} ({dtype_name}) cannot hold {nbytes} "
                                   f"bytes; {redo}")
            if offset < 0 or data_start + offset + nbytes > len(data):
                raise PackageError(f"{path}: array {name} runs past the end of the file (truncated?); {redo}")
            arrays[name] = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize,
                                         offset=data_start + offset).reshape(shape).astype(dtype.newbyteorder("="))
    except PackageError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise PackageError(f"{path}: bank.bin header lists a malformed array entry ({exc!r}); {redo}") from exc
    return arrays, header.get("strings", {}), header.get("metadata", {})


__all__ = [
    "BANK_ARRAYS",
    "BANK_BIN_FILE",
    "BANK_NPZ_FILE",
    "BANK_STRINGS",
    "ENCODER_FILE",
    "ENCODER_INPUT",
    "ENCODER_MASKS_FILE",
    "ENCODER_OUTPUTS",
    "ENGINES_DIR",
    "EXEMPLAR_DIM",
    "ExemplarBank",
    "FALLBACK_ORDER",
    "MANIFEST_FILE",
    "MASK_OUTPUT",
    "ModelPackage",
    "PACKAGE_FORMAT",
    "PACKAGE_FORMAT_VERSION",
    "PAIR_HEAD_FILE",
    "PAIR_HEAD_INPUTS",
    "PAIR_HEAD_OUTPUTS",
    "PackageError",
    "add_variant",
    "device_key",
    "dive_group",
    "dive_position",
    "engine_key",
    "engine_record_problem",
    "file_entry",
    "load_package",
    "onnx_sha256",
    "read_bank_bin",
    "read_manifest",
    "sha256_file",
    "spread_indices",
    "verify_files",
    "write_bank_bin",
    "write_manifest",
]
