"""
Checking a registered dataset before training: boxes, category ids, image files and sizes.

``check_dataset(name)`` returns a :class:`DatasetReport`; ``check_datasets(names)`` logs each
report, writes its problems (JSON) and its class / box-size histograms (PNG), and raises
:class:`DatasetCheckError` when any dataset has errors. ``tools/check_dataset.py`` is the command
line; ``train_net.py`` runs it on ``DATASETS.TRAIN`` at start-up (``DATASETS.CHECK.*``).

Where the dataset came from a COCO-format json (its metadata has ``json_file``), the raw json is
checked, because Detectron2's loader already alters what it cannot read (an annotation without
``bbox`` loses the key and crashes a data-loader worker later); other datasets are checked on
their registered dicts. Errors (the run would train on wrong data or crash): an annotation
without a box, a box that is not 4 finite numbers, a non-positive width or height, a box entirely
outside its image, an unknown category id, an annotation of an unknown image, a missing or
unreadable image file (a header Pillow cannot parse, or a truncated file: JPEG and PNG files must
end with their end marker, checked on the last 1 KiB; a file that does not, and every image of
another format, is decoded in full), an image whose size differs from its record. Counted and
logged only: boxes partly outside their image (by more than the tolerance) and images without
annotations.
"""

import json
import logging
import math
import os
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .odgt import _TRANSPOSING_ORIENTATIONS

__all__ = [
    "Problem",
    "DatasetReport",
    "DatasetCheckError",
    "check_dataset",
    "check_datasets",
    "ERROR_KINDS",
    "WARNING_KINDS",
]

logger = logging.getLogger(__name__)

ERROR_KINDS = OrderedDict(
    [
        ("missing_bbox", "annotation without a box"),
        ("bad_bbox", "box is not 4 finite numbers"),
        ("nonpositive_size", "box with non-positive width or height"),
        ("outside_image", "box entirely outside its image"),
        ("unknown_category", "unknown category id"),
        ("unknown_image", "annotation of an image id not in the image list"),
        ("missing_image", "image file not found"),
        ("unreadable_image", "image file unreadable"),
        ("size_mismatch", "image size differs from its record"),
    ]
)
WARNING_KINDS = OrderedDict(
    [
        ("partly_outside", "box partly outside its image (beyond the tolerance)"),
        ("empty_image", "image without annotations"),
    ]
)
# Edges of the box-size histogram, sqrt(width * height) in pixels (COCO: small < 32 <= medium < 96).
SIZE_BINS = (0, 8, 16, 32, 64, 96, 128, 256, 512, math.inf)


@dataclass
class Problem:
    """One problem: its kind (a key of ERROR_KINDS / WARNING_KINDS), where, and what."""

    kind: str
    file: str
    image_id: Any
    annotation_id: Any
    message: str

    def __str__(self) -> str:
        where = f"image {self.image_id}"
        if self.annotation_id is not None:
            where += f", annotation {self.annotation_id}"
        return f"{self.file}: {where}: {self.message}"


@dataclass
class DatasetReport:
    """The result of :func:`check_dataset`."""

    name: str
    file: str
    num_images: int = 0
    num_annotations: int = 0
    problems: List[Problem] = field(default_factory=list)
    class_counts: Dict[str, int] = field(default_factory=OrderedDict)
    box_sizes: List[float] = field(default_factory=list)

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.kind in ERROR_KINDS]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.kind in WARNING_KINDS]

    def counts(self) -> Dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def size_histogram(self) -> List[Tuple[str, int]]:
        """(bin label, number of boxes) of sqrt(width * height)."""
        out = []
        for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
            label = f"{lo}-{hi}" if hi != math.inf else f">={lo}"
            out.append((label, sum(lo <= s < hi for s in self.box_sizes)))
        return out

    def summary(self, max_listed: int = 10) -> str:
        """A multi-line report: counts per kind, the first problems of each kind, histograms."""
        lines = [
            f"Dataset check of {self.name} ({self.file}): {self.num_images} images, "
            f"{self.num_annotations} annotations, {len(self.errors)} errors, "
            f"{len(self.warnings)} warnings"
        ]
        counts = self.counts()
        for kinds, level in ((ERROR_KINDS, "ERROR"), (WARNING_KINDS, "warning")):
            for kind, text in kinds.items():
                if not counts.get(kind):
                    continue
                lines.append(f"  {level} {kind} ({text}): {counts[kind]}")
                listed = [p for p in self.problems if p.kind == kind][:max_listed]
                lines += [f"    {p}" for p in listed]
                if counts[kind] > len(listed):
                    lines.append(f"    ... and {counts[kind] - len(listed)} more")
        lines.append(
            "  instances per class: " + ", ".join(f"{c}: {n}" for c, n in self.class_counts.items())
        )
        lines.append(
            "  box sizes (sqrt(w*h), px): "
            + ", ".join(f"{b}: {n}" for b, n in self.size_histogram())
        )
        return "\n".join(lines)

    def save(self, output_dir: str) -> Tuple[str, str]:
        """Write ``<name>.json`` (every problem) and ``<name>.png`` (histograms) in
        ``output_dir``."""
        os.makedirs(output_dir, exist_ok=True)
        base = os.path.join(output_dir, self.name)
        with open(base + ".json", "w") as f:
            data = {k: v for k, v in asdict(self).items() if k != "box_sizes"}
            data["counts"] = self.counts()
            data["size_histogram"] = self.size_histogram()
            json.dump(data, f, indent=1, default=str)
        _plot(self, base + ".png")
        return base + ".json", base + ".png"


class DatasetCheckError(ValueError):
    """A dataset has errors that would make training wrong or crash."""


def _plot(report: DatasetReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(list(report.class_counts), list(report.class_counts.values()))
    ax1.set_title(f"{report.name}: instances per class")
    ax1.tick_params(axis="x", labelrotation=90 if len(report.class_counts) > 8 else 0)
    hist = report.size_histogram()
    ax2.bar([b for b, _ in hist], [n for _, n in hist])
    ax2.set_title("box size sqrt(w*h), px")
    ax2.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------- one box
def _four_finite(bbox) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox
        )
    )


def _box_problem(bbox, width, height, tolerance: float) -> Optional[Tuple[str, str]]:
    """(kind, message) of what is wrong with an XYWH box in a ``width`` x ``height`` image."""
    if not _four_finite(bbox):
        return "bad_bbox", f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "nonpositive_size", f"bbox {list(bbox)} has width {w} and height {h}"
    if not width or not height:
        return None
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside_image", f"bbox {list(bbox)} lies outside the {width}x{height} image"
    t = tolerance
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return "partly_outside", f"bbox {list(bbox)} extends beyond the {width}x{height} image"
    return None


# The last bytes of a whole file: JPEG's end-of-image marker, PNG's IEND chunk (length 0, CRC).
_FILE_ENDS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


def _ends_whole(f, fmt: str) -> bool:
    """Whether ``f`` (a JPEG or PNG) ends as a whole file of its format does (trailing zero
    padding allowed): a truncated file does not. Reads the last 1 KiB only."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 1024))
    return f.read().rstrip(b"\x00").endswith(_FILE_ENDS[fmt])


def _read_image(f) -> Tuple[int, int, str]:
    """(height, width, format) of the open image file ``f``, the whole file decoded where the
    format has no cheap end check (or the check fails): a truncated image raises."""
    from PIL import Image

    with Image.open(f) as img:  # one open: size, orientation as read_image_size, then the end
        w, h = img.size
        if img.getexif().get(0x0112, 1) in _TRANSPOSING_ORIENTATIONS:
            h, w = w, h
        fmt = img.format or ""
        if not (fmt in _FILE_ENDS and _ends_whole(f, fmt)):
            img.load()  # full decode: raises "image file is truncated" as the data loader would
    return h, w, fmt


def _check_image_file(path: str, height, width) -> Optional[Tuple[str, str]]:
    if not PathManager.exists(path):
        return "missing_image", f"image file {path} not found"
    try:
        with PathManager.open(path, "rb") as f:
            h, w, _ = _read_image(f)
    except Exception as e:  # any decoder error: the data loader would fail on this file
        return "unreadable_image", f"image file {path} cannot be read ({e})"
    if height and width and (h, w) != (height, width):
        return (
            "size_mismatch",
            f"image file {path} is {w}x{h} (w x h) but recorded as {width}x{height}",
        )
    return None


class _Checker:
    """Accumulates a report; one ``image`` / ``annotation`` call per record."""

    def __init__(self, report: DatasetReport, tolerance: float, check_images: bool):
        self.report, self.tolerance, self.check_images = report, tolerance, check_images

    def add(self, kind, image_id, annotation_id, message):
        self.report.problems.append(
            Problem(kind, self.report.file, image_id, annotation_id, message)
        )

    def image(self, image_id, path: str, height, width, num_annotations: int) -> None:
        self.report.num_images += 1
        if self.check_images:
            found = _check_image_file(path, height, width)
            if found:
                self.add(found[0], image_id, None, found[1])
        if num_annotations == 0:
            self.add("empty_image", image_id, None, "no annotations")

    def annotation(self, image_id, ann_id, bbox, category: Optional[str], size) -> None:
        """``category``: class name, or None when the id is unknown (already reported)."""
        self.report.num_annotations += 1
        if bbox is None:
            self.add("missing_bbox", image_id, ann_id, 'annotation has no "bbox"')
            return
        found = _box_problem(bbox, size[1], size[0], self.tolerance)
        if found:
            self.add(found[0], image_id, ann_id, found[1])
            if found[0] in ERROR_KINDS:
                return
        if category is not None:
            counts = self.report.class_counts
            counts[category] = counts.get(category, 0) + 1
            self.report.box_sizes.append(math.sqrt(bbox[2] * bbox[3]))


# ------------------------------------------------------------------------------- sources
def _check_coco_json(checker: _Checker, json_file: str, image_root: str) -> None:
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    checker.report.class_counts.update((n, 0) for n in categories.values())
    images = {im["id"]: im for im in data.get("images", [])}
    per_image = Counter()
    for k, ann in enumerate(data.get("annotations", [])):
        ann_id = ann.get("id", f"#{k}")
        image_id = ann.get("image_id")
        per_image[image_id] += 1
        if image_id not in images:
            checker.report.num_annotations += 1
            checker.add(
                "unknown_image", image_id, ann_id, f"image id {image_id!r} is not in images"
            )
            continue
        category = categories.get(ann.get("category_id"))
        if category is None:
            checker.add(
                "unknown_category",
                image_id,
                ann_id,
                f"category_id {ann.get('category_id')!r} is not one of {sorted(categories)}",
            )
        im = images[image_id]
        checker.annotation(
            image_id, ann_id, ann.get("bbox"), category, (im.get("height"), im.get("width"))
        )
    for image_id, im in images.items():
        path = os.path.join(image_root, im.get("file_name", ""))
        checker.image(image_id, path, im.get("height"), im.get("width"), per_image[image_id])


def _check_dicts(checker: _Checker, dicts: List[dict], classes: Sequence[str]) -> None:
    checker.report.class_counts.update((c, 0) for c in classes)
    for d in dicts:
        image_id = d.get("ID", d.get("image_id"))
        size = (d.get("height"), d.get("width"))
        annos = d.get("annotations", [])
        for k, ann in enumerate(annos):
            ann_id = ann.get("id", f"#{k}")
            cid = ann.get("category_id")
            category = classes[cid] if isinstance(cid, int) and 0 <= cid < len(classes) else None
            if category is None:
                checker.add(
                    "unknown_category",
                    image_id,
                    ann_id,
                    f"category_id {cid!r} is not in 0..{len(classes) - 1} (thing_classes)",
                )
            bbox = ann.get("bbox")
            if _four_finite(bbox) and "bbox_mode" in ann:
                bbox = BoxMode.convert(list(bbox), ann["bbox_mode"], BoxMode.XYWH_ABS)
            checker.annotation(image_id, ann_id, bbox, category, size)
        checker.image(image_id, d.get("file_name", ""), size[0], size[1], len(annos))


def check_dataset(name: str, tolerance: float = 1.0, check_images: bool = True) -> DatasetReport:
    """
    Check the registered dataset ``name`` (see the module docstring for what is checked).

    Args:
        tolerance: pixels a box may extend beyond its image before it counts as partly outside.
        check_images: open every image (existence, size, truncation).
    """
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    if json_file and not PathManager.exists(json_file):
        DatasetCatalog.get(name)  # some loaders write their json on first use (shapes)
    if json_file and PathManager.exists(json_file):
        report = DatasetReport(name, json_file)
        checker = _Checker(report, tolerance, check_images)
        _check_coco_json(checker, json_file, meta.get("image_root", ""))
    else:
        dicts = DatasetCatalog.get(name)  # sets thing_classes for most loaders
        source = meta.get("odgt_file", None) or f"<registered dicts of {name}>"
        report = DatasetReport(name, source)
        checker = _Checker(report, tolerance, check_images)
        _check_dicts(checker, dicts, list(meta.get("thing_classes", [])))
    return report


def check_datasets(
    names: Iterable[str],
    tolerance: float = 1.0,
    check_images: bool = True,
    output_dir: Optional[str] = None,
) -> List[DatasetReport]:
    """
    Check, log and (with ``output_dir``) save the report of every dataset in ``names``.

    Raises:
        DatasetCheckError: when any dataset has errors (after all are checked and logged).
    """
    reports = []
    for name in names:
        report = check_dataset(name, tolerance, check_images)
        (logger.error if report.errors else logger.info)(report.summary())
        if output_dir:
            files = report.save(output_dir)
            logger.info(f"Dataset check of {name}: wrote {files[0]} and {files[1]}")
        reports.append(report)
    bad = [r for r in reports if r.errors]
    if bad:
        lines = []
        for r in bad:
            counts = {k: v for k, v in r.counts().items() if k in ERROR_KINDS}
            lines.append(f"{r.name} ({r.file}): {counts}; first: {r.errors[0]}")
        raise DatasetCheckError(
            "dataset check failed (the log lists each problem with its image and annotation id): "
            + "; ".join(lines)
            + ". Fix the annotations, or set DATASETS.CHECK.ENABLED False to train anyway"
        )
    return reports
